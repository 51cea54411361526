"""Summary statistics over test scans: bootstrap CIs, micro-DSC, size quartiles, R².

Tomita et al. (2020) report per-scan metric means with 95% confidence intervals from
bootstrapping with 1000 iterations (Sec. 2.5, Table 2), the same metrics per lesion-size
quartile (Sec. 3.4, Table 4), the micro-averaged DSC pooled over all voxels (Sec. 3.5,
Table 5), and the R² of per-scan DSC against log10 lesion voxels (Fig. 3, R² = 0.34).

NaN handling: a nan value (e.g. a surface distance under `EmptyPolicy.nan()`) is left out
of the mean, median and bootstrap, and counted in `n_nan`, so a summary always says how
many scans it did not average over; `n` counts the values it did use. Whenever a scan has
an empty prediction or reference, `summarize_cases` also summarises HD, HD95 and ASSD under
both named empty-mask policies (`summarize_by_empty_policy`), so a report can set the one
that matches a published number beside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from stroke_seg.metrics import (
    EMPTY_CASES,
    SCAN_METRIC_KEYS,
    SURFACE_DISTANCE_KEYS,
    EmptyPolicy,
    with_policy,
)

DEFAULT_METRIC_KEYS = SCAN_METRIC_KEYS
QUARTILE_LABELS = ("0-25%", "25-50%", "50-75%", "75-100%")
EMPTY_POLICY_NAMES = ("worst_case", "nan")
"""The named empty-mask policies (`EmptyPolicy.from_name`) a summary is given under."""


def _apply_stat(stat: Callable[..., Any], samples: np.ndarray) -> np.ndarray:
    """`stat` along axis 1 of an (n_resamples, n) matrix, vectorised when stat takes `axis`."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
    except TypeError:
        out = np.asarray([stat(row) for row in samples], dtype=np.float64)
    if out.shape != (samples.shape[0],):
        raise ValueError("stat must reduce each bootstrap sample to one number.")
    return out


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    stat: Callable[..., Any] = np.mean,
    nan_policy: str = "omit",
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `stat(values)` (paper Sec. 2.5: 1000 iterations).

    All resamples are drawn at once as one `rng.integers(0, n, (n_resamples, n))` index
    matrix from `np.random.default_rng(seed)`, so a seed gives the same interval every time
    and the same resample indices for every metric of equal length (a paired bootstrap).
    `stat` is called with `axis=1` when it accepts it (np.mean, np.median, ...), else row by
    row. The interval is the ((1-ci)/2, (1+ci)/2) percentiles of the resampled statistics.

    nan_policy: "omit" drops nan values first (see module docstring); "propagate" returns
    (nan, nan) if any value is nan. No values -> (nan, nan); one value -> (v, v).
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}.")
    arr = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(arr)
    if nan.any():
        if nan_policy == "propagate":
            return (math.nan, math.nan)
        if nan_policy != "omit":
            raise ValueError(f"Unknown nan_policy {nan_policy!r}; use 'omit' or 'propagate'.")
        arr = arr[~nan]
    n = arr.size
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    stats = _apply_stat(stat, arr[idx])
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(stats, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return (float(lo), float(hi))


def summarize(
    values: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Mean, median and bootstrap 95% CI of the mean of one metric over scans (Table 2 cells).

    Returns {"mean", "median", "ci95": [lo, hi], "n", "n_nan"}: nan values are excluded from
    all statistics and counted in `n_nan`; `n` is the number of values used. With no
    values left, every statistic is nan.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(arr)
    kept = arr[~nan]
    if kept.size == 0:
        mean = median = math.nan
    else:
        mean, median = float(np.mean(kept)), float(np.median(kept))
    lo, hi = bootstrap_ci(kept, n_resamples=n_resamples, ci=ci, seed=seed)
    return {
        "mean": mean,
        "median": median,
        "ci95": [lo, hi],
        "n": int(kept.size),
        "n_nan": int(nan.sum()),
    }


def micro_dsc(rows: Sequence[Mapping[str, Any]], empty_value: float = 1.0) -> float:
    """Micro-averaged DSC (paper Sec. 3.5, Table 5): 2·ΣTP / (2·ΣTP + ΣFP + ΣFN) over scans.

    Each row needs the voxel counts "tp", "fp" and "fn" (as `scan_metrics` returns).
    `empty_value` if every scan had empty prediction and reference.
    """
    missing = [k for k in ("tp", "fp", "fn") if any(k not in row for row in rows)]
    if missing:
        raise ValueError(f"micro-DSC needs voxel counts {missing} in every row.")
    tp = sum(int(row["tp"]) for row in rows)
    fp = sum(int(row["fp"]) for row in rows)
    fn = sum(int(row["fn"]) for row in rows)
    den = 2 * tp + fp + fn
    return float(empty_value) if den == 0 else float(2 * tp / den)


def summarize_by_empty_policy(
    rows: Sequence[Mapping[str, Any]],
    metric_keys: Sequence[str] = SURFACE_DISTANCE_KEYS,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{policy: {metric: `summarize` entry}} for both `EMPTY_POLICY_NAMES`, from one pass.

    A row scored under a policy keeps its own values for that policy (so a custom
    `worst_case` penalty stays as scored); under the other policy its empty case is
    re-scored by `stroke_seg.metrics.with_policy`. Only the surface distances differ between
    the two policies. Metric keys absent from the rows are skipped.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in EMPTY_POLICY_NAMES:
        policy = EmptyPolicy.from_name(name)
        scored = [
            row if row.get("empty_policy") == name else with_policy(row, policy) for row in rows
        ]
        out[name] = {
            key: summarize([float(r[key]) for r in scored], n_resamples=n_resamples, seed=seed)
            for key in metric_keys
            if rows and all(key in r for r in rows)
        }
    return out


def _one_or_list(values: set[Any]) -> Any:
    ordered = sorted(values)
    return ordered[0] if len(ordered) == 1 else ordered


def summarize_cases(
    rows: Sequence[Mapping[str, Any]],
    metric_keys: Sequence[str] = DEFAULT_METRIC_KEYS,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The `metrics` block of summary.json from per-scan `scan_metrics` rows (Table 2 / 5).

    Returns a dict with one `summarize` entry per metric key present in the rows, plus
    "n_cases", "empty_cases" (how many scans hit each `EMPTY_CASES` label, i.e. how many
    the empty-mask policy touched), "empty_policy" and "lesion_connectivity" (the values
    the rows were scored with: one, or a sorted list if they differ; absent if no row says)
    and, when every row carries tp/fp/fn counts, "micro_dsc". When any scan has an empty
    mask, "by_empty_policy" holds `summarize_by_empty_policy` (HD, HD95, ASSD under both
    policies). Metric keys absent from every row are skipped; a key missing from only some
    rows raises ValueError.
    """
    out: dict[str, Any] = {}
    for key in metric_keys:
        present = [key in row for row in rows]
        if not any(present):
            continue
        if not all(present):
            raise ValueError(f"Metric {key!r} is missing from {present.count(False)} rows.")
        out[key] = summarize([float(row[key]) for row in rows], n_resamples=n_resamples, seed=seed)
    out["n_cases"] = len(rows)
    counts = Counter(str(row.get("empty_case", "none")) for row in rows)
    out["empty_cases"] = {case: int(counts.get(case, 0)) for case in EMPTY_CASES}
    for key in ("empty_policy", "lesion_connectivity"):
        seen = {row[key] for row in rows if key in row}
        if seen:
            out[key] = _one_or_list(seen)
    if any(case != "none" and counts[case] for case in counts):
        out["by_empty_policy"] = summarize_by_empty_policy(
            rows, SURFACE_DISTANCE_KEYS, n_resamples, seed
        )
    if rows and all(all(k in row for k in ("tp", "fp", "fn")) for row in rows):
        out["micro_dsc"] = micro_dsc(rows)
    return out


def r_squared(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> float:
    """R² of the least-squares line y = a + b·x (paper Fig. 3: DSC vs log10 lesion voxels).

    Pass x = np.log10(ref_voxels) for Fig. 3. Pairs with a non-finite x or y (e.g. log10 of
    an empty reference) are dropped. For a simple linear fit R² = 1 − SS_res/SS_tot equals
    the squared Pearson correlation. Fewer than two points or constant x or y -> nan.
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x has {xa.size} values and y has {ya.size}.")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if xa.size < 2:
        return math.nan
    xc, yc = xa - xa.mean(), ya - ya.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    slope = float(xc @ yc) / sxx
    residual = yc - slope * xc
    return 1.0 - float(residual @ residual) / syy


def quartile_cutoffs(sizes: np.ndarray | Sequence[float]) -> np.ndarray:
    """The 25th, 50th and 75th percentiles of `sizes` (np.percentile, linear interpolation).

    No sizes -> three nan.
    """
    arr = np.asarray(sizes, dtype=np.float64).ravel()
    if arr.size == 0:
        return np.full(3, math.nan)
    return np.percentile(arr, [25.0, 50.0, 75.0])


def quartile_groups(sizes: np.ndarray | Sequence[float]) -> list[np.ndarray]:
    """Indices of the four lesion-size groups of Table 4 (0–25%, 25–50%, 50–75%, 75–100%).

    The paper's groups are percentile ranges of the per-scan lesion size, its first being
    the scans "smaller than the 25th percentile" (Sec. 3.4, Table 4). So the cut-offs are
    `quartile_cutoffs` and each group is a half-open range [lower cut-off, upper cut-off):
    a scan exactly on a cut-off opens the upper group, as the paper's strict "smaller than"
    keeps it out of the lower one. On 31 distinct sizes that gives 8, 7, 8, 8 scans (the
    median scan opens the 50–75% group). Tied sizes always share a group, so with many ties
    a group can hold fewer scans, or none. Within a group the indices are in increasing
    size (ties in input order).
    """
    arr = np.asarray(sizes, dtype=np.float64).ravel()
    order = np.argsort(arr, kind="stable")
    if arr.size == 0:
        return [np.zeros(0, dtype=np.intp) for _ in QUARTILE_LABELS]
    # The number of cut-offs at or below a size is its group.
    group = np.searchsorted(quartile_cutoffs(arr), arr[order], side="right")
    return [np.asarray(order[group == g], dtype=np.intp) for g in range(len(QUARTILE_LABELS))]


def summarize_by_size_quartile(
    rows: Sequence[Mapping[str, Any]],
    metric_keys: Sequence[str] = DEFAULT_METRIC_KEYS,
    size_key: str = "ref_voxels",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Table 4: `summarize_cases` of each lesion-size percentile group (`quartile_groups`).

    Returns four dicts, each with "group" (e.g. "0-25%"), "indices" (row positions),
    "size_range" ([min, max] of `size_key` in the group, [] if it is empty), "cutoffs"
    ([lower, upper] percentile cut-offs of the group, None for the open ends) and the
    `summarize_cases` entries.
    """
    sizes = np.asarray([float(row[size_key]) for row in rows], dtype=np.float64)
    edges = [None, *(float(c) for c in quartile_cutoffs(sizes)), None]
    out = []
    for g, (label, idx) in enumerate(zip(QUARTILE_LABELS, quartile_groups(sizes), strict=True)):
        group_rows = [rows[i] for i in idx]
        block: dict[str, Any] = {
            "group": label,
            "indices": [int(i) for i in idx],
            "size_range": [float(sizes[idx].min()), float(sizes[idx].max())] if idx.size else [],
            "cutoffs": [edges[g], edges[g + 1]],
        }
        block.update(summarize_cases(group_rows, metric_keys, n_resamples, seed))
        out.append(block)
    return out
