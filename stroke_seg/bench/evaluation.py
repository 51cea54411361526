"""Section ``evaluation``: seconds to score 31 scans at 1 mm with every metric
(`stroke_seg.metrics.scan_metrics`, mDSC from a probability map) plus the summary with 1000
bootstrap resamples (`stroke_seg.stats.summarize_cases`).

The scans are made here, without images: reference lesions drawn with the synthetic data
set's lesion sizes and ellipsoid geometry (`stroke_seg.data.synthetic`), predictions that
miss them a little.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stroke_seg.bench.presets import FULL_SCAN, FULL_SPACING, QUICK_SCAN

N_SCANS = 31  # the paper's test split (docs/paper.md "Split", Sec. 2.4)
N_RESAMPLES = 1000


def synthetic_cases(n: int, shape: Sequence[int], seed: int = 0) -> list[tuple]:
    """`n` (prediction, reference, probability map) triples on `shape` at 1 mm: reference
    lesions with the synthetic set's volume distribution (median about 4000 mm³), predictions
    shifted and resized with a false-positive blob, probabilities smooth over the whole scan
    (every voxel a distinct value, the hardest case for the exact mDSC sweep)."""
    from scipy import ndimage

    from stroke_seg.data.synthetic import ellipsoid_mask, equivalent_radius, sample_lesion_volumes

    rng = np.random.default_rng(seed)
    volumes = sample_lesion_volumes(n, seed)
    shape = tuple(shape)
    cases = []
    for volume in volumes:
        radius = equivalent_radius(volume)
        radii = radius * rng.uniform(0.7, 1.3, 3)
        radii *= radius / np.prod(radii) ** (1 / 3)
        margin = np.minimum(radii + 2, np.array(shape) / 2 - 1)
        centre = rng.uniform(margin, np.array(shape) - margin)
        ref = ellipsoid_mask(shape, centre, np.maximum(radii, 0.8))
        pred = ellipsoid_mask(
            shape, centre + rng.normal(0, 1.5, 3), np.maximum(radii * rng.uniform(0.8, 1.2), 0.8)
        )
        pred |= ellipsoid_mask(shape, rng.uniform(10, np.array(shape) - 10), np.full(3, 2.5))
        prob = ndimage.gaussian_filter(pred.astype(np.float32), 1.5)
        prob += rng.random(shape, dtype=np.float32) * 1e-3
        prob = np.clip(prob, 0, 1).astype(np.float32)
        cases.append(((prob > 0.5).astype(np.uint8), ref.astype(np.uint8), prob))
    return cases


def bench_evaluation(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Seconds to score 31 scans with every metric and summarise with 1000 resamples."""
    from stroke_seg.metrics import scan_metrics
    from stroke_seg.stats import summarize_cases

    n, shape = N_SCANS, (QUICK_SCAN if quick else FULL_SCAN)
    cases = synthetic_cases(n, shape)
    start = time.perf_counter()
    rows = [scan_metrics(pred, ref, FULL_SPACING, prob=prob) for pred, ref, prob in cases]
    metrics_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = summarize_cases(rows, n_resamples=N_RESAMPLES, seed=0)
    bootstrap_s = time.perf_counter() - start
    total = metrics_s + bootstrap_s
    log(f"  evaluation: {n} scans {metrics_s:.1f} s + bootstrap {bootstrap_s:.1f} s")
    return {
        "n_scans": n,
        "scan_shape": list(shape),
        "n_resamples": N_RESAMPLES,
        "metrics_s": metrics_s,
        "bootstrap_s": bootstrap_s,
        "total_s": total,
        "per_scan_s": metrics_s / n,
        "mean_dsc_of_synthetic_predictions": summary["dsc"]["mean"],
        "median_lesion_voxels": float(np.median([r["ref_voxels"] for r in rows])),
    }
