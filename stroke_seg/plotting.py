"""Pictures a run leaves behind: the training progress plot and validation-case slices.

matplotlib with the non-interactive Agg backend, so that clusters without a display work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_progress(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Loss, validation DSC and learning rate against epoch (like nnU-Net's progress.png)."""
    path = Path(path)

    def series(key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of the epochs that recorded ``key`` (validation is not every
        epoch), so each curve joins its own points."""
        rows = [h for h in history if not math.isnan(h.get(key, math.nan))]
        return [h["epoch"] for h in rows], [h[key] for h in rows]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
    _save(fig, path)
    return path


def plot_case_slices(
    image: np.ndarray,
    reference: np.ndarray | None,
    prediction: np.ndarray,
    path: str | Path,
    title: str = "",
    n_slices: int = 5,
) -> Path:
    """Axial slices through the lesion: T1 in grey, reference outline in green, predicted
    outline in red. Slices are spread over the z-range of reference ∪ prediction (or the
    whole volume when both are empty). Arrays are (x, y, z) as in the NIfTI file."""
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
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.4), squeeze=False)
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
        f"{title}  (green: reference, red: prediction)"
        if reference is not None
        else f"{title}  (red: prediction)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def _save(fig: plt.Figure, path: Path) -> None:
    """Write to a temporary name and rename, so a killed run never leaves half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
