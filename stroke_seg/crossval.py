"""Cross-validation: score every fold's model on the fixed test split, and their ensemble.

Train the folds with a multirun (docs/scaling.md)::

    python train.py -m name=cv data.fold=0,1,2,3,4 data.n_folds=5 \\
        'hydra.sweep.subdir=fold${data.fold}_${stage.name}'

then aggregate (``conf/crossval.yaml``; ``python -m stroke_seg.crossval`` is the same)::

    stroke-seg-crossval runs=runs/cv/multirun [stage_name=zoom_in] [checkpoint=last.ckpt]

Every fold shares the test subjects (`stroke_seg.data.splits.fold_split` re-cuts only train +
val), so each fold model is scored on the same held-out scans and the fold models can be
ensembled there by averaging their probabilities — the same average that
`stroke_seg.inference.Predictor` takes over a list of checkpoints, computed here from each
fold's own prediction so that every network runs once per scan. The models are applied as
the ``inference`` config group says (fp32 by default, as evaluation). Written to ``output``:

* ``crossval.json`` / ``crossval.md``: per fold the validation DSC of its training run and its
  test metrics; across folds the mean and SD of those; the pooled (out-of-fold) validation
  DSC, i.e. the scan-weighted mean over the folds' disjoint validation sets; and the
  ensemble's test metrics with bootstrap CIs;
* ``fold<K>/`` and ``ensemble/``: cases.csv and summary.json as `evaluate.py` writes them
  (`stroke_seg.scoring`), and ``report.md`` with the paper's tables for all of them side by
  side.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from stroke_seg.atomic import write_json, write_text
from stroke_seg.data.discovery import discover
from stroke_seg.data.io import load_case
from stroke_seg.errors import StrokeSegError, config_section
from stroke_seg.inference import Predictor, check_ensemble
from stroke_seg.outputs import check_output_dir
from stroke_seg.scoring import Scored, empty_policy, score_row, write_results

log = logging.getLogger(__name__)

FOLD_METRICS = ("dsc", "mdsc", "hd_mm", "assd_mm", "tpr", "precision")


@dataclass
class FoldRun:
    """One fold's training run folder and what it was trained on."""

    fold: int
    n_folds: int
    stage: str
    run_dir: Path
    checkpoint: Path
    split: dict[str, Any]
    summary: dict[str, Any]
    data_root: str
    layout: str


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise StrokeSegError(f"{path} is not readable YAML ({err}).") from None


def find_fold_runs(runs: str | Path, stage: str | None, checkpoint: str) -> list[FoldRun]:
    """Every training run below `runs` whose config sets ``data.fold`` (and, if given,
    ``stage.name == stage``), one per fold, sorted by fold; refused with a clear message
    when folds repeat, stages mix, the folds disagree on n_folds or test subjects, or a
    run lacks its checkpoint."""
    root = Path(runs).expanduser()
    if not root.is_dir():
        raise StrokeSegError(f"runs={root} is not a folder; pass the multirun folder of the folds.")
    found: list[FoldRun] = []
    for config_path in sorted(root.rglob("config.yaml")):
        run_dir = config_path.parent
        if run_dir.name == ".hydra":
            continue
        cfg = _read_yaml(config_path)
        data = cfg.get("data") or {}
        if data.get("fold") is None or not (run_dir / "split.json").is_file():
            continue
        run_stage = str((cfg.get("stage") or {}).get("name"))
        if stage is not None and run_stage != stage:
            continue
        ckpt = run_dir / "checkpoints" / checkpoint
        if not ckpt.is_file():
            raise StrokeSegError(
                f"{run_dir} (fold {data['fold']}) has no checkpoints/{checkpoint}; has it finished "
                "training? Pass checkpoint= to use another file."
            )
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        found.append(
            FoldRun(
                fold=int(data["fold"]),
                n_folds=int(data["n_folds"]),
                stage=run_stage,
                run_dir=run_dir,
                checkpoint=ckpt,
                split=json.loads((run_dir / "split.json").read_text()),
                summary=summary,
                data_root=str(data.get("root")),
                layout=str(data.get("layout")),
            )
        )
    if not found:
        which = f" of stage {stage}" if stage else ""
        raise StrokeSegError(
            f"No cross-validation runs{which} under {root} (a run folder with config.yaml setting "
            "data.fold and a split.json); train them with train.py -m data.fold=0,1,... first."
        )
    stages = sorted({f.stage for f in found})
    if len(stages) > 1:
        raise StrokeSegError(
            f"{root} holds fold runs of stages {', '.join(stages)}; pass stage_name= to choose one."
        )
    folds = [f.fold for f in found]
    repeated = sorted({k for k in folds if folds.count(k) > 1})
    if repeated:
        dirs = [str(f.run_dir) for f in found if f.fold == repeated[0]]
        raise StrokeSegError(
            f"Fold {repeated[0]} was trained more than once under {root} ({', '.join(dirs)}); "
            "point runs= at one cross-validation."
        )
    n_folds = {f.n_folds for f in found}
    if len(n_folds) > 1:
        raise StrokeSegError(f"The runs under {root} mix data.n_folds values {sorted(n_folds)}.")
    tests = {tuple(sorted(f.split["test"])) for f in found}
    if len(tests) > 1:
        raise StrokeSegError(
            f"The fold runs under {root} list different test subjects; they come from different "
            "splits (data.split_seed, data.split_file or data.root differ)."
        )
    found.sort(key=lambda f: f.fold)
    missing = sorted(set(range(found[0].n_folds)) - set(folds))
    if missing:
        log.warning("folds %s of %d are missing under %s", missing, found[0].n_folds, root)
    return found


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def pooled_val_dsc(folds: Sequence[FoldRun]) -> float:
    """Out-of-fold validation DSC: the mean over every fold's validation scans (each fold's
    final validation DSC weighted by its number of validation scans)."""
    pairs = [(f.summary.get("final_val_dsc"), len(f.split["val"])) for f in folds]
    pairs = [(v, n) for v, n in pairs if v is not None and not math.isnan(float(v))]
    total = sum(n for _, n in pairs)
    return float(sum(float(v) * n for v, n in pairs) / total) if total else math.nan


def run_crossval(
    runs: str | Path,
    *,
    output: str | Path | None,
    stage: str | None,
    checkpoint: str,
    data_root: str | None,
    inference: Mapping[str, Any],
    n_resamples: int,
    seed: int,
    policy_name: str,
    overwrite: bool,
) -> dict[str, Any]:
    """Score each fold's model and the fold ensemble on the shared test split; returns the
    contents of crossval.json (see the module docstring). The options are those of
    conf/crossval.yaml, where their defaults are (`run` passes them)."""
    folds = find_fold_runs(runs, stage, checkpoint)
    policy = empty_policy(policy_name)
    out = check_output_dir(output or Path(runs) / f"crossval_{folds[0].stage}", overwrite)
    root = data_root or folds[0].data_root
    with config_section("data"):  # root and layout are the training runs' data.root/layout
        cases = {c.subject: c for c in discover(root, folds[0].layout)}
    test = sorted(folds[0].split["test"])
    absent = [s for s in test if s not in cases]
    if not test or absent:
        raise StrokeSegError(
            f"The folds' test split lists {len(test)} subjects, {len(absent)} of them not under "
            f"{root}" + (f" (first: {absent[0]})" if absent else "") + "; pass data_root=."
        )
    with config_section("inference"):
        predictors = {
            f"fold{f.fold}": Predictor.from_config(f.checkpoint, inference) for f in folds
        }
    models = [predictor.models[0] for predictor in predictors.values()]
    check_ensemble(models)  # refuses fold models that read scans differently
    scored = {name: Scored(name, [], []) for name in [*predictors, "ensemble"]}
    for subject in tqdm(test, desc="cross-validation", unit="scan"):
        loaded = load_case(cases[subject])
        ref, spacing = loaded["label"], loaded["spacing"]
        total, modes = None, set()
        for name, predictor in predictors.items():
            result = predictor.predict(loaded["image"], loaded["affine"])
            modes.add(result.mode)
            scored[name].rows.append(
                score_row(subject, result.mask, ref, spacing, result.prob, policy, result.mode)
            )
            total = result.prob.astype(np.float64) if total is None else total + result.prob
        prob = (total / len(predictors)).astype(np.float32)
        mask = (prob > models[0].threshold).astype(np.uint8)
        scored["ensemble"].rows.append(
            score_row(subject, mask, ref, spacing, prob, policy, "+".join(sorted(modes)))
        )
    results = list(scored.values())
    prefix = {r.name: f"{r.name}/" for r in results}
    facts = [
        ("runs", str(runs)),
        ("folds", f"{len(folds)} of {folds[0].n_folds} ({folds[0].stage}, {checkpoint})"),
        ("data", f"{root} (layout {folds[0].layout})"),
        ("test split", f"{len(test)} scans, shared by every fold"),
        ("ensemble", "mean probability of the fold models"),
        (
            "inference",
            f"mode={inference['mode']}, tta={inference['tta']}, "
            f"device={next(iter(predictors.values())).device}",
        ),
    ]
    summaries = write_results(out, results, prefix, facts, policy.name, n_resamples, seed)
    fold_entries = []
    for f in folds:
        metrics = summaries[f"fold{f.fold}"]["metrics"]
        fold_entries.append(
            {
                "fold": f.fold,
                "run": str(f.run_dir),
                "checkpoint": str(f.checkpoint),
                "n_train": len(f.split["train"]),
                "n_val": len(f.split["val"]),
                "val_dsc": f.summary.get("final_val_dsc"),
                "test": {k: metrics[k]["mean"] for k in FOLD_METRICS},
                "test_micro_dsc": summaries[f"fold{f.fold}"]["micro_dsc"],
            }
        )
    across = {k: _mean_sd([e["test"][k] for e in fold_entries]) for k in FOLD_METRICS}
    across["micro_dsc"] = _mean_sd([e["test_micro_dsc"] for e in fold_entries])
    across["val_dsc"] = _mean_sd([e["val_dsc"] for e in fold_entries])
    report = {
        "runs": str(runs),
        "stage": folds[0].stage,
        "checkpoint": checkpoint,
        "n_folds": folds[0].n_folds,
        "folds_found": [f.fold for f in folds],
        "data_root": str(root),
        "test_subjects": test,
        "folds": fold_entries,
        "across_folds": across,
        "pooled_val_dsc": pooled_val_dsc(folds),
        "ensemble": summaries["ensemble"],
    }
    write_json(out / "crossval.json", report)
    write_text(out / "crossval.md", render_markdown(report))
    log.info(
        "cross-validation: %d folds, ensemble test DSC %.3f, results in %s",
        len(folds),
        summaries["ensemble"]["metrics"]["dsc"]["mean"],
        out,
    )
    return report


def _f(value: Any, digits: int = 3) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{float(value):.{digits}f}"
    )


def render_markdown(report: dict[str, Any]) -> str:
    """crossval.md: one row per fold, the mean ± SD over folds, and the ensemble."""
    head = "| | val DSC | test DSC | mDSC | HD (mm) | ASSD (mm) | TPR | Precision | micro-DSC |"
    lines = [
        f"# Cross-validation: {len(report['folds'])} of {report['n_folds']} folds "
        f"({report['stage']}, {report['checkpoint']})",
        "",
        f"- runs: {report['runs']}",
        f"- data: {report['data_root']}; test split: {len(report['test_subjects'])} scans, "
        "the same for every fold",
        f"- pooled (out-of-fold) validation DSC: {_f(report['pooled_val_dsc'])}",
        "",
        head,
        "|---" * 9 + "|",
    ]
    for e in report["folds"]:
        t = e["test"]
        lines.append(
            f"| fold {e['fold']} | {_f(e['val_dsc'])} | {_f(t['dsc'])} | {_f(t['mdsc'])} | "
            f"{_f(t['hd_mm'], 1)} | {_f(t['assd_mm'], 1)} | {_f(t['tpr'])} | "
            f"{_f(t['precision'])} | {_f(e['test_micro_dsc'])} |"
        )
    a = report["across_folds"]

    def pm(key: str, digits: int = 3) -> str:
        return f"{_f(a[key]['mean'], digits)} ± {_f(a[key]['sd'], digits)}"

    lines.append(
        f"| mean ± SD | {pm('val_dsc')} | {pm('dsc')} | {pm('mdsc')} | {pm('hd_mm', 1)} | "
        f"{pm('assd_mm', 1)} | {pm('tpr')} | {pm('precision')} | {pm('micro_dsc')} |"
    )
    m = report["ensemble"]["metrics"]

    def ci(key: str, digits: int = 3) -> str:
        lo, hi = m[key]["ci95"]
        return f"{_f(m[key]['mean'], digits)} ({_f(lo, digits)}–{_f(hi, digits)})"

    lines += [
        f"| ensemble | – | {ci('dsc')} | {ci('mdsc')} | {ci('hd_mm', 1)} | {ci('assd_mm', 1)} | "
        f"{ci('tpr')} | {ci('precision')} | {_f(report['ensemble']['micro_dsc'])} |",
        "",
        "Test cells are means over the test scans; the ensemble's carry 95% bootstrap CIs. "
        "Per-scan rows: `fold<K>/cases.csv`, `ensemble/cases.csv`; the paper's tables for every "
        "model: `report.md`.",
    ]
    return "\n".join(lines) + "\n"


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Cross-validate as conf/crossval.yaml (with the command's overrides) says; returns the
    contents of crossval.json."""
    if not cfg.get("runs"):
        raise StrokeSegError(
            "runs= is missing: stroke-seg-crossval runs=DIR (the multirun folder of the folds)."
        )
    return run_crossval(
        str(cfg["runs"]),
        output=cfg.get("output"),
        stage=cfg.get("stage_name"),
        checkpoint=str(cfg["checkpoint"]),
        data_root=cfg.get("data_root"),
        inference=cfg["inference"],
        n_resamples=int(cfg["bootstrap"]["n_resamples"]),
        seed=int(cfg["bootstrap"]["seed"]),
        policy_name=str(cfg["empty_policy"]),
        overwrite=bool(cfg["overwrite"]),
    )


def summary_line(report: Mapping[str, Any]) -> str:
    """The one line the command prints: test DSC per fold and of the ensemble."""
    ens = report["ensemble"]["metrics"]["dsc"]
    across = report["across_folds"]["dsc"]
    return (
        f"cross-validation ({len(report['folds'])} folds): test DSC per fold "
        f"{across['mean']:.3f} ± {across['sd']:.3f}, ensemble {ens['mean']:.3f}; pooled "
        f"validation DSC {report['pooled_val_dsc']:.3f}"
    )


if __name__ == "__main__":  # ``python -m stroke_seg.crossval``: the stroke-seg-crossval command
    from stroke_seg.cli import crossval_main

    crossval_main()
