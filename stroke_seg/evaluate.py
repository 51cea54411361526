"""Evaluation entry point: per-scan metrics, bootstrap CIs and the paper's tables and figures.

Two ways in (see docs/evaluation.md):

* ``python evaluate.py ckpt=PATH`` (or ``ckpt=[P1,P2,P3]``, a snapshot ensemble, or
  ``models={final: [P], ensemble: [S1,S2,S3]}`` to compare models as in Table 5): predict
  the scans of one split of ``data.root`` and score them. The split comes from
  ``split_file=``, else the training run's ``split.json`` next to the checkpoint, else it is
  regenerated from ``data.split_seed`` exactly as training did.
* ``python evaluate.py predictions=DIR labels=DIR``: score masks already on disk (as
  predict.py writes them) against the references of a data root, matched by subject.

Metrics are those of Tomita et al. (2020), Sec. 2.5 (DSC, mDSC, HD, ASSD, TPR, precision,
micro-DSC; 95% CIs by a seeded bootstrap of 1000 resamples) plus the ATLAS v2.0 challenge's,
all from `stroke_seg.metrics` / `stroke_seg.stats`. Every output file is written atomically
and an output folder that already holds files is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from stroke_seg.config import run_dir
from stroke_seg.data.discovery import Case, discover
from stroke_seg.data.io import check_same_grid, load_case, load_volume
from stroke_seg.data.splits import SPLIT_NAMES, check_split, load_split, make_split
from stroke_seg.errors import StrokeSegError
from stroke_seg.inference import Predictor
from stroke_seg.metrics import SCAN_METRIC_KEYS, EmptyPolicy, scan_metrics
from stroke_seg.postprocess import choose_min_lesion_mm3, chosen_value, component_stats
from stroke_seg.report import (
    check_output_dir,
    plot_dsc_vs_lesion_size,
    plot_projections,
    render_report,
    size_quartiles,
    summary_json,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

CASE_COLUMNS = (
    "subject",
    "lesion_voxels",
    "lesion_mm3",
    *SCAN_METRIC_KEYS,
    "pred_voxels",
    "tp",
    "fp",
    "fn",
    "empty_case",
    "mode",
)
MASK_SUFFIX = "_lesion_mask"
PROB_SUFFIX = "_lesion_prob"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Scored:
    """Per-scan rows of one model (or prediction folder)."""

    name: str
    rows: list[dict[str, Any]]
    figure_links: list[tuple[str, str]]


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


def _policy(name: str) -> EmptyPolicy:
    try:
        return EmptyPolicy.from_name(str(name))
    except ValueError:
        raise StrokeSegError(f"empty_policy={name} is not known; use worst_case or nan.") from None


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
            "Folder mode needs both predictions=DIR (the *_lesion_mask.nii.gz files) and "
            "labels=DIR (the data root holding the reference masks)."
        )
    if not folder_mode and not model_mode:
        raise StrokeSegError(
            "Nothing to evaluate: pass ckpt=PATH (or a list, or models={name: PATH}) to "
            "predict and score data.root, or predictions=DIR labels=DIR."
        )
    if int(cfg.bootstrap.n_resamples) < 1:
        raise StrokeSegError(f"bootstrap.n_resamples={cfg.bootstrap.n_resamples} must be ≥ 1.")
    _policy(cfg.empty_policy)


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


def select_cases(cfg: DictConfig, checkpoints: Sequence[str]) -> tuple[list[Case], str]:
    """The cases of ``split`` under ``data.root`` and where the split came from."""
    cases = discover(cfg.data.root, cfg.data.layout)
    by_id = {c.subject: c for c in cases}
    split_name = str(cfg.split)
    if split_name == "all":
        return cases, f"all {len(cases)} scans under data.root"
    if split_name not in SPLIT_NAMES:
        raise StrokeSegError(f"split={split_name} is not known; use test, val, train or all.")
    if cfg.get("split_file"):
        split, source = load_split(cfg.split_file, list(by_id)), f"split_file={cfg.split_file}"
    elif run_files := _run_splits(checkpoints):
        splits = []
        for path in run_files:
            try:
                splits.append(load_split(path, list(by_id)))
            except StrokeSegError as err:
                raise StrokeSegError(
                    f"{err} (read from the training run; pass split=all to score every scan "
                    "under data.root, or split_file=)"
                ) from None
        for path, other in zip(run_files[1:], splits[1:], strict=True):
            if sorted(other[split_name]) != sorted(splits[0][split_name]):
                raise StrokeSegError(
                    f"{path} and {run_files[0]} list different {split_name} subjects; pass "
                    "split_file= to choose one split for all models."
                )
        split, source = splits[0], str(run_files[0])
    else:
        seed = int(cfg.data.split_seed)
        split = make_split(list(by_id), seed, tuple(cfg.data.split_proportions))
        check_split(split, list(by_id))
        source = f"regenerated from data.split_seed={seed}"
    subjects = split[split_name]
    if not subjects:
        raise StrokeSegError(f"The {split_name} list of the split ({source}) is empty.")
    return [by_id[s] for s in sorted(subjects)], source


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def score_row(
    subject: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    prob: np.ndarray | None,
    policy: EmptyPolicy,
    mode: str,
) -> dict[str, Any]:
    """One cases.csv row: `scan_metrics` plus the subject, lesion size and prediction mode."""
    row = scan_metrics(pred, ref, spacing, prob=prob, policy=policy)
    return {
        "subject": subject,
        "lesion_voxels": row["ref_voxels"],
        "lesion_mm3": row["ref_mm3"],
        "mode": mode,
        **row,
    }


def _figure(
    output: Path, rel: str, loaded: Mapping[str, Any], prob: np.ndarray, title: str
) -> tuple[str, str]:
    """Write one Fig. 2-like projection view; returns (subject, link) for report.md."""
    plot_projections(loaded["image"], prob, loaded["label"], output / rel, title, loaded["spacing"])
    return loaded["subject"], rel


def score_models(
    cases: Sequence[Case],
    predictors: Mapping[str, Predictor],
    policy: EmptyPolicy,
    output: Path,
    figures: bool,
    prefix: Mapping[str, str],
    mask_threshold: float | None = None,
) -> list[Scored]:
    """Predict every case with every model (each scan is loaded once) and score it."""
    scored = {name: Scored(name, [], []) for name in predictors}
    for case in tqdm(cases, desc="evaluate", unit="scan"):
        loaded = load_case(case, mask_threshold)
        for name, predictor in predictors.items():
            result = predictor.predict(loaded["image"], loaded["affine"])
            ref, spacing = loaded["label"], loaded["spacing"]
            row = score_row(
                case.subject, result.mask, ref, spacing, result.prob, policy, result.mode
            )
            scored[name].rows.append(row)
            if figures:
                rel = f"{prefix[name]}figures/{case.subject}.png"
                title = f"{case.subject} ({name}) DSC {row['dsc']:.2f}"
                scored[name].figure_links.append(_figure(output, rel, loaded, result.prob, title))
    return list(scored.values())


def _find_prediction(folder: Path, case: Case, suffix: str) -> Path | None:
    stems = [case.subject, case.image.name.split(".nii")[0]]
    for stem in stems:
        for ext in (".nii.gz", ".nii"):
            path = folder / f"{stem}{suffix}{ext}"
            if path.is_file():
                return path
    return None


def _load_on_grid(path: Path, loaded: Mapping[str, Any], case: Case) -> np.ndarray:
    """A predicted volume, refused unless it lies on its reference mask's voxel grid."""
    array, affine = load_volume(path)
    ref = loaded["label"]
    check_same_grid(ref.shape, loaded["affine"], array.shape, affine, case.masks[0].name, path.name)
    return array


def score_folder(
    predictions: Path,
    cases: Sequence[Case],
    policy: EmptyPolicy,
    output: Path,
    figures: bool,
    mask_threshold: float | None = None,
) -> Scored:
    """Score `<id>_lesion_mask.nii.gz` files (id = subject ID or the T1 file's name without
    .nii/.nii.gz, as predict.py names them) against the references of `cases`; a matching
    `<id>_lesion_prob.nii.gz` gives mDSC. Every mask file must match a subject."""
    if not predictions.is_dir():
        raise StrokeSegError(f"predictions={predictions} is not a folder.")
    matched = {case.subject: _find_prediction(predictions, case, MASK_SUFFIX) for case in cases}
    used = {p.resolve() for p in matched.values() if p is not None}
    stray = sorted(
        p
        for p in predictions.iterdir()
        if p.name.split(".nii")[0].endswith(MASK_SUFFIX) and p.resolve() not in used
    )
    if stray:
        raise StrokeSegError(
            f"{stray[0]} matches no subject under labels= ({len(stray)} such file(s)); name "
            f"masks <subject>{MASK_SUFFIX}.nii.gz or <T1 file name>{MASK_SUFFIX}.nii.gz."
        )
    todo = [c for c in cases if matched[c.subject] is not None]
    if not todo:
        raise StrokeSegError(
            f"predictions={predictions} holds no <subject>{MASK_SUFFIX}.nii.gz file for the "
            f"{len(cases)} subjects under labels=."
        )
    result = Scored(predictions.name or "predictions", [], [])
    for case in tqdm(todo, desc="evaluate", unit="scan"):
        loaded = load_case(case, mask_threshold)
        pred = _load_on_grid(matched[case.subject], loaded, case)
        prob_path = _find_prediction(predictions, case, PROB_SUFFIX)
        prob = None if prob_path is None else _load_on_grid(prob_path, loaded, case)
        row = score_row(
            case.subject, pred > 0, loaded["label"], loaded["spacing"], prob, policy, "files"
        )
        result.rows.append(row)
        if figures:
            title = f"{case.subject} DSC {row['dsc']:.2f}"
            shown = prob if prob is not None else (pred > 0).astype(np.float32)
            result.figure_links.append(
                _figure(output, f"figures/{case.subject}.png", loaded, shown, title)
            )
    return result


def choose_postprocessing(
    cfg: DictConfig,
    predictors: Mapping[str, Predictor],
    checkpoints: Sequence[str],
    output: Path,
) -> dict[str, dict[str, Any]]:
    """Set each predictor's ``min_lesion_mm3`` from ``cfg.min_lesion_mm3``: a number, a
    postprocessing.json, or ``auto``: chosen per model on the val split of data.root the
    nnU-Net way (`stroke_seg.postprocess.choose_min_lesion_mm3`) and written to
    ``output/postprocessing.json``. Returns {model name: record} for the report."""
    value = cfg.get("min_lesion_mm3", 0) or 0
    if str(value) != "auto":
        records = {}
        for name, predictor in predictors.items():
            predictor.min_lesion_mm3 = chosen_value(value, name)
            records[name] = {"min_lesion_mm3": predictor.min_lesion_mm3, "source": str(value)}
        return records
    val_cfg = OmegaConf.merge(cfg, {"split": "val"})
    cases, source = select_cases(val_cfg, checkpoints)
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
    write_json_atomic(output / "postprocessing.json", records)
    return records


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_results(
    output: Path,
    results: Sequence[Scored],
    prefix: Mapping[str, str],
    facts: list[tuple[str, str]],
    policy_name: str,
    n_resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """cases.csv, summary.json and dsc_vs_lesion_size.png per model, then report.md."""
    summaries, quartiles, scatters, links = {}, {}, {}, {}
    for res in results:
        folder = output / prefix[res.name]
        write_csv_atomic(folder / "cases.csv", res.rows, CASE_COLUMNS)
        summaries[res.name] = summary_json(res.rows, policy_name, n_resamples, seed)
        write_json_atomic(folder / "summary.json", summaries[res.name])
        quartiles[res.name] = size_quartiles(res.rows, n_resamples, seed)
        scatters[res.name] = f"{prefix[res.name]}dsc_vs_lesion_size.png"
        plot_dsc_vs_lesion_size(res.rows, output / scatters[res.name], res.name)
        links[res.name] = res.figure_links
    facts = [*facts, ("bootstrap", f"{n_resamples} resamples, seed {seed}")]
    text = render_report(
        "Evaluation report", facts, summaries, quartiles, scatters, links, n_resamples
    )
    write_text_atomic(output / "report.md", text)
    return summaries


def run(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Evaluate as configured; returns {model name: summary.json contents}."""
    check_config(cfg)
    policy = _policy(cfg.empty_policy)
    output = check_output_dir(cfg.output, bool(cfg.overwrite))
    n_resamples, seed = int(cfg.bootstrap.n_resamples), int(cfg.bootstrap.seed)
    figures = bool(cfg.figures)

    if cfg.get("predictions"):
        value = cfg.get("min_lesion_mm3", 0) or 0
        if str(value) == "auto" or str(value).endswith(".json") or chosen_value(value) > 0:
            raise StrokeSegError(
                "min_lesion_mm3 post-processes predictions made here (ckpt= or models=); for "
                "masks on disk run predict.py with min_lesion_mm3= first, or set it to 0."
            )
        cases = discover(cfg.labels, cfg.data.layout)
        facts = [
            ("predictions", str(cfg.predictions)),
            ("labels", f"{cfg.labels} (layout {cfg.data.layout})"),
        ]
        result = score_folder(
            Path(cfg.predictions), cases, policy, output, figures, cfg.data.get("mask_threshold")
        )
        results, prefix = [result], {result.name: ""}
    else:
        sets = model_sets(cfg)
        predictors = {
            name: Predictor.from_checkpoints(
                paths,
                mode=str(cfg.mode),
                tta=bool(cfg.tta),
                overlap=float(cfg.overlap),
                device=str(cfg.device),
                amp=bool(cfg.amp),
            )
            for name, paths in sets.items()
        }
        all_ckpts = [p for paths in sets.values() for p in paths]
        cases, source = select_cases(cfg, all_ckpts)
        post = choose_postprocessing(cfg, predictors, all_ckpts, output)
        multi = len(sets) > 1
        prefix = {name: (f"{name}/" if multi else "") for name in sets}
        facts = [(f"model {name}", ", ".join(paths)) for name, paths in sets.items()]
        first = next(iter(predictors.values()))
        facts += [
            ("data", f"{cfg.data.root} (layout {cfg.data.layout})"),
            ("split", f"{cfg.split}: {len(cases)} scans ({source})"),
            (
                "inference",
                f"mode={cfg.mode}"
                + (f", overlap={cfg.overlap}" if cfg.mode != "centre_crop" else "")
                + f", tta={cfg.tta}, amp={cfg.amp}, device={first.device}",
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
        log.info("Evaluating %d models on %d scans (%s)", len(sets), len(cases), source)
        results = score_models(
            cases, predictors, policy, output, figures, prefix, cfg.data.get("mask_threshold")
        )
        modes = sorted({r["mode"] for res in results for r in res.rows})
        facts.append(("spatial strategy used", ", ".join(modes)))
    facts.append(("empty-mask policy", policy.name))
    summaries = write_results(output, results, prefix, facts, policy.name, n_resamples, seed)
    write_text_atomic(output / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for name, summary in summaries.items():
        dsc = summary["metrics"]["dsc"]
        log.info("%s: DSC %.3f (n=%d), results in %s", name, dsc["mean"], summary["n"], output)
    return summaries
