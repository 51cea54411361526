"""Reading NIfTI scans and lesion masks with checks that name the file and the problem.

MONAI's `LoadImaged` reads one file per key; a case here can have several mask files
(ATLAS R1.2, merged by voxel-wise maximum) and must be checked for image/mask grid
agreement, so this small loader sits in front of the MONAI transform chain instead. The
checks themselves live in `stroke_seg.validation`, so that every entry point refuses a bad
file with the same sentence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stroke_seg.data.discovery import Case
from stroke_seg.validation import (
    AFFINE_TOLERANCE_MM,
    binarize_mask,
    check_image,
    check_same_grid,
    read_nifti,
)

__all__ = ["AFFINE_TOLERANCE_MM", "check_same_grid", "load_case", "load_volume", "spacing_of"]


def load_volume(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI volume as (array, affine); a 4-D file with one volume is squeezed.

    Every check of `stroke_seg.validation.read_nifti` applies (readable, one 3-D volume,
    finite intensities); content checks that depend on the role (image or mask) do not.
    """
    return read_nifti(path, dtype)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis, from the affine's column norms."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def load_case(case: Case, mask_threshold: float | None = None) -> dict:
    """Load a case: float32 image, uint8 binary mask (several masks merged by maximum),
    affine and spacing.

    The image must not be all zero; each mask must be binary (0/1, or 0/255 with a
    warning) unless `mask_threshold` is given (see `validation.binarize_mask`), and lie on
    the image's grid.
    """
    image, affine = load_volume(case.image, np.float32)
    check_image(image, case.image)
    label = np.zeros(image.shape, dtype=np.uint8)
    for mask_path in case.masks:
        mask, mask_affine = load_volume(mask_path, np.float32)
        check_same_grid(
            image.shape, affine, mask.shape, mask_affine, case.image.name, mask_path.name
        )
        np.maximum(label, binarize_mask(mask, mask_path, mask_threshold), out=label)
    return {
        "subject": case.subject,
        "image": image,
        "label": label,
        "affine": affine,
        "spacing": spacing_of(affine),
    }
