"""One training step of one configuration, measured in a process of its own, and the
model FLOP count it is judged by.

Each configuration runs in a fresh process (``python -m stroke_seg.bench.probe SPEC``), so
its peak memory is its own and a crash or an out-of-memory cannot take the benchmark down.
That command is internal: one JSON argument written by `run_probe`, no user options, so it
reads ``sys.argv`` itself instead of going through Hydra (whose start-up would be paid
once per probe).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from stroke_seg.bench.machine import max_rss_gb, rss_gb, synchronize


def count_train_flops(
    widths: Sequence[int],
    groups: int,
    crop: Sequence[int],
    loss: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Model FLOPs (convolutions and transposed convolutions, as `FlopCounterMode` counts
    them) of one forward pass and one forward+backward pass, computed on the meta device so
    that nothing is actually run. The loss's weights change no count (it has no matmul or
    convolution); `loss` only builds it as training does."""
    from torch.utils.flop_counter import FlopCounterMode

    from stroke_seg.losses import BCEDiceLoss
    from stroke_seg.models import ResUNet3D

    with torch.device("meta"):
        net = ResUNet3D(widths=tuple(widths), groups=groups)
        x = torch.empty(1, 1, *crop)
        y = torch.empty(1, 1, *crop)
    loss_fn = BCEDiceLoss(**(loss or {}))
    with FlopCounterMode(display=False) as counter:
        net(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(x), y).backward()
    return {"forward": float(forward), "train_step": float(counter.get_total_flops())}


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


def step_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run training steps of one configuration in this process and report times and memory.

    Uses `LesionSegModule` (network, loss, speed options as in training) with Adam and the
    preset's learning rate and weight decay (`spec["optim"]`, from the composed config);
    bf16 autocasts the forward pass and loss as Lightning's ``precision=bf16-mixed`` does.
    """
    from stroke_seg.lit_module import LesionSegModule

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec.get("mem_limit_bytes"):  # a failed allocation instead of the OOM killer
        limit = int(spec["mem_limit_bytes"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    device = torch.device(spec["device"])  # resolved by the benchmark (cpu, cuda:0, ...)
    option = spec["option"]
    optim = spec["optim"]
    rss_import = rss_gb()
    torch.manual_seed(0)
    net = {
        "widths": spec["widths"],
        "groups": spec["groups"],
        "checkpointing": bool(spec.get("checkpointing", False)),
    }
    speed = {"channels_last": option == "channels_last", "compile": option == "compile"}
    module = LesionSegModule(net=net, loss=spec["loss"], optim=optim, speed=speed)
    module.configure_model()
    module.to(device).train()
    # configure_optimizers needs a Trainer (its scheduler counts steps per epoch); the
    # scheduler costs nothing per step, so the same Adam is built directly.
    optimizer = torch.optim.Adam(
        module.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"]
    )
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
    cmd = [sys.executable, "-m", "stroke_seg.bench.probe", json.dumps(spec)]
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding stroke_seg
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
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


if __name__ == "__main__":
    print(json.dumps(step_probe(json.loads(sys.argv[1]))), flush=True)
