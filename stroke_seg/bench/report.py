"""The benchmark's verdicts and printed table: the four targets of docs/benchmarks.md for
the 2-core CPU development machine, judged on the measured values, and the text table."""

from __future__ import annotations

import math
from typing import Any

# Targets for the 2-core CPU development machine (docs/benchmarks.md).
TARGETS = {
    "data_cached_vs_nifti_ratio": (">=", 10.0),
    "inference_centre_crop_s": ("<", 60.0),
    "evaluation_31_scans_s": ("<", 30.0),
    "demo_zoom_in_step_s": ("<", 1.0),
}


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
        + (" [quick=true: sizes are tiny, numbers mean nothing]" if results["quick"] else "")
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
