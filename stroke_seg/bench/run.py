"""The benchmark run: the chosen sections in order, the results JSON and the printed table."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from stroke_seg.atomic import write_text
from stroke_seg.bench.data import bench_data
from stroke_seg.bench.evaluation import bench_evaluation
from stroke_seg.bench.inference import bench_inference
from stroke_seg.bench.machine import (
    combine_peaks,
    flop_fraction,
    machine_info,
    matmul_peak,
)
from stroke_seg.bench.memory import bench_memory
from stroke_seg.bench.presets import (
    OPTIONS,
    QUICK_PRESETS,
    SECTIONS,
    config_presets,
    inference_defaults,
)
from stroke_seg.bench.report import render_table, target_values
from stroke_seg.bench.train import bench_train
from stroke_seg.inference import resolve_device


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
    inference: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen sections and write the results JSON; returns the results.

    ``threads``: torch CPU threads (default: torch's choice, one per core; ``quick``: 1,
    because on a busy machine OpenMP threads that wait for each other make tiny steps many
    times slower). ``inference``: the inference options (default: the ``inference`` config
    group's, conf/inference/default.yaml)."""
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
        how = dict(inference) if inference is not None else inference_defaults()
        results["inference"] = bench_inference(dev, presets, quick, log, how)
    if "evaluation" in sections:
        results["evaluation"] = bench_evaluation(quick, log)
    results["matmul_peak"] = combine_peaks(peak_start, matmul_peak(dev, quick))
    for row in results.get("train", []):
        if row.get("status") == "ok":
            row.update(flop_fraction(row, results["matmul_peak"]))
    results["targets"] = target_values(results)
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["total_s"] = time.perf_counter() - started
    path = Path(out)
    # NaN stays NaN (Python's json reads it back), as the earlier results files hold it.
    write_text(path, json.dumps(results, indent=2, default=float) + "\n")
    log("")
    log(render_table(results))
    log(f"\nwritten to {path} in {results['total_s']:.0f} s")
    return results
