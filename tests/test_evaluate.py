"""evaluate.py end to end on tiny data: outputs, schema, folder mode, empty policy, refusals."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from stroke_seg.data.discovery import discover
from stroke_seg.errors import StrokeSegError
from stroke_seg.evaluate import run
from stroke_seg.metrics import SCAN_METRIC_KEYS
from stroke_seg.report import TABLE2_HEADER
from tests.helpers import (
    EVAL_FAST,
    REPO,
    TINY_AFFINE,
    compose_eval,
    read_rows,
    run_entry_point,
    write_nifti,
)

CI_CELL = re.compile(r"\d\.\d\d \(\d\.\d\d–\d\.\d\d\)")


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file()]


def test_checkpoint_on_the_test_split_end_to_end(trained, tiny_bids, tmp_path):
    out = tmp_path / "eval"
    ckpt = trained / "checkpoints" / "last.ckpt"
    run(compose_eval([f"ckpt={ckpt}", f"data.root={tiny_bids}", f"output={out}", *EVAL_FAST]))
    test_subjects = json.loads((trained / "split.json").read_text())["test"]

    rows = read_rows(out / "cases.csv")
    assert [r["subject"] for r in rows] == test_subjects
    assert {"subject", "lesion_voxels", "lesion_mm3", *SCAN_METRIC_KEYS} <= set(rows[0])
    assert float(rows[0]["lesion_mm3"]) == 8.0 * int(rows[0]["lesion_voxels"])  # 2 mm voxels
    assert {r["mode"] for r in rows} == {"centre_crop"}

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"n", "metrics", "micro_dsc", "empty_policy", "empty_cases"}
    assert summary["n"] == len(test_subjects) and summary["empty_policy"] == "worst_case"
    assert set(summary["metrics"]) == set(SCAN_METRIC_KEYS)
    for entry in summary["metrics"].values():
        assert set(entry) == {"mean", "median", "ci95"} and len(entry["ci95"]) == 2
    assert summary["metrics"]["dsc"]["mean"] == pytest.approx(float(rows[0]["dsc"]))
    assert 0.0 <= summary["micro_dsc"] <= 1.0

    report = (out / "report.md").read_text()
    assert TABLE2_HEADER in report and CI_CELL.search(report)
    assert "Table 4" in report and "worst_case" in report and str(ckpt) in report
    # evaluation scores in fp32 unless inference.amp=true (conf/evaluate.yaml)
    assert "mode=centre_crop, tta=False, amp=False, device=cpu" in report
    assert (out / "dsc_vs_lesion_size.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").exists() and _no_temporaries(out)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_entry_point("evaluate.py", *args)


def test_cli_compares_a_model_with_an_ensemble(trained, tiny_bids, tmp_path):
    """Table 5 layout: one folder per model, report with micro-DSC, figures linked."""
    last, best = trained / "checkpoints" / "last.ckpt", trained / "checkpoints" / "best.ckpt"
    split_file = tmp_path / "split.json"
    test = ["sub-r001s002", "sub-r001s005", "sub-r001s007"]
    split_file.write_text(
        json.dumps({"train": ["sub-r001s001"], "val": ["sub-r001s003"], "test": test})
    )
    out = tmp_path / "compare"
    result = _cli(
        f"models={{final:{last},ensemble:[{last},{best}]}}",
        f"split_file={split_file}",
        "figures=true",
        f"data.root={tiny_bids}",
        f"output={out}",
        *EVAL_FAST,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("final", "ensemble"):
        assert [r["subject"] for r in read_rows(out / name / "cases.csv")] == test
        assert json.loads((out / name / "summary.json").read_text())["n"] == 3
        assert (out / name / "dsc_vs_lesion_size.png").exists()
    report = (out / "report.md").read_text()
    assert "Table 5" in report and "micro-DSC" in report and report.count("75-100%") == 2
    links = re.findall(r"\]\((\w+/figures/[^)]+\.png)\)", report)
    assert len(links) == 6 and all((out / link).exists() for link in links)
    assert not (REPO / "outputs").exists() and not (REPO / ".hydra").exists()

    refused = _cli(f"output={out}", f"ckpt={last}", f"data.root={tiny_bids}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: output={out} already holds files; pass overwrite=true to replace them or "
        "choose another output=."
    )


def _write_predictions(folder: Path, cases, named_by_t1: bool = False, probs: bool = False):
    for case in cases:
        mask = nib.load(str(case.masks[0]))
        stem = case.image.name.split(".nii")[0] if named_by_t1 else case.subject
        data = np.asarray(mask.dataobj).astype(np.uint8)
        write_nifti(folder / f"{stem}_lesion_mask.nii.gz", data, mask.affine)
        if probs:
            write_nifti(folder / f"{stem}_lesion_prob.nii.gz", data.astype(np.float32), mask.affine)


def test_folder_mode_scores_a_perfect_prediction(tiny_bids, tmp_path):
    cases = discover(tiny_bids, "synthetic")
    preds = tmp_path / "preds"
    _write_predictions(preds, cases[:2], probs=True)
    _write_predictions(preds, cases[2:4], named_by_t1=True)  # as predict.py names them
    out = tmp_path / "out"
    run(
        compose_eval(
            [
                f"predictions={preds}",
                f"labels={tiny_bids}",
                f"output={out}",
                "bootstrap.n_resamples=100",
                "figures=true",
            ]
        )
    )
    rows = read_rows(out / "cases.csv")
    assert [r["subject"] for r in rows] == [c.subject for c in cases[:4]]
    for row in rows:
        assert float(row["dsc"]) == 1.0 and float(row["hd_mm"]) == 0.0
        assert float(row["assd_mm"]) == 0.0 and float(row["tpr"]) == 1.0
    assert [float(r["mdsc"]) for r in rows[:2]] == [1.0, 1.0]
    assert all(math.isnan(float(r["mdsc"])) for r in rows[2:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["micro_dsc"] == 1.0 and summary["metrics"]["dsc"]["ci95"] == [1.0, 1.0]
    assert len(list((out / "figures").glob("*.png"))) == 4


def test_empty_prediction_under_both_policies(tiny_bids, tmp_path):
    cases = discover(tiny_bids, "synthetic")[:3]
    preds = tmp_path / "preds"
    _write_predictions(preds, cases)
    write_nifti(preds / f"{cases[0].subject}_lesion_mask.nii.gz", np.zeros((24, 28, 20), np.uint8))
    diagonal = float(np.linalg.norm(np.array([24, 28, 20]) * 2.0))
    for policy, expected_hd in (("worst_case", diagonal), ("nan", math.nan)):
        out = tmp_path / policy
        run(
            compose_eval(
                [
                    f"predictions={preds}",
                    f"labels={tiny_bids}",
                    f"output={out}",
                    f"empty_policy={policy}",
                    "bootstrap.n_resamples=50",
                ]
            )
        )
        missed = read_rows(out / "cases.csv")[0]
        assert missed["empty_case"] == "missed"
        hd = float(missed["hd_mm"])
        assert (math.isnan(hd) and math.isnan(expected_hd)) or hd == pytest.approx(expected_hd)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["empty_policy"] == policy and summary["empty_cases"]["missed"] == 1
        mean_hd = summary["metrics"]["hd_mm"]["mean"]
        assert mean_hd == (0.0 if policy == "nan" else pytest.approx(diagonal / 3))
        assert f"policy {policy}" in (out / "report.md").read_text()


def test_prediction_on_another_grid_is_refused_and_nothing_is_written(tiny_bids, tmp_path):
    case = discover(tiny_bids, "synthetic")[0]
    preds = tmp_path / "preds"
    shifted = TINY_AFFINE.copy()
    shifted[:3, 3] = 10.0
    write_nifti(
        preds / f"{case.subject}_lesion_mask.nii.gz", np.zeros((24, 28, 20), np.uint8), shifted
    )
    out = tmp_path / "out"
    with pytest.raises(StrokeSegError, match=r"_lesion_mask\.nii\.gz and .* different affines"):
        run(compose_eval([f"predictions={preds}", f"labels={tiny_bids}", f"output={out}"]))
    assert not out.exists() or not any(out.iterdir())
    stray = tmp_path / "stray"
    write_nifti(stray / "sub-unknown_lesion_mask.nii.gz", np.zeros((24, 28, 20), np.uint8))
    with pytest.raises(
        StrokeSegError, match=r"sub-unknown_lesion_mask\.nii\.gz matches no subject"
    ):
        run(compose_eval([f"predictions={stray}", f"labels={tiny_bids}", f"output={out}"]))


def test_split_comes_from_split_file_or_is_regenerated_like_training(trained, tiny_bids, tmp_path):
    moved = tmp_path / "elsewhere" / "last.ckpt"  # no split.json beside it
    moved.parent.mkdir()
    shutil.copy(trained / "checkpoints" / "last.ckpt", moved)
    out = tmp_path / "regenerated"
    run(
        compose_eval(
            [
                f"ckpt={moved}",
                f"data.root={tiny_bids}",
                f"output={out}",
                "data.split_proportions=[6,1,1]",
                *EVAL_FAST,
            ]
        )
    )
    expected = json.loads((trained / "split.json").read_text())["test"]
    assert [r["subject"] for r in read_rows(out / "cases.csv")] == expected
    assert "regenerated from data.split_seed=0" in (out / "report.md").read_text()

    split_file = tmp_path / "split.json"
    split_file.write_text(
        json.dumps(
            {
                "train": ["sub-r001s001"],
                "val": ["sub-r001s002"],
                "test": ["sub-r001s003", "sub-r001s004"],
            }
        )
    )
    out = tmp_path / "from_file"
    run(
        compose_eval(
            [
                f"ckpt={moved}",
                f"data.root={tiny_bids}",
                f"output={out}",
                f"split_file={split_file}",
                *EVAL_FAST,
            ]
        )
    )
    assert [r["subject"] for r in read_rows(out / "cases.csv")] == ["sub-r001s003", "sub-r001s004"]


def test_user_errors_name_the_problem(tiny_bids, tmp_path):
    out = tmp_path / "out"
    cases = [
        ([], "Nothing to evaluate: pass ckpt=PATH"),
        (
            [f"ckpt={tmp_path / 'absent.ckpt'}", f"predictions={tmp_path}", f"labels={tmp_path}"],
            "not both",
        ),
        ([f"predictions={tmp_path}"], "Folder mode needs both"),
        (
            [f"ckpt={tmp_path / 'absent.ckpt'}", f"data.root={tiny_bids}"],
            r"ckpt=.*absent\.ckpt does not exist",
        ),
        (
            [f"ckpt={tmp_path / 'a.ckpt'}", "empty_policy=zero"],
            "empty_policy='zero' is not known; use one of worst_case, nan",
        ),
        (
            [f"ckpt={tmp_path / 'a.ckpt'}", "inference.mode=whole"],
            "inference.mode='whole' is not known; use one of auto, centre_crop, sliding_window",
        ),
        (
            [f"ckpt={tmp_path / 'a.ckpt'}", "inference.overlap=1"],
            r"inference.overlap=1.0 must lie in \[0, 1\)",
        ),
        ([f"ckpt={tmp_path / 'a.ckpt'}", "inference.tta=maybe"], "inference.tta='maybe' must be"),
        ([f"ckpt={tmp_path / 'a.ckpt'}", "models={x:y}"], "either ckpt= or models="),
    ]
    for overrides, message in cases:
        with pytest.raises(StrokeSegError, match=message):
            run(compose_eval([*overrides, f"output={out}"]))
    assert not out.exists()
