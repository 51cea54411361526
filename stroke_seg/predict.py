"""Prediction entry point: lesion masks for new T1 scans, in their own space and the template's.

``python predict.py ckpt=PATH input=FILE_OR_DIR output=DIR`` takes scans as they come (the
scanner's pose, grid and intensity units; docs/prediction.md). Each scan that is not on the
model's training grid is registered to the template the model was trained in (recorded in the
checkpoint; ``template=FILE`` overrides it), standardised onto the training scans' intensity
reference, checked (`stroke_seg.quality`) and predicted on the template grid; the probability
map is brought back onto the scan's grid and thresholded there
(`stroke_seg.template_space.predict_in_template_space`). It writes, per scan ``<name>`` (the
file name without .nii / .nii.gz):

* ``<name>_lesion_mask.nii.gz``: uint8 0/1, probability > the model's threshold (0.5, the
  paper's, Sec. 2.5), same shape, affine and orientation codes as the input;
* ``<name>_lesion_prob.nii.gz``: float32 lesion probability on the input's grid;
* ``<name>_space-<template>_lesion_mask.nii.gz``: the mask on the template grid (for group
  lesion maps);
* ``<name>_from-native_to-<template>_xfm.mat``: the ANTs affine transform (template = fixed,
  scan = moving; named as BIDS derivatives name transforms, by the resampling it does):
  ``antsApplyTransforms -i scan -r template -t FILE`` puts the scan on the template grid,
  ``-t [FILE,1]`` brings template-space images back;
* ``<name>_qc.png`` and ``<name>_space-<template>_qc.png`` (``qc=true``): axial slices with the
  predicted lesion outlined, on the scan and on the registered scan with the template's brain
  outline (registration QC);

and ``lesions.csv``: per scan its status (``ok``, ``warning``, ``refused``), the lesion volume
in both spaces (mm³), the number of lesions (6-connected components, as the ATLAS v2.0
challenge counts them), the hemisphere, the model's maximum probability and, when it found
no lesion, a sentence saying so; the post-processing applied; the registration-quality
figures and every warning. ``template=none`` skips registration (resampling only, the first
release's behaviour) and writes only the native files.

A scan whose header is implausible (voxel size, a field of view that cuts the brain off)
stops the run before anything is written, naming the file. A scan refused after registration
(not a brain, a failed registration) gets a ``refused`` row with the reason and no files; the
others are predicted, and the run ends with an error naming how many were refused.

Many scans: ``shard=i/n`` predicts every n-th input from the i-th (`stroke_seg.shards`), into
``lesions.shard-<i>-of-<n>.csv``; the shard that finishes last merges the tables into
``lesions.csv`` (``merge=true output=DIR`` does it on demand).

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

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from omegaconf import DictConfig, ListConfig
from tqdm import tqdm

from stroke_seg.atomic import is_temporary_of, write_csv, write_nifti
from stroke_seg.data.checks import check_image, same_grid
from stroke_seg.data.io import read_nifti, spacing_of
from stroke_seg.errors import StrokeSegError, check_choice, check_keys, config_section
from stroke_seg.inference import Predictor
from stroke_seg.intensity import IntensityReference
from stroke_seg.outputs import safe_output_path
from stroke_seg.plotting import plot_case_slices
from stroke_seg.postprocess import chosen_value, count_components
from stroke_seg.quality import check_header
from stroke_seg.registration import (
    DEFAULT_TEMPLATE,
    RegistrationOptions,
    Template,
    load_template,
    on_template_grid,
)
from stroke_seg.shards import (
    merge_tables,
    parse_shard,
    read_table,
    shard_of,
    shard_tables,
    table_name,
)
from stroke_seg.template_space import (
    STANDARDISE,
    PreparedScan,
    hemisphere,
    postprocessed,
    predict_in_template_space,
)

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LESION_COLUMNS = (
    "scan",
    "status",
    "lesion_volume_mm3",
    "n_lesions",
    "lesion_voxels",
    "template_lesion_volume_mm3",
    "hemisphere",
    "max_prob",
    "finding",
    "min_lesion_mm3",
    "removed_lesions",
    "registration",
    "correlation",
    "coverage",
    "warning",
    "mode",
    "template",
    "input",
)


def scan_name(path: Path) -> str:
    """The file name without .nii or .nii.gz."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_inputs(source: Path, pattern: str = "*.nii*") -> list[Path]:
    """One NIfTI file, or every NIfTI file matching `pattern` under a folder (recursive,
    hidden files skipped), sorted, so that every shard of a run lists them alike."""
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


# --------------------------------------------------------------------------------------
# The space: template, intensity reference, registration options
# --------------------------------------------------------------------------------------


@dataclass
class Space:
    """How this run brings scans to the model: its template (None: resample only, no
    registration), the training intensity reference, and the registration options."""

    template: Template | None
    reference: IntensityReference | None = None
    registration: RegistrationOptions = field(default_factory=RegistrationOptions)
    standardise: str = "auto"
    n4: bool = False

    @property
    def label(self) -> str:
        """The template's name in file names (``space-<label>``): a TemplateFlow-style
        ``tpl-<name>_res-01_T1w`` file gives ``<name>``."""
        name = self.template.name if self.template is not None else ""
        if name.startswith("tpl-"):
            name = name[4:].split("_")[0]
        return "".join(c for c in name if c.isalnum()) or "template"


def resolve_space(cfg: DictConfig, predictor: Predictor) -> Space:
    """The template (``template=auto``: the one the checkpoint records; ``none``; a file),
    the checkpoint's intensity reference and the registration options of the config."""
    pre, source = predictor.preprocessing, predictor.models[0].source
    options = dict(cfg.get("registration") or {})
    with config_section("registration"):
        check_keys(
            options,
            [f.name for f in fields(RegistrationOptions)],
            "a registration option",
            "see conf/predict.yaml.",
            required=False,
        )
        registration = RegistrationOptions(**options)
    standardise = check_choice("standardise", str(cfg.get("standardise", "auto")), STANDARDISE)
    n4 = bool(cfg.get("n4", False))
    reference = None
    if pre.intensity_reference is not None:
        reference = IntensityReference.from_dict(pre.intensity_reference, source)
    choice = str(cfg.get("template", "auto"))
    if choice == "none":
        return Space(None, reference, registration, standardise, n4)
    path = pre.template if choice == "auto" else choice
    if path is None:
        log.warning(
            "%s records no template, so scans off its training grid are only resampled, not "
            "registered; pass template=FILE (the template its training scans were registered "
            "to) to register them",
            source,
        )
        return Space(None, reference, registration, standardise, n4)
    spacing = pre.spacing
    if max(spacing) - min(spacing) > 1e-3:
        raise StrokeSegError(
            f"{source} was trained at the anisotropic spacing {list(spacing)} mm; "
            "registration needs an isotropic template grid, so pass template=none."
        )
    template = load_template(spacing[0], None if path == DEFAULT_TEMPLATE else str(path))
    return Space(template, reference, registration, standardise, n4)


# --------------------------------------------------------------------------------------
# Checks before anything is written
# --------------------------------------------------------------------------------------


def check_input(path: Path, space: Space) -> None:
    """Refuse a scan that `stroke_seg.data.io.read_nifti` refuses (not NIfTI, truncated, not
    one 3-D volume, NaN or infinite intensities), that is all zero or, when it will be
    registered, whose header is implausible (`stroke_seg.quality.check_header`: a voxel
    size off by a large factor, a field of view that cuts the brain off). Reads the file."""
    image, affine = read_nifti(path)
    check_image(image, path)
    template = space.template
    if template is not None and not on_template_grid(image.shape, affine, template):
        check_header(image, affine, template, str(path)).raise_if_refused()


def scan_files(output: Path, name: str, qc: bool, space: Space) -> dict[str, Path]:
    """The files one scan's prediction writes, by kind: ``mask`` and ``prob`` on its grid;
    with a template, ``template_mask`` and ``transform``; with `qc`, the pictures ``qc``
    (and ``template_qc`` with a template)."""
    names = {"mask": "lesion_mask.nii.gz", "prob": "lesion_prob.nii.gz"}
    label = space.label
    if space.template is not None:
        names["template_mask"] = f"space-{label}_lesion_mask.nii.gz"
        names["transform"] = f"from-native_to-{label}_xfm.mat"
    if qc:
        names["qc"] = "qc.png"
        if space.template is not None:
            names["template_qc"] = f"space-{label}_qc.png"
    return {kind: safe_output_path(output, f"{name}_{file}") for kind, file in names.items()}


def output_files(
    output: Path, names: Sequence[str], qc: bool, space: Space, table: str
) -> list[Path]:
    """Every file this run (or shard) will write."""
    files = [path for name in names for path in scan_files(output, name, qc, space).values()]
    return [*files, output / table]


def is_finished(output: Path, name: str, source: Path, qc: bool, space: Space) -> bool:
    """Whether a scan's results are complete: every file is there (each was renamed into
    place only when complete) and both native NIfTIs lie on the input's grid (shape and
    affine), so that a result left from another input of the same name is redone."""
    files = scan_files(output, name, qc, space)
    if not all(p.is_file() for p in files.values()):
        return False
    try:
        grid = nib.load(str(source))
        results = [nib.load(str(files[kind])) for kind in ("mask", "prob")]
        return all(same_grid(r.shape[:3], r.affine, grid.shape[:3], grid.affine) for r in results)
    except Exception:  # noqa: BLE001 - an unreadable result is redone
        return False


def remove_stale_temporaries(output: Path, wanted: Sequence[Path]) -> None:
    """Delete temporary files a killed run left for these results (named as
    `stroke_seg.atomic.temporary_path` names them); they are never results themselves."""
    if not output.is_dir():
        return
    names = {p.name for p in wanted}
    for tmp in output.glob(".*.tmp*"):
        if any(is_temporary_of(tmp.name, name) for name in names):
            tmp.unlink(missing_ok=True)


def check_output(
    source: Path,
    output: Path,
    inputs: Sequence[Path],
    wanted: Sequence[Path],
    overwrite: bool,
    continue_prediction: bool = False,
) -> None:
    """Refuse writing into the input folder, name clashes and existing results (`wanted`,
    allowed with `overwrite`, or kept by `continue_prediction`)."""
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
    existing = [p for p in wanted if p.exists()]
    if existing and not (overwrite or continue_prediction):
        raise StrokeSegError(
            f"{existing[0]} already exists ({len(existing)} result file(s) would be "
            "replaced); pass overwrite=true, continue_prediction=true to finish an "
            "interrupted run, or choose another output=."
        )


# --------------------------------------------------------------------------------------
# One scan
# --------------------------------------------------------------------------------------


def lesion_stats(mask: np.ndarray, spacing: Sequence[float], connectivity: int) -> dict[str, Any]:
    """Lesion voxels, volume in mm³ and the number of lesions (connected components) of a
    mask."""
    voxels = int(np.count_nonzero(mask))
    return {
        "lesion_voxels": voxels,
        "lesion_volume_mm3": round(voxels * float(np.prod(spacing)), 3),
        "n_lesions": count_components(mask, connectivity),
    }


def finding(n_lesions: int, max_prob: float, threshold: float) -> str:
    """``lesion``, or the sentence that says the model found none, with its maximum
    probability: an empty mask is a statement, not a silence."""
    if n_lesions > 0:
        return "lesion"
    return f"no lesion found (maximum probability {max_prob:.3f}, threshold {threshold:g})"


def refused_row(path: Path, prepared: PreparedScan, space: Space) -> dict[str, Any]:
    """The lesions.csv row of a scan its checks refused: no files, the reason instead."""
    values = prepared.quality.values
    return {
        "scan": scan_name(path),
        "status": "refused",
        "registration": prepared.mapping.transform,
        "correlation": _rounded(values.get("correlation")),
        "coverage": _rounded(values.get("coverage")),
        "warning": prepared.quality.refusal,
        "template": space.label,
        "input": str(path),
    }


def _rounded(value: float | None) -> float | str:
    return "" if value is None or not np.isfinite(value) else round(float(value), 4)


def predict_scan(
    predictor: Predictor, space: Space, path: Path, output: Path, qc: bool
) -> dict[str, Any]:
    """Predict one scan and write its files; returns its lesions.csv row (a ``refused``
    row, with nothing written, when its checks refuse it)."""
    image, affine = read_nifti(path)
    header = nib.load(str(path)).header
    name = scan_name(path)
    files = scan_files(output, name, qc, space)
    spacing = spacing_of(affine)
    row: dict[str, Any] = {"scan": name, "template": space.label, "input": str(path)}
    warnings: list[str] = []
    if space.template is None:
        result = predictor.predict(image, affine)
        prob, mode = result.prob, result.mode
        mask, removed = postprocessed(prob, spacing, predictor)  # = result.mask, with a count
        row["registration"] = "resampled" if result.resampled else "none"
        if result.resampled:
            warnings.append(
                "not registered (template=none, or the model records no template): the scan "
                "must already be in the training space"
            )
    else:
        outcome = predict_in_template_space(
            predictor,
            image,
            affine,
            space.template,
            space.reference,
            source=str(path),
            registration=space.registration,
            standardise_mode=space.standardise,
            n4=space.n4,
        )
        if isinstance(outcome, PreparedScan):
            log.error("%s", outcome.quality.refusal)
            return refused_row(path, outcome, space)
        prep = outcome.prepared
        prob, mask, mode, removed = (
            outcome.prob,
            outcome.mask,
            outcome.mode,
            outcome.removed_lesions,
        )
        warnings += prep.quality.warnings
        tpl = space.template
        write_nifti(files["template_mask"], outcome.template_mask, tpl.affine)
        prep.mapping.save(files["transform"])
        if qc:
            plot_case_slices(
                prep.registered,
                tpl.brain_mask,
                outcome.template_mask,
                files["template_qc"],
                title=f"{name} on {tpl.name}",
                reference_label="template brain",
            )
        template_voxels = int(np.count_nonzero(outcome.template_mask))
        row.update(
            {
                "template_lesion_volume_mm3": round(
                    template_voxels * float(np.prod(tpl.spacing)), 3
                ),
                "hemisphere": hemisphere(outcome.template_mask, tpl.affine),
                "registration": prep.mapping.transform,
                "correlation": _rounded(prep.quality.values.get("correlation")),
                "coverage": _rounded(prep.quality.values.get("coverage")),
            }
        )
    write_nifti(files["prob"], prob.astype(np.float32), affine, header)
    write_nifti(files["mask"], mask, affine, header)
    if qc:
        plot_case_slices(image, None, mask, files["qc"], title=name)
    stats = lesion_stats(mask, spacing, predictor.connectivity)
    max_prob = float(np.max(prob)) if prob.size else 0.0
    row.update(
        {
            **stats,
            "status": "warning" if warnings else "ok",
            "max_prob": round(max_prob, 4),
            "finding": finding(stats["n_lesions"], max_prob, predictor.threshold),
            "min_lesion_mm3": predictor.min_lesion_mm3,
            "removed_lesions": removed,
            "warning": "; ".join(warnings),
            "mode": mode,
        }
    )
    return row


def finished_row(
    output: Path,
    path: Path,
    previous: Mapping[str, dict[str, Any]],
    space: Space,
    connectivity: int,
) -> dict[str, Any]:
    """The lesions.csv row of a scan kept by ``continue_prediction``: the earlier run's row,
    or, if it was killed before writing it, one recomputed from the saved mask."""
    name = scan_name(path)
    if name in previous:
        return previous[name]
    mask, affine = read_nifti(scan_files(output, name, False, space)["mask"])
    return {
        "scan": name,
        "status": "ok",
        **lesion_stats(mask, spacing_of(affine), connectivity),
        "template": space.label,
        "input": str(path),
    }


def _ckpts(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


# --------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Predict every input scan (of this shard); returns its lesions.csv rows."""
    if bool(cfg.get("merge", False)):
        if not cfg.get("output"):
            raise StrokeSegError("output= is missing: python predict.py merge=true output=DIR.")
        path, n = merge_tables(Path(str(cfg.output)).expanduser(), LESION_COLUMNS)
        log.info("Merged %d scan(s) into %s", n, path)
        return read_table(path)
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
    shard = parse_shard(cfg.get("shard"))
    source, output = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    every_input = find_inputs(source, str(cfg.pattern))
    inputs = shard_of(every_input, shard)
    qc = bool(cfg.qc)
    with config_section("inference"):
        predictor = Predictor.from_config(_ckpts(cfg.ckpt), cfg.inference)
    predictor.min_lesion_mm3 = chosen_value(cfg.get("min_lesion_mm3", 0) or 0)
    space = resolve_space(cfg, predictor)
    table = table_name(shard)
    wanted = output_files(output, [scan_name(p) for p in inputs], qc, space, table)
    check_output(source, output, every_input, wanted, bool(cfg.overwrite), resume)
    done = {p for p in inputs if resume and is_finished(output, scan_name(p), p, qc, space)}
    for path in tqdm(inputs, desc="check", unit="scan", disable=len(inputs) < 2):
        if path not in done:
            check_input(path, space)
    remove_stale_temporaries(output, wanted)
    log.info(
        "Predicting %d scan(s)%s on %s into %s (%d finished before, kept)%s",
        len(inputs) - len(done),
        "" if shard is None else f" (shard {shard[0]} of {shard[1]})",
        predictor.device,
        output,
        len(done),
        "" if space.template is None else f", registered to {space.template.name}",
    )
    previous = {r["scan"]: r for r in read_table(output / table)} if done else {}
    rows: list[dict[str, Any]] = []
    for path in tqdm(inputs, desc="predict", unit="scan", disable=len(inputs) < 2):
        if path in done:
            rows.append(finished_row(output, path, previous, space, predictor.connectivity))
        else:
            rows.append(predict_scan(predictor, space, path, output, qc))
        # Rewritten after every scan: an interrupted run still lists what it finished.
        write_csv(output / table, rows, LESION_COLUMNS)
    if shard is not None:
        written = sum(len(read_table(p)) for _, p in shard_tables(output).values())
        if written >= len(every_input):  # every shard is done: this one finished last
            merge_tables(output, LESION_COLUMNS, len(every_input))
    refused = [r for r in rows if r.get("status") == "refused"]
    if refused:
        if len(rows) == 1:
            raise StrokeSegError(str(refused[0]["warning"]))
        raise StrokeSegError(
            f"{len(refused)} of {len(rows)} scans were refused, first {refused[0]['warning']} "
            f"The reasons are in {output / table}; the other scans' results are complete."
        )
    return rows
