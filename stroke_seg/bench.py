"""Benchmarks of the whole pipeline on this machine: ``make bench`` (docs/benchmarks.md).

    python -m stroke_seg.bench [--quick] [--out bench/results.json] [--device auto]
                               [--sections train,memory,data,inference,evaluation] [--all]

Measures, on whatever device it finds (CUDA if available, else CPU):

* **train**: one training step (forward, BCE+Dice loss, backward, Adam) of the demo preset
  (widths 16/32/64/128) and the paper preset (32/64/128/256), GroupNorm(8), at each preset's
  zoom-in and zoom-out crop, for each speed option (fp32, bf16 autocast, channels-last,
  torch.compile): crops/s, voxels/s, and the model FLOP rate (FLOPs of convolutions counted
  with `torch.utils.flop_counter.FlopCounterMode` on the meta device) as a fraction of this
  machine's measured matmul peak (best of several large ``torch.mm``). Each configuration
  runs in its own process, so its peak memory is its own and a crash cannot take the
  benchmark down. Options that the device cannot run are skipped with the reason; on a CPU
  an option that is already slower than fp32 at the demo preset is not repeated at the
  paper preset (``--all`` runs it anyway), since one paper step takes about a minute there.
* **memory**: peak memory of one paper-preset training step at both crops, with and without
  activation checkpointing (``model.checkpointing``): max RSS of the step's process on CPU
  (``resource.getrusage``), ``torch.cuda.max_memory_allocated`` on CUDA. A configuration
  predicted to exceed the free memory is skipped rather than risking the OOM killer.
* **data**: crops/s that the training data pipeline (`StrokeDataModule`: volumes cached in
  memory) delivers, against re-reading the NIfTI files for every sample as the reference
  code did, on a small synthetic set (`stroke_seg.data.synthetic`) at 1 mm.
* **inference**: seconds per full 197x233x189 scan with the paper preset, centre crop and
  sliding window (`stroke_seg.inference.Predictor`).
* **evaluation**: seconds to score 31 scans at 1 mm with every metric
  (`stroke_seg.metrics.scan_metrics`, mDSC from a probability map) plus the summary with
  1000 bootstrap resamples (`stroke_seg.stats.summarize_cases`).

``--quick`` runs every section with tiny sizes in well under a minute (for tests); its
numbers mean nothing. Results go to ``--out`` as JSON, and a table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stroke_seg.errors import StrokeSegError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def config_presets() -> dict[str, dict[str, Any]]:
    """Network widths, groups and crop sizes of ``experiment=demo`` and ``experiment=paper``,
    composed from the same config files as training, so the benchmark measures exactly
    what ``train.py`` would run."""
    if not (CONF_DIR / "train.yaml").is_file():
        raise StrokeSegError(
            f"The benchmark reads its presets from {CONF_DIR}, which does not exist; "
            "run it from a source checkout (make bench)."
        )
    from hydra import compose, initialize_config_dir

    presets: dict[str, dict[str, Any]] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in ("demo", "paper"):
            crops = {}
            for stage in ("zoom_in", "zoom_out"):
                cfg = compose("train", [f"experiment={name}", f"stage={stage}", "name=bench"])
                crops[stage] = [int(v) for v in cfg.stage.crop_size]
            presets[name] = {
                "widths": [int(v) for v in cfg.model.widths],
                "groups": int(cfg.model.groups),
                "crops": crops,
            }
    return presets


QUICK_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "widths": [4, 8],
        "groups": 2,
        "crops": {"zoom_in": [16, 16, 16], "zoom_out": [16, 20, 24]},
    },
    "paper": {
        "widths": [8, 16],
        "groups": 4,
        "crops": {"zoom_in": [16, 16, 16], "zoom_out": [24, 28, 20]},
    },
}
QUICK_SCAN = (32, 36, 28)
OPTIONS = ("fp32", "bf16", "channels_last", "compile")
SECTIONS = ("train", "memory", "data", "inference", "evaluation")
FULL_SCAN = (197, 233, 189)
LOSS = {"bce_weight": 0.1, "dice_weight": 0.9, "smooth": 1.0}
OPTIM = {"lr": 1e-3, "weight_decay": 1e-4, "restart_period_epochs": 50, "eta_min": 0.0}
# Targets for the 2-core CPU development machine (docs/benchmarks.md).
TARGETS = {
    "data_cached_vs_nifti_ratio": (">=", 10.0),
    "inference_centre_crop_s": ("<", 60.0),
    "evaluation_31_scans_s": ("<", 30.0),
    "demo_zoom_in_step_s": ("<", 1.0),
}


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_gb() -> float:
    """Current resident set size of this process (GB), from /proc; nan where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return math.nan


def max_rss_gb() -> float:
    """Peak resident set size of this process so far (GB; ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def available_memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return math.nan


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_available_gb": round(available_memory_gb(), 1),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
    return info


def _best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(device: torch.device, quick: bool) -> dict[str, Any]:
    """FLOP/s of a large square ``torch.mm`` (best of several), per dtype: the machine's
    practical peak against which the training step's FLOP rate is compared."""
    n = 256 if quick else (8192 if device.type == "cuda" else 4096)
    out: dict[str, Any] = {"n": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        try:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            torch.mm(a, b)  # warm-up
            seconds = _best_time(lambda a=a, b=b: torch.mm(a, b), device, 3 if quick else 5)
            out[f"{name}_flops"] = 2 * n**3 / seconds
        except RuntimeError as err:
            out[f"{name}_flops"] = None
            out[f"{name}_error"] = str(err).splitlines()[0]
    if device.type == "cuda":
        # The GPU's fp32 matmuls run on TF32 tensor cores only when allowed; say which.
        out["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def combine_peaks(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The better of two peak measurements per dtype (a busy machine lowers one of them),
    keeping both for the record."""
    out = {**start, "start": start, "end": end}
    for key in ("fp32_flops", "bf16_flops"):
        values = [v for v in (start.get(key), end.get(key)) if v]
        out[key] = max(values) if values else None
    return out


def count_train_flops(widths: Sequence[int], groups: int, crop: Sequence[int]) -> dict[str, float]:
    """Model FLOPs (convolutions and transposed convolutions, as `FlopCounterMode` counts
    them) of one forward pass and one forward+backward pass, computed on the meta device so
    that nothing is actually run."""
    from torch.utils.flop_counter import FlopCounterMode

    from stroke_seg.losses import BCEDiceLoss
    from stroke_seg.models import ResUNet3D

    with torch.device("meta"):
        net = ResUNet3D(widths=tuple(widths), groups=groups)
        x = torch.empty(1, 1, *crop)
        y = torch.empty(1, 1, *crop)
    loss_fn = BCEDiceLoss(**LOSS)
    with FlopCounterMode(display=False) as counter:
        net(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(x), y).backward()
    return {"forward": float(forward), "train_step": float(counter.get_total_flops())}


# --------------------------------------------------------------------------------------
# One training step, in a process of its own
# --------------------------------------------------------------------------------------


def step_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run training steps of one configuration in this process and report times and memory.

    Uses `LesionSegModule` (network, loss, speed options as in training) with Adam; bf16
    autocasts the forward pass and loss as Lightning's ``precision=bf16-mixed`` does.
    """
    from stroke_seg.lit_module import LesionSegModule

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec.get("mem_limit_bytes"):  # a failed allocation instead of the OOM killer
        limit = int(spec["mem_limit_bytes"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    device = resolve_device(spec["device"])
    option = spec["option"]
    rss_import = rss_gb()
    torch.manual_seed(0)
    net = {
        "widths": spec["widths"],
        "groups": spec["groups"],
        "checkpointing": bool(spec.get("checkpointing", False)),
    }
    speed = {"channels_last": option == "channels_last", "compile": option == "compile"}
    module = LesionSegModule(net=net, loss=LOSS, optim=OPTIM, speed=speed)
    module.configure_model()
    module.to(device).train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, weight_decay=1e-4)
    crop = spec["crop"]
    x = torch.rand(1, 1, *crop, device=device)
    y = (torch.rand(1, 1, *crop, device=device) > 0.95).float()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if option == "bf16"
        else contextlib.nullcontext()
    )

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = module.loss_fn(module(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_ready = rss_gb()
    first = step()
    times: list[float] = []
    includes_warmup = False
    if first > spec["long_step_s"] and option != "compile":
        times, includes_warmup = [first], True  # warm-up is negligible at this size
    else:
        budget_start = time.perf_counter()
        while len(times) < spec["steps"] and (
            not times or time.perf_counter() - budget_start < spec["budget_s"]
        ):
            times.append(step())
    result = {
        "first_step_s": first,
        "step_times_s": times,
        "step_s": statistics.median(times),
        "includes_warmup": includes_warmup,
        "rss_import_gb": rss_import,
        "rss_ready_gb": rss_ready,
        "rss_peak_gb": max_rss_gb(),
    }
    if device.type == "cuda":
        result["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return result


def run_probe(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """`step_probe` in a fresh Python process; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "stroke_seg.bench", "--probe-step", json.dumps(spec)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"no result within {timeout_s:.0f} s"}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr:
            return {"status": "skipped", "reason": f"out of memory (limit {_gb(spec)}): {tail}"}
        return {"status": "failed", "reason": tail[:300]}
    return {"status": "ok", "process_s": wall, **json.loads(lines[-1])}


def _gb(spec: dict[str, Any]) -> str:
    limit = spec.get("mem_limit_bytes")
    return "none" if not limit else f"{limit / 1e9:.1f} GB"


def option_unsupported(option: str, device: torch.device) -> str | None:
    """Why `option` cannot run on `device`, or None."""
    if option == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support (torch.cuda.is_bf16_supported() is False)"
    if option == "compile":
        if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
            return "torch.compile on CPU needs a C++ compiler (g++) on PATH; none found"
        if device.type == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                return "torch.compile on CUDA needs triton, which is not installed"
    return None


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def bench_train(
    device: torch.device,
    presets: dict,
    options: Sequence[str],
    peak: dict,
    quick: bool,
    run_all: bool,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Training-step throughput per preset, crop and speed option (see the module doc)."""
    rows: list[dict[str, Any]] = []
    slower_than_fp32: dict[str, float] = {}
    for preset, p in presets.items():
        for crop_name, crop in p["crops"].items():
            flops = count_train_flops(p["widths"], p["groups"], crop)
            fp32_step = None
            for option in options:
                row = {
                    "preset": preset,
                    "widths": p["widths"],
                    "groups": p["groups"],
                    "crop_name": crop_name,
                    "crop": crop,
                    "option": option,
                    "flops_per_step": flops["train_step"],
                }
                reason = option_unsupported(option, device)
                if reason is None and quick and option == "compile":
                    reason = "not measured with --quick (compilation alone takes minutes)"
                if (
                    reason is None
                    and device.type == "cpu"
                    and not run_all
                    and preset != "demo"
                    and option in slower_than_fp32
                ):
                    reason = (
                        f"on this CPU {option} was {slower_than_fp32[option]:.1f}x slower "
                        "than fp32 at the demo preset; not repeated at this preset "
                        "(--all measures it)"
                    )
                if reason is None and device.type == "cpu":
                    reason = _too_big(rows, preset, option, crop)
                if reason is not None:
                    rows.append({**row, "status": "skipped", "reason": reason})
                    log(f"  train {preset} {crop_name} {option}: skipped ({reason})")
                    continue
                spec = {
                    "device": str(device),
                    "option": option,
                    "widths": p["widths"],
                    "groups": p["groups"],
                    "crop": crop,
                    "steps": 2 if quick else 5,
                    "budget_s": 2 if quick else 20,
                    "long_step_s": 20.0,
                    "mem_limit_bytes": _memory_limit(device),
                    "threads": torch.get_num_threads(),
                }
                # --quick runs in this process: a fresh process per tiny configuration
                # would spend most of the time importing torch.
                result = (
                    {"status": "ok", **step_probe({**spec, "mem_limit_bytes": None})}
                    if quick
                    else run_probe(spec, timeout_s=900)
                )
                row.update(result)
                if result["status"] == "ok":
                    row.update(_rates(row, flops, peak, option))
                    if option == "fp32":
                        fp32_step = row["step_s"]
                    elif fp32_step and preset == "demo" and row["step_s"] > 1.2 * fp32_step:
                        ratio = row["step_s"] / fp32_step
                        slower_than_fp32[option] = max(slower_than_fp32.get(option, 0), ratio)
                    log(
                        f"  train {preset} {crop_name} {option}: {row['step_s']:.3f} s/step, "
                        f"{row['crops_per_s']:.2f} crops/s, "
                        f"{row['achieved_flops'] / 1e9:.1f} GFLOP/s"
                    )
                else:
                    log(
                        f"  train {preset} {crop_name} {option}: {result['status']} "
                        f"({result.get('reason')})"
                    )
                rows.append(row)
    return rows


def _too_big(rows: list[dict], preset: str, option: str, crop: Sequence[int]) -> str | None:
    """Why a CPU probe would not fit in memory, predicted from the same preset and option at
    a smaller crop (activations grow linearly with voxels), or None."""
    for row in rows:
        if (row["preset"], row["option"], row.get("status")) == (preset, option, "ok"):
            other = row["crop"]
            scale = math.prod(crop) / math.prod(other)
            if scale <= 1:
                continue
            predicted = row["rss_import_gb"] + (row["rss_peak_gb"] - row["rss_import_gb"]) * scale
            free = available_memory_gb()
            if predicted > 0.85 * free:
                return (
                    f"predicted peak memory {predicted:.1f} GB (the {'x'.join(map(str, other))} "
                    f"crop's, scaled by voxels) exceeds 85% of the {free:.1f} GB free"
                )
    return None


def _memory_limit(device: torch.device) -> int | None:
    """On CPU, cap a probe's data segment at 90% of the memory free now."""
    if device.type != "cpu":
        return None
    free = available_memory_gb()
    return None if math.isnan(free) else int(free * 0.9e9)


def _rates(row: dict, flops: dict, peak: dict, option: str) -> dict[str, float]:
    voxels = math.prod(row["crop"])
    achieved = flops["train_step"] / row["step_s"]
    return {
        "crops_per_s": 1.0 / row["step_s"],
        "voxels_per_s": voxels / row["step_s"],
        "achieved_flops": achieved,
        **_fraction({**row, "achieved_flops": achieved}, peak),
    }


def _fraction(row: dict, peak: dict) -> dict[str, Any]:
    """Achieved FLOP/s over the matmul peak of the step's arithmetic (bf16 for bf16)."""
    bf16 = row["option"] == "bf16"
    ref = peak.get("bf16_flops") if bf16 else peak.get("fp32_flops")
    return {
        "peak_reference": "bf16 matmul" if bf16 else "fp32 matmul",
        "flop_fraction_of_peak": row["achieved_flops"] / ref if ref else math.nan,
    }


def bench_memory(
    device: torch.device,
    presets: dict,
    train_rows: list[dict],
    quick: bool,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Peak memory of one paper-preset step per crop, activation checkpointing off / on."""
    p = presets["paper"]
    rows: list[dict[str, Any]] = []
    measured: dict[tuple[str, bool], dict] = {}
    for crop_name, crop in p["crops"].items():
        for checkpointing in (False, True):
            row = {
                "preset": "paper",
                "crop_name": crop_name,
                "crop": crop,
                "checkpointing": checkpointing,
            }
            reuse = next(
                (
                    r
                    for r in train_rows
                    if r["preset"] == "paper"
                    and r["crop_name"] == crop_name
                    and r["option"] == "fp32"
                    and r.get("status") == "ok"
                ),
                None,
            )
            if not checkpointing and reuse is not None:
                result = {k: reuse[k] for k in reuse if k.startswith(("rss", "cuda", "step_s"))}
                result["status"] = "ok"
                result["source"] = "the fp32 training-step probe"
            else:
                predicted = _predict_peak(measured, crop_name, crop, checkpointing, p)
                free = available_memory_gb()
                if device.type == "cpu" and predicted and predicted > 0.85 * free:
                    result = {
                        "status": "skipped",
                        "predicted_peak_gb": predicted,
                        "reason": f"predicted peak {predicted:.1f} GB (scaled by voxels "
                        f"from the measured smaller crop) exceeds 85% of the "
                        f"{free:.1f} GB free",
                    }
                else:
                    spec = {
                        "device": str(device),
                        "option": "fp32",
                        "widths": p["widths"],
                        "groups": p["groups"],
                        "crop": crop,
                        "checkpointing": checkpointing,
                        "steps": 1,
                        "budget_s": 0,
                        "long_step_s": 0.0,
                        "mem_limit_bytes": _memory_limit(device),
                        "threads": torch.get_num_threads(),
                    }
                    result = run_probe(spec, timeout_s=120 if quick else 900)
            row.update(result)
            if result.get("status") == "ok":
                row["step_memory_gb"] = _step_memory(row, device)
                measured[(crop_name, checkpointing)] = row
                log(
                    f"  memory paper {crop_name} checkpointing={checkpointing}: "
                    f"{row['step_memory_gb']:.2f} GB"
                )
            else:
                log(
                    f"  memory paper {crop_name} checkpointing={checkpointing}: "
                    f"{result['status']} ({result.get('reason')})"
                )
            rows.append(row)
    return rows


def _step_memory(row: dict, device: torch.device) -> float:
    """GB a step needs beyond the bare Python + torch process: weights, gradients, Adam
    moments and activations (CPU: peak RSS minus RSS after import; CUDA: peak allocated)."""
    if device.type == "cuda" and row.get("cuda_peak_gb") is not None:
        return float(row["cuda_peak_gb"])
    return float(row["rss_peak_gb"] - row["rss_import_gb"])


def _predict_peak(
    measured: dict, crop_name: str, crop: Sequence[int], checkpointing: bool, preset: dict
) -> float | None:
    """Peak RSS of an unmeasured crop, scaled by voxels from a measured one (activations
    grow linearly with the crop), or None when nothing comparable was measured."""
    for (other_name, other_ckpt), row in measured.items():
        if other_ckpt == checkpointing and other_name != crop_name:
            other_crop = preset["crops"][other_name]
            scale = math.prod(crop) / math.prod(other_crop)
            return float(row["rss_import_gb"] + (row["rss_peak_gb"] - row["rss_import_gb"]) * scale)
    return None


def bench_data(
    quick: bool, data_dir: str | None, spacing: float, n_subjects: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Crops/s from the cached pipeline vs re-reading NIfTI for every sample."""
    import nibabel as nib
    from monai.data import DataLoader, Dataset

    from stroke_seg.data.datamodule import StrokeDataModule
    from stroke_seg.data.synthetic import generate_dataset

    tmp = None
    root = Path(data_dir) if data_dir else Path(tmp := tempfile.mkdtemp(prefix="stroke_bench_"))
    try:
        start = time.perf_counter()
        generate_dataset(root, n_subjects, seed=0, spacing=spacing, progress=False)
        generated_s = time.perf_counter() - start
        crop = [16, 16, 16] if quick else [int(round(128 / spacing))] * 3
        dm = StrokeDataModule(
            str(root),
            layout="synthetic",
            crop_size=crop,
            eval_crop=crop,
            split_proportions=(n_subjects - 2, 1, 1),
            cache_workers=0,
            num_workers=0,
            seed=0,
        )
        start = time.perf_counter()
        dm.setup("fit")
        cache_s = time.perf_counter() - start
        n_train = len(dm.train_set)
        min_crops = 2 * n_train if quick else max(50, 10 * n_train)

        def cached_rate(num_workers: int) -> tuple[float, int]:
            dm.num_workers = num_workers
            loader = dm.train_dataloader()
            count, epoch = 0, 0
            it_start = None
            while count < min_crops:
                loader.sampler.set_epoch(epoch)
                for _batch in loader:
                    if it_start is None:  # worker start-up is not throughput
                        it_start = time.perf_counter()
                        continue
                    count += 1
                epoch += 1
            return count / (time.perf_counter() - it_start), count

        cached, n_cached = cached_rate(0)
        workers = 0 if quick else 2
        cached_w, _ = cached_rate(workers) if workers else (math.nan, 0)
        dm.num_workers = 0
        uncached_set = Dataset(
            [{"case": dm.cases[s]} for s in dm.split["train"]], transform=dm.train_set.transform
        )
        loader = DataLoader(uncached_set, batch_size=1, shuffle=False, num_workers=0)
        n_uncached = n_train if quick else 2 * n_train
        count, start = 0, time.perf_counter()
        while count < n_uncached:
            for _batch in loader:
                count += 1
        uncached = count / (time.perf_counter() - start)
        result = {
            "spacing_mm": spacing,
            "n_subjects": n_subjects,
            "n_train_scans": n_train,
            "grid": list(nib.load(str(next(iter(dm.cases.values())).image)).shape[:3]),
            "crop": crop,
            "generate_s": generated_s,
            "cache_fill_s": cache_s,
            "cached_crops_per_s": cached,
            "cached_crops_measured": n_cached,
            f"cached_{workers}_workers_crops_per_s": cached_w if workers else None,
            "nifti_per_sample_crops_per_s": uncached,
            "nifti_crops_measured": count,
            "ratio_cached_vs_nifti": cached / uncached,
        }
        log(
            f"  data: cached {cached:.1f} crops/s, NIfTI per sample {uncached:.2f} crops/s, "
            f"ratio {cached / uncached:.0f}x"
        )
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_inference(
    device: torch.device, presets: dict, quick: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """Seconds per full scan, centre crop and sliding window, with the paper preset."""
    from stroke_seg.inference import LoadedModel, Predictor
    from stroke_seg.models import ResUNet3D

    p = presets["paper"]
    shape = QUICK_SCAN if quick else FULL_SCAN
    torch.manual_seed(0)
    net = ResUNet3D(widths=tuple(p["widths"]), groups=p["groups"]).eval()
    pre = {
        "intensity_mode": "divide",
        "intensity_divisor": 255.0,
        "crop_size": p["crops"]["zoom_in"],
        "eval_crop": p["crops"]["zoom_out"],
        "spacing": [1.0, 1.0, 1.0],
        "grid_shape": list(shape),
    }
    model = LoadedModel(net, pre, 0.5, "bench")
    volume = (np.random.default_rng(0).random(shape, dtype=np.float32) * 255).astype(np.float32)
    affine = np.eye(4)
    out: dict[str, Any] = {"preset": "paper", "scan_shape": list(shape), "device": str(device)}
    for mode in ("centre_crop", "sliding_window"):
        predictor = Predictor([model], mode=mode, device=str(device), amp=True)
        if device.type == "cuda":  # the first call builds cuDNN plans
            predictor.predict(volume, affine)
        start = time.perf_counter()
        result = predictor.predict(volume, affine)
        synchronize(device)
        seconds = time.perf_counter() - start
        out[f"{mode}_s"] = seconds
        log(f"  inference {mode}: {seconds:.1f} s per scan ({result.mode})")
    flops = count_train_flops(p["widths"], p["groups"], p["crops"]["zoom_out"])["forward"]
    out["centre_crop_forward_flops"] = flops
    out["centre_crop_achieved_flops"] = flops / out["centre_crop_s"]
    out["sliding_window_roi"] = p["crops"]["zoom_in"]
    out["sliding_window_overlap"] = 0.5
    out["amp"] = "float16 autocast" if device.type == "cuda" else "off (CPU)"
    return out


def _ellipsoid(shape: Sequence[int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    lo = np.maximum(np.floor(centre - radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = inside
    return mask


def synthetic_cases(n: int, shape: Sequence[int], seed: int = 0) -> list[tuple]:
    """`n` (prediction, reference, probability map) triples on `shape` at 1 mm: reference
    lesions with the synthetic set's volume distribution (median about 4000 mm³), predictions
    shifted and resized with a false-positive blob, probabilities smooth over the whole scan
    (every voxel a distinct value, the hardest case for the exact mDSC sweep)."""
    from scipy import ndimage

    from stroke_seg.data.synthetic import sample_lesion_volumes

    rng = np.random.default_rng(seed)
    volumes = sample_lesion_volumes(n, seed)
    shape = tuple(shape)
    cases = []
    for volume in volumes:
        radius = (3 * volume / (4 * math.pi)) ** (1 / 3)
        radii = radius * rng.uniform(0.7, 1.3, 3)
        radii *= radius / np.prod(radii) ** (1 / 3)
        margin = np.minimum(radii + 2, np.array(shape) / 2 - 1)
        centre = rng.uniform(margin, np.array(shape) - margin)
        ref = _ellipsoid(shape, centre, np.maximum(radii, 0.8))
        pred = _ellipsoid(
            shape, centre + rng.normal(0, 1.5, 3), np.maximum(radii * rng.uniform(0.8, 1.2), 0.8)
        )
        pred |= _ellipsoid(shape, rng.uniform(10, np.array(shape) - 10), np.full(3, 2.5))
        prob = ndimage.gaussian_filter(pred.astype(np.float32), 1.5)
        prob += rng.random(shape, dtype=np.float32) * 1e-3
        prob = np.clip(prob, 0, 1).astype(np.float32)
        cases.append(((prob > 0.5).astype(np.uint8), ref.astype(np.uint8), prob))
    return cases


def bench_evaluation(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Seconds to score 31 scans with every metric and summarise with 1000 resamples."""
    from stroke_seg.metrics import scan_metrics
    from stroke_seg.stats import summarize_cases

    n, shape = 31, (QUICK_SCAN if quick else FULL_SCAN)
    n_resamples = 1000
    cases = synthetic_cases(n, shape)
    start = time.perf_counter()
    rows = [scan_metrics(pred, ref, (1.0, 1.0, 1.0), prob=prob) for pred, ref, prob in cases]
    metrics_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = summarize_cases(rows, n_resamples=n_resamples, seed=0)
    bootstrap_s = time.perf_counter() - start
    total = metrics_s + bootstrap_s
    log(f"  evaluation: {n} scans {metrics_s:.1f} s + bootstrap {bootstrap_s:.1f} s")
    return {
        "n_scans": n,
        "scan_shape": list(shape),
        "n_resamples": n_resamples,
        "metrics_s": metrics_s,
        "bootstrap_s": bootstrap_s,
        "total_s": total,
        "per_scan_s": metrics_s / n,
        "mean_dsc_of_synthetic_predictions": summary["dsc"]["mean"],
        "median_lesion_voxels": float(np.median([r["ref_voxels"] for r in rows])),
    }


# --------------------------------------------------------------------------------------
# Targets, table, entry point
# --------------------------------------------------------------------------------------


def target_values(results: dict[str, Any]) -> dict[str, Any]:
    """The four targets of docs/benchmarks.md with the measured value and whether it is met."""
    values: dict[str, float | None] = {
        "data_cached_vs_nifti_ratio": (results.get("data") or {}).get("ratio_cached_vs_nifti"),
        "inference_centre_crop_s": (results.get("inference") or {}).get("centre_crop_s"),
        "evaluation_31_scans_s": (results.get("evaluation") or {}).get("total_s"),
        "demo_zoom_in_step_s": next(
            (
                r["step_s"]
                for r in results.get("train", [])
                if r["preset"] == "demo"
                and r["crop_name"] == "zoom_in"
                and r["option"] == "fp32"
                and r.get("status") == "ok"
            ),
            None,
        ),
    }
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = values[key]
        met = None if value is None else (value >= bound if op == ">=" else value < bound)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "met": met}
    return out


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def render_table(results: dict[str, Any]) -> str:
    lines = [
        f"stroke_seg benchmark on {results['machine']['device']} "
        f"({results['machine']['cpu']}, {results['machine']['torch_threads']} threads)"
        + (" [--quick: sizes are tiny, numbers mean nothing]" if results["quick"] else "")
    ]
    peak = results.get("matmul_peak") or {}
    if peak:
        lines.append(
            f"matmul peak: fp32 {_fmt((peak.get('fp32_flops') or 0) / 1e9, '.1f')} "
            f"GFLOP/s, bf16 {_fmt((peak.get('bf16_flops') or 0) / 1e9, '.1f')} GFLOP/s"
        )
    if results.get("train"):
        lines += [
            "",
            f"{'preset':7} {'crop':14} {'option':14} {'s/step':>8} {'crops/s':>8} "
            f"{'Mvox/s':>8} {'GFLOP/s':>8} {'of peak':>8}",
        ]
        for r in results["train"]:
            crop = "x".join(str(c) for c in r["crop"])
            if r.get("status") != "ok":
                lines.append(
                    f"{r['preset']:7} {crop:14} {r['option']:14} {r['status']}: "
                    f"{r.get('reason', '')[:70]}"
                )
                continue
            lines.append(
                f"{r['preset']:7} {crop:14} {r['option']:14} {r['step_s']:8.3f} "
                f"{r['crops_per_s']:8.2f} {r['voxels_per_s'] / 1e6:8.2f} "
                f"{r['achieved_flops'] / 1e9:8.1f} {r['flop_fraction_of_peak']:8.1%}"
            )
    if results.get("memory"):
        lines += ["", "peak memory of one paper-preset training step (GB beyond the bare process):"]
        for r in results["memory"]:
            crop = "x".join(str(c) for c in r["crop"])
            value = (
                f"{r['step_memory_gb']:.2f} GB, {r['step_s']:.1f} s/step"
                if r.get("status") == "ok"
                else f"{r['status']}: {r.get('reason', '')}"
            )
            lines.append(f"  {crop:14} checkpointing={str(r['checkpointing']):5} {value}")
    if results.get("data"):
        d = results["data"]
        lines += [
            "",
            f"data pipeline ({d['spacing_mm']:g} mm, crop {d['crop']}): cached "
            f"{d['cached_crops_per_s']:.1f} crops/s vs NIfTI per sample "
            f"{d['nifti_per_sample_crops_per_s']:.2f} crops/s = "
            f"{d['ratio_cached_vs_nifti']:.0f}x",
        ]
    if results.get("inference"):
        i = results["inference"]
        lines.append(
            f"inference, paper preset, one {'x'.join(map(str, i['scan_shape']))} scan: "
            f"centre crop {i['centre_crop_s']:.1f} s, sliding window "
            f"{i['sliding_window_s']:.1f} s"
        )
    if results.get("evaluation"):
        e = results["evaluation"]
        lines.append(
            f"evaluation, {e['n_scans']} scans, all metrics + {e['n_resamples']} "
            f"bootstrap resamples: {e['total_s']:.1f} s"
        )
    lines += ["", "targets (2-core CPU):"]
    for key, t in results.get("targets", {}).items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"  {key:28} {_fmt(t['value'])} (target {t['target']}): {verdict}")
    return "\n".join(lines)


def run_bench(
    quick: bool = False,
    out: str | Path = "bench/results.json",
    device: str = "auto",
    sections: Sequence[str] = SECTIONS,
    options: Sequence[str] = OPTIONS,
    run_all: bool = False,
    data_dir: str | None = None,
    data_spacing: float = 1.0,
    data_subjects: int = 6,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen sections and write the results JSON; returns the results.

    ``threads``: torch CPU threads (default: torch's choice, one per core; ``--quick``: 1,
    because on a busy machine OpenMP threads that wait for each other make tiny steps many
    times slower)."""
    dev = resolve_device(device)
    if threads or quick:
        torch.set_num_threads(int(threads or 1))
    presets = QUICK_PRESETS if quick else config_presets()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python -m stroke_seg.bench " + " ".join(sys.argv[1:]),
        "quick": quick,
        "machine": machine_info(dev),
        "presets": presets,
    }
    log(f"benchmark on {dev}: sections {', '.join(sections)}")
    peak_start = matmul_peak(dev, quick)
    if "train" in sections:
        results["train"] = bench_train(dev, presets, options, peak_start, quick, run_all, log)
    if "memory" in sections:
        results["memory"] = bench_memory(dev, presets, results.get("train", []), quick, log)
    if "data" in sections:
        results["data"] = bench_data(
            quick, data_dir, 4.0 if quick else data_spacing, 3 if quick else data_subjects, log
        )
    if "inference" in sections:
        results["inference"] = bench_inference(dev, presets, quick, log)
    if "evaluation" in sections:
        results["evaluation"] = bench_evaluation(quick, log)
    results["matmul_peak"] = combine_peaks(peak_start, matmul_peak(dev, quick))
    for row in results.get("train", []):
        if row.get("status") == "ok":
            row.update(_fraction(row, results["matmul_peak"]))
    results["targets"] = target_values(results)
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["total_s"] = time.perf_counter() - started
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float) + "\n")
    tmp.replace(path)
    log("")
    log(render_table(results))
    log(f"\nwritten to {path} in {results['total_s']:.0f} s")
    return results


def _csv(value: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"error: {flag} {bad[0]} is not known; use some of {', '.join(allowed)}.")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stroke_seg.bench",
        description="Benchmark training, data loading, inference and evaluation on this "
        "machine (docs/benchmarks.md).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    parser.add_argument("--out", default="bench/results.json", help="results JSON")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--options",
        default=",".join(OPTIONS),
        help=f"comma-separated subset of {','.join(OPTIONS)}",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="on CPU, also measure options at the paper preset that were "
        "already slower than fp32 at the demo preset",
    )
    parser.add_argument("--data-dir", help="synthetic set to use or create (default: a temp dir)")
    parser.add_argument("--data-spacing", type=float, default=1.0, help="mm (1 = ATLAS grid)")
    parser.add_argument("--data-subjects", type=int, default=6, help="synthetic subjects")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--probe-step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_step:
        print(json.dumps(step_probe(json.loads(args.probe_step))), flush=True)
        return 0
    run_bench(
        quick=args.quick,
        out=args.out,
        device=args.device,
        sections=_csv(args.sections, SECTIONS, "--sections"),
        options=_csv(args.options, OPTIONS, "--options"),
        run_all=args.all,
        data_dir=args.data_dir,
        data_spacing=args.data_spacing,
        data_subjects=args.data_subjects,
        threads=args.threads,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
