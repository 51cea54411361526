"""Reading NIfTI scans and lesion masks, refusing a bad file in one sentence naming it.

Every scan and mask the project reads goes through `read_nifti`, which refuses what nibabel
would read wrongly or not at all (docs/robustness.md lists each check and its message).
MONAI's `LoadImaged` reads one file per key; a case here can have several mask files (ATLAS
R1.2, merged by voxel-wise maximum) and must be checked for image/mask grid agreement, so
`load_case` sits in front of the MONAI transform chain (`stroke_seg.data.transforms`)
instead.

`Case` lives here rather than with discovery: it is what this module reads and what
`stroke_seg.data.discovery` produces, so both depend on it and it depends on neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_seg.data.checks import binarize_mask, check_finite, check_image, check_same_grid
from stroke_seg.errors import StrokeSegError

# Deflate never expands data by more than ~1032:1, so a .gz file of C bytes cannot hold more
# than 1032*C bytes of voxels: a header that claims more is truncated or lying, and is
# refused before nibabel allocates (and zero-fills) what it claims.
_MAX_DEFLATE_RATIO = 1032


@dataclass(frozen=True)
class Case:
    """One scan: a subject ID, its T1 image and one or more lesion mask files.

    `group` is the subject the scan belongs to when a subject has several scans (time points,
    sessions), which splits keep in one list (`stroke_seg.data.splits`); it defaults to the
    subject ID.
    """

    subject: str
    image: Path
    masks: tuple[Path, ...]
    group: str | None = None

    def __post_init__(self) -> None:
        if self.group is None:
            object.__setattr__(self, "group", self.subject)  # frozen: set once, here


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def read_nifti(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read one 3-D NIfTI volume as (array of `dtype`, affine), or refuse it in one sentence.

    Refused: a missing file, a file that is not NIfTI (or not a single-file .nii/.nii.gz),
    a truncated or corrupt file, non-scalar voxels (complex, RGB), anything but one 3-D
    volume (a 4-D file holding one volume is squeezed), an empty volume, an invalid
    affine, and NaN or infinite intensities. Checks that depend on the role of the file
    (an image must not be all zero, a mask must be binary) are `load_case`'s.
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


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis, from the affine's column norms."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def load_case(case: Case, mask_threshold: float | None = None) -> dict:
    """Load a case: float32 image, uint8 binary mask (several masks merged by maximum),
    affine and spacing.

    The image must not be all zero; each mask must be binary (0/1, or 0/255 with a
    warning) unless `mask_threshold` is given (see `checks.binarize_mask`), and lie on
    the image's grid.
    """
    image, affine = read_nifti(case.image, np.float32)
    check_image(image, case.image)
    label = np.zeros(image.shape, dtype=np.uint8)
    for mask_path in case.masks:
        mask, mask_affine = read_nifti(mask_path, np.float32)
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
