"""Result files of an evaluation: summary.json, the paper's tables, Fig. 3 and Fig. 2-like views.

Tables follow Tomita et al. (2020): Table 2 (per-scan metrics as "mean (95% CI)"), Table 4
(the same per lesion-size quartile) and Table 5 (models side by side with the micro-DSC);
Fig. 3 plots per-scan DSC against log10 lesion voxels with a least-squares line and R²;
Fig. 2 shows predicted probabilities projected over the brain beside the reference, here
as maximum-intensity projections along the three axes.

Every file is written under a temporary name in its folder and renamed when complete, so a
killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from stroke_seg.errors import StrokeSegError  # noqa: E402
from stroke_seg.metrics import SCAN_METRIC_KEYS  # noqa: E402
from stroke_seg.stats import r_squared, summarize_by_size_quartile, summarize_cases  # noqa: E402

# --------------------------------------------------------------------------------------
# Writing files safely
# --------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary name beside `path` (ending in the same name, so writers that
    infer the format from it work); rename it to `path` on success, delete it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_safe(value: Any) -> Any:
    """nan/inf -> null (JSON has no nan), numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """JSON with nan written as null, atomically."""
    return write_text_atomic(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def write_csv_atomic(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> Path:
    """A CSV of `columns` (nan as an empty cell would hide it, so it is written as 'nan')."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return write_text_atomic(path, buffer.getvalue())


def save_nifti_atomic(
    path: str | Path, array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None
) -> Path:
    """Save `array` with the input's affine and header (orientation codes, units) atomically.

    The data type is the array's; intensity scaling of the source header is reset so that
    the stored values are the array's values.
    """
    img = nib.Nifti1Image(array, affine, header=None if header is None else header.copy())
    img.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def _save_figure(fig: plt.Figure, path: Path, dpi: int = 90) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def check_output_dir(path: str | Path, overwrite: bool, key: str = "output") -> Path:
    """Refuse an output folder that already holds files unless `overwrite` is set."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise StrokeSegError(f"{key}={path} is a file; pass a folder for the results.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise StrokeSegError(
            f"{key}={path} already holds files; pass overwrite=true to replace them or choose "
            f"another {key}=."
        )
    return path


# --------------------------------------------------------------------------------------
# summary.json
# --------------------------------------------------------------------------------------


def summary_json(
    rows: Sequence[Mapping[str, Any]], empty_policy: str, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The summary.json of one model, from `scan_metrics` rows (paper Tables 2 and 5).

    Shape: {"n", "metrics": {<metric>: {"mean", "median", "ci95": [lo, hi]}} for every
    per-scan metric, "micro_dsc", "empty_policy", "empty_cases"}. nan values (undefined
    metrics under the "nan" policy, mDSC without a probability map) are left out of the
    statistics; a metric with no values has null statistics.
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
    """Paper Table 5: models side by side, with the micro-DSC (pooled over all voxels)."""
    header = ["Methods", "DSC", "median DSC", "micro-DSC", *[c[1] for c in TABLE2_COLUMNS[1:]]]
    rows = []
    for name, s in summaries.items():
        m = s["metrics"]
        rows.append(
            [
                name,
                format_ci(m["dsc"], 2),
                _num(m["dsc"]["median"], 2),
                _num(s["micro_dsc"], 2),
                *[format_ci(m.get(k), d) for k, _, d in TABLE2_COLUMNS[1:]],
            ]
        )
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


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_dsc_vs_lesion_size(
    rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Paper Fig. 3: per-scan DSC against log10 reference lesion voxels, least-squares line,
    R² in the title (the paper found R² = 0.34). Scans without reference lesion are left out
    (log10 0 is undefined) and counted in the title."""
    size = np.asarray([float(r["ref_voxels"]) for r in rows], dtype=np.float64)
    dsc = np.asarray([float(r["dsc"]) for r in rows], dtype=np.float64)
    keep = (size > 0) & np.isfinite(dsc)
    x, y = np.log10(size[keep]), dsc[keep]
    r2 = r_squared(x, y)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(x, y, s=18, color="tab:blue")
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, intercept + slope * xs, color="tab:red", lw=1.5)
    dropped = int((~keep).sum())
    note = f", {dropped} without lesion left out" if dropped else ""
    r2_text = "nan" if not math.isfinite(r2) else f"{r2:.2f}"
    ax.set(xlabel="log10(lesion voxels)", ylabel="DSC", ylim=(-0.02, 1.02))
    ax.set_title(f"{title}  R² = {r2_text} (n = {int(keep.sum())}{note})".strip(), fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, Path(path))


def _overlay(
    ax: plt.Axes, background: np.ndarray, values: np.ndarray, rgb: tuple, aspect: float
) -> None:
    ax.imshow(background.T, cmap="gray", origin="lower", aspect=aspect)
    rgba = np.zeros((*values.T.shape, 4), dtype=np.float32)
    rgba[..., :3] = rgb
    rgba[..., 3] = np.clip(values.T, 0.0, 1.0) * 0.85
    ax.imshow(rgba, origin="lower", aspect=aspect)
    ax.axis("off")


def plot_projections(
    image: np.ndarray,
    prob: np.ndarray,
    reference: np.ndarray | None,
    path: str | Path,
    title: str = "",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Path:
    """Fig. 2-like view: maximum-intensity projections of the predicted probability (red,
    brighter = higher) and of the reference (blue) over the mean projection of the T1,
    along each array axis (sagittal, coronal, axial for RAS data), drawn to scale with the
    voxel `spacing` (mm)."""
    image = np.asarray(image, dtype=np.float32)
    layers = [("prediction", np.asarray(prob, dtype=np.float32), (1.0, 0.1, 0.1))]
    if reference is not None:
        layers.insert(
            0, ("reference", (np.asarray(reference) > 0).astype(np.float32), (0.1, 0.4, 1.0))
        )
    fig, axes = plt.subplots(len(layers), 3, figsize=(10, 3.3 * len(layers)), squeeze=False)
    for row, (label, values, rgb) in enumerate(layers):
        for col, (axis, view) in enumerate(((0, "sagittal"), (1, "coronal"), (2, "axial"))):
            shown = [a for a in range(3) if a != axis]
            aspect = float(spacing[shown[1]]) / float(spacing[shown[0]])
            background = image.mean(axis=axis)
            _overlay(axes[row, col], background, values.max(axis=axis), rgb, aspect)
            axes[row, col].set_title(f"{label}: {view} MIP", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, Path(path))
