"""Section ``train``: training-step throughput per preset, crop and speed option.

One training step (forward, BCE+Dice loss, backward, Adam) of the demo preset and the paper
preset at each preset's zoom-in and zoom-out crop, for each speed option (fp32, bf16
autocast, channels-last, torch.compile): crops/s, voxels/s and the model FLOP rate as a
fraction of the machine's matmul peak. Options that the device cannot run are skipped with
the reason; on a CPU an option already slower than fp32 at the demo preset is not repeated
at the paper preset (``all=true`` runs it anyway), since one paper step takes about a
minute there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stroke_seg.bench.machine import available_memory_gb, flop_fraction, memory_limit
from stroke_seg.bench.presets import training_recipe
from stroke_seg.bench.probe import count_train_flops, option_unsupported, run_probe, step_probe


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
            recipe = training_recipe(preset, crop_name)
            flops = count_train_flops(p["widths"], p["groups"], crop, recipe["loss"])
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
                    reason = "not measured with quick=true (compilation alone takes minutes)"
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
                        "(all=true measures it)"
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
                    **recipe,
                    "steps": 2 if quick else 5,
                    "budget_s": 2 if quick else 20,
                    "long_step_s": 20.0,
                    "mem_limit_bytes": memory_limit(device),
                    "threads": torch.get_num_threads(),
                }
                # quick=true runs in this process: a fresh process per tiny configuration
                # would spend most of the time importing torch.
                result = (
                    {"status": "ok", **step_probe({**spec, "mem_limit_bytes": None})}
                    if quick
                    else run_probe(spec, timeout_s=900)
                )
                row.update(result)
                if result["status"] == "ok":
                    row.update(_rates(row, flops, peak))
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


def _rates(row: dict, flops: dict, peak: dict) -> dict[str, float]:
    voxels = math.prod(row["crop"])
    achieved = flops["train_step"] / row["step_s"]
    return {
        "crops_per_s": 1.0 / row["step_s"],
        "voxels_per_s": voxels / row["step_s"],
        "achieved_flops": achieved,
        **flop_fraction({**row, "achieved_flops": achieved}, peak),
    }
