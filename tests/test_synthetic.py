"""Tests of the synthetic chronic-stroke data set (stroke_seg.data.synthetic), mostly at 2 mm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from stroke_seg.data import synthetic as syn
from stroke_seg.errors import StrokeSegError
from tests.helpers import compose_config, run_module

SHAPE_2MM = (99, 117, 95)
AFFINE_2MM = np.array([[2.0, 0, 0, -98.0], [0, 2.0, 0, -134.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def subjects_2mm() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, dict]]:
    return [syn.generate_subject(i, 0, spacing=2.0) for i in range(8)]


@pytest.fixture(scope="module")
def dataset_2mm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "set"
    syn.generate_dataset(out, 4, seed=0, spacing=2.0, progress=False)
    return out


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine), img.get_data_dtype()


# ---------------------------------------------------------------------------------- sampler


def test_size_sampler_follows_atlas_range_and_median() -> None:
    vols = syn.sample_lesion_volumes(2000, seed=0)
    assert vols.min() >= 10.0
    assert vols.max() <= 2.8e5
    assert 4000 / 1.5 <= np.median(vols) <= 4000 * 1.5
    # log-spread: deciles more than an order of magnitude either side of each other
    p10, p90 = np.percentile(vols, [10, 90])
    assert p10 < 1000 and p90 > 15000
    assert np.array_equal(vols, syn.sample_lesion_volumes(2000, seed=0))


def test_subject_plans_territories_hemispheres_secondaries() -> None:
    plans = [syn.plan_subject(i, 0) for i in range(400)]
    territories = [p["territory"] for p in plans]
    counts = {t: territories.count(t) for t in ("MCA", "ACA", "PCA", "deep")}
    assert counts["MCA"] == max(counts.values())
    assert all(c > 0 for c in counts.values())
    left = np.mean([p["hemisphere"] == "left" for p in plans])
    assert 0.4 < left < 0.6
    secondary = np.mean([len(p["lesions"]) > 1 for p in plans])
    assert 0.12 < secondary < 0.28
    for p in plans:
        vols = [les["requested_volume_mm3"] for les in p["lesions"]]
        assert sum(vols) == pytest.approx(p["total_volume_mm3"])
        assert all(v < vols[0] for v in vols[1:])  # secondaries are smaller
    # Large lesions are never deep/lacunar; small ones mostly are.
    big = [p for p in plans if p["lesions"][0]["requested_volume_mm3"] >= 15000]
    assert big and all(p["territory"] != "deep" for p in big)
    small = [p["territory"] for p in plans if p["lesions"][0]["requested_volume_mm3"] < 1500]
    assert small.count("deep") > len(small) / 3


# ---------------------------------------------------------------------------------- subjects


def test_generate_subject_deterministic_and_seed_dependent(subjects_2mm) -> None:
    img, mask, affine, info = syn.generate_subject(3, 0, spacing=2.0)
    img0, mask0, affine0, info0 = subjects_2mm[3]
    assert np.array_equal(img, img0) and np.array_equal(mask, mask0)
    assert np.array_equal(affine, affine0) and info == info0
    other, other_mask, _, other_info = syn.generate_subject(3, 1, spacing=2.0)
    assert not np.array_equal(other, img0)
    assert not np.array_equal(other_mask, mask0)
    assert other_info["requested_volume_mm3"] != info0["requested_volume_mm3"]
    # different subjects of one seed differ too
    assert not np.array_equal(subjects_2mm[2][1], subjects_2mm[3][1])


def test_subject_grid_dtype_and_intensity_range(subjects_2mm) -> None:
    for img, mask, affine, info in subjects_2mm:
        assert img.shape == SHAPE_2MM and mask.shape == SHAPE_2MM
        assert img.dtype == np.float32 and mask.dtype == np.uint8
        np.testing.assert_allclose(affine, AFFINE_2MM)
        assert img.min() == 0.0 and img.max() <= 255.0
        assert 0.15 < (img > 0).mean() < 0.35  # brain only; background exactly 0
        assert img[0, 0, 0] == 0.0 and img[-1, -1, -1] == 0.0
        assert set(np.unique(mask)) == {0, 1}
        assert info["shape"] == list(SHAPE_2MM)
    assert syn.grid_shape(2.0) == SHAPE_2MM and syn.grid_shape(1.0) == (197, 233, 189)


def test_mask_inside_brain_and_one_hemisphere(subjects_2mm) -> None:
    for img, mask, affine, info in subjects_2mm:
        assert mask.any()
        assert (img[mask > 0] > 0).all()
        x_mm = affine[0, 3] + affine[0, 0] * np.argwhere(mask)[:, 0]
        side = -1 if info["hemisphere"] == "left" else 1
        assert (x_mm * side > -6.0).all()  # lesions never cross the midline (6 mm warp slack)
        assert info["lesion_volume_mm3"] == pytest.approx(mask.sum() * 8.0)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        assert n == info["n_components"]


def test_lesion_is_hypointense_like_csf(subjects_2mm) -> None:
    tpl_wm = syn._template(2.0).t1 > 200  # template white matter
    for img, mask, _, info in subjects_2mm:
        m = mask > 0
        inside = img[m].mean()
        shell = ndimage.binary_dilation(m, iterations=2) & ~m & (img > 0)
        wm = np.median(img[tpl_wm & ~ndimage.binary_dilation(m, iterations=3)])
        assert inside < img[shell].mean(), info["subject"]
        assert inside < 0.7 * wm, info["subject"]
        core = ndimage.binary_erosion(m)
        if core.sum() >= 20:  # a real core: close to this subject's CSF value
            csf = info["appearance"]["csf_value"]
            assert 0.7 * csf < img[core].mean() < 1.5 * csf, info["subject"]
            assert img[core].mean() < 0.6 * wm


def test_realized_volume_follows_requested(subjects_2mm) -> None:
    ratios = []
    for _, _, _, info in subjects_2mm:
        requested = info["requested_volume_mm3"]
        realized = info["lesion_volume_mm3"]
        if requested >= 200:
            assert 0.6 < realized / requested < 1.6, info
            ratios.append(realized / requested)
    assert len(ratios) >= 5
    assert 0.85 < np.median(ratios) < 1.2


def test_one_mm_matches_two_mm_subject(subjects_2mm) -> None:
    img1, mask1, affine1, info1 = syn.generate_subject(0, 0, spacing=1.0)
    assert img1.shape == (197, 233, 189) and img1.dtype == np.float32
    np.testing.assert_allclose(
        affine1,
        nib.load(
            str(syn.template_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        ).affine,
    )
    _, mask2, affine2, info2 = subjects_2mm[0]
    assert info1["territory"] == info2["territory"]
    assert info1["hemisphere"] == info2["hemisphere"]
    c1 = np.argwhere(mask1).mean(axis=0) + affine1[:3, 3]
    c2 = np.argwhere(mask2).mean(axis=0) * 2 + affine2[:3, 3]
    assert np.linalg.norm(c1 - c2) < 4.0
    assert 0.7 < info1["lesion_volume_mm3"] / info2["lesion_volume_mm3"] < 1.4


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(StrokeSegError, match="spacing"):
        syn.generate_subject(0, 0, spacing=0.5)
    with pytest.raises(StrokeSegError, match="negative"):
        syn.generate_subject(-1, 0)
    with pytest.raises(StrokeSegError, match="at least 1"):
        syn.generate_dataset(tmp_path / "x", 0)


# ---------------------------------------------------------------------------------- data set


def test_dataset_layout_files_and_manifest(dataset_2mm: Path, subjects_2mm) -> None:
    out = dataset_2mm
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["generator"] == syn.GENERATOR and manifest["complete"] is True
    assert manifest["seed"] == 0 and manifest["spacing"] == 2.0 and manifest["n_subjects"] == 4
    assert [s["subject"] for s in manifest["subjects"]] == [
        "sub-r001s001",
        "sub-r001s002",
        "sub-r001s003",
        "sub-r001s004",
    ]
    for i, entry in enumerate(manifest["subjects"]):
        t1_path, mask_path = syn.subject_paths(out, i)
        assert t1_path == out / (
            f"Training/R001/sub-r001s00{i + 1}/ses-1/anat/"
            f"sub-r001s00{i + 1}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"
        )
        assert mask_path.name == (
            f"sub-r001s00{i + 1}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"
        )
        assert entry["t1"] == t1_path.relative_to(out).as_posix()
        img, aff, dtype = _load(t1_path)
        mask, maff, mdtype = _load(mask_path)
        assert dtype == np.float32 and mdtype == np.uint8
        assert img.shape == SHAPE_2MM and mask.shape == SHAPE_2MM
        np.testing.assert_allclose(aff, AFFINE_2MM)
        np.testing.assert_allclose(maff, AFFINE_2MM)
        ref_img, ref_mask, _, ref_info = subjects_2mm[i]
        assert np.array_equal(img, ref_img) and np.array_equal(mask, ref_mask)
        assert entry["lesion_volume_mm3"] == mask.sum() * 8.0
        for key in ("territory", "hemisphere", "n_components"):
            assert entry[key] == ref_info[key]
    vols = [s["lesion_volume_mm3"] for s in manifest["subjects"]]
    summary = manifest["summary"]["lesion_volume_mm3"]
    assert summary["median"] == pytest.approx(float(np.median(vols)))
    assert summary["min"] == min(vols) and summary["max"] == max(vols)
    assert not list(out.rglob("*.tmp*"))  # no temporary files left
    assert syn.subject_id(49) == "sub-r001s050" and syn.subject_id(50) == "sub-r002s001"
    assert syn.subject_paths(out, 50)[0].parts[-5] == "R002"


def test_dataset_goes_through_bids_discovery(dataset_2mm: Path) -> None:
    from stroke_seg.data.discovery import discover

    cases = discover(dataset_2mm, "synthetic")
    assert [c.subject for c in cases] == [syn.subject_id(i) for i in range(4)]
    assert all(len(c.masks) == 1 and c.masks[0].exists() for c in cases)


def test_first_subjects_identical_whatever_n(dataset_2mm: Path, tmp_path: Path) -> None:
    small = syn.generate_dataset(tmp_path / "two", 2, seed=0, spacing=2.0, progress=False)
    for i in range(2):
        for a, b in zip(
            syn.subject_paths(small, i), syn.subject_paths(dataset_2mm, i), strict=True
        ):
            assert np.array_equal(_load(a)[0], _load(b)[0])
    assert not syn.subject_paths(small, 2)[0].exists()


def test_rerun_is_idempotent_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "set"
    syn.generate_dataset(out, 2, seed=0, spacing=2.0, progress=False)
    t1_0 = syn.subject_paths(out, 0)[0]
    os.utime(t1_0, (1_000_000, 1_000_000))
    manifest_before = (out / "dataset.json").read_text()
    assert syn.generate_dataset(out, 2, seed=0, spacing=2.0, progress=False) == out
    assert t1_0.stat().st_mtime == 1_000_000  # nothing rewritten
    assert (out / "dataset.json").read_text() == manifest_before
    # n grows: existing subjects are kept, the new one is added
    syn.generate_dataset(out, 3, seed=0, spacing=2.0, progress=False)
    assert t1_0.stat().st_mtime == 1_000_000
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["n_subjects"] == 3 and len(manifest["subjects"]) == 3
    # n shrinks: the extra subject is removed
    syn.generate_dataset(out, 1, seed=0, spacing=2.0, progress=False)
    assert not syn.subject_paths(out, 1)[0].exists()
    assert not syn.subject_paths(out, 2)[0].parent.parent.parent.exists()
    # another seed replaces the subjects
    syn.generate_dataset(out, 1, seed=5, spacing=2.0, progress=False)
    assert t1_0.stat().st_mtime != 1_000_000
    assert json.loads((out / "dataset.json").read_text())["seed"] == 5


def test_refuses_foreign_nonempty_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "my_data"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StrokeSegError) as err:
        syn.generate_dataset(foreign, 1, seed=0, spacing=2.0, progress=False)
    assert str(foreign) in str(err.value) and "overwrite=true" in str(err.value)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    syn.generate_dataset(foreign, 1, seed=0, spacing=2.0, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert syn.subject_paths(foreign, 0)[1].exists()


def test_cli_summary_and_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command's task with conf/synthetic.yaml (``main(cfg)`` runs it without Hydra's
    start-up, as Hydra does once it has composed the config)."""
    out = tmp_path / "cli"
    syn.main(
        compose_config("synthetic", [f"out={out}", "n=1", "seed=0", "spacing=2", "quiet=true"])
    )
    line = capsys.readouterr().out.strip()
    assert "1 subjects" in line and "grid 99x117x95" in line and str(out) in line
    assert syn.subject_paths(out, 0)[0].exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("")
    for overrides, message in [
        ([f"out={foreign}", "n=1", "spacing=2"], f"error: {foreign} is not empty"),
        ([f"out={out}", "n=two"], "error: n='two' is not a whole number; pass e.g. n=40."),
        ([f"out={out}", "n=0"], "error: n=0 is too small; use at least 1."),
        ([f"out={out}", "spacing=fine"], "error: spacing='fine' is not a number"),
        ([f"out={out}", "spacing=0.5"], "error: spacing=0.5 mm is not supported"),
        ([], "error: out= is not set; name the folder to write"),
    ]:
        with pytest.raises(SystemExit) as exc:
            syn.main(compose_config("synthetic", [*overrides, "quiet=true"]))
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in foreign.iterdir()) == ["x"]


def test_command_line_is_hydra_and_writes_only_the_set(tmp_path: Path) -> None:
    """``python -m stroke_seg.data.synthetic out=DIR n=1 spacing=4`` as a user runs it (the
    stroke-seg-synthetic script calls the same ``main``): the set, and no Hydra folders."""
    out = tmp_path / "set"
    proc = run_module(
        "stroke_seg.data.synthetic", f"out={out}", "n=1", "spacing=4", "quiet=true", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 subjects (seed 0, 4 mm, grid 50x59x48)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert json.loads((out / "dataset.json").read_text())["spacing"] == 4.0
    missing = run_module("stroke_seg.data.synthetic", "n=1", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: out= is not set; name the folder to write, e.g. out=data/synthetic_2mm."
    ]


# ---------------------------------------------------------------------------------- geometry


def test_ellipsoid_mask_is_the_ellipsoid_equation_on_the_whole_grid() -> None:
    """`ellipsoid_mask` computes only in the bounding box; the box must not cut the shape."""
    shape = (20, 24, 18)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    for centre, radii in [
        ((9.3, 11.7, 8.2), (4.1, 6.6, 2.9)),
        ((0.5, 23.0, 17.2), (3.0, 3.0, 3.0)),  # cut by the grid's edges
        ((10.0, 12.0, 9.0), (0.8, 0.8, 0.8)),  # smaller than a voxel: the centre only
    ]:
        c, r = np.array(centre)[:, None, None, None], np.array(radii)[:, None, None, None]
        full = (((grid - c) / r) ** 2).sum(0) <= 1
        mask = syn.ellipsoid_mask(shape, centre, radii)
        assert mask.dtype == bool and mask.shape == shape
        assert np.array_equal(mask, full) and mask.any()
    assert syn.equivalent_radius(4.0 / 3.0 * np.pi * 27.0) == pytest.approx(3.0)
    # Rotated: the distance field of a lesion is that of the rotated ellipsoid.
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    x, y, z = np.ogrid[-5:6, -5:6, -5:6]
    d2 = syn.ellipsoid_d2((x, y, z), (0.0, 0.0, 0.0), (4.0, 2.0, 1.0), rot)
    assert d2[5, 5 + 4, 5] == pytest.approx(1.0)  # the long axis now lies along y
    assert d2[5 + 2, 5, 5] == pytest.approx(1.0)


# ---------------------------------------------------------------- domain randomisation (option)

# SHA-256 of image bytes + mask bytes of subject (index, seed 0) at 4 mm, computed on the
# generator before the domain-randomisation option existed (numpy 2 / scipy 1.x here). The
# default output must not move; a numpy or scipy release that changes the random streams or
# the filters would move it too (then recompute it on a commit without the option).
# Subjects 0 and 1 of seed 0 at 4 mm from the generator before the randomisation option:
# (lesion voxels, brain voxels, image mean, image std). Not a byte hash: the bytes differ by
# a few ulp between CPUs (numpy and scipy pick other SIMD kernels on AVX2 and on AVX-512
# machines; a hash pinned on one failed on the other), while any change of the generator's
# draws or steps moves these figures far beyond the tolerance.
DEFAULT_FIGURES_4MM = {
    0: (17, 32754, 35.359843261243384, 70.73449560939136),
    1: (97, 35453, 42.14344426907099, 79.8474778564052),
}


def _sha(img: np.ndarray, mask: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(img.tobytes() + mask.tobytes()).hexdigest()


def test_default_output_is_unchanged_by_the_randomisation_option() -> None:
    for index, (lesion, brain, mean, std) in DEFAULT_FIGURES_4MM.items():
        img, mask, _, info = syn.generate_subject(index, 0, spacing=4.0)
        assert abs(int(mask.sum()) - lesion) <= 1 and abs(int((img > 0).sum()) - brain) <= 1
        image = img.astype(np.float64)
        assert image.mean() == pytest.approx(mean, rel=1e-5)
        assert image.std() == pytest.approx(std, rel=1e-5)
        assert "domain_randomisation" not in info
        # on one machine, randomise=False is the default path to the byte
        again = syn.generate_subject(index, 0, spacing=4.0, randomise=False)
        assert _sha(again[0], again[1]) == _sha(img, mask)


def test_randomisation_changes_the_images_not_the_lesions(subjects_2mm) -> None:
    for index in (0, 3):
        img0, mask0, affine0, info0 = subjects_2mm[index]
        img, mask, affine, info = syn.generate_subject(index, 0, spacing=2.0, randomise=True)
        assert np.array_equal(mask, mask0) and np.array_equal(affine, affine0)
        assert info["lesion_volume_mm3"] == info0["lesion_volume_mm3"]
        assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 255
        assert (img[img0 == 0] == 0).all()  # background stays 0 (skull-stripped)
        brain = img0 > 0
        assert np.abs(img[brain] - img0[brain]).mean() > 5.0  # another appearance
        record = info["domain_randomisation"]
        assert record["version"] == syn.RANDOMISATION_VERSION
        assert all(0.6 <= f <= 1.4 for f in record["tissue_factors_csf_gm_wm"])
    # reproducible, and the draws differ between subjects
    a = syn.generate_subject(3, 0, spacing=2.0, randomise=True)
    b = syn.generate_subject(3, 0, spacing=2.0, randomise=True)
    assert np.array_equal(a[0], b[0]) and a[3] == b[3]
    c = syn.generate_subject(0, 0, spacing=2.0, randomise=True)
    assert c[3]["domain_randomisation"] != a[3]["domain_randomisation"]


def test_lesion_contrast_varies_more_with_randomisation() -> None:
    """Lesion / normal-tissue intensity ratio over 8 subjects: a wider spread, and some
    lesions no longer darker than the parenchyma around them."""

    def ratios(randomise: bool) -> np.ndarray:
        out = []
        for index in range(8):
            img, mask, _, _ = syn.generate_subject(index, 1, spacing=3.0, randomise=randomise)
            out.append(img[mask > 0].mean() / img[(img > 0) & (mask == 0)].mean())
        return np.array(out)

    plain, randomised = ratios(False), ratios(True)
    assert randomised.std() > 2 * plain.std()
    assert plain.max() < 0.8 and randomised.max() > 0.9


def test_dataset_json_records_the_randomisation_and_sets_are_not_mixed(tmp_path: Path) -> None:
    out = tmp_path / "set"
    syn.generate_dataset(out, 1, seed=0, spacing=3.0, progress=False)
    plain = json.loads((out / "dataset.json").read_text())
    assert "domain_randomisation" not in plain
    plain_image = _load(syn.subject_paths(out, 0)[0])[0]
    syn.generate_dataset(out, 1, seed=0, spacing=3.0, progress=False, randomise=True)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["domain_randomisation"] == {"version": syn.RANDOMISATION_VERSION}
    assert manifest["subjects"][0]["domain_randomisation"]["version"] == "1.0.0"
    assert not np.array_equal(_load(syn.subject_paths(out, 0)[0])[0], plain_image)  # rewritten
    syn.generate_dataset(out, 1, seed=0, spacing=3.0, progress=False)  # and back
    assert "domain_randomisation" not in json.loads((out / "dataset.json").read_text())
    assert np.array_equal(_load(syn.subject_paths(out, 0)[0])[0], plain_image)


def test_lesion_only_randomisation_keeps_the_tissue_and_changes_the_lesion() -> None:
    """randomise=lesion: outside the lesion and its partial-volume ring the scan is the
    default subject's to the bit (same tissue contrast, bias and noise); inside, the core
    is the default core times the recorded lesion factor (times the smooth modulation in
    half the subjects); the mask is the default one."""
    factors = []
    for index in range(4):
        plain, mask, _, _ = syn.generate_subject(index, 1, spacing=3.0)
        img, mask_l, _, info = syn.generate_subject(index, 1, spacing=3.0, randomise="lesion")
        record = info["domain_randomisation"]
        assert record["mode"] == "lesion"
        assert np.array_equal(mask_l, mask)
        away = ndimage.binary_dilation(mask > 0, iterations=4) == 0
        assert np.array_equal(img[away], plain[away])
        if record["partial_lesion_amplitude"] == 0:
            ratio = np.median(img[mask > 0] / np.maximum(plain[mask > 0], 1e-3))
            factors.append((ratio, record["lesion_factor"]))
        assert not np.array_equal(img[mask > 0], plain[mask > 0])
    assert factors, "subjects 0-3 of seed 1 include a uniform (unmodulated) lesion"
    for ratio, factor in factors:  # noise and the partial-volume ramp blur it a little
        assert ratio == pytest.approx(factor, rel=0.25)


def test_randomise_modes_and_a_wrong_value(tmp_path: Path) -> None:
    assert [syn.randomise_mode(v) for v in (False, True, "false", "true", "lesion")] == [
        "off", "all", "off", "all", "lesion",
    ]  # fmt: skip
    with pytest.raises(StrokeSegError, match=r"randomise='tissue' is not known; use false"):
        syn.generate_dataset(tmp_path / "x", 1, seed=0, spacing=3.0, randomise="tissue")
    assert not (tmp_path / "x").exists()  # refused before anything is written
    out = tmp_path / "set"
    syn.generate_dataset(out, 1, seed=0, spacing=3.0, progress=False, randomise="lesion")
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["domain_randomisation"] == {
        "version": syn.RANDOMISATION_VERSION,
        "mode": "lesion",
    }
