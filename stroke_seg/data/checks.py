"""Checks on the content of every scan and mask, and on the subject lists built from them.

A bad input must end in one sentence naming the file and the problem, never in a traceback
from deep inside nibabel or numpy, and never in a silently wrong run: one NaN voxel turns a
whole training run's loss into NaN, a probability map read as a mask changes the loss, an
image and mask on different grids train on misaligned labels. `stroke_seg.data.io` reads
every file through these checks; docs/robustness.md lists each with the message a user sees.

The checks on the file itself (readable, one 3-D volume, a plausible size) sit with the
reader in `stroke_seg.data.io`; the split checks (empty lists, overlaps, subjects not on
disk) with the split files in `stroke_seg.data.splits`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stroke_seg.errors import StrokeSegError

log = logging.getLogger(__name__)

# Two grids whose voxel-to-world matrices differ by less than 1 µm are one grid: NIfTI
# writers round affines differently, and 1 µm is far below any MRI voxel.
AFFINE_TOLERANCE_MM = 1e-3


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """Refuse NaN or infinite intensities: one such voxel makes every loss NaN."""
    if array.dtype.kind != "f":
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(np.count_nonzero(np.isinf(array)))
    if n_nan or n_inf:
        raise StrokeSegError(
            f"{path} holds {n_nan} NaN and {n_inf} infinite intensities; fix the conversion "
            "that wrote it (or replace them, e.g. with 0) and try again."
        )


def check_image(image: np.ndarray, path: str | Path) -> None:
    """Refuse an all-zero scan: an empty export, which would train or predict nothing."""
    if not np.any(image):
        raise StrokeSegError(
            f"{path} is all zero (an empty image); check the conversion that wrote it or "
            "remove the scan."
        )


def binarize_mask(mask: np.ndarray, path: str | Path, threshold: float | None = None) -> np.ndarray:
    """A lesion mask as uint8 0/1.

    0/1 masks pass as they are; a mask with one other positive value (0/255, as some ATLAS
    R1.2 masks) is binarised with a warning. Anything else (probabilities, several labels,
    negative values) is refused unless `threshold` is given, and then read as
    ``mask > threshold`` -- silently thresholding a probability map would change the
    reference every metric is computed against.
    """
    if threshold is not None:
        return (mask > float(threshold)).astype(np.uint8)
    values = np.unique(mask[mask != 0])
    if values.size == 0 or (values.size == 1 and values[0] == 1):
        return (mask != 0).astype(np.uint8)
    if values.size == 1 and values[0] > 0:
        log.warning(
            "%s holds the values {0, %g}; read as a binary mask (%g -> 1).",
            path,
            values[0],
            values[0],
        )
        return (mask != 0).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:3]) + (", ..." if values.size > 3 else "")
    raise StrokeSegError(
        f"{path} is not a binary mask: besides 0 it holds {values.size} values ({shown}); "
        "binarise it first (e.g. mask > 0.5), or read it with a mask_threshold if it is a "
        "probability map."
    )


def same_grid(
    shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray
) -> bool:
    """Whether two volumes share one voxel grid: the same shape and affines within 1 µm."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(affine_a, affine_b, atol=AFFINE_TOLERANCE_MM)
    )


def check_same_grid(
    shape_a: tuple[int, ...],
    affine_a: np.ndarray,
    shape_b: tuple[int, ...],
    affine_b: np.ndarray,
    name_a: str,
    name_b: str,
) -> None:
    """Refuse an image/mask pair whose shapes or affines (beyond 1 µm) disagree."""
    if tuple(shape_a) != tuple(shape_b):
        raise StrokeSegError(
            f"{name_b} has shape {tuple(shape_b)} but {name_a} has {tuple(shape_a)}; "
            "image and mask must share one voxel grid."
        )
    if not same_grid(shape_a, affine_a, shape_b, affine_b):
        raise StrokeSegError(
            f"{name_b} and {name_a} have different affines (voxel-to-world matrices); "
            "image and mask must share one voxel grid."
        )


def check_unique_subjects(pairs: Iterable[tuple[str, Path]], root: str | Path) -> None:
    """Refuse two scans with one subject ID: splits and result files are keyed by it."""
    seen: dict[str, Path] = {}
    for subject, image in pairs:
        if subject in seen:
            raise StrokeSegError(
                f"Subject ID {subject} appears twice under {root} "
                f"({seen[subject]} and {image}); remove or rename one."
            )
        seen[subject] = image
