"""The text of an evaluation's results: summary.json contents and the paper's tables in report.md.

Tables follow Tomita et al. (2020): Table 2 (per-scan metrics as "mean (95% CI)"), Table 4
(the same per lesion-size quartile) and Table 5 (models side by side with the micro-DSC).
This module only builds dictionaries and markdown; the figures (Fig. 3, Fig. 2-like views)
are drawn by `stroke_seg.plotting` and every file is written by `stroke_seg.atomic`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stroke_seg.metrics import SCAN_METRIC_KEYS
from stroke_seg.stats import summarize_by_size_quartile, summarize_cases

# --------------------------------------------------------------------------------------
# summary.json
# --------------------------------------------------------------------------------------


# The definitions every summary.json records (docs/metrics.md), besides those read from the
# rows (connectivity, empty policy, modes) and those the task adds (precision, split grouping).
VOLUME_DIFFERENCE = (
    "volume_diff_voxels = |sum(pred) - sum(ref)| in voxels (the ATLAS v2.0 challenge's); "
    "volume_diff_ml = the same times the voxel volume, in ml"
)
TABLE4_GROUPS = (
    "reference lesion voxels cut at np.percentile(sizes, [25, 50, 75]) (linear); each group "
    "is [lower, upper), so a scan on a cut-off opens the group above it"
)


def definitions_of(
    rows: Sequence[Mapping[str, Any]], empty_policy: str, n_resamples: int, seed: int
) -> dict[str, Any]:
    """Which definition produced the numbers of `rows`: the lesion connectivity and empty-mask
    policy the rows were scored with, the spatial strategies that made the predictions, the
    volume-difference units, the Table 4 grouping and the bootstrap."""
    connectivity = sorted(
        {int(r["lesion_connectivity"]) for r in rows if "lesion_connectivity" in r}
    )
    return {
        "lesion_connectivity": connectivity[0] if len(connectivity) == 1 else connectivity,
        "empty_policy": empty_policy,
        "modes_used": sorted({str(r["mode"]) for r in rows if "mode" in r}),
        "volume_difference": VOLUME_DIFFERENCE,
        "table4_groups": TABLE4_GROUPS,
        "bootstrap": f"percentile bootstrap of the mean, {n_resamples} resamples, seed {seed}",
    }


def summary_json(
    rows: Sequence[Mapping[str, Any]],
    empty_policy: str,
    n_resamples: int = 1000,
    seed: int = 0,
    definitions: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary.json of one model, from `scan_metrics` rows (paper Tables 2 and 5).

    Shape: {"n", "metrics": {<metric>: {"mean", "median", "ci95": [lo, hi]}} for every
    per-scan metric, "micro_dsc", "empty_policy", "empty_cases", "definitions"} (plus
    "by_empty_policy" when a scan is empty, and the `extra` entries). nan values (undefined
    metrics under the "nan" policy, mDSC without a probability map) are left out of the
    statistics; a metric with no values has null statistics. "definitions" is
    `definitions_of` the rows updated with `definitions` (what the task knows: precision,
    inference mode, split grouping), so a reader knows which definition gave each number.
    """
    stats = summarize_cases(rows, SCAN_METRIC_KEYS, n_resamples=n_resamples, seed=seed)
    metrics = {}
    for key in SCAN_METRIC_KEYS:
        entry = stats.get(key, {"mean": math.nan, "median": math.nan, "ci95": [math.nan] * 2})
        metrics[key] = {k: entry[k] for k in ("mean", "median", "ci95")}
    return {
        "n": len(rows),
        "metrics": metrics,
        "micro_dsc": stats.get("micro_dsc", math.nan),
        "empty_policy": empty_policy,
        "empty_cases": stats["empty_cases"],
        **({"by_empty_policy": stats["by_empty_policy"]} if "by_empty_policy" in stats else {}),
        "definitions": {
            **definitions_of(rows, empty_policy, n_resamples, seed),
            **(definitions or {}),
        },
        **(extra or {}),
    }


# --------------------------------------------------------------------------------------
# Markdown tables
# --------------------------------------------------------------------------------------

# (metric key, column header, decimals): Table 2 of the paper, then the ATLAS v2.0 ones.
TABLE2_COLUMNS = (
    ("dsc", "DSC", 2),
    ("mdsc", "mDSC", 2),
    ("hd_mm", "HD (mm)", 1),
    ("assd_mm", "ASSD (mm)", 1),
    ("tpr", "TPR", 2),
    ("precision", "Precision", 2),
)
CHALLENGE_COLUMNS = (
    ("hd95_mm", "HD95 (mm)", 1),
    ("lesion_f1", "Lesion F1", 2),
    ("volume_diff_ml", "Volume diff (ml)", 2),
    ("volume_diff_voxels", "Volume diff (voxels)", 0),
    ("lesion_count_diff", "Lesion count diff", 1),
)
TABLE2_HEADER = "| Methods | DSC | mDSC | HD (mm) | ASSD (mm) | TPR | Precision |"


def _num(value: Any, digits: int) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def format_ci(entry: Mapping[str, Any] | None, digits: int = 2) -> str:
    """'0.64 (0.51–0.76)': mean and bootstrap 95% CI, as the paper's Table 2 cells."""
    if not entry or entry.get("mean") is None or not math.isfinite(float(entry["mean"])):
        return "–"
    lo, hi = entry.get("ci95", [None, None])
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return _num(entry["mean"], digits)
    return f"{_num(entry['mean'], digits)} ({_num(lo, digits)}–{_num(hi, digits)})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table2(
    summaries: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str, int]] = TABLE2_COLUMNS,
) -> str:
    """Paper Table 2: Methods | DSC | mDSC | HD | ASSD | TPR | Precision, one row per model."""
    header = ["Methods", *[c[1] for c in columns]]
    rows = [
        [name, *[format_ci(s["metrics"].get(k), d) for k, _, d in columns]]
        for name, s in summaries.items()
    ]
    return _table(header, rows)


def table4(quartiles: Sequence[Mapping[str, Any]]) -> str:
    """Paper Table 4: the Table 2 metrics per lesion-size quartile of the test scans."""
    header = ["Lesion size group", "n", "Lesion voxels", *[c[1] for c in TABLE2_COLUMNS]]
    rows = []
    for block in quartiles:
        size = block.get("size_range") or []
        span = f"{size[0]:.0f}–{size[1]:.0f}" if len(size) == 2 else "–"
        cells = [format_ci(block.get(k), d) for k, _, d in TABLE2_COLUMNS]
        rows.append([block["group"], str(block.get("n_cases", 0)), span, *cells])
    return _table(header, rows)


def table5(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Paper Table 5: models side by side, with the micro-DSC (pooled over all voxels) and the
    spatial strategy that made each row's predictions (the paper's ablation used the centre
    crop for every model; docs/evaluation.md "Table 5")."""
    header = [
        "Methods",
        "Inference",
        "DSC",
        "median DSC",
        "micro-DSC",
        *[c[1] for c in TABLE2_COLUMNS[1:]],
    ]
    rows = []
    for name, s in summaries.items():
        m = s["metrics"]
        modes = s.get("definitions", {}).get("modes_used") or ["–"]
        rows.append(
            [
                name,
                "+".join(modes),
                format_ci(m["dsc"], 2),
                _num(m["dsc"]["median"], 2),
                _num(s["micro_dsc"], 2),
                *[format_ci(m.get(k), d) for k, _, d in TABLE2_COLUMNS[1:]],
            ]
        )
    return _table(header, rows)


def empty_policy_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """HD, HD95 and ASSD under both empty-mask policies, for the models that have empty cases
    (`by_empty_policy` of `stroke_seg.stats.summarize_cases`), with how many scans each mean
    averages; the policy a run was configured with is marked."""
    header = ["Methods", "Empty-mask policy", "Scans averaged", "HD (mm)", "HD95 (mm)", "ASSD (mm)"]
    rows = []
    for name, s in summaries.items():
        for policy, entries in s.get("by_empty_policy", {}).items():
            label = f"{policy} (this run)" if policy == s.get("empty_policy") else policy
            n = str(entries["hd_mm"]["n"]) if "hd_mm" in entries else "–"
            cells = [format_ci(entries.get(k), 1) for k in ("hd_mm", "hd95_mm", "assd_mm")]
            rows.append([name, label, n, *cells])
    return _table(header, rows)


def size_quartiles(
    rows: Sequence[Mapping[str, Any]], n_resamples: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Table 4 groups by reference lesion voxels (`stroke_seg.stats.summarize_by_size_quartile`)."""
    if not rows:
        return []
    return summarize_by_size_quartile(rows, SCAN_METRIC_KEYS, "ref_voxels", n_resamples, seed)


def render_report(
    title: str,
    facts: Sequence[tuple[str, str]],
    summaries: Mapping[str, Mapping[str, Any]],
    quartiles: Mapping[str, Sequence[Mapping[str, Any]]],
    scatter_paths: Mapping[str, str],
    figure_links: Mapping[str, Sequence[tuple[str, str]]],
    n_resamples: int,
) -> str:
    """report.md: what was evaluated, then Tables 2, (5), 4, the challenge metrics, Fig. 3."""
    out = [f"# {title}", ""]
    out += [f"- **{k}**: {v}" for k, v in facts]
    out += [
        "",
        f"Cells are mean (95% bootstrap CI, {n_resamples} resamples) over scans; nan values "
        "(undefined under the empty-mask policy) are left out and counted in cases.csv.",
        "",
        "## Table 2: segmentation metrics",
        "",
        table2(summaries),
        "",
    ]
    for name, s in summaries.items():
        dsc = s["metrics"]["dsc"]
        out.append(
            f"- {name}: n = {s['n']}, median DSC {_num(dsc['median'], 2)}, micro-DSC "
            f"{_num(s['micro_dsc'], 2)}, empty cases {s['empty_cases']} "
            f"(policy {s['empty_policy']})"
        )
    if len(summaries) > 1:
        out += ["", "## Table 5: comparison (with micro-DSC)", "", table5(summaries)]
    if any("by_empty_policy" in s for s in summaries.values()):
        out += [
            "",
            "## HD and ASSD under both empty-mask policies",
            "",
            "Some scans have an empty prediction or reference (see the empty cases above). "
            "`worst_case` scores a missed lesion or a false alarm at the scan diagonal and two "
            "empty masks at 0 mm; `nan` leaves them out of the means. Paper Table 2 gives "
            "finite means without saying how empty predictions were scored; set a number "
            "beside one only under the same policy.",
            "",
            empty_policy_table(summaries),
        ]
    out += ["", "## ATLAS v2.0 challenge metrics", "", table2(summaries, CHALLENGE_COLUMNS), ""]
    for name, blocks in quartiles.items():
        out += [f"## Table 4: {name} by lesion-size quartile", "", table4(blocks), ""]
    for name, path in scatter_paths.items():
        out += [f"## Fig. 3: {name}, DSC vs lesion size", "", f"![DSC vs lesion size]({path})", ""]
    for name, links in figure_links.items():
        if links:
            out += [f"## Projection views: {name}", ""]
            out += [f"- [{subject}]({link})" for subject, link in links]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
