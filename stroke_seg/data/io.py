"""Reading NIfTI scans and lesion masks with checks that name the file and the problem.

MONAI's `LoadImaged` reads one file per key; a case here can have several mask files
(ATLAS R1.2, merged by voxel-wise maximum) and must be checked for image/mask grid
agreement, so this small loader sits in front of the MONAI transform chain instead.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_seg.data.discovery import Case
from stroke_seg.errors import StrokeSegError

AFFINE_TOLERANCE_MM = 1e-3


def load_volume(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI volume as (array, affine); a 4-D file with one volume is squeezed."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except FileNotFoundError:
        raise StrokeSegError(f"{path} does not exist.") from None
    except (nib.filebasedimages.ImageFileError, gzip.BadGzipFile, zlib.error) as err:
        raise StrokeSegError(f"{path} is not a readable NIfTI file ({err}).") from None
    except (EOFError, OSError, ValueError) as err:
        raise StrokeSegError(f"{path} is truncated or corrupt ({err}).") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise StrokeSegError(f"{path} has shape {data.shape}; a 3-D volume is needed.")
    return np.ascontiguousarray(data, dtype=dtype), np.asarray(img.affine, dtype=np.float64)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis, from the affine's column norms."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def check_same_grid(
    shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...],
    affine_b: np.ndarray, name_a: str, name_b: str,
) -> None:
    """Refuse an image/mask pair whose shapes or affines disagree."""
    if tuple(shape_a) != tuple(shape_b):
        raise StrokeSegError(
            f"{name_b} has shape {tuple(shape_b)} but {name_a} has {tuple(shape_a)}; "
            "image and mask must share one voxel grid."
        )
    if not np.allclose(affine_a, affine_b, atol=AFFINE_TOLERANCE_MM):
        raise StrokeSegError(
            f"{name_b} and {name_a} have different affines (voxel-to-world matrices); "
            "image and mask must share one voxel grid."
        )


def load_case(case: Case) -> dict:
    """Load a case: float32 image, uint8 binary mask (several masks merged by maximum),
    affine and spacing. The mask is binarised at > 0 (ATLAS masks can be 0/1 or 0/255)."""
    image, affine = load_volume(case.image, np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    for mask_path in case.masks:
        mask, mask_affine = load_volume(mask_path, np.float32)
        check_same_grid(image.shape, affine, mask.shape, mask_affine, case.image.name, mask_path.name)
        np.maximum(label, (mask > 0).astype(np.uint8), out=label)
    return {
        "subject": case.subject,
        "image": image,
        "label": label,
        "affine": affine,
        "spacing": spacing_of(affine),
    }
