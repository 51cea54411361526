"""The pictures stroke_seg draws: training progress, validation-case slices, and the paper's
figures for an evaluation (Fig. 3: DSC against lesion size; Fig. 2-like projection views).

Figures are `matplotlib.figure.Figure` objects saved straight to PNG, without pyplot: no
backend is chosen or needed, nothing global changes when this module is imported, and
clusters without a display work. Every PNG is written atomically (`stroke_seg.atomic`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stroke_seg.atomic import atomic_path
from stroke_seg.stats import r_squared


def save_figure(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Write `fig` as a PNG, atomically (the format is given, so the temporary name needs
    no .png suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def plot_progress(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Loss, validation DSC and learning rate against epoch (like nnU-Net's progress.png)."""

    def series(key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of the epochs that recorded ``key`` (validation is not every
        epoch), so each curve joins its own points."""
        rows = [h for h in history if not math.isnan(h.get(key, math.nan))]
        return [h["epoch"] for h in rows], [h[key] for h in rows]

    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for key, style in (("train/loss_epoch", "-"), ("val/loss", "o--")):
        axes[0].plot(*series(key), style, label=key)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    axes[1].plot(*series("val/dsc"), "o-", color="tab:green")
    axes[1].set(
        xlabel="epoch", ylabel="DSC", title="validation DSC (centre crop, full volume)", ylim=(0, 1)
    )
    axes[2].plot(*series("lr"), color="tab:orange")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate (epoch start)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_case_slices(
    image: np.ndarray,
    reference: np.ndarray | None,
    prediction: np.ndarray,
    path: str | Path,
    title: str = "",
    n_slices: int = 5,
    reference_label: str = "reference",
) -> Path:
    """Axial slices through the lesion: T1 in grey, reference outline in green, predicted
    outline in red. The green outline may be another region, named by `reference_label`
    (prediction's registration QC outlines the template's brain on the registered scan).
    Slices are spread over the z-range of reference ∪ prediction (or the whole volume when
    both are empty). Arrays are (x, y, z) as in the NIfTI file."""
    image = np.asarray(image, dtype=np.float32)
    prediction = np.asarray(prediction) > 0.5
    reference = None if reference is None else np.asarray(reference) > 0.5
    union = prediction | reference if reference is not None else prediction
    zs = np.flatnonzero(union.any(axis=(0, 1)))
    lo, hi = (zs.min(), zs.max()) if zs.size else (0, image.shape[2] - 1)
    picks = (
        np.unique(np.linspace(lo, hi, n_slices + 2)[1:-1].round().astype(int))
        if hi > lo
        else np.array([lo])
    )
    fig = Figure(figsize=(3 * len(picks), 3.4))
    axes = fig.subplots(1, len(picks), squeeze=False)
    vmax = float(np.percentile(image, 99.5)) or 1.0
    for ax, z in zip(axes[0], picks, strict=True):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        if reference is not None and reference[:, :, z].any():
            ax.contour(reference[:, :, z].T, levels=[0.5], colors="lime", linewidths=1)
        if prediction[:, :, z].any():
            ax.contour(prediction[:, :, z].T, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(f"z={z}", fontsize=8)
        ax.axis("off")
    fig.suptitle(
        f"{title}  (green: {reference_label}, red: prediction)"
        if reference is not None
        else f"{title}  (red: prediction)",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# Evaluation
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
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
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
    return save_figure(fig, path)


def _overlay(
    ax: Axes, background: np.ndarray, values: np.ndarray, rgb: tuple, aspect: float
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
    fig = Figure(figsize=(10, 3.3 * len(layers)))
    axes = fig.subplots(len(layers), 3, squeeze=False)
    for row, (label, values, rgb) in enumerate(layers):
        for col, (axis, view) in enumerate(((0, "sagittal"), (1, "coronal"), (2, "axial"))):
            shown = [a for a in range(3) if a != axis]
            aspect = float(spacing[shown[1]]) / float(spacing[shown[0]])
            background = image.mean(axis=axis)
            _overlay(axes[row, col], background, values.max(axis=axis), rgb, aspect)
            axes[row, col].set_title(f"{label}: {view} MIP", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
