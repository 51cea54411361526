"""Prediction entry point: lesion masks for new T1 scans, on each scan's own voxel grid.

``python predict.py ckpt=PATH input=FILE_OR_DIR output=DIR`` writes, per scan ``<name>``
(the file name without .nii / .nii.gz):

* ``<name>_lesion_mask.nii.gz``: uint8 0/1, probability > the model's threshold (0.5, the
  paper's, Sec. 2.5), same shape, affine and orientation codes as the input;
* ``<name>_lesion_prob.nii.gz``: float32 lesion probability;
* ``<name>_qc.png`` (``qc=true``): axial slices with the predicted lesion outlined;

and ``lesions.csv``: per scan the lesion volume (mm³), the number of lesions (26-connected
components, as the ATLAS v2.0 challenge counts them) and the spatial strategy used.

Safety: the output folder may not be (inside) the input folder, and output names cannot
leave it (`safe_output_path`); inputs are only read; existing result files are never
replaced without ``overwrite=true``; every input is checked in full (`stroke_seg.data.io`:
readable NIfTI, one 3-D volume, finite, not all zero) before anything is written, so a bad
scan stops the run before an hour of work, not after; every file is written under a
temporary name and renamed when complete. After a crash, ``continue_prediction=true``
(as nnU-Net's ``--continue_prediction``) keeps the scans whose mask and probability map are
complete and redoes the rest. See `stroke_seg.inference` for resampling and spatial
strategies.
"""

from __future__ import annotations

import csv
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

from stroke_seg.atomic import is_temporary_of, write_csv, write_nifti
from stroke_seg.data.checks import check_image, same_grid
from stroke_seg.data.io import read_nifti, spacing_of
from stroke_seg.errors import StrokeSegError, config_section
from stroke_seg.inference import Predictor
from stroke_seg.metrics import DEFAULT_CONNECTIVITY, lesion_structure
from stroke_seg.outputs import safe_output_path
from stroke_seg.plotting import plot_case_slices
from stroke_seg.postprocess import chosen_value

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
    """Refuse a scan that `stroke_seg.data.io.read_nifti` refuses (not NIfTI, truncated, not one
    3-D volume, NaN or infinite intensities) or that is all zero. Reads the whole file."""
    image, _ = read_nifti(path)
    check_image(image, path)


def scan_files(output: Path, name: str, qc: bool) -> list[Path]:
    """The files one scan's prediction writes: mask, probability map (and QC picture)."""
    kinds = ["lesion_mask.nii.gz", "lesion_prob.nii.gz", *(["qc.png"] if qc else [])]
    return [safe_output_path(output, f"{name}_{kind}") for kind in kinds]


def output_files(output: Path, names: Sequence[str], qc: bool) -> list[Path]:
    """Every file this run will write."""
    files = [path for name in names for path in scan_files(output, name, qc)]
    return [*files, output / "lesions.csv"]


def is_finished(output: Path, name: str, source: Path, qc: bool) -> bool:
    """Whether a scan's results are complete: every file is there (each was renamed into
    place only when complete) and both NIfTIs lie on the input's grid (shape and affine), so
    a result left from another input of the same name is redone."""
    files = scan_files(output, name, qc)
    if not all(p.is_file() for p in files):
        return False
    try:
        grid = nib.load(str(source))
        results = [nib.load(str(path)) for path in files[:2]]
        return all(same_grid(r.shape[:3], r.affine, grid.shape[:3], grid.affine) for r in results)
    except Exception:  # noqa: BLE001 - an unreadable result is redone
        return False


def remove_stale_temporaries(output: Path, names: Sequence[str], qc: bool) -> None:
    """Delete temporary files a killed run left for these results (named as
    `stroke_seg.atomic.temporary_path` names them); they are never results themselves."""
    if not output.is_dir():
        return
    wanted = {p.name for p in output_files(output, names, qc)}
    for tmp in output.glob(".*.tmp*"):
        if any(is_temporary_of(tmp.name, name) for name in wanted):
            tmp.unlink(missing_ok=True)


def check_output(
    source: Path,
    output: Path,
    inputs: Sequence[Path],
    qc: bool,
    overwrite: bool,
    continue_prediction: bool = False,
) -> None:
    """Refuse writing into the input folder, name clashes and existing results (allowed
    with `overwrite`, or kept by `continue_prediction`)."""
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
    if existing and not (overwrite or continue_prediction):
        raise StrokeSegError(
            f"{existing[0]} already exists ({len(existing)} result file(s) would be "
            "replaced); pass overwrite=true, continue_prediction=true to finish an "
            "interrupted run, or choose another output=."
        )


def lesion_stats(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Lesion voxels, volume in mm³ and the number of 26-connected lesions of a mask."""
    voxels = int(np.count_nonzero(mask))
    _, n_lesions = ndimage.label(mask > 0, structure=lesion_structure(DEFAULT_CONNECTIVITY))
    return {
        "lesion_voxels": voxels,
        "lesion_volume_mm3": round(voxels * float(np.prod(spacing)), 3),
        "n_lesions": int(n_lesions),
    }


def predict_scan(predictor: Predictor, path: Path, output: Path, qc: bool) -> dict[str, Any]:
    """Predict one scan and write its mask, probability map and QC picture."""
    image, affine = read_nifti(path)
    header = nib.load(str(path)).header
    result = predictor.predict(image, affine)
    name = scan_name(path)
    mask_path, prob_path, *qc_path = scan_files(output, name, qc)
    mask = result.mask
    write_nifti(prob_path, result.prob.astype(np.float32), affine, header)
    write_nifti(mask_path, mask, affine, header)
    if qc:
        plot_case_slices(image, None, mask, qc_path[0], title=name)
    return {
        "scan": name,
        **lesion_stats(mask, spacing_of(affine)),
        "mode": result.mode,
        "input": str(path),
    }


def finished_row(output: Path, path: Path, previous: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The lesions.csv row of a scan kept by ``continue_prediction``: the earlier run's row,
    or, if it was killed before writing it, one recomputed from the saved mask."""
    name = scan_name(path)
    if name in previous:
        return previous[name]
    mask, affine = read_nifti(scan_files(output, name, False)[0])
    return {"scan": name, **lesion_stats(mask, spacing_of(affine)), "mode": "", "input": str(path)}


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier lesions.csv by scan name (none if it is absent or unreadable)."""
    try:
        with path.open(newline="") as f:
            return {row["scan"]: row for row in csv.DictReader(f) if row.get("scan")}
    except (OSError, KeyError, csv.Error):
        return {}


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
    resume = bool(cfg.continue_prediction)
    if resume and bool(cfg.overwrite):
        raise StrokeSegError(
            "Pass either overwrite=true (redo every scan) or continue_prediction=true (keep "
            "finished scans), not both."
        )
    source, output = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    inputs = find_inputs(source, str(cfg.pattern))
    qc = bool(cfg.qc)
    check_output(source, output, inputs, qc, bool(cfg.overwrite), resume)
    done = {p for p in inputs if resume and is_finished(output, scan_name(p), p, qc)}
    for path in inputs:
        if path not in done:
            check_readable(path)
    remove_stale_temporaries(output, [scan_name(p) for p in inputs], qc)
    with config_section("inference"):
        predictor = Predictor.from_config(_ckpts(cfg.ckpt), cfg.inference)
    predictor.min_lesion_mm3 = chosen_value(cfg.get("min_lesion_mm3", 0) or 0)
    log.info(
        "Predicting %d scan(s) on %s into %s (%d finished before, kept)",
        len(inputs) - len(done),
        predictor.device,
        output,
        len(done),
    )
    previous = read_rows(output / "lesions.csv") if done else {}
    rows: list[dict[str, Any]] = []
    for path in tqdm(inputs, desc="predict", unit="scan", disable=len(inputs) < 2):
        if path in done:
            rows.append(finished_row(output, path, previous))
        else:
            rows.append(predict_scan(predictor, path, output, qc))
        # Rewritten after every scan: an interrupted run still lists what it finished.
        write_csv(output / "lesions.csv", rows, LESION_COLUMNS)
    return rows
