"""Cross-validation: reproducible folds, a multirun over folds, and the ensemble on test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from stroke_seg.cli import crossval_main
from stroke_seg.crossval import find_fold_runs, run
from stroke_seg.data.datamodule import StrokeDataModule
from stroke_seg.data.discovery import discover
from stroke_seg.data.io import load_case
from stroke_seg.data.splits import fold_split, make_split
from stroke_seg.errors import StrokeSegError
from stroke_seg.inference import Predictor
from tests.helpers import CONF_DIR, TINY_TRAIN_OVERRIDES, run_train_cli


def compose_crossval(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="crossval", overrides=overrides)


def test_folds_partition_train_and_val_and_keep_test():
    split = make_split([f"s{i:02d}" for i in range(23)], seed=3, proportions=(15, 3, 5))
    pool = sorted(split["train"] + split["val"])
    folds = [fold_split(split, k, 5, seed=3) for k in range(5)]
    vals = [f["val"] for f in folds]
    assert sorted(s for v in vals for s in v) == pool  # disjoint, covering the pool
    assert sorted(len(v) for v in vals) == [3, 3, 4, 4, 4]
    for f in folds:
        assert f["test"] == sorted(split["test"])
        assert sorted(f["train"] + f["val"]) == pool and not set(f["train"]) & set(f["val"])
    assert fold_split(split, 2, 5, seed=3) == folds[2]  # reproducible
    assert fold_split(split, 2, 5, seed=4) != folds[2]
    with pytest.raises(StrokeSegError, match=r"^fold=5 must lie in 0..4"):
        fold_split(split, 5, 5, seed=3)
    with pytest.raises(StrokeSegError, match="at least 2 folds"):
        fold_split(split, 0, 1, seed=3)
    with pytest.raises(StrokeSegError, match="more than the 18 train"):
        fold_split(split, 0, 19, seed=3)


def test_datamodule_fold_writes_its_split(tiny_bids, tmp_path):
    dm = StrokeDataModule(
        str(tiny_bids),
        crop_size=(8, 8, 8),
        eval_crop=(8, 8, 8),
        split_proportions=(5, 1, 2),
        cache_workers=0,
        fold=1,
        n_folds=3,
        run_dir=str(tmp_path),
    )
    dm.setup("fit")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["fold"] == 1 and saved["n_folds"] == 3
    assert len(saved["val"]) == 2 and len(saved["train"]) == 4 and len(saved["test"]) == 2
    assert len(dm.val_set) == 2


@pytest.fixture(scope="module")
def fold_runs(tiny_bids, tmp_path_factory) -> Path:
    """`python train.py -m data.fold=0,1 data.n_folds=2` with fold-named run folders."""
    runs = tmp_path_factory.mktemp("cv_runs")
    args = [
        "-m",
        *TINY_TRAIN_OVERRIDES,
        f"data.root={tiny_bids}",
        f"paths.runs_dir={runs}",
        "name=cv",
        "stage.max_epochs=1",
        "data.split_proportions=[5,1,2]",
        "data.fold=0,1",
        "data.n_folds=2",
        "hydra.sweep.subdir=fold${data.fold}_${stage.name}",
    ]
    proc = run_train_cli(*args, cwd=runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "cv" / "multirun"


def test_multirun_over_folds(fold_runs):
    assert sorted(p.name for p in fold_runs.iterdir() if p.is_dir()) == [
        "fold0_zoom_in",
        "fold1_zoom_in",
    ]
    folds = find_fold_runs(fold_runs, None, "last.ckpt")
    assert [f.fold for f in folds] == [0, 1]
    assert folds[0].split["test"] == folds[1].split["test"]
    assert not set(folds[0].split["val"]) & set(folds[1].split["val"])


def test_crossval_scores_folds_and_their_ensemble(fold_runs, tiny_bids, tmp_path, capsys):
    out = tmp_path / "cv"
    args = [f"runs={fold_runs}", f"output={out}", "stage_name=zoom_in", "bootstrap.n_resamples=50"]
    crossval_main(args)
    assert "cross-validation (2 folds)" in capsys.readouterr().out
    report = json.loads((out / "crossval.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1] and report["n_folds"] == 2
    assert len(report["test_subjects"]) == 2
    for fold in report["folds"]:
        assert set(fold["test"]) == {"dsc", "mdsc", "hd_mm", "assd_mm", "tpr", "precision"}
        assert fold["val_dsc"] is not None and fold["n_val"] == 3
    assert report["across_folds"]["dsc"]["n"] == 2
    assert report["ensemble"]["n"] == 2 and "ci95" in report["ensemble"]["metrics"]["dsc"]
    val = [f["val_dsc"] for f in report["folds"]]
    assert report["pooled_val_dsc"] == pytest.approx(np.mean(val))  # equal fold sizes
    markdown = (out / "crossval.md").read_text()
    assert "| fold 0 |" in markdown and "| ensemble |" in markdown and "mean ± SD" in markdown
    for name in ("fold0", "fold1", "ensemble"):
        assert (out / name / "cases.csv").is_file() and (out / name / "summary.json").is_file()
    report_md = (out / "report.md").read_text()
    assert "50 resamples" in report_md and "mode=auto, tta=False, device=cpu" in report_md

    # the ensemble is the fold models' mean probability, as Predictor computes it
    ckpts = [f["checkpoint"] for f in report["folds"]]
    subject = report["test_subjects"][0]
    case = next(c for c in discover(tiny_bids, "synthetic") if c.subject == subject)
    loaded = load_case(case)
    inference = compose_crossval([]).inference  # as the command composes it: fp32
    assert inference.amp is False
    ensemble = Predictor.from_config(ckpts, inference).predict(loaded["image"], loaded["affine"])
    rows = (out / "ensemble" / "cases.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert first[header.index("subject")] == subject
    ref = loaded["label"] > 0
    tp = int((ensemble.mask.astype(bool) & ref).sum())
    assert int(first[header.index("tp")]) == tp
    with pytest.raises(StrokeSegError, match=f"output={out} already holds files"):
        run(compose_crossval([f"runs={fold_runs}", f"output={out}"]))
    with pytest.raises(SystemExit) as info:  # the command: one sentence, exit status 2
        crossval_main([f"runs={fold_runs}", f"output={out}", "empty_policy=zero"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: empty_policy='zero' is not known")
    with pytest.raises(SystemExit) as info:
        crossval_main([])
    assert info.value.code == 2 and "error: runs= is missing" in capsys.readouterr().err


def test_crossval_refuses_a_folder_without_folds(tmp_path):
    with pytest.raises(StrokeSegError, match="No cross-validation runs"):
        find_fold_runs(tmp_path, None, "last.ckpt")


def test_crossval_finds_only_the_stage_asked_for(fold_runs):
    assert [f.stage for f in find_fold_runs(fold_runs, "zoom_in", "last.ckpt")] == ["zoom_in"] * 2
    with pytest.raises(StrokeSegError, match="No cross-validation runs of stage zoom_out"):
        run(compose_crossval([f"runs={fold_runs}", "stage_name=zoom_out"]))
