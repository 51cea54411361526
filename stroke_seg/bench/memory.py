"""Section ``memory``: peak memory of one paper-preset training step at both crops, with
and without activation checkpointing (``model.checkpointing``).

Max RSS of the step's own process on CPU (``resource.getrusage``),
``torch.cuda.max_memory_allocated`` on CUDA. A configuration predicted to exceed the free
memory is skipped rather than risking the OOM killer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stroke_seg.bench.machine import available_memory_gb, memory_limit
from stroke_seg.bench.presets import training_recipe
from stroke_seg.bench.probe import run_probe


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
                        **training_recipe("paper", crop_name),
                        "steps": 1,
                        "budget_s": 0,
                        "long_step_s": 0.0,
                        "mem_limit_bytes": memory_limit(device),
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
