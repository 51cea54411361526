"""GPU check, ``make gpu-check``: what the paper recipe costs and does on one GPU, in <= 8 min.

    python -m stroke_seg.bench.gpu_check [out=bench/gpu_check.json] [dry_run=true]

Nothing in the project had run on a GPU; this one script answers the questions a GPU user
asks first, and writes the answers to one JSON file (docs/benchmarks.md):

* **train_steps**: one paper-preset training step (18.5 M parameters, forward, BCE + Dice,
  backward, Adam) at both crops of Table 1 (128³ zoom-in, 144x172x168 zoom-out), in fp32
  and under bf16 autocast, with and without activation checkpointing
  (``model.checkpointing``): mean seconds per step after warm-up and
  ``torch.cuda.max_memory_allocated``. A configuration that runs out of memory is recorded
  as such, not fatal.
* **recipe**: a few hundred steps of the paper recipe (``experiment=paper``, zoom-in,
  uniform crops, LR 1e-3, cosine restarts) through ``train.py``'s own code path on a small
  synthetic set at 1 mm, with the validation DSC it reaches and the seconds per step.
* **inference**: the checkpoint of that run applied to one 1 mm scan with
  `stroke_seg.inference.Predictor`, in fp32 and with float16 autocast (``amp``), timed after
  a warm-up, with each one's DSC and the largest probability difference between the two.

It refuses to run without CUDA (one sentence). ``dry_run=true`` runs every section on the CPU
with tiny sizes (a 2-level net, 16³ crops, 4 mm data, a few steps) so that the tests can
check the JSON schema; its numbers mean nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import platform
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stroke_seg.atomic import write_text
from stroke_seg.cli import hydra_command
from stroke_seg.config import config_path
from stroke_seg.errors import StrokeSegError

SCHEMA_VERSION = 1
CONF_DIR = Path(config_path())
TRAIN_KEYS = ("crop", "precision", "checkpointing", "step_s", "max_memory_gib", "error")


@dataclass(frozen=True)
class Sizes:
    """How big each section is: the GPU check proper, or the CPU dry run."""

    widths: tuple[int, ...]
    groups: int
    crops: tuple[tuple[int, int, int], ...]
    warmup: int
    timed_steps: int
    n_subjects: int  # synthetic set of the recipe run (the last 2 validate)
    spacing: float  # mm
    recipe_epochs: int  # one crop per training scan per epoch
    restart_epochs: int
    eval_crop: tuple[int, int, int]
    inference_modes: tuple[str, ...]


FULL = Sizes(
    widths=(32, 64, 128, 256),
    groups=8,
    crops=((128, 128, 128), (144, 172, 168)),
    warmup=3,
    timed_steps=10,
    n_subjects=8,
    spacing=1.0,
    recipe_epochs=50,  # 6 training scans: 300 steps
    restart_epochs=25,
    eval_crop=(144, 172, 168),
    inference_modes=("centre_crop", "sliding_window"),
)
TINY = Sizes(
    widths=(4, 8),
    groups=2,
    crops=((16, 16, 16), (24, 20, 16)),
    warmup=1,
    timed_steps=1,
    n_subjects=4,
    spacing=4.0,
    recipe_epochs=2,
    restart_epochs=1,
    eval_crop=(40, 48, 40),
    inference_modes=("centre_crop",),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _peak_memory(device: torch.device, row: dict[str, Any]) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def train_steps(device: torch.device, sizes: Sizes) -> list[dict[str, Any]]:
    """Seconds and peak memory of one training step for every (crop, precision, checkpointing)."""
    from stroke_seg.losses import BCEDiceLoss
    from stroke_seg.models import ResUNet3D

    rows = []
    for crop, precision, ckpt in itertools.product(sizes.crops, ("fp32", "bf16"), (False, True)):
        row: dict[str, Any] = dict.fromkeys(TRAIN_KEYS)
        row.update({"crop": list(crop), "precision": precision, "checkpointing": ckpt})
        net = optimizer = None
        try:
            with _peak_memory(device, row):
                torch.manual_seed(0)
                net = ResUNet3D(widths=sizes.widths, groups=sizes.groups, checkpointing=ckpt)
                net = net.to(device).train()
                optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
                loss_fn = BCEDiceLoss()
                x = torch.rand(1, 1, *crop, device=device)
                y = (torch.rand(1, 1, *crop, device=device) > 0.98).float()
                for step in range(sizes.warmup + sizes.timed_steps):
                    if step == sizes.warmup:
                        _sync(device)
                        start = time.perf_counter()
                    with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                        loss = loss_fn(net(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                _sync(device)
                row["step_s"] = round((time.perf_counter() - start) / sizes.timed_steps, 4)
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
        finally:
            del net, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"train step {row}", flush=True)
    return rows


def _compose_recipe(root: Path, run_dir: Path, sizes: Sizes, dry_run: bool) -> Any:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import stroke_seg.config  # noqa: F401  (registers the run_dir resolver)

    n_val = 2
    overrides = [
        "experiment=paper",
        "stage=zoom_in",
        "name=gpu_check",
        f"data.root={root}",
        "data.layout=synthetic",
        f"data.split_proportions=[{sizes.n_subjects - n_val},{n_val},0]",
        f"data.eval_crop=[{','.join(map(str, sizes.eval_crop))}]",
        "data.cache_workers=0",
        f"stage.max_epochs={sizes.recipe_epochs}",
        f"optim.restart_period_epochs={sizes.restart_epochs}",
        f"trainer.check_val_every_n_epoch={sizes.recipe_epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=csv",
        "callbacks.validation_picture.every_n_epochs=1000000",
    ]
    if dry_run:
        overrides += [
            f"model.widths=[{','.join(map(str, sizes.widths))}]",
            f"model.groups={sizes.groups}",
            f"stage.crop_size=[{','.join(map(str, sizes.crops[0]))}]",
            "trainer.accelerator=cpu",
        ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def recipe(work: Path, sizes: Sizes, dry_run: bool) -> dict[str, Any]:
    """A short paper-recipe zoom-in run on synthetic data through `stroke_seg.train.run`."""
    from stroke_seg.data.synthetic import generate_dataset
    from stroke_seg.train import run as train

    started = time.perf_counter()
    root = generate_dataset(
        work / "data", sizes.n_subjects, seed=0, spacing=sizes.spacing, progress=False
    )
    generated = time.perf_counter() - started
    run_dir = work / "run"
    cfg = _compose_recipe(root, run_dir, sizes, dry_run)
    started = time.perf_counter()
    val_dsc = train(cfg)
    seconds = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = int(summary["global_steps"])
    return {
        "experiment": "paper",
        "stage": "zoom_in",
        "crop": list(cfg.stage.crop_size),
        "spacing_mm": sizes.spacing,
        "n_train": summary["n_train"],
        "n_val": summary["n_val"],
        "epochs": summary["epochs"],
        "steps": steps,
        "restart_period_epochs": sizes.restart_epochs,
        "val_dsc": val_dsc,
        "train_s": round(seconds, 1),
        "s_per_step": round(seconds / max(steps, 1), 4),
        "data_generation_s": round(generated, 1),
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }


def inference(ckpt: Path, root: Path, device: torch.device, modes: Sequence[str]) -> dict[str, Any]:
    """One validation scan with the recipe's checkpoint, fp32 and float16 autocast, timed,
    for each spatial strategy: the paper's centre crop and sliding windows of the crop."""
    from stroke_seg.bench.presets import inference_defaults
    from stroke_seg.data.discovery import discover
    from stroke_seg.data.io import load_case
    from stroke_seg.inference import Predictor
    from stroke_seg.metrics import dice

    case = discover(root, "synthetic")[-1]
    loaded = load_case(case)
    out: dict[str, Any] = {"scan": case.subject, "shape": list(loaded["image"].shape)}
    for mode in modes:
        probs, rows = {}, {}
        for name, amp in (("fp32", False), ("amp", True)):
            options = {**inference_defaults(), "mode": mode, "device": str(device), "amp": amp}
            predictor = Predictor.from_checkpoints(ckpt, **options)
            predictor.predict(loaded["image"], loaded["affine"])  # warm-up (cuDNN autotuning)
            _sync(device)
            start = time.perf_counter()
            result = predictor.predict(loaded["image"], loaded["affine"])
            _sync(device)
            probs[name] = result.prob
            rows[name] = {
                "seconds": round(time.perf_counter() - start, 3),
                "dsc": float(dice(result.mask, loaded["label"])),
                "amp_active": bool(amp and device.type == "cuda"),
            }
        rows["max_abs_prob_difference"] = float(np.abs(probs["fp32"] - probs["amp"]).max())
        out[mode] = rows
    return out


def run(out: Path, dry_run: bool = False, work: Path | None = None) -> dict[str, Any]:
    """Run every section and write the JSON; returns what it wrote."""
    if not dry_run and not torch.cuda.is_available():
        raise StrokeSegError(
            "gpu-check needs a CUDA GPU and torch.cuda.is_available() is False here; run it on "
            "a GPU machine (with a CUDA build of torch), or pass dry_run=true for the CPU check."
        )
    device = torch.device("cpu" if dry_run else "cuda")
    sizes = TINY if dry_run else FULL
    started = time.perf_counter()
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dry_run": dry_run,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_supported": bool(device.type == "cuda" and torch.cuda.is_bf16_supported()),
        "python": platform.python_version(),
        "sizes": asdict(sizes),
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=work) as tmp:
        result["train_steps"] = train_steps(device, sizes)
        result["recipe"] = recipe(Path(tmp), sizes, dry_run)
        ckpt = Path(result["recipe"].pop("checkpoint"))
        modes = sizes.inference_modes
        result["inference"] = inference(ckpt, Path(tmp) / "data", device, modes)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2) + "\n"
    write_text(out, text)
    return json.loads(text)


def run_command(cfg: Any) -> dict[str, Any]:
    """The ``gpu_check`` command (conf/gpu_check.yaml): run, print one summary line."""
    out = Path(str(cfg.out))
    result = run(out, dry_run=bool(cfg.dry_run))
    print(
        f"gpu-check on {result['device']}: {result['wall_s']} s, recipe val DSC "
        f"{result['recipe']['val_dsc']:.3f} after {result['recipe']['steps']} steps; "
        f"results in {out}",
        flush=True,
    )
    return result


# A Hydra command like the others; main() reads sys.argv, main(argv) the given overrides.
main = hydra_command("gpu_check", run_command)

if __name__ == "__main__":
    main()
