"""Evaluation entry point: per-scan metrics, bootstrap CIs and the paper's tables and figures.

Two ways in (see docs/evaluation.md):

* ``python evaluate.py ckpt=PATH`` (or ``ckpt=[P1,P2,P3]``, a snapshot ensemble, or
  ``models={final: [P], ensemble: [S1,S2,S3]}`` to compare models as in Table 5, each
  under every mode of ``table5_modes=[centre_crop,sliding_window]`` if given): predict the
  scans of one split of ``data.root`` and score them. The split comes from ``split_file=``,
  else the training run's ``split.json`` next to the checkpoint, else it is regenerated from
  ``data.split_seed`` exactly as training did.
* ``python evaluate.py predictions=DIR labels=DIR``: score masks already on disk. ``labels``
  is a plain folder of reference masks paired with the predictions by file name (as
  nnU-Net's ``evaluate_folder``), or a data root in ``data.layout`` matched by subject.

Metrics are those of Tomita et al. (2020), Sec. 2.5 (DSC, mDSC, HD, ASSD, TPR, precision,
micro-DSC; 95% CIs by a seeded bootstrap of 1000 resamples) plus the ATLAS v2.0 challenge's,
all from `stroke_seg.metrics` / `stroke_seg.stats`; summary.json records which definition
produced each number (``definitions``). Every output file is written atomically and an
output folder that already holds files is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from stroke_seg.atomic import write_json, write_text
from stroke_seg.config import run_dir
from stroke_seg.data.checks import binarize_mask, check_same_grid
from stroke_seg.data.discovery import discover
from stroke_seg.data.io import Case, load_case, read_nifti, spacing_of
from stroke_seg.data.splits import GROUPING, SPLIT_NAMES, resolve_split
from stroke_seg.errors import StrokeSegError, check_choice, config_section
from stroke_seg.inference import MODES, Predictor
from stroke_seg.intensity import IntensityReference
from stroke_seg.metrics import DEFAULT_CONNECTIVITY, LESION_CONNECTIVITIES, EmptyPolicy
from stroke_seg.outputs import check_output_dir
from stroke_seg.plotting import plot_projections
from stroke_seg.postprocess import choose_min_lesion_mm3, chosen_value, component_stats
from stroke_seg.quality import check_training_range
from stroke_seg.registration import DEFAULT_TEMPLATE, load_template
from stroke_seg.scoring import Scored, empty_policy, score_row, write_results

log = logging.getLogger(__name__)

MASK_SUFFIX = "_lesion_mask"
PROB_SUFFIX = "_lesion_prob"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _paths(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def model_sets(cfg: DictConfig) -> dict[str, list[str]]:
    """{name: checkpoints} from ``ckpt=`` (one model or ensemble) or ``models={...}``."""
    if cfg.get("models"):
        if cfg.get("ckpt"):
            raise StrokeSegError("Pass either ckpt= or models={name: ckpt, ...}, not both.")
        models = OmegaConf.to_container(cfg.models, resolve=True)
        if not isinstance(models, dict):
            raise StrokeSegError("models= must map names to checkpoints, e.g. models={a: A.ckpt}.")
        for name in models:
            if not _NAME.match(str(name)):
                raise StrokeSegError(
                    f"models name {name!r} may only use letters, digits, '_', '-' and '.'; "
                    "it names a result folder."
                )
        return {str(k): _paths(v) for k, v in models.items()}
    ckpts = _paths(cfg.ckpt)
    if len(ckpts) == 1:
        path = Path(ckpts[0])
        name = f"{Path(run_dir(str(path), str(path.parent))).name}/{path.stem}"
    else:
        name = f"ensemble of {len(ckpts)}"
    return {name: ckpts}


def table5_modes(cfg: DictConfig) -> list[str]:
    """The inference modes every model is scored under (``table5_modes``, the Table 5
    ablation's rows), or [] to score each model once with ``inference.mode``."""
    value = cfg.get("table5_modes")
    if not value:
        return []
    modes = _paths(value)
    for mode in modes:
        check_choice("table5_modes", mode, MODES)
    if len(set(modes)) != len(modes):
        raise StrokeSegError(f"table5_modes={modes} names a mode twice; list each mode once.")
    return modes


def check_config(cfg: DictConfig) -> None:
    """Refuse a config that names no or both inputs, before anything is loaded or written."""
    folder_mode = bool(cfg.get("predictions")) or bool(cfg.get("labels"))
    model_mode = bool(cfg.get("ckpt")) or bool(cfg.get("models"))
    if folder_mode and model_mode:
        raise StrokeSegError(
            "Pass either ckpt=/models= (predict and score) or predictions= with labels= "
            "(score masks on disk), not both."
        )
    if folder_mode and not (cfg.get("predictions") and cfg.get("labels")):
        raise StrokeSegError(
            "Folder mode needs both predictions=DIR (the predicted masks) and labels=DIR (a "
            "folder of reference masks named like them, or a data root in data.layout)."
        )
    if not folder_mode and not model_mode:
        raise StrokeSegError(
            "Nothing to evaluate: pass ckpt=PATH (or a list, or models={name: PATH}) to "
            "predict and score data.root, or predictions=DIR labels=DIR."
        )
    if folder_mode and cfg.get("table5_modes"):
        raise StrokeSegError(
            "table5_modes= chooses how models predict, so it needs ckpt= or models=; folder "
            "mode scores masks already on disk."
        )
    if cfg.get("images") and not folder_mode:
        raise StrokeSegError(
            "images= (T1 scans for the figures) belongs to folder mode (predictions= "
            "labels=); with ckpt= the scans come from data.root."
        )
    table5_modes(cfg)
    if int(cfg.bootstrap.n_resamples) < 1:
        raise StrokeSegError(f"bootstrap.n_resamples={cfg.bootstrap.n_resamples} must be ≥ 1.")
    empty_policy(cfg.empty_policy)
    check_choice("connectivity", cfg.connectivity, LESION_CONNECTIVITIES)


# --------------------------------------------------------------------------------------
# Which scans
# --------------------------------------------------------------------------------------


def _run_splits(checkpoints: Sequence[str]) -> list[Path]:
    found = []
    for ckpt in checkpoints:
        path = Path(run_dir(str(ckpt), str(Path(ckpt).parent))) / "split.json"
        if path.is_file() and path not in found:
            found.append(path)
    return found


def select_cases(
    checkpoints: Sequence[str],
    *,
    root: str | Path,
    layout: str,
    split: str,
    split_file: str | Path | None,
    seed: int,
    proportions: Sequence[float],
) -> tuple[list[Case], str]:
    """The cases of split `split` (or ``all``) under `root` and where the split came from.

    The split is `split_file` when given, else the training run's ``split.json`` next to the
    checkpoints, else regenerated from `seed` and `proportions`; reading, generating and
    checking are `stroke_seg.data.splits.resolve_split`'s, the same as in training, so a
    regenerated split is the one training used, and a split that puts one subject's scans
    (time points, sessions: `Case.group`) in two lists is refused.
    """
    with config_section("data"):  # root and layout come from the data section
        cases = discover(root, layout)
    by_id = {c.subject: c for c in cases}
    subjects = list(by_id)
    groups = {c.subject: c.group for c in cases}
    if split == "all":
        return cases, f"all {len(cases)} scans under data.root"
    check_choice("split", split, (*SPLIT_NAMES, "all"))
    if split_file:
        chosen = resolve_split(subjects, split_file, seed, proportions, groups=groups)
        source = f"split_file={split_file}"
    elif run_files := _run_splits(checkpoints):
        splits = []
        for path in run_files:
            try:
                splits.append(resolve_split(subjects, path, seed, proportions, groups=groups))
            except StrokeSegError as err:
                raise StrokeSegError(
                    f"{err} (read from the training run; pass split=all to score every scan "
                    "under data.root, or split_file=)"
                ) from None
        for path, other in zip(run_files[1:], splits[1:], strict=True):
            if sorted(other[split]) != sorted(splits[0][split]):
                raise StrokeSegError(
                    f"{path} and {run_files[0]} list different {split} subjects; pass "
                    "split_file= to choose one split for all models."
                )
        chosen, source = splits[0], str(run_files[0])
    else:
        chosen = resolve_split(subjects, None, seed, proportions, groups=groups)
        source = f"regenerated from data.split_seed={seed}"
    if not chosen[split]:
        raise StrokeSegError(f"The {split} list of the split ({source}) is empty.")
    return [by_id[s] for s in sorted(chosen[split])], source


# --------------------------------------------------------------------------------------
# Scoring models
# --------------------------------------------------------------------------------------


def _figure(
    output: Path,
    rel: str,
    loaded: Mapping[str, Any],
    prob: np.ndarray,
    title: str,
) -> tuple[str, str]:
    """Write one Fig. 2-like projection view; returns (subject, link) for report.md. Without
    a T1 image (folder mode without images=) the masks are drawn on black."""
    image = loaded["image"] if loaded["image"] is not None else np.zeros(prob.shape, np.float32)
    plot_projections(image, prob, loaded["label"], output / rel, title, loaded["spacing"])
    return loaded["subject"], rel


class IntensityCheck:
    """`stroke_seg.quality.check_training_range` for each evaluated scan, against the
    training scans' intensity reference in a predictor's checkpoint.

    Evaluation feeds every scan to the model as it is (the paper's /255, no standardisation),
    so that its numbers are the paper's; a scan in other units (0-1, raw scanner values) or
    of another contrast would then be scored near 0 without a word. This names it instead:
    its ``intensity_z`` and ``warning`` in cases.csv, a log line, and a count in report.md."""

    def __init__(self, predictor: Predictor) -> None:
        pre, source = predictor.preprocessing, predictor.models[0].source
        self.reference = IntensityReference.from_dict(pre.intensity_reference, source)
        self.brain: np.ndarray | None = None
        if self.reference.brain == "template":  # measured inside the template's brain mask
            path = None if pre.template in (None, DEFAULT_TEMPLATE) else pre.template
            try:
                self.brain = load_template(pre.spacing[0], path).brain_mask
            except StrokeSegError:  # its template file is not on this machine
                self.brain = None

    @classmethod
    def of(cls, predictor: Predictor) -> IntensityCheck | None:
        """The check, or None for a checkpoint that records no intensity reference."""
        has = predictor.preprocessing.intensity_reference is not None
        return cls(predictor) if has else None

    def figures(self, loaded: Mapping[str, Any]) -> dict[str, Any]:
        """The scan's ``intensity_z`` and its warning (empty when it looks like training)."""
        image = loaded["image"]
        reference, brain = self.reference, self.brain
        if brain is None or brain.shape != image.shape:
            # Off the template grid (another spacing): inside the scan's own nonzero voxels.
            reference, brain = replace(reference, brain="nonzero"), None
        name = str(loaded["subject"])
        report = check_training_range(image, loaded["spacing"], reference, name, brain)
        return {
            "intensity_z": round(report.values["intensity_z"], 2),
            "warning": report.warning_text(),
        }


def score_models(
    cases: Sequence[Case],
    predictors: Mapping[str, Predictor],
    policy: EmptyPolicy,
    output: Path,
    figures: bool,
    prefix: Mapping[str, str],
    mask_threshold: float | None = None,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> list[Scored]:
    """Predict every case with every model (each scan is loaded once) and score it; each
    row carries the scan's intensity figures against the first model's training scans
    (`IntensityCheck`; none for a checkpoint without an intensity reference)."""
    scored = {
        name: Scored(name, definitions={"inference_mode": p.mode}) for name, p in predictors.items()
    }
    check = IntensityCheck.of(next(iter(predictors.values())))
    for case in tqdm(cases, desc="evaluate", unit="scan"):
        loaded = load_case(case, mask_threshold)
        intensity = check.figures(loaded) if check is not None else {}
        if intensity.get("warning"):
            log.warning("%s: %s", case.subject, intensity["warning"])
        for name, predictor in predictors.items():
            result = predictor.predict(loaded["image"], loaded["affine"])
            ref, spacing = loaded["label"], loaded["spacing"]
            row = score_row(
                case.subject,
                result.mask,
                ref,
                spacing,
                result.prob,
                policy,
                result.mode,
                connectivity,
            )
            row.update(intensity)
            scored[name].rows.append(row)
            if figures:
                rel = f"{prefix[name]}figures/{case.subject}.png"
                title = f"{case.subject} ({name}) DSC {row['dsc']:.2f}"
                scored[name].figure_links.append(_figure(output, rel, loaded, result.prob, title))
    return list(scored.values())


def _predictors(
    sets: Mapping[str, Sequence[str]], inference: Mapping[str, Any], modes: Sequence[str]
) -> tuple[dict[str, Predictor], dict[str, str]]:
    """{row name: predictor} and {row name: result folder prefix}. Without `modes` a row per
    model, under ``inference.mode``; with them a row per (model, mode), named ``model (mode)``
    in ``<model>/<mode>/`` (``<mode>/`` for one model). Each checkpoint is loaded once."""
    predictors, prefix = {}, {}
    for name, paths in sets.items():
        base = Predictor.from_config(paths, inference)
        folder = f"{name}/" if len(sets) > 1 else ""
        if not modes:
            predictors[name], prefix[name] = base, folder
            continue
        for mode in modes:
            row = f"{name} ({mode})"
            predictors[row] = Predictor(
                base.models,
                mode=mode,
                tta=base.tta,
                overlap=base.overlap,
                device=base.device,
                amp=base.amp,
            )
            prefix[row] = f"{folder}{mode}/"
    return predictors, prefix


def _precision(predictor: Predictor) -> str:
    if predictor.amp and predictor.device.type == "cuda":
        return "float16 autocast (inference.amp=true on CUDA)"
    return "fp32"


# --------------------------------------------------------------------------------------
# Folder mode: masks on disk
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One scan to score in folder mode: its name in cases.csv, the predicted mask (and
    probability map), and the reference: a discovered case (data root) or a mask file
    (flat folder, with an optional T1 image for the figures)."""

    name: str
    prediction: Path
    probability: Path | None
    reference: Case | Path
    image: Path | None = None


@dataclass
class Pairing:
    """What pairing found: the pairs, and the files (or subjects) left without a partner."""

    pairs: list[Pair]
    unpaired_predictions: list[str]
    unpaired_references: list[str]

    def summary(self) -> dict[str, list[str]]:
        """The ``unpaired`` entry of summary.json."""
        return {"predictions": self.unpaired_predictions, "references": self.unpaired_references}


def nifti_stem(name: str) -> str | None:
    """The file name without ``.nii.gz``/``.nii``, or None for any other file."""
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def _without(stem: str, suffix: str) -> str:
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem


def keyed_files(folder: Path, key_of: Any, what: str) -> dict[str, Path]:
    """{key_of(stem): file} for the NIfTI files directly in `folder` (hidden files, such as
    an unfinished atomic write, are skipped; `key_of` returns None to skip a file). Two files
    with one key (``a.nii`` and ``a.nii.gz``, or ``a.nii.gz`` and ``a_lesion_mask.nii.gz``)
    are refused: which one is meant cannot be guessed."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = nifti_stem(path.name)
        if stem is None or path.name.startswith(".") or not path.is_file():
            continue
        key = key_of(stem)
        if key is None:
            continue
        if key in found:
            raise StrokeSegError(
                f"{found[key]} and {path.name} are both {what} {key!r}; remove one of them."
            )
        found[key] = path
    return found


def prediction_files(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """({key: mask file}, {key: probability file}) of a predictions folder: ``<key>.nii.gz``
    or ``<key>_lesion_mask.nii.gz`` masks, ``<key>_lesion_prob.nii.gz`` probability maps
    (``.nii`` too)."""
    if not folder.is_dir():
        raise StrokeSegError(f"predictions={folder} is not a folder.")
    masks = keyed_files(
        folder,
        lambda s: None if s.endswith(PROB_SUFFIX) else _without(s, MASK_SUFFIX),
        "the prediction of",
    )
    probs = keyed_files(
        folder,
        lambda s: s[: -len(PROB_SUFFIX)] if s.endswith(PROB_SUFFIX) else None,
        "the probability map of",
    )
    return masks, probs


def is_flat_folder(folder: Path) -> bool:
    """True when `folder` directly holds NIfTI files: a plain folder of masks, not a data
    root (every known layout keeps its scans in subfolders)."""
    return any(nifti_stem(p.name) is not None and p.is_file() for p in folder.iterdir())


def _unpaired_predictions(
    masks: Mapping[str, Path], probs: Mapping[str, Path], used: set[str]
) -> list[str]:
    files = [p for k, p in masks.items() if k not in used]
    files += [p for k, p in probs.items() if k not in used]
    return sorted(p.name for p in files)


def pair_with_cases(
    masks: Mapping[str, Path], probs: Mapping[str, Path], cases: Sequence[Case]
) -> Pairing:
    """Predictions named ``<subject>`` or ``<T1 file name without .nii/.nii.gz>`` (as
    predict.py names them), paired with the discovered cases of a data root."""
    pairs, missing, used = [], [], set()
    for case in cases:
        stems = [case.subject, case.image.name.split(".nii")[0]]
        key = next((s for s in stems if s in masks), None)
        if key is None:
            missing.append(case.subject)
            continue
        used.add(key)
        pairs.append(Pair(case.subject, masks[key], probs.get(key), case))
    return Pairing(pairs, _unpaired_predictions(masks, probs, used), missing)


def pair_with_folder(
    masks: Mapping[str, Path],
    probs: Mapping[str, Path],
    labels: Path,
    images: Path | None,
) -> Pairing:
    """Predictions paired with the reference masks of a flat folder by file name (without
    ``.nii``/``.nii.gz`` and an optional ``_lesion_mask``), as nnU-Net's evaluate_folder;
    T1 images (for the figures only) from `images`, named like the masks or with nnU-Net's
    ``_0000`` channel suffix."""
    refs = keyed_files(labels, lambda s: _without(s, MASK_SUFFIX), "the reference of")
    t1s = {} if images is None else keyed_files(images, lambda s: _without(s, "_0000"), "T1 of")
    pairs, missing = [], []
    for key, ref in refs.items():
        if key not in masks:
            missing.append(ref.name)
            continue
        pairs.append(Pair(key, masks[key], probs.get(key), ref, t1s.get(key)))
    return Pairing(pairs, _unpaired_predictions(masks, probs, set(refs) & set(masks)), missing)


def _load_reference(pair: Pair, mask_threshold: float | None) -> dict[str, Any]:
    """The reference of `pair` as `load_case` returns it (image None without a T1), and the
    name of the file that defines its grid."""
    if isinstance(pair.reference, Case):
        return {**load_case(pair.reference, mask_threshold), "grid": pair.reference.masks[0].name}
    path = pair.reference
    mask, affine = read_nifti(path)
    label = binarize_mask(mask, path, mask_threshold)
    image = None
    if pair.image is not None:
        image, image_affine = read_nifti(pair.image)
        check_same_grid(label.shape, affine, image.shape, image_affine, path.name, str(pair.image))
    return {
        "subject": pair.name,
        "image": image,
        "label": label,
        "affine": affine,
        "spacing": spacing_of(affine),
        "grid": path.name,
    }


def _load_on_grid(path: Path, ref: Mapping[str, Any]) -> np.ndarray:
    """A predicted volume, refused (the file named) unless it lies on its reference's grid."""
    array, affine = read_nifti(path)
    check_same_grid(ref["label"].shape, ref["affine"], array.shape, affine, ref["grid"], str(path))
    return array


def score_pairs(
    name: str,
    pairs: Sequence[Pair],
    policy: EmptyPolicy,
    output: Path,
    figures: bool,
    mask_threshold: float | None = None,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> Scored:
    """Score each pair's mask (any non-zero voxel is lesion; mDSC from its probability map,
    nan without one) against its reference."""
    result = Scored(name)
    for pair in tqdm(pairs, desc="evaluate", unit="scan"):
        ref = _load_reference(pair, mask_threshold)
        pred = _load_on_grid(pair.prediction, ref) > 0
        prob = None if pair.probability is None else _load_on_grid(pair.probability, ref)
        row = score_row(
            pair.name, pred, ref["label"], ref["spacing"], prob, policy, "files", connectivity
        )
        result.rows.append(row)
        if figures:
            title = f"{pair.name} DSC {row['dsc']:.2f}"
            shown = prob if prob is not None else pred.astype(np.float32)
            link = _figure(output, f"figures/{pair.name}.png", ref, shown, title)
            result.figure_links.append(link)
    return result


def _select(cfg: DictConfig, checkpoints: Sequence[str], split: str) -> tuple[list[Case], str]:
    """`select_cases` with the data.* keys of `cfg`."""
    return select_cases(
        checkpoints,
        root=cfg.data.root,
        layout=cfg.data.layout,
        split=split,
        split_file=cfg.get("split_file"),
        seed=int(cfg.data.split_seed),
        proportions=tuple(cfg.data.split_proportions),
    )


def choose_postprocessing(
    cfg: DictConfig,
    predictors: Mapping[str, Predictor],
    checkpoints: Sequence[str],
    output: Path,
    connectivity: int,
) -> dict[str, dict[str, Any]]:
    """Set each predictor's ``min_lesion_mm3`` from ``cfg.min_lesion_mm3``: a number, a
    postprocessing.json, or ``auto``: chosen per model on the val split of data.root the
    nnU-Net way (`stroke_seg.postprocess.choose_min_lesion_mm3`) and written to
    ``output/postprocessing.json``. Returns {model name: record} for the report."""
    value = cfg.get("min_lesion_mm3", 0) or 0
    for predictor in predictors.values():
        predictor.connectivity = connectivity
    if str(value) != "auto":
        records = {}
        for name, predictor in predictors.items():
            predictor.min_lesion_mm3 = chosen_value(value, name)
            records[name] = {"min_lesion_mm3": predictor.min_lesion_mm3, "source": str(value)}
        return records
    cases, source = _select(cfg, checkpoints, split="val")
    stats: dict[str, list] = {name: [] for name in predictors}
    for case in tqdm(cases, desc="choose min_lesion_mm3 (val)", unit="scan"):
        loaded = load_case(case, cfg.data.get("mask_threshold"))
        for name, predictor in predictors.items():
            predictor.min_lesion_mm3 = 0.0
            result = predictor.predict(loaded["image"], loaded["affine"])
            stats[name].append(
                component_stats(
                    result.mask, loaded["label"], loaded["spacing"], predictor.connectivity
                )
            )
    records = {}
    for name, predictor in predictors.items():
        record = choose_min_lesion_mm3(stats[name])
        record.update({"connectivity": predictor.connectivity, "chosen_on": f"val: {source}"})
        predictor.min_lesion_mm3 = record["min_lesion_mm3"]
        records[name] = record
        log.info(
            "%s: min_lesion_mm3=%g chosen on %d val scans (mean DSC %.3f, %.3f without)",
            name,
            record["min_lesion_mm3"],
            record["n_scans"],
            record["best_dsc"],
            record["baseline_dsc"],
        )
    write_json(output / "postprocessing.json", records)
    return records


def _show(names: Sequence[str], limit: int = 5) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pair_folder_mode(cfg: DictConfig) -> tuple[Pairing, str]:
    """The pairs of folder mode and how ``labels`` was read, or one sentence when no file
    pairs up; unpaired files are logged and kept for summary.json."""
    predictions, labels = Path(cfg.predictions), Path(cfg.labels)
    masks, probs = prediction_files(predictions)
    if not labels.is_dir():
        raise StrokeSegError(f"labels={labels} is not a folder.")
    images = Path(cfg.images) if cfg.get("images") else None
    if images is not None and not images.is_dir():
        raise StrokeSegError(f"images={images} is not a folder.")
    if is_flat_folder(labels):
        pairing = pair_with_folder(masks, probs, labels, images)
        how = f"{labels} (a folder of masks, paired by file name)"
        naming = "the same file name in both (.nii or .nii.gz, optional _lesion_mask suffix)"
    else:
        with config_section("data"):  # the layout is data.layout
            cases = discover(labels, cfg.data.layout)
        pairing = pair_with_cases(masks, probs, cases)
        how = f"{labels} (layout {cfg.data.layout}, paired by subject)"
        naming = (
            f"<subject>{MASK_SUFFIX}.nii.gz or <T1 file name>{MASK_SUFFIX}.nii.gz for the "
            f"{len(cases)} subjects there"
        )
    if not pairing.pairs:
        first = pairing.unpaired_predictions[:1]
        raise StrokeSegError(
            f"No prediction in predictions={predictions} pairs with a reference in "
            f"labels={labels}"
            + (f" (first prediction: {first[0]})" if first else " (it holds no NIfTI mask)")
            + f"; name them {naming}."
        )
    if pairing.unpaired_predictions:
        log.warning(
            "%d file(s) in predictions= have no reference and are not scored: %s",
            len(pairing.unpaired_predictions),
            _show(pairing.unpaired_predictions),
        )
    if pairing.unpaired_references:
        log.warning(
            "%d reference(s) in labels= have no prediction and are not scored: %s",
            len(pairing.unpaired_references),
            _show(pairing.unpaired_references),
        )
    return pairing, how


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def run(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Evaluate as configured; returns {model name: summary.json contents}."""
    check_config(cfg)
    policy = empty_policy(cfg.empty_policy)
    connectivity = int(cfg.connectivity)
    output = check_output_dir(cfg.output, bool(cfg.overwrite))
    n_resamples, seed = int(cfg.bootstrap.n_resamples), int(cfg.bootstrap.seed)
    figures = bool(cfg.figures)
    mask_threshold = cfg.data.get("mask_threshold")

    if cfg.get("predictions"):
        value = cfg.get("min_lesion_mm3", 0) or 0
        if str(value) == "auto" or str(value).endswith(".json") or chosen_value(value) > 0:
            raise StrokeSegError(
                "min_lesion_mm3 post-processes predictions made here (ckpt= or models=); for "
                "masks on disk run predict.py with min_lesion_mm3= first, or set it to 0."
            )
        pairing, how = pair_folder_mode(cfg)
        facts = [
            ("predictions", str(cfg.predictions)),
            ("labels", how),
            ("T1 images", str(cfg.images) if cfg.get("images") else "none (figures: masks only)"),
            (
                "pairs",
                f"{len(pairing.pairs)} scored; {len(pairing.unpaired_predictions)} prediction(s) "
                f"without reference, {len(pairing.unpaired_references)} reference(s) without "
                "prediction (listed in summary.json, `unpaired`)",
            ),
        ]
        name = Path(cfg.predictions).name or "predictions"
        result = score_pairs(
            name, pairing.pairs, policy, output, figures, mask_threshold, connectivity
        )
        result.extra["unpaired"] = pairing.summary()
        results, prefix, definitions = [result], {result.name: ""}, {}
    else:
        sets, modes = model_sets(cfg), table5_modes(cfg)
        with config_section("inference"):
            predictors, prefix = _predictors(sets, cfg.inference, modes)
        all_ckpts = [p for paths in sets.values() for p in paths]
        cases, source = _select(cfg, all_ckpts, split=str(cfg.split))
        post = choose_postprocessing(cfg, predictors, all_ckpts, output, connectivity)
        facts = [(f"model {name}", ", ".join(paths)) for name, paths in sets.items()]
        first, inference = next(iter(predictors.values())), cfg.inference
        mode = f"{', '.join(modes)} (table5_modes)" if modes else str(inference.mode)
        windows = modes or inference.mode != "centre_crop"
        overlap = f", overlap={inference.overlap}" if windows else ""
        facts += [
            ("data", f"{cfg.data.root} (layout {cfg.data.layout})"),
            ("split", f"{cfg.split}: {len(cases)} scans ({source})"),
            (
                "inference",
                f"mode={mode}{overlap}, tta={inference.tta}, amp={inference.amp}, "
                f"device={first.device}",
            ),
            ("preprocessing", str(first.preprocessing)),
            (
                "post-processing",
                ", ".join(
                    f"{name}: min_lesion_mm3={rec['min_lesion_mm3']:g}"
                    for name, rec in post.items()
                )
                + f" ({cfg.get('min_lesion_mm3', 0)}; {first.connectivity}-connectivity)",
            ),
        ]
        log.info("Evaluating %d models on %d scans (%s)", len(predictors), len(cases), source)
        results = score_models(
            cases, predictors, policy, output, figures, prefix, mask_threshold, connectivity
        )
        used = sorted({r["mode"] for res in results for r in res.rows})
        facts.append(("spatial strategy used", ", ".join(used)))
        flagged = [r["subject"] for r in results[0].rows if r.get("warning")]
        checked = any("intensity_z" in r for r in results[0].rows)
        facts.append(
            (
                "intensity checks",
                f"{len(flagged)} of {len(cases)} scans unlike the training scans "
                f"(cases.csv `warning`){': ' + _show(flagged) if flagged else ''}"
                if checked
                else "none (the checkpoint records no training intensity reference)",
            )
        )
        definitions = {"precision": _precision(first), "split_grouping": GROUPING}
    facts.append(("empty-mask policy", policy.name))
    facts.append(("lesion connectivity", f"{connectivity} (lesion F1, lesion-count difference)"))
    summaries = write_results(
        output, results, prefix, facts, policy.name, n_resamples, seed, definitions
    )
    write_text(output / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for name, summary in summaries.items():
        dsc = summary["metrics"]["dsc"]
        log.info("%s: DSC %.3f (n=%d), results in %s", name, dsc["mean"], summary["n"], output)
    return summaries
