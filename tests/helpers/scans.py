"""Tiny synthetic scans (24x28x20 at 2 mm) and NIfTI trees, written in seconds."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

TINY_SHAPE = (24, 28, 20)
TINY_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# Another grid and orientation than the tiny scans': LPS, 1.5 mm (to be resampled).
LPS_AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 1.5, -5.0], [0, 0, 0, 1]])


def tiny_preprocessing(crop_size=TINY_SHAPE, **extra: object) -> dict:
    """What a checkpoint of a model trained on the tiny scans carries for inference: /255
    scaling, the training crop, the evaluation crop = the whole tiny scan, 2 mm voxels."""
    return {
        "intensity_mode": "divide",
        "intensity_divisor": 255.0,
        "crop_size": list(crop_size),
        "eval_crop": list(TINY_SHAPE),
        "spacing": [float(v) for v in np.diag(TINY_AFFINE)[:3]],
        **extra,
    }


# A zoom-out model's: trained at the evaluation crop, so predictions use the centre crop.
ZOOM_OUT_PRE = tiny_preprocessing()


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = TINY_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def tiny_scan(rng: np.random.Generator, shape=TINY_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'brain' with a dark spherical 'lesion' at a random position."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    centre = rng.uniform(-0.4, 0.4, size=3)
    radius = rng.uniform(0.15, 0.3)
    lesion = (((grid - centre[:, None, None, None]) ** 2).sum(0) < radius**2) & brain
    image = np.where(brain, 150.0, 0.0) + rng.normal(0, 5, shape)
    image[lesion] = 40.0 + rng.normal(0, 5, lesion.sum())
    return np.clip(image, 0, 255).astype(np.float32), lesion.astype(np.uint8)


def bids_paths(root: Path, site: str, sid: str, ses: str = "1") -> tuple[Path, Path]:
    anat = root / "Training" / site / sid / f"ses-{ses}" / "anat"
    stem = f"{sid}_ses-{ses}_space-MNI152NLin2009aSym"
    return anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"


def make_bids_tree(root: Path, n: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        image, mask = tiny_scan(rng)
        t1, lab = bids_paths(root, "R001", f"sub-r001s{i:03d}")
        write_nifti(t1, image)
        write_nifti(lab, mask)
    return root


def tiny_datamodule(root: Path, **kwargs: object):
    """A `StrokeDataModule` on the tiny scans under `root` (16x12x8 training crops,
    20x24x16 evaluation crops, split 6/1/1), set up for fitting; `kwargs` override."""
    from stroke_seg.data.datamodule import StrokeDataModule

    args = dict(
        root=str(root),
        layout="synthetic",
        crop_size=(16, 12, 8),
        eval_crop=(20, 24, 16),
        split_proportions=(6, 1, 1),
        cache_workers=0,
    )
    args.update(kwargs)
    dm = StrokeDataModule(**args)
    dm.setup("fit")
    return dm


def r12_paths(root: Path, site: str, sid: str, time_point: str = "t01") -> tuple[Path, Path]:
    """The T1 and (first) lesion mask of one ATLAS R1.2 scan:
    ``<site>/<sid>/<time point>/<sid>_t1w_deface_stx.nii.gz``."""
    folder = root / site / sid / time_point
    return folder / f"{sid}_t1w_deface_stx.nii.gz", folder / f"{sid}_LesionSmooth_stx.nii.gz"


def make_r12_tree(
    root: Path, n: int = 12, time_points: dict[int, int] | None = None, seed: int = 0
) -> Path:
    """`n` tiny subjects ``000001``..``0000nn`` in the ATLAS R1.2 layout (sites of four); each
    has one time point (t01) unless `time_points` gives subject number -> how many."""
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        sid = f"{i:06d}"
        for t in range(1, (time_points or {}).get(i, 1) + 1):
            image, mask = tiny_scan(rng)
            t1, lab = r12_paths(root, f"Site{(i - 1) // 4 + 1}", sid, f"t{t:02d}")
            write_nifti(t1, image)
            write_nifti(lab, mask)
    return root
