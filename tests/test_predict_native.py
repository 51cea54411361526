"""predict.py on scans in their own space: registration to the checkpoint's template and back,
outputs in both spaces, lesions.csv, refusals and flags, shards and their merge.

The model is untrained (its quality is measured in docs/prediction.md, not here): these tests
check where every result lands and what the table says about it, against values computed
independently (the template grid, the input grid, the written masks)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from stroke_seg.data.native import bad_scans, native_subject
from stroke_seg.errors import StrokeSegError
from stroke_seg.predict import LESION_COLUMNS, run
from stroke_seg.registration import DEFAULT_TEMPLATE, load_template
from stroke_seg.shards import parse_shard, shard_of
from tests.helpers import compose_predict, list_files, native_checkpoint, write_nifti

SPACE = DEFAULT_TEMPLATE


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return native_checkpoint(tmp_path_factory.mktemp("native_model") / "model.ckpt")


@pytest.fixture(scope="module")
def subject():
    """Seed-1 subject 2 (not a training subject) in MNI space and as a native scan:
    2 x 2 x 2.4 mm, permuted and flipped axes, scanner units, bias field, a random pose."""
    return native_subject(2, seed=1, spacing=2.0)


@pytest.fixture(scope="module")
def scans(tmp_path_factory, subject) -> Path:
    (mni_image, _, mni_affine, _), nat = subject
    folder = tmp_path_factory.mktemp("clinic")
    write_nifti(folder / "native_T1w.nii.gz", nat.image, nat.affine)
    write_nifti(folder / "mni_T1w.nii.gz", mni_image, mni_affine)
    return folder


@pytest.fixture(scope="module")
def predicted(model, scans, tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    out = tmp_path_factory.mktemp("results")
    run(compose_predict([f"ckpt={model}", f"input={scans}", f"output={out}"]))
    return out, _rows(out / "lesions.csv")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["scan"]: row for row in csv.DictReader(f)}


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_native_scan_gets_masks_in_both_spaces_and_a_transform(predicted, scans, subject):
    out, rows = predicted
    _, nat = subject
    expected = {
        f"{scan}_T1w_{kind}"
        for scan in ("native", "mni")
        for kind in (
            "lesion_mask.nii.gz",
            "lesion_prob.nii.gz",
            f"space-{SPACE}_lesion_mask.nii.gz",
            f"from-native_to-{SPACE}_xfm.mat",
            "qc.png",
            f"space-{SPACE}_qc.png",
        )
    }
    assert set(list_files(out)) == expected | {"lesions.csv"}
    template = load_template(2.0)
    native = nib.load(str(out / "native_T1w_lesion_mask.nii.gz"))
    assert native.shape == nat.image.shape
    np.testing.assert_allclose(native.affine, nat.affine, atol=1e-5)
    in_template = nib.load(str(out / f"native_T1w_space-{SPACE}_lesion_mask.nii.gz"))
    assert in_template.shape == template.shape
    np.testing.assert_allclose(in_template.affine, template.affine, atol=1e-5)
    row = rows["native_T1w"]
    assert tuple(row) == LESION_COLUMNS
    assert row["registration"] == "affine" and row["template"] == SPACE
    assert float(row["correlation"]) > 0.4 and float(row["coverage"]) > 0.95
    assert row["status"] in ("ok", "warning")
    mask = _array(out / "native_T1w_lesion_mask.nii.gz")
    prob = _array(out / "native_T1w_lesion_prob.nii.gz")
    np.testing.assert_array_equal(mask, (prob > 0.5).astype(np.uint8))  # thresholded natively
    assert int(row["lesion_voxels"]) == int(mask.sum())
    assert float(row["lesion_volume_mm3"]) == pytest.approx(mask.sum() * 2 * 2 * 2.4, rel=1e-6)
    tmask = _array(out / f"native_T1w_space-{SPACE}_lesion_mask.nii.gz")
    assert float(row["template_lesion_volume_mm3"]) == pytest.approx(tmask.sum() * 8.0)
    assert float(row["max_prob"]) == pytest.approx(float(prob.max()), abs=1e-4)
    # The two masks are one prediction seen on two grids: same volume within the head-size
    # scale and resampling (the registration scale of this subject is ~1).
    if tmask.sum() > 50:
        assert (
            0.8 < float(row["lesion_volume_mm3"]) / float(row["template_lesion_volume_mm3"]) < 1.25
        )
    # the transform is a readable ANTs affine
    import ants

    tx = ants.read_transform(str(out / f"native_T1w_from-native_to-{SPACE}_xfm.mat"))
    assert tx.type == "AffineTransform" and len(tx.parameters) == 12


def test_scan_on_the_template_grid_takes_the_direct_path_bit_identically(
    predicted, model, scans, tmp_path
):
    out, rows = predicted
    direct = tmp_path / "direct"
    run(
        compose_predict(
            [
                f"ckpt={model}",
                f"input={scans / 'mni_T1w.nii.gz'}",
                f"output={direct}",
                "template=none",
            ]
        )
    )
    np.testing.assert_array_equal(
        _array(out / "mni_T1w_lesion_prob.nii.gz"), _array(direct / "mni_T1w_lesion_prob.nii.gz")
    )
    np.testing.assert_array_equal(
        _array(out / "mni_T1w_lesion_mask.nii.gz"),
        _array(out / f"mni_T1w_space-{SPACE}_lesion_mask.nii.gz"),
    )
    assert rows["mni_T1w"]["registration"] == "none"
    assert _rows(direct / "lesions.csv")["mni_T1w"]["registration"] == "none"
    assert set(list_files(direct)) == {
        "lesions.csv",
        "mni_T1w_lesion_mask.nii.gz",
        "mni_T1w_lesion_prob.nii.gz",
        "mni_T1w_qc.png",
    }


def test_no_lesion_is_said_with_the_maximum_probability(scans, subject, tmp_path):
    strict = native_checkpoint(tmp_path / "strict.ckpt", head_bias=-30.0)
    out = tmp_path / "out"
    run(
        compose_predict(
            [f"ckpt={strict}", f"input={scans / 'mni_T1w.nii.gz'}", f"output={out}", "qc=false"]
        )
    )
    row = _rows(out / "lesions.csv")["mni_T1w"]
    prob = _array(out / "mni_T1w_lesion_prob.nii.gz")
    assert prob.max() < 0.5 and row["n_lesions"] == "0" and row["hemisphere"] == "none"
    assert (
        row["finding"] == f"no lesion found (maximum probability {prob.max():.3f}, threshold 0.5)"
    )
    assert float(row["max_prob"]) == pytest.approx(float(prob.max()), abs=1e-4)


@pytest.fixture(scope="module")
def bad(subject) -> dict:
    _, nat = subject
    return bad_scans(nat)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("top_40_percent", r"field of view cuts the brain off"),
        ("header_10x_small", r"voxel size in its NIfTI header is wrong"),
    ],
)
def test_implausible_headers_stop_the_run_before_anything_is_written(
    model, bad, tmp_path, kind, message
):
    image, affine = bad[kind]
    good, good_affine = bad["normal"]
    folder = tmp_path / "in"
    write_nifti(folder / "a_good.nii.gz", good, good_affine)
    path = write_nifti(folder / f"b_{kind}.nii.gz", image, affine)
    out = tmp_path / "out"
    with pytest.raises(StrokeSegError, match=rf"^{path} .*{message}"):
        run(compose_predict([f"ckpt={model}", f"input={folder}", f"output={out}"]))
    assert not out.exists()


def test_a_volume_that_is_not_a_brain_is_refused_and_the_others_finish(model, bad, tmp_path):
    folder = tmp_path / "in"
    write_nifti(folder / "a_good.nii.gz", *bad["normal"])
    noise = write_nifti(folder / "b_noise.nii.gz", *bad["noise"])
    out = tmp_path / "out"
    with pytest.raises(StrokeSegError, match=r"^1 of 2 scans were refused, first .*b_noise"):
        run(compose_predict([f"ckpt={model}", f"input={folder}", f"output={out}", "qc=false"]))
    rows = _rows(out / "lesions.csv")
    assert rows["b_noise"]["status"] == "refused"
    assert rows["b_noise"]["warning"].startswith(f"{noise} correlates only")
    assert float(rows["b_noise"]["correlation"]) < 0.25
    assert not [f for f in list_files(out) if f.startswith("b_noise")]  # no files for it
    assert (
        rows["a_good"]["status"] in ("ok", "warning")
        and (out / "a_good_lesion_mask.nii.gz").is_file()
    )
    assert not [f for f in list_files(out) if f.startswith(".")]
    # one scan alone: the refusal is the one sentence
    alone = tmp_path / "alone"
    with pytest.raises(StrokeSegError, match=rf"^{noise} correlates only"):
        run(compose_predict([f"ckpt={model}", f"input={noise}", f"output={alone}"]))


def test_shards_split_the_inputs_and_the_last_one_merges(model, bad, tmp_path):
    folder = tmp_path / "in"
    image, affine = bad["normal"]
    for name in ("a", "b", "c"):
        write_nifti(folder / f"{name}.nii.gz", image, affine)
    out = tmp_path / "out"
    base = [f"ckpt={model}", f"input={folder}", f"output={out}", "qc=false"]
    first = run(compose_predict([*base, "shard=0/2"]))
    assert [r["scan"] for r in first] == ["a", "c"]
    assert not (out / "lesions.csv").exists()  # shard 1 has not run
    second = run(compose_predict([*base, "shard=1/2"]))
    assert [r["scan"] for r in second] == ["b"]
    merged = _rows(out / "lesions.csv")
    assert list(merged) == ["a", "b", "c"]
    assert merged["b"] == _rows(out / "lesions.shard-1-of-2.csv")["b"]
    (out / "lesions.csv").unlink()
    rows = run(compose_predict([f"output={out}", "merge=true"]))
    assert [r["scan"] for r in rows] == ["a", "b", "c"]
    # a finished shard is kept by continue_prediction
    before = (out / "a_lesion_mask.nii.gz").stat().st_mtime_ns
    run(compose_predict([*base, "shard=0/2", "continue_prediction=true"]))
    assert (out / "a_lesion_mask.nii.gz").stat().st_mtime_ns == before


def test_shard_values():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None and parse_shard("0/1") is None
    items = list(range(10))
    parts = [shard_of(items, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == items and [len(p) for p in parts] == [4, 3, 3]
    for bad_value in ("4/4", "1-4", "a/b", "-1/2"):
        with pytest.raises(StrokeSegError, match=r"^shard="):
            parse_shard(bad_value)
    # a multirun over shards: Hydra reads each value as one string
    (override,) = OverridesParser.create().parse_overrides(["shard=0/4,1/4,2/4,3/4"])
    assert list(override.sweep_string_iterator()) == ["0/4", "1/4", "2/4", "3/4"]


def test_bad_registration_options_name_their_key(model, scans, tmp_path):
    with pytest.raises(StrokeSegError, match=r"registration\.transform='warp'"):
        run(
            compose_predict(
                [
                    f"ckpt={model}",
                    f"input={scans}",
                    f"output={tmp_path}/o",
                    "registration.transform=warp",
                ]
            )
        )
    with pytest.raises(StrokeSegError, match=r"template=.*absent\.nii\.gz does not exist"):
        run(
            compose_predict(
                [
                    f"ckpt={model}",
                    f"input={scans}",
                    f"output={tmp_path}/o",
                    f"template={tmp_path}/absent.nii.gz",
                ]
            )
        )
    assert not (tmp_path / "o").exists()


def test_a_template_file_overrides_the_checkpoints(model, scans, tmp_path):
    """template=FILE registers to that file; its TemplateFlow-style name names the outputs."""
    template = load_template(2.0)
    path = write_nifti(tmp_path / "tpl-Mine_res-02_T1w.nii.gz", template.image, template.affine)
    out = tmp_path / "out"
    native = scans / "native_T1w.nii.gz"
    run(compose_predict([f"ckpt={model}", f"input={native}", f"output={out}", f"template={path}"]))
    row = _rows(out / "lesions.csv")["native_T1w"]
    assert row["template"] == "Mine" and row["registration"] == "affine"
    mask = nib.load(str(out / "native_T1w_space-Mine_lesion_mask.nii.gz"))
    assert mask.shape == template.shape
    assert (out / "native_T1w_from-native_to-Mine_xfm.mat").is_file()
