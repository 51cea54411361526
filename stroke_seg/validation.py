"""Checks on every NIfTI file on its way in, and on the subject lists built from them.

A bad input must end in one sentence naming the file and the problem (DESIGN.md), never in
a traceback from deep inside nibabel or numpy, and never in a silently wrong run: one NaN
voxel turns a whole training run's loss into NaN, a probability map read as a mask changes
the loss, an image and mask on different grids train on misaligned labels, and a header
that claims terabytes of voxels must not be allowed to allocate them. `stroke_seg.data.io`
reads every scan and mask through `read_nifti`; docs/robustness.md lists each check with
the message a user sees.

The split checks (empty lists, subjects not on disk, overlaps) live with the split files in
`stroke_seg.data.splits` and are re-exported here so that this module lists every check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_seg.data.splits import check_split, load_split
from stroke_seg.errors import StrokeSegError

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "binarize_mask",
    "check_finite",
    "check_image",
    "check_same_grid",
    "check_split",
    "check_unique_subjects",
    "load_split",
    "read_nifti",
]

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
# Deflate never expands data by more than ~1032:1, so a .gz file of C bytes cannot hold more
# than 1032*C bytes of voxels: a header that claims more is truncated or lying, and is
# refused before nibabel allocates (and zero-fills) what it claims.
_MAX_DEFLATE_RATIO = 1032


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def read_nifti(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read one 3-D NIfTI volume as (array of `dtype`, affine), or refuse it in one sentence.

    Refused: a missing file, a file that is not NIfTI (or not a single-file .nii/.nii.gz),
    a truncated or corrupt file, non-scalar voxels (complex, RGB), anything but one 3-D
    volume (a 4-D file holding one volume is squeezed), an empty volume, an invalid
    affine, and NaN or infinite intensities.
    """
    path = Path(path)
    if not path.is_file():
        raise StrokeSegError(f"{path} does not exist.")
    try:
        # nibabel logs its header repairs; the sentence below says what matters instead.
        with nib.imageglobals.LoggingOutputSuppressor():
            img = nib.load(str(path))
        header = img.header
        shape = tuple(int(s) for s in img.shape)
        stored = np.dtype(img.get_data_dtype())
        offset = int(header.get_data_offset())
    except Exception as err:  # noqa: BLE001 - nibabel raises many types on a bad header
        raise StrokeSegError(f"{path} is not a readable NIfTI file ({_first_line(err)}).") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise StrokeSegError(
            f"{path} is a {type(img).__name__} file, not NIfTI; convert it to .nii.gz first."
        )
    if stored.fields is not None or stored.kind not in "biuf":
        raise StrokeSegError(
            f"{path} stores {stored} voxels; a scalar, real-valued intensity volume is needed."
        )
    volume_shape = shape[:3] + tuple(s for s in shape[3:] if s != 1)
    if len(volume_shape) != 3:
        hint = " (split 4-D series first)" if len(shape) > 3 else ""
        raise StrokeSegError(f"{path} has shape {shape}; one 3-D volume per file is needed{hint}.")
    n_bytes = int(np.prod(shape, dtype=np.float64) * stored.itemsize)
    if n_bytes == 0:
        raise StrokeSegError(f"{path} has shape {shape}, i.e. no voxels.")
    _check_size(path, offset + n_bytes)
    try:
        raw = np.asarray(img.dataobj).reshape(volume_shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - gzip, zlib, numpy and nibabel errors alike
        raise StrokeSegError(f"{path} is truncated or corrupt ({_first_line(err)}).") from None
    if (
        affine.shape != (4, 4)
        or not np.isfinite(affine).all()
        or abs(np.linalg.det(affine[:3, :3])) < 1e-12
    ):
        raise StrokeSegError(
            f"{path} has an invalid voxel-to-world affine (non-finite or zero voxel size); "
            "fix its header (qform/sform, pixdim)."
        )
    check_finite(raw, path)
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.ascontiguousarray(raw, dtype=dtype)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise StrokeSegError(
            f"{path} holds intensities beyond the {data.dtype} range (up to "
            f"{float(np.max(np.abs(raw))):.3g}); rescale the scan."
        )
    return data, affine


def _check_size(path: Path, needed: int) -> None:
    """Refuse a file too short for the voxels its header describes, before reading them."""
    size = path.stat().st_size
    compressed = path.name.endswith(".gz")
    limit = size * _MAX_DEFLATE_RATIO if compressed else size
    if needed > limit:
        raise StrokeSegError(
            f"{path} is truncated or corrupt (its header describes {needed:,} bytes of data "
            f"but the{' compressed' if compressed else ''} file holds {size:,})."
        )


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
