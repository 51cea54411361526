"""predict.py end to end: output files on the input grid, lesions.csv, QC, and refusals."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from stroke_seg.errors import StrokeSegError
from stroke_seg.metrics import CONNECTIVITY_26
from stroke_seg.predict import run
from tests.helpers import (
    LPS_AFFINE,
    compose_predict,
    list_files,
    run_entry_point,
    tiny_scan,
    write_nifti,
    zoom_out_checkpoint,
)


@pytest.fixture()
def scan(tmp_path) -> Path:
    image, _ = tiny_scan(np.random.default_rng(3))
    return write_nifti(tmp_path / "in" / "one_T1w.nii.gz", image)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_entry_point("predict.py", *args)


def test_cli_predicts_every_scan_of_a_folder_on_its_own_grid(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "scans"
    image, _ = tiny_scan(rng)
    write_nifti(inputs / "site1" / "a_T1w.nii.gz", image)  # the training grid: RAS, 2 mm
    lps, _ = tiny_scan(rng, shape=(32, 36, 26))
    write_nifti(inputs / "b_T1w.nii", lps, LPS_AFFINE)  # LPS, 1.5 mm, uncompressed
    (inputs / "notes.txt").write_text("not a scan")
    before = list_files(inputs)
    out = tmp_path / "results"

    result = _cli(f"ckpt={ckpt}", f"input={inputs}", f"output={out}", "inference.device=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list_files(inputs) == before  # nothing written into the input folder
    expected = {
        f"{n}_T1w_{kind}"
        for n in "ab"
        for kind in ("lesion_mask.nii.gz", "lesion_prob.nii.gz", "qc.png")
    }
    assert set(list_files(out)) == expected | {"lesions.csv"}

    rows = {r["scan"]: r for r in csv.DictReader((out / "lesions.csv").open())}
    assert set(rows) == {"a_T1w", "b_T1w"}
    assert rows["a_T1w"]["mode"] == "centre_crop" and rows["b_T1w"]["mode"] == "sliding_window"
    for name, source in (
        ("a_T1w", inputs / "site1" / "a_T1w.nii.gz"),
        ("b_T1w", inputs / "b_T1w.nii"),
    ):
        src = nib.load(str(source))
        mask = nib.load(str(out / f"{name}_lesion_mask.nii.gz"))
        prob = nib.load(str(out / f"{name}_lesion_prob.nii.gz"))
        for img in (mask, prob):
            assert img.shape == src.shape
            np.testing.assert_array_equal(img.affine, src.affine)
            assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(src.affine)
        assert mask.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
        m = np.asarray(mask.dataobj)
        p = np.asarray(prob.dataobj)
        assert set(np.unique(m)) <= {0, 1} and np.array_equal(m, (p > 0.5).astype(np.uint8))
        voxel_mm3 = float(np.prod(src.header.get_zooms()[:3]))
        row = rows[name]
        assert int(row["lesion_voxels"]) == int(m.sum())
        assert float(row["lesion_volume_mm3"]) == pytest.approx(m.sum() * voxel_mm3)
        assert int(row["n_lesions"]) == ndimage.label(m, structure=CONNECTIVITY_26)[1]
        assert row["input"] == str(source)
    assert (out / "a_T1w_qc.png").read_bytes()[:4] == b"\x89PNG"

    missing = _cli(f"ckpt={ckpt}", f"input={tmp_path / 'absent'}", f"output={tmp_path / 'o'}")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert (
        missing.stderr.strip().splitlines()[-1]
        == f"error: input={tmp_path / 'absent'} does not exist."
    )
    assert not (tmp_path / "o").exists()


def test_existing_results_are_replaced_only_with_overwrite(ckpt, scan, tmp_path):
    out = tmp_path / "out"
    args = [f"ckpt={ckpt}", f"input={scan}", f"output={out}", "qc=false"]
    rows = run(compose_predict(args))
    assert [r["scan"] for r in rows] == ["one_T1w"]
    assert list_files(out) == [
        "lesions.csv",
        "one_T1w_lesion_mask.nii.gz",
        "one_T1w_lesion_prob.nii.gz",
    ]
    before = (out / "one_T1w_lesion_mask.nii.gz").stat().st_mtime_ns
    with pytest.raises(
        StrokeSegError, match=r"one_T1w_lesion_mask\.nii\.gz already exists .*overwrite=true"
    ):
        run(compose_predict(args))
    assert (out / "one_T1w_lesion_mask.nii.gz").stat().st_mtime_ns == before
    run(compose_predict([*args, "overwrite=true", "inference.tta=true"]))
    assert (out / "one_T1w_lesion_mask.nii.gz").stat().st_mtime_ns > before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _refused(overrides: list[str], message: str, out: Path) -> None:
    with pytest.raises(StrokeSegError, match=message):
        run(compose_predict([*overrides, f"output={out}"]))
    assert not out.exists() or not any(out.iterdir()), "a refused run wrote files"


def test_bad_inputs_are_refused_before_anything_is_written(ckpt, scan, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad"
    four_d = write_nifti(bad / "series.nii.gz", np.zeros((24, 28, 20, 2), np.float32))
    _refused(
        [f"ckpt={ckpt}", f"input={four_d}"],
        r"series\.nii\.gz has shape \(24, 28, 20, 2\); one 3-D",
        out,
    )
    text = bad / "scan.txt"
    text.write_text("hello")
    _refused([f"ckpt={ckpt}", f"input={text}"], r"scan\.txt is not a NIfTI file", out)
    fake = bad / "fake.nii.gz"
    fake.write_text("hello")
    _refused([f"ckpt={ckpt}", f"input={fake}"], r"fake\.nii\.gz is not a readable NIfTI", out)
    truncated = bad / "cut.nii.gz"
    truncated.write_bytes(scan.read_bytes()[: len(scan.read_bytes()) // 2])
    _refused(
        [f"ckpt={ckpt}", f"input={truncated}"], r"cut\.nii\.gz is (truncated|not a readable)", out
    )
    _refused([f"ckpt={ckpt}", f"input={tmp_path / 'absent'}"], "absent does not exist", out)
    _refused([f"input={scan}"], "ckpt= is missing", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused([f"ckpt={ckpt}", f"input={empty}"], r"holds no \.nii / \.nii\.gz file", out)


def test_wrong_checkpoints_are_refused_before_anything_is_written(ckpt, scan, tmp_path):
    out = tmp_path / "out"
    other = zoom_out_checkpoint(tmp_path / "other.ckpt", widths=(4, 8, 16))
    state = torch.load(other, weights_only=True)
    state["hyper_parameters"]["net"]["widths"] = [4, 8]  # weights of another network
    torch.save(state, other)
    _refused([f"ckpt={other}", f"input={scan}"], r"other\.ckpt does not fit the network", out)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(64))
    _refused(
        [f"ckpt=[{ckpt},{junk}]", f"input={scan}"], r"junk\.ckpt (is not a readable|holds)", out
    )


def test_output_may_not_mix_with_the_inputs(ckpt, scan, tmp_path):
    _refused([f"ckpt={ckpt}", f"input={scan.parent}"], "lies inside input=", scan.parent / "pred")
    with pytest.raises(StrokeSegError, match="is the folder of input="):
        run(compose_predict([f"ckpt={ckpt}", f"input={scan}", f"output={scan.parent}"]))
    assert list_files(scan.parent) == ["one_T1w.nii.gz"]
    twin = write_nifti(scan.parent / "sub" / "one_T1w.nii", np.zeros((24, 28, 20), np.float32))
    _refused(
        [f"ckpt={ckpt}", f"input={scan.parent}"],
        f"{twin} and .* share the name one_T1w",
        tmp_path / "out",
    )
