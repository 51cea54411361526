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
from stroke_seg.data.splits import (
    fold_split,
    load_split,
    make_split,
    resolve_split,
    save_split,
    scan_groups,
    subject_group,
)
from stroke_seg.errors import StrokeSegError, config_section
from stroke_seg.intensity import PERCENTILES, IntensityReference, brain_landmarks, tissue_mask
from tests.helpers import (
    bids_paths,
    make_r12_tree,
    tiny_datamodule,
    tiny_scan,
    write_nifti,
)


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
    cases = discover_atlas_v2(tmp_path)
    assert [c.subject for c in cases] == ["sub-r002s001_ses-1", "sub-r002s001_ses-2"]
    assert [c.group for c in cases] == ["sub-r002s001", "sub-r002s001"]  # one subject


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


# ---- splits by subject: ATLAS R1.2 time points and v2.0 sessions stay together ----------

# Scan number -> time points: six of the twelve subjects were scanned twice.
TWICE = {2: 2, 3: 2, 5: 2, 8: 2, 11: 2, 12: 2}


def _lists_of_subjects(split: dict[str, list[str]]) -> dict[str, set[str]]:
    """{subject (group): the split lists holding its scans}."""
    found: dict[str, set[str]] = {}
    for name, scans in split.items():
        for sid in scans:
            found.setdefault(subject_group(sid), set()).add(name)
    return found


def test_r12_time_points_get_their_own_ids_and_one_group(tmp_path):
    cases = discover_atlas_r12(make_r12_tree(tmp_path, 12, TWICE))
    ids = [c.subject for c in cases]
    assert len(ids) == 18 == len(set(ids))
    assert ids[:5] == ["000001", "000002_t01", "000002_t02", "000003_t01", "000003_t02"]
    twice = [c for c in cases if c.subject.startswith("000002")]
    assert [c.image.parent.name for c in twice] == ["t01", "t02"]
    assert {c.group for c in twice} == {"000002"} and cases[0].group == "000001"
    # Training passes scan IDs only: the ID gives the same group discovery stored.
    assert all(subject_group(c.subject) == c.group for c in cases)
    assert len(scan_groups(ids)) == 12


@pytest.mark.parametrize("seed", range(8))
def test_no_subject_is_split_across_lists_or_folds(tmp_path_factory, seed):
    root = tmp_path_factory.getbasetemp() / "r12_twice"
    if not root.exists():
        make_r12_tree(root, 12, TWICE)
    cases = discover_atlas_r12(root)
    ids, groups = [c.subject for c in cases], {c.subject: c.group for c in cases}
    for given in (groups, None):  # evaluation passes the groups, training the IDs only
        split = resolve_split(ids, None, seed, proportions=(6, 3, 3), groups=given)
        assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)
        assert all(len(lists) == 1 for lists in _lists_of_subjects(split).values())
        # The proportions count subjects, not scans: 12 subjects -> 6 / 3 / 3.
        assert [len({subject_group(s) for s in split[k]}) for k in split] == [6, 3, 3]
        vals = []
        for fold in range(3):
            folded = resolve_split(ids, None, seed, (6, 3, 3), fold, 3, groups=given)
            assert folded["test"] == split["test"]
            assert all(len(lists) == 1 for lists in _lists_of_subjects(folded).values())
            vals += folded["val"]
        assert sorted(vals) == sorted(split["train"] + split["val"])  # the folds cover the pool


def test_datamodule_keeps_a_subjects_time_points_together(tmp_path):
    root = make_r12_tree(tmp_path, 12, TWICE)
    for seed in range(4):
        dm = StrokeDataModule(
            str(root), layout="atlas_r12", split_seed=seed, split_proportions=(6, 3, 3)
        )
        split = dm.resolve_split()
        assert sum(len(v) for v in split.values()) == 18
        assert all(len(lists) == 1 for lists in _lists_of_subjects(split).values())


def test_bids_sessions_of_one_subject_stay_in_one_list(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(1, 7):
        for ses in ("1", "2") if i % 2 else ("1",):
            image, mask = tiny_scan(rng)
            t1, lab = bids_paths(tmp_path, "R001", f"sub-r001s{i:03d}", ses)
            write_nifti(t1, image)
            write_nifti(lab, mask)
    cases = discover_atlas_v2(tmp_path)
    assert len(cases) == 9 and len({c.group for c in cases}) == 6
    ids, groups = [c.subject for c in cases], {c.subject: c.group for c in cases}
    for seed in range(6):
        split = resolve_split(ids, None, seed, (4, 1, 1), groups=groups)
        assert all(len(lists) == 1 for lists in _lists_of_subjects(split).values())


def test_a_split_file_that_separates_time_points_is_refused(tmp_path):
    root = make_r12_tree(tmp_path / "data", 4, {2: 2})
    ids = [c.subject for c in discover_atlas_r12(root)]
    assert ids == ["000001", "000002_t01", "000002_t02", "000003", "000004"]
    leaky = {"train": ["000001", "000002_t01"], "val": ["000003"], "test": ["000002_t02"]}
    path = save_split(leaky, tmp_path / "split.json")
    message = (
        rf"^{path} puts the scans of subject 000002 in 2 lists \(000002_t01 in train and "
        r"000002_t02 in test\); move all of a subject's time points or sessions into one list\.$"
    )
    with pytest.raises(StrokeSegError, match=message):
        resolve_split(ids, path, seed=0)
    with pytest.raises(StrokeSegError, match=message):
        load_split(path)  # without the data root too: the IDs say which scans belong together
    together = {"train": ["000001", "000002_t01", "000002_t02"], "val": ["000003"], "test": []}
    assert load_split(save_split(together, tmp_path / "ok.json"), ids) == together


def test_one_scan_per_subject_splits_as_before():
    """Grouping changes nothing when every subject has one scan: the lists below are those
    the ungrouped code (commit 595c41b) gave for the same seeds."""
    synthetic = [f"sub-r001s{i:03d}" for i in range(1, 9)]
    assert make_split(synthetic, 0, (6, 1, 1)) == {
        "train": [f"sub-r001s00{i}" for i in (1, 3, 4, 5, 6, 7)],
        "val": ["sub-r001s002"],
        "test": ["sub-r001s008"],
    }
    sites = [f"sub-r{i:03d}s001" for i in range(1, 13)]
    split = make_split(sites, 5)
    assert split["val"] == ["sub-r011s001"]
    assert split["test"] == ["sub-r006s001", "sub-r009s001"]
    assert fold_split(split, 1, 3, 5)["val"] == ["sub-r003s001", "sub-r005s001", "sub-r010s001"]
    paper = make_split([f"s{i:03d}" for i in range(239)], 0)
    assert paper["test"] == [
        f"s{i:03d}"
        for i in (7, 14, 29, 31, 33, 46, 58, 59, 69, 73, 76, 77, 78, 95, 104, 113, 115, 120)
        + (121, 127, 166, 169, 176, 182, 184, 191, 207, 222, 223, 228, 238)
    ]
    assert fold_split(paper, 2, 5, 0)["val"][:8] == [
        "s001",
        "s006",
        "s008",
        "s011",
        "s032",
        "s039",
        "s047",
        "s049",
    ]


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
    # The intensity reference: every training scan's landmarks inside its own eroded nonzero
    # voxels (the tiny grid is not the template's), averaged.
    train = [load_case(dm.cases[s])["image"] for s in dm.split["train"]]
    landmarks = np.mean(
        [brain_landmarks(v, tissue_mask(v, 4.0, 2.0), PERCENTILES) for v in train], axis=0
    )
    reference = IntensityReference.from_dict(pre.intensity_reference)
    assert reference.n_scans == len(train) == 6 and reference.brain == "nonzero"
    np.testing.assert_allclose(reference.landmarks, landmarks, rtol=1e-6)
    assert pre == Preprocessing(
        intensity_mode="divide",
        intensity_divisor=255.0,
        crop_size=(16, 12, 8),
        eval_crop=(20, 24, 16),
        spacing=spacing_of(first["affine"]),
        grid_shape=first["image"].shape,
        template=None,  # the tiny scans do not lie on the template's grid: none recorded
        intensity_reference=reference.to_dict(),
    )
    plain = pre.to_dict()
    assert plain.pop("intensity_reference") == reference.to_dict()
    assert plain == {
        "intensity_mode": "divide",
        "intensity_divisor": 255.0,
        "crop_size": [16, 12, 8],
        "eval_crop": [20, 24, 16],
        "spacing": [2.0, 2.0, 2.0],
        "grid_shape": [24, 28, 20],
    }
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    # fewer reference scans on request
    few = tiny_datamodule(tiny_bids, split_seed=4, reference_scans=2)
    assert IntensityReference.from_dict(few.preprocessing().intensity_reference).n_scans == 2


def test_scans_on_the_template_grid_are_measured_inside_the_template_brain(tmp_path):
    """The synthetic set lies on the template grid: its reference is measured where every
    registered scan is measured too, inside the template's (eroded) brain mask."""
    from stroke_seg.data.synthetic import generate_dataset
    from stroke_seg.registration import load_template

    generate_dataset(tmp_path, 3, seed=0, spacing=2.0)
    dm = StrokeDataModule(str(tmp_path), layout="synthetic", split_proportions=(1, 1, 1))
    pre = dm.preprocessing()
    assert pre.template == "MNI152NLin2009aSym"  # they lie on its grid: recorded
    reference = IntensityReference.from_dict(pre.intensity_reference)
    brain = load_template(2.0).brain_mask
    (image,) = [load_case(dm.cases[s])["image"] for s in dm.split["train"]]
    expected = brain_landmarks(image, tissue_mask(image, 4.0, 2.0, brain), PERCENTILES)
    assert reference.brain == "template" and reference.n_scans == 1
    np.testing.assert_allclose(reference.landmarks, expected, rtol=1e-6)
    assert reference.landmarks_sd == (0.0,) * len(PERCENTILES)
    # data.template=null (the ATLAS configs) records none, but still measures in its brain
    none = StrokeDataModule(
        str(tmp_path), layout="synthetic", split_proportions=(1, 1, 1), template=None
    ).preprocessing()
    assert none.template is None and none.intensity_reference == pre.intensity_reference


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
