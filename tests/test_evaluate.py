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
import torch

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
    assert set(summary) == {
        "n",
        "metrics",
        "micro_dsc",
        "empty_policy",
        "empty_cases",
        "definitions",
    }
    assert summary["n"] == len(test_subjects) and summary["empty_policy"] == "worst_case"
    # Which definition produced each number (issue 11).
    defs = summary["definitions"]
    assert defs["lesion_connectivity"] == 6 and defs["empty_policy"] == "worst_case"
    assert defs["precision"] == "fp32" and defs["inference_mode"] == "centre_crop"
    assert defs["modes_used"] == ["centre_crop"]
    assert defs["volume_difference"].startswith("volume_diff_voxels = |sum(pred) - sum(ref)|")
    assert "np.percentile(sizes, [25, 50, 75])" in defs["table4_groups"]
    assert "by subject" in defs["split_grouping"] and "200 resamples" in defs["bootstrap"]
    assert {r["lesion_connectivity"] for r in rows} == {"6"}
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


def test_a_scan_in_other_units_is_scored_and_flagged(trained, tiny_bids, tmp_path):
    """Evaluation feeds scans as they are (the paper's /255): a scan stored in 0-1 units is
    scored (near 0, as the paper would score it) but named in cases.csv, the log and
    report.md instead of passing silently; the scans like the training ones are not."""
    root = tmp_path / "bids"
    shutil.copytree(tiny_bids, root)
    test = json.loads((trained / "split.json").read_text())["test"]
    odd = {c.subject: c for c in discover(root, "synthetic")}[test[0]].image
    img = nib.load(str(odd))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) / 255.0, img.affine), str(odd))
    out = tmp_path / "eval"
    ckpt = trained / "checkpoints" / "last.ckpt"
    run(compose_eval([f"ckpt={ckpt}", f"data.root={root}", f"output={out}", *EVAL_FAST]))
    rows = {r["subject"]: r for r in read_rows(out / "cases.csv")}
    assert float(rows[test[0]]["intensity_z"]) > 4.0
    assert rows[test[0]]["warning"].startswith("intensity_z=")
    for subject in test[1:]:
        assert float(rows[subject]["intensity_z"]) < 4.0 and rows[subject]["warning"] == ""
    report = (out / "report.md").read_text()
    assert f"1 of {len(test)} scans unlike the training scans" in report and test[0] in report

    # A checkpoint without an intensity reference (older ones): not checked, and it says so.
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["preprocessing"]["intensity_reference"] = None
    bare = tmp_path / "bare.ckpt"
    torch.save(state, bare)
    out2 = tmp_path / "eval_bare"
    run(compose_eval([f"ckpt={bare}", f"data.root={root}", f"output={out2}", *EVAL_FAST]))
    assert {r["intensity_z"] for r in read_rows(out2 / "cases.csv")} == {""}
    assert (
        "none (the checkpoint records no training intensity reference)"
        in (out2 / "report.md").read_text()
    )


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
    # The data root's other subjects have no prediction: listed, not silently skipped.
    unpaired = [c.subject for c in cases[4:]]
    assert summary["unpaired"] == {"predictions": [], "references": unpaired}
    assert summary["definitions"]["modes_used"] == ["files"]
    assert "precision" not in summary["definitions"]  # masks on disk: no inference here


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
        StrokeSegError,
        match=r"^No prediction in predictions=.*stray pairs with a reference in labels=.* "
        r"\(first prediction: sub-unknown_lesion_mask\.nii\.gz\); name them <subject>",
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


# --------------------------------------------------------------------------------------
# Table 5: the paper's protocol (centre crop for every model) and the sliding-window rows
# --------------------------------------------------------------------------------------


def test_table5_paper_protocol_and_sliding_window_rows(trained, ckpt, tiny_bids, tmp_path):
    """docs/evaluation.md "Table 5": the documented command scores the zoom-in-only model on
    the centre crop as the paper did (mode=auto would slide 16^3 windows); table5_modes adds
    a labelled sliding-window row per model, whose centre-crop rows are the paper's."""
    zoom_in = trained / "checkpoints" / "last.ckpt"
    models = f"models={{zoom_in:{zoom_in},zoom_out:{ckpt}}}"
    common = [models, f"data.root={tiny_bids}", "inference.device=cpu"]
    common.append("bootstrap.n_resamples=50")
    paper = tmp_path / "paper"
    run(compose_eval([*common, "inference.mode=centre_crop", f"output={paper}"]))
    test = json.loads((trained / "split.json").read_text())["test"]
    for name in ("zoom_in", "zoom_out"):
        rows = read_rows(paper / name / "cases.csv")
        assert [r["subject"] for r in rows] == test
        assert {r["mode"] for r in rows} == {"centre_crop"}
    report = (paper / "report.md").read_text()
    assert "| Methods | Inference | DSC | median DSC | micro-DSC |" in report
    assert re.search(r"^\| zoom_in \| centre_crop \| ", report, re.M)

    both = tmp_path / "both"
    summaries = run(
        compose_eval([*common, "table5_modes=[centre_crop,sliding_window]", f"output={both}"])
    )
    names = [
        f"{m} ({mode})"
        for m in ("zoom_in", "zoom_out")
        for mode in ("centre_crop", "sliding_window")
    ]
    assert list(summaries) == names
    for name in ("zoom_in", "zoom_out"):
        crop = read_rows(both / name / "centre_crop" / "cases.csv")
        assert crop == read_rows(paper / name / "cases.csv")  # the paper's rows, unchanged
        windows = read_rows(both / name / "sliding_window" / "cases.csv")
        assert {r["mode"] for r in windows} == {"sliding_window"}
        summary = json.loads((both / name / "sliding_window" / "summary.json").read_text())
        assert summary["definitions"]["inference_mode"] == "sliding_window"
    # The zoom-in model was trained on 16^3 crops: whole-volume and windowed inputs differ.
    crop_mdsc = [r["mdsc"] for r in read_rows(both / "zoom_in" / "centre_crop" / "cases.csv")]
    win_mdsc = [r["mdsc"] for r in read_rows(both / "zoom_in" / "sliding_window" / "cases.csv")]
    assert crop_mdsc != win_mdsc
    report = (both / "report.md").read_text()
    for mode in ("centre_crop", "sliding_window"):
        assert re.search(rf"^\| zoom_in \({mode}\) \| {mode} \| ", report, re.M)
    assert "mode=centre_crop, sliding_window (table5_modes)" in report

    with pytest.raises(StrokeSegError, match="^table5_modes='whole' is not known; use one of"):
        run(compose_eval([*common, "table5_modes=[centre_crop,whole]", f"output={tmp_path / 'x'}"]))


# --------------------------------------------------------------------------------------
# Folder mode with two flat folders (as nnU-Net's evaluate_folder)
# --------------------------------------------------------------------------------------


def _flat_pair(tmp_path: Path, tiny_bids: Path) -> tuple[Path, Path, list[tuple[str, np.ndarray]]]:
    """Reference masks of four tiny scans in a flat folder under four naming variants, and
    predictions (each reference shifted by k voxels) named without the suffix or with it."""
    preds, labels = tmp_path / "A", tmp_path / "B"
    refs = []
    variants = [  # (reference file, prediction file)
        ("scan1.nii.gz", "scan1.nii.gz"),
        ("scan2_lesion_mask.nii.gz", "scan2.nii"),
        ("scan3.nii", "scan3_lesion_mask.nii.gz"),
        ("scan4_lesion_mask.nii", "scan4_lesion_mask.nii"),
    ]
    for k, (case, (ref_name, pred_name)) in enumerate(
        zip(discover(tiny_bids, "synthetic"), variants, strict=False)
    ):
        mask = np.asarray(nib.load(str(case.masks[0])).dataobj).astype(np.uint8)
        write_nifti(labels / ref_name, mask)
        write_nifti(preds / pred_name, np.roll(mask, k, axis=0))
        refs.append((f"scan{k + 1}", mask))
    return preds, labels, refs


def test_two_flat_folders_pair_by_file_name(tiny_bids, tmp_path):
    from stroke_seg.metrics import dice, volume_difference_voxels

    preds, labels, refs = _flat_pair(tmp_path, tiny_bids)
    prob = np.roll(refs[0][1], 0, axis=0).astype(np.float32) * 0.9
    write_nifti(preds / "scan1_lesion_prob.nii.gz", prob)
    out = tmp_path / "out"
    run(compose_eval([f"predictions={preds}", f"labels={labels}", f"output={out}", "figures=true"]))
    rows = read_rows(out / "cases.csv")
    assert [r["subject"] for r in rows] == ["scan1", "scan2", "scan3", "scan4"]
    for k, (row, (_, ref)) in enumerate(zip(rows, refs, strict=True)):
        pred = np.roll(ref, k, axis=0)
        assert float(row["dsc"]) == pytest.approx(dice(pred, ref))
        assert float(row["volume_diff_voxels"]) == volume_difference_voxels(pred, ref)
        assert row["mode"] == "files"
    assert float(rows[0]["dsc"]) == 1.0 > float(rows[3]["dsc"])
    assert float(rows[0]["mdsc"]) == 1.0 and math.isnan(float(rows[1]["mdsc"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and summary["unpaired"] == {"predictions": [], "references": []}
    report = (out / "report.md").read_text()
    assert TABLE2_HEADER in report and "a folder of masks, paired by file name" in report
    assert "none (figures: masks only)" in report  # no images=: figures without the T1
    assert len(list((out / "figures").glob("scan*.png"))) == 4


def test_flat_folders_list_unpaired_files_and_use_t1_images(tiny_bids, tmp_path, caplog):
    preds, labels, _ = _flat_pair(tmp_path, tiny_bids)
    write_nifti(preds / "extra.nii.gz", np.zeros((24, 28, 20), np.uint8))
    write_nifti(preds / "orphan_lesion_prob.nii.gz", np.zeros((24, 28, 20), np.float32))
    write_nifti(labels / "lonely_lesion_mask.nii.gz", np.zeros((24, 28, 20), np.uint8))
    (preds / "lesions.csv").write_text("not a mask\n")  # other files are not masks
    images = tmp_path / "T1"
    case = discover(tiny_bids, "synthetic")[0]
    write_nifti(images / "scan1_0000.nii.gz", nib.load(str(case.image)).get_fdata())
    out = tmp_path / "out"
    overrides = [f"predictions={preds}", f"labels={labels}", f"images={images}"]
    with caplog.at_level("WARNING", logger="stroke_seg.evaluate"):
        run(compose_eval([*overrides, f"output={out}", "figures=true"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4
    assert summary["unpaired"] == {
        "predictions": ["extra.nii.gz", "orphan_lesion_prob.nii.gz"],
        "references": ["lonely_lesion_mask.nii.gz"],
    }
    assert "2 file(s) in predictions= have no reference" in caplog.text
    assert "extra.nii.gz, orphan_lesion_prob.nii.gz" in caplog.text
    assert "1 reference(s) in labels= have no prediction" in caplog.text
    assert "lonely_lesion_mask.nii.gz" in caplog.text
    assert "1 reference(s) without prediction" in (out / "report.md").read_text()
    assert (out / "figures" / "scan1.png").read_bytes()[:4] == b"\x89PNG"


def test_flat_folder_refusals_name_the_file(tiny_bids, tmp_path):
    preds, labels, _ = _flat_pair(tmp_path, tiny_bids)
    out = tmp_path / "out"
    args = [f"predictions={preds}", f"labels={labels}", f"output={out}"]
    shifted = TINY_AFFINE.copy()
    shifted[:3, 3] = 4.0
    write_nifti(preds / "scan3_lesion_mask.nii.gz", np.zeros((24, 28, 20), np.uint8), shifted)
    with pytest.raises(
        StrokeSegError, match=rf"^{preds}/scan3_lesion_mask\.nii\.gz and scan3\.nii have different"
    ):
        run(compose_eval(args))
    write_nifti(preds / "scan3_lesion_mask.nii.gz", np.zeros((24, 26, 20), np.uint8))
    with pytest.raises(
        StrokeSegError, match=r"scan3_lesion_mask\.nii\.gz has shape \(24, 26, 20\)"
    ):
        run(compose_eval(args))
    assert not out.exists()
    write_nifti(preds / "scan1_lesion_mask.nii.gz", np.zeros((24, 28, 20), np.uint8))
    with pytest.raises(
        StrokeSegError,
        match=r"scan1\.nii\.gz and scan1_lesion_mask\.nii\.gz are both the prediction of 'scan1'",
    ):
        run(compose_eval(args))
    nothing = tmp_path / "nothing"
    write_nifti(nothing / "other.nii.gz", np.zeros((24, 28, 20), np.uint8))
    with pytest.raises(
        StrokeSegError,
        match=r"^No prediction in predictions=.*nothing pairs with a reference in labels=.*B "
        r"\(first prediction: other\.nii\.gz\); name them the same file name in both",
    ):
        run(compose_eval([f"predictions={nothing}", f"labels={labels}", f"output={out}"]))
    assert not out.exists()


def test_cli_scores_two_flat_folders(tiny_bids, tmp_path):
    """The issue's command: ``python evaluate.py predictions=A labels=B``."""
    preds, labels, _ = _flat_pair(tmp_path, tiny_bids)
    out = tmp_path / "out"
    result = _cli(
        f"predictions={preds}", f"labels={labels}", f"output={out}", "bootstrap.n_resamples=50"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"cases.csv", "summary.json", "report.md"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "summary.json").read_text())["n"] == 4


def test_connectivity_option_changes_the_lesion_metrics_and_is_recorded(tmp_path):
    """Two reference voxels touching at a corner are two lesions 6-connected (the challenge's
    final scoring) and one 26-connected; the prediction finds one of them."""
    ref = np.zeros((24, 28, 20), np.uint8)
    ref[5, 5, 5] = ref[6, 6, 6] = 1
    pred = np.zeros_like(ref)
    pred[5, 5, 5] = 1
    preds, labels = tmp_path / "A", tmp_path / "B"
    write_nifti(preds / "x.nii.gz", pred)
    write_nifti(labels / "x.nii.gz", ref)
    found = {}
    for connectivity in (6, 26):
        out = tmp_path / f"c{connectivity}"
        overrides = [f"predictions={preds}", f"labels={labels}", f"output={out}"]
        run(compose_eval([*overrides, f"connectivity={connectivity}", "bootstrap.n_resamples=10"]))
        row = read_rows(out / "cases.csv")[0]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["definitions"]["lesion_connectivity"] == connectivity
        assert row["lesion_connectivity"] == str(connectivity)
        found[connectivity] = (float(row["lesion_f1"]), float(row["lesion_count_diff"]))
        assert float(row["volume_diff_voxels"]) == 1.0
    assert found == {6: (pytest.approx(2 / 3), 1.0), 26: (1.0, 0.0)}
    with pytest.raises(StrokeSegError, match="^connectivity=8 is not known; use one of 6, 18, 26"):
        run(compose_eval([f"predictions={preds}", f"labels={labels}", "connectivity=8"]))
