"""Discovery of the three layouts, splits, loading checks and the data module's crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stroke_seg.data.datamodule import StrokeDataModule
from stroke_seg.data.discovery import discover, discover_atlas_r12, discover_atlas_v2
from stroke_seg.data.io import load_case, spacing_of
from stroke_seg.data.preprocessing import Preprocessing
from stroke_seg.data.samplers import EpochSampler
from stroke_seg.data.splits import fold_split, load_split, make_split, resolve_split, save_split
from stroke_seg.errors import StrokeSegError, config_section
from tests.helpers import bids_paths, tiny_datamodule, tiny_scan, write_nifti


def test_bids_discovery_pairs_images_and_masks(tiny_bids):
    cases = discover_atlas_v2(tiny_bids)
    assert [c.subject for c in cases] == [f"sub-r001s{i:03d}" for i in range(1, 9)]
    for case in cases:
        assert case.image.name.endswith("_space-MNI152NLin2009aSym_T1w.nii.gz")
        assert case.masks[0].name.endswith("_label-L_desc-T1lesion_mask.nii.gz")
        assert case.masks[0].parent == case.image.parent
    assert discover(tiny_bids, "synthetic") == cases


def test_bids_subject_with_two_sessions_gets_unique_ids(tmp_path):
    rng = np.random.default_rng(1)
    for ses in ("1", "2"):
        image, mask = tiny_scan(rng)
        t1, lab = bids_paths(tmp_path, "R002", "sub-r002s001", ses)
        write_nifti(t1, image)
        write_nifti(lab, mask)
    ids = [c.subject for c in discover_atlas_v2(tmp_path)]
    assert ids == ["sub-r002s001_ses-1", "sub-r002s001_ses-2"]


def test_bids_image_without_mask_is_named(tmp_path):
    image, _ = tiny_scan(np.random.default_rng(0))
    t1, _ = bids_paths(tmp_path, "R001", "sub-r001s001")
    write_nifti(t1, image)
    with pytest.raises(StrokeSegError, match="sub-r001s001.*no lesion mask"):
        discover_atlas_v2(tmp_path)


def test_r12_discovery_merges_several_masks_by_maximum(tmp_path):
    rng = np.random.default_rng(2)
    image, _ = tiny_scan(rng)
    a = np.zeros(image.shape, np.uint8)
    b = np.zeros(image.shape, np.uint8)
    a[2:5, 2:5, 2:5] = 1
    b[4:8, 4:8, 4:8] = 255  # some R1.2 masks are 0/255
    folder = tmp_path / "Site3" / "031768" / "t01"
    write_nifti(folder / "031768_t1w_deface_stx.nii.gz", image)
    write_nifti(folder / "031768_LesionSmooth_stx.nii.gz", a)
    write_nifti(folder / "031768_LesionSmooth_1_stx.nii.gz", b)
    other = tmp_path / "Site1" / "000001" / "t01"
    write_nifti(other / "000001_t1w_deface_stx.nii.gz", image)
    write_nifti(other / "000001_LesionSmooth_stx.nii.gz", a)

    cases = discover_atlas_r12(tmp_path)
    assert [c.subject for c in cases] == ["000001", "031768"]
    assert len(cases[1].masks) == 2
    merged = load_case(cases[1])["label"]
    assert merged.dtype == np.uint8 and set(np.unique(merged)) == {0, 1}
    assert merged.sum() == ((a > 0) | (b > 0)).sum() == 27 + 64 - 1


def test_missing_and_empty_roots_say_where_to_get_data(tmp_path):
    with pytest.raises(StrokeSegError, match=r"^root='.*nowhere' does not exist.*ATLAS.*synthetic"):
        discover(tmp_path / "nowhere", "atlas_v2")
    with pytest.raises(StrokeSegError, match=r"^root='.*' holds no scans.*ATLAS"):
        discover(tmp_path, "atlas_r12")
    with pytest.raises(StrokeSegError, match="^layout='bids' is not known; use one of atlas_r12"):
        discover(tmp_path, "bids")
    # The task names the config key: the same errors under the data section.
    with pytest.raises(StrokeSegError, match=r"^data\.root='.*nowhere' does not exist"):
        with config_section("data"):
            discover(tmp_path / "nowhere", "atlas_v2")
    with pytest.raises(StrokeSegError, match=r"^data\.layout='bids' is not known"):
        with config_section("data"):
            discover(tmp_path, "bids")


def test_duplicate_subject_ids_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    for site in ("Site1", "Site2"):
        image, mask = tiny_scan(rng)
        folder = tmp_path / site / "000007" / "t01"
        write_nifti(folder / "000007_t1w_deface_stx.nii.gz", image)
        write_nifti(folder / "000007_LesionSmooth_stx.nii.gz", mask)
    with pytest.raises(StrokeSegError, match="Subject ID 000007 appears twice"):
        discover_atlas_r12(tmp_path)


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_image_and_mask_on_different_grids_are_refused(tmp_path, what):
    image, mask = tiny_scan(np.random.default_rng(4))
    t1, lab = bids_paths(tmp_path, "R001", "sub-r001s001")
    write_nifti(t1, image)
    if what == "shape":
        write_nifti(lab, mask[:-1])
    else:
        write_nifti(lab, mask, np.diag([1.0, 1.0, 1.0, 1.0]))
    case = discover_atlas_v2(tmp_path)[0]
    with pytest.raises(StrokeSegError, match=f"mask.nii.gz .*{what}.*share one voxel grid"):
        load_case(case)


def test_split_is_reproducible_and_follows_paper_proportions():
    subjects = [f"s{i:03d}" for i in range(239)]
    split = make_split(subjects, seed=7)
    assert [len(split[k]) for k in ("train", "val", "test")] == [182, 26, 31]
    assert split == make_split(list(reversed(subjects)), seed=7)
    assert split != make_split(subjects, seed=8)
    assert sorted(split["train"] + split["val"] + split["test"]) == subjects


def test_split_file_round_trip_and_errors(tmp_path):
    split = make_split([f"s{i}" for i in range(10)], seed=0)
    path = save_split(split, tmp_path / "split.json", seed=0)
    assert json.loads(path.read_text())["seed"] == 0
    assert load_split(path, [f"s{i}" for i in range(10)]) == split
    with pytest.raises(StrokeSegError, match="not found among the scans of the data root"):
        load_split(path, [f"s{i}" for i in range(5)])
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["a"], "val": []}))
    with pytest.raises(StrokeSegError, match="test missing"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"train": ["a"], "val": [], "test": []}))
    with pytest.raises(StrokeSegError, match="val list of .*empty.json is empty"):
        load_split(tmp_path / "empty.json")
    with pytest.raises(StrokeSegError, match=r"^split_file='.*nope\.json' does not exist"):
        load_split(tmp_path / "nope.json")
    with pytest.raises(StrokeSegError, match=r"^data\.split_file='.*nope\.json' does not exist"):
        with config_section("data"):
            load_split(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1, 2]")  # valid JSON, but not a split
    with pytest.raises(StrokeSegError, match="needs lists named train, val, test"):
        load_split(tmp_path / "list.json")


def test_resolve_split_is_the_file_or_the_seeded_split_then_the_fold(tmp_path):
    subjects = [f"s{i:02d}" for i in range(20)]
    generated = resolve_split(reversed(subjects), None, seed=3, proportions=(6, 2, 2))
    assert generated == make_split(subjects, 3, (6, 2, 2))
    assert [len(generated[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    assert resolve_split(subjects, None, seed=4, proportions=(6, 2, 2)) != generated
    mine = {"train": subjects[:10], "val": subjects[10:15], "test": subjects[15:]}
    path = save_split(mine, tmp_path / "mine.json", seed=0)
    assert resolve_split(subjects, path, seed=3, proportions=(6, 2, 2)) == mine  # seed unused
    folded = resolve_split(subjects, path, seed=3, fold=1, n_folds=3)
    assert folded == fold_split(mine, 1, 3, 3) and folded["test"] == mine["test"]
    assert sorted(folded["train"] + folded["val"]) == sorted(mine["train"] + mine["val"])
    with pytest.raises(StrokeSegError, match="not found among the scans"):
        resolve_split(subjects[:12], path, seed=3)
    with pytest.raises(StrokeSegError, match=r"^fold=3 must lie in 0\.\.2 \(n_folds=3\)"):
        resolve_split(subjects, None, seed=3, proportions=(6, 2, 2), fold=3, n_folds=3)


def test_datamodule_crops_follow_the_stage_and_scale_intensity(tiny_bids):
    dm = tiny_datamodule(tiny_bids)
    assert len(dm.train_set) == len(dm.split["train"]) == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 1, 16, 12, 8)
    assert batch["label"].shape == (1, 1, 16, 12, 8)
    assert float(batch["image"].max()) <= 255 / 255 + 0.1  # divided by 255
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 1, 20, 24, 16)
    full = load_case(dm.cases[val["subject"][0]])["label"]
    assert float(val["label_total"][0]) == full.sum()
    # the centre crop starts at (dim - size) // 2, as in the paper's evaluation crop
    lo = [(d - s) // 2 for d, s in zip(full.shape, (20, 24, 16), strict=True)]
    expected = full[lo[0] : lo[0] + 20, lo[1] : lo[1] + 24, lo[2] : lo[2] + 16]
    assert torch.equal(val["label"][0, 0].to(torch.uint8), torch.from_numpy(expected))


def test_foreground_sampling_finds_lesions_more_often(tiny_bids):
    def lesion_fraction(dm):
        hits = 0
        for epoch in range(10):
            dm.train_dataloader().sampler.set_epoch(epoch)
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)
            hits += sum(int(b["label"].sum() > 0) for b in loader)
        return hits / (10 * len(dm.train_set))

    small = (6, 6, 6)
    uniform = lesion_fraction(tiny_datamodule(tiny_bids, crop_size=small))
    biased = lesion_fraction(
        tiny_datamodule(tiny_bids, crop_size=small, sampling="foreground", foreground_prob=1.0)
    )
    assert biased == 1.0
    assert uniform < 0.8


def test_crops_depend_only_on_seed_epoch_and_index(tiny_bids):
    dm = tiny_datamodule(tiny_bids)

    def crop(epoch, index):  # the crop transforms return a one-element list
        return dm.train_set[(epoch, index)][0]["image"]

    assert crop(3, 2).equal(crop(3, 2))
    assert not crop(3, 2).equal(crop(4, 2))
    sampler = EpochSampler(6, seed=1)
    sampler.set_epoch(5)
    first = list(sampler)
    sampler.set_epoch(6)
    sampler.set_epoch(5)
    assert list(sampler) == first and {i for _, i in first} == set(range(6))
    assert {e for e, _ in first} == {5}


def test_probability_masks_need_data_mask_threshold(tmp_path):
    """A mask holding probabilities is refused, or read as mask > data.mask_threshold."""
    rng = np.random.default_rng(5)
    for i in range(1, 4):
        image, mask = tiny_scan(rng)
        t1, lab = bids_paths(tmp_path, "R001", f"sub-r001s{i:03d}")
        write_nifti(t1, image)
        write_nifti(lab, mask * rng.uniform(0.3, 1.0, mask.shape).astype(np.float32))
    with pytest.raises(StrokeSegError, match=r"mask.nii.gz .*mask_threshold"):
        tiny_datamodule(tmp_path, split_proportions=(1, 1, 1))
    dm = tiny_datamodule(tmp_path, split_proportions=(1, 1, 1), mask_threshold=0.5)
    val = next(iter(dm.val_dataloader()))
    case = dm.cases[val["subject"][0]]
    soft = load_case(case, mask_threshold=0.5)["label"]
    assert set(np.unique(soft)) <= {0, 1}
    assert float(val["label_total"][0]) == soft.sum() > 0


def test_datamodule_split_and_preprocessing_are_the_shared_contracts(tiny_bids):
    """The split is `resolve_split`'s (as evaluation regenerates it) and the preprocessing
    the typed contract, whose plain-data form is what checkpoints store."""
    dm = tiny_datamodule(tiny_bids, split_seed=4)
    assert dm.split == resolve_split(list(dm.cases), None, seed=4, proportions=(6, 1, 1))
    pre = dm.preprocessing()
    first = load_case(dm.cases[dm.split["train"][0]])
    assert pre == Preprocessing(
        intensity_mode="divide",
        intensity_divisor=255.0,
        crop_size=(16, 12, 8),
        eval_crop=(20, 24, 16),
        spacing=spacing_of(first["affine"]),
        grid_shape=first["image"].shape,
    )
    assert pre.to_dict() == {
        "intensity_mode": "divide",
        "intensity_divisor": 255.0,
        "crop_size": [16, 12, 8],
        "eval_crop": [20, 24, 16],
        "spacing": [2.0, 2.0, 2.0],
        "grid_shape": [24, 28, 20],
    }
    assert Preprocessing.from_dict(pre.to_dict()) == pre


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampling": "middle"}, "sampling='middle' is not known; use one of uniform, foreground."),
        ({"foreground_prob": 1.5}, r"foreground_prob=1.5 must lie in \[0, 1\]."),
        ({"intensity_mode": "zscore"}, "intensity_mode='zscore' is not known; use one of divide"),
    ],
)
def test_bad_datamodule_options_name_their_parameter(tiny_bids, kwargs, message):
    """Before any scan is read; the training task adds the section (``data.sampling``)."""
    with pytest.raises(StrokeSegError, match=f"^{message}"):
        StrokeDataModule(root=str(tiny_bids), **kwargs)
    with pytest.raises(StrokeSegError, match=f"^data\\.{message}"):
        with config_section("data"):
            StrokeDataModule(root=str(tiny_bids), **kwargs)
