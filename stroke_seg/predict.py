"""Prediction entry point: lesion masks for new T1 scans, on each scan's own voxel grid.

``python predict.py ckpt=PATH input=FILE_OR_DIR output=DIR`` writes, per scan ``<name>``
(the file name without .nii / .nii.gz):

* ``<name>_lesion_mask.nii.gz``: uint8 0/1, probability > the model's threshold (0.5, the
  paper's, Sec. 2.5), same shape, affine and orientation codes as the input;
* ``<name>_lesion_prob.nii.gz``: float32 lesion probability;
* ``<name>_qc.png`` (``qc=true``): axial slices with the predicted lesion outlined;

and ``lesions.csv``: per scan the lesion volume (mm³), the number of lesions (26-connected
components, as the ATLAS v2.0 challenge counts them) and the spatial strategy used.

Safety: the output folder may not be (inside) the input folder, existing result files are
never replaced without ``overwrite=true``, every input is checked (exists, NIfTI, one 3-D
volume) before anything is written, and every file is written under a temporary name and
renamed when complete. See `stroke_seg.inference` for resampling and spatial strategies.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from omegaconf import DictConfig, ListConfig
from scipy import ndimage
from tqdm import tqdm

from stroke_seg.data.io import load_volume, spacing_of
from stroke_seg.errors import StrokeSegError
from stroke_seg.inference import Predictor
from stroke_seg.metrics import CONNECTIVITY_26
from stroke_seg.plotting import plot_case_slices
from stroke_seg.report import save_nifti_atomic, write_csv_atomic

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LESION_COLUMNS = ("scan", "lesion_volume_mm3", "n_lesions", "lesion_voxels", "mode", "input")


def scan_name(path: Path) -> str:
    """The file name without .nii or .nii.gz."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_inputs(source: Path, pattern: str = "*.nii*") -> list[Path]:
    """One NIfTI file, or every NIfTI file matching `pattern` under a folder (recursive,
    hidden files skipped)."""
    if not source.exists():
        raise StrokeSegError(f"input={source} does not exist.")
    if source.is_file():
        if not source.name.endswith(NIFTI_SUFFIXES):
            raise StrokeSegError(f"input={source} is not a NIfTI file (.nii or .nii.gz).")
        return [source]
    found = sorted(
        p
        for p in source.rglob("*")
        if p.is_file()
        and p.name.endswith(NIFTI_SUFFIXES)
        and not p.name.startswith(".")
        and fnmatch.fnmatch(p.name, pattern)
    )
    if not found:
        raise StrokeSegError(f"input={source} holds no .nii / .nii.gz file matching {pattern!r}.")
    return found


def check_readable(path: Path) -> None:
    """Refuse a file that is not NIfTI or holds more than one 3-D volume (header only)."""
    try:
        shape = nib.load(str(path)).shape
    except Exception as err:  # nibabel raises many types for a bad header
        raise StrokeSegError(f"{path} is not a readable NIfTI file ({err}).") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise StrokeSegError(
            f"{path} has shape {tuple(shape)}; one 3-D T1 volume per file is needed (split "
            "4-D series first)."
        )


def output_files(output: Path, names: Sequence[str], qc: bool) -> list[Path]:
    """Every file this run will write."""
    files = []
    for name in names:
        files += [output / f"{name}_lesion_mask.nii.gz", output / f"{name}_lesion_prob.nii.gz"]
        if qc:
            files.append(output / f"{name}_qc.png")
    return [*files, output / "lesions.csv"]


def check_output(
    source: Path, output: Path, inputs: Sequence[Path], qc: bool, overwrite: bool
) -> None:
    """Refuse writing into the input folder, name clashes and existing results."""
    src, out = source.resolve(), output.resolve()
    if source.is_dir() and (out == src or src in out.parents):
        raise StrokeSegError(
            f"output={output} lies inside input={source}; choose a folder outside the input "
            "folder, so that inputs are never mixed with or replaced by results."
        )
    if source.is_file() and out == src.parent:
        raise StrokeSegError(
            f"output={output} is the folder of input={source}; choose another folder, so "
            "that inputs are never mixed with or replaced by results."
        )
    if output.exists() and not output.is_dir():
        raise StrokeSegError(f"output={output} is a file; pass a folder for the results.")
    seen: dict[str, Path] = {}
    for path in inputs:
        name = scan_name(path)
        if name in seen:
            raise StrokeSegError(
                f"{path} and {seen[name]} share the name {name}, so their results would "
                "collide; predict them into separate output folders."
            )
        seen[name] = path
    existing = [p for p in output_files(output, list(seen), qc) if p.exists()]
    if existing and not overwrite:
        raise StrokeSegError(
            f"{existing[0]} already exists ({len(existing)} result file(s) would be "
            "replaced); pass overwrite=true or choose another output=."
        )


def lesion_stats(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Lesion voxels, volume in mm³ and the number of 26-connected lesions of a mask."""
    voxels = int(np.count_nonzero(mask))
    _, n_lesions = ndimage.label(mask > 0, structure=CONNECTIVITY_26)
    return {
        "lesion_voxels": voxels,
        "lesion_volume_mm3": round(voxels * float(np.prod(spacing)), 3),
        "n_lesions": int(n_lesions),
    }


def predict_scan(predictor: Predictor, path: Path, output: Path, qc: bool) -> dict[str, Any]:
    """Predict one scan and write its mask, probability map and QC picture."""
    image, affine = load_volume(path)
    header = nib.load(str(path)).header
    result = predictor.predict(image, affine)
    name = scan_name(path)
    mask = result.mask
    save_nifti_atomic(
        output / f"{name}_lesion_prob.nii.gz", result.prob.astype(np.float32), affine, header
    )
    save_nifti_atomic(output / f"{name}_lesion_mask.nii.gz", mask, affine, header)
    if qc:
        plot_case_slices(image, None, mask, output / f"{name}_qc.png", title=name)
    return {
        "scan": name,
        **lesion_stats(mask, spacing_of(affine)),
        "mode": result.mode,
        "input": str(path),
    }


def _ckpts(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Predict every input scan; returns the lesions.csv rows."""
    for key in ("ckpt", "input", "output"):
        if not cfg.get(key):
            raise StrokeSegError(
                f"{key}= is missing: python predict.py ckpt=PATH input=FILE_OR_DIR output=DIR."
            )
    source, output = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    inputs = find_inputs(source, str(cfg.pattern))
    check_output(source, output, inputs, bool(cfg.qc), bool(cfg.overwrite))
    for path in inputs:
        check_readable(path)
    predictor = Predictor.from_checkpoints(
        _ckpts(cfg.ckpt),
        mode=str(cfg.mode),
        tta=bool(cfg.tta),
        overlap=float(cfg.overlap),
        device=str(cfg.device),
        amp=bool(cfg.amp),
    )
    log.info("Predicting %d scan(s) on %s into %s", len(inputs), predictor.device, output)
    rows: list[dict[str, Any]] = []
    for path in tqdm(inputs, desc="predict", unit="scan", disable=len(inputs) < 2):
        rows.append(predict_scan(predictor, path, output, bool(cfg.qc)))
        # Rewritten after every scan: an interrupted run still lists what it finished.
        write_csv_atomic(output / "lesions.csv", rows, LESION_COLUMNS)
    return rows
