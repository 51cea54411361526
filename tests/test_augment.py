"""Optional augmentation of training crops: off = the paper's crops, on = seeded and aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from monai.transforms import Compose

from stroke_seg.data.augment import KEYS, augmentation_transforms
from stroke_seg.errors import StrokeSegError, config_section
from tests.helpers import compose_train, tiny_datamodule

NONE = {
    "flip_prob": 0.0,
    "affine_prob": 0.0,
    "rotate_deg": 15.0,
    "scale_range": [0.85, 1.25],
    "noise_prob": 0.0,
    "noise_std": 0.03,
    "brightness_prob": 0.0,
    "brightness_range": [0.75, 1.25],
    "gamma_prob": 0.0,
    "gamma_range": [0.7, 1.5],
    "bias_prob": 0.0,
    "bias_coeff": 0.03,
    "blur_prob": 0.0,
    "blur_sigma": [0.5, 1.0],
    "lowres_prob": 0.0,
    "lowres_zoom": [0.5, 1.0],
    "lesion_prob": 0.0,
    "lesion_scale": [0.6, 2.0],
    "lesion_edge_sigma": 0.0,
}
ALWAYS = {**NONE, **{k: 1.0 for k in KEYS if k.endswith("_prob")}}


def _sample(dm, epoch=3, index=2) -> dict:
    return dm.train_set[(epoch, index)][0]  # the crop transforms return a one-element list


def test_augmentation_none_leaves_the_papers_crops_unchanged(tiny_bids):
    assert augmentation_transforms(NONE) == [] and augmentation_transforms(None) == []
    plain, off = tiny_datamodule(tiny_bids), tiny_datamodule(tiny_bids, augmentation=NONE)
    for key in [(3, 2), (7, 0)]:
        assert _sample(plain, *key)["image"].equal(_sample(off, *key)["image"])


def test_flips_mirror_image_and_label_of_the_same_crop(tiny_bids):
    """Augmentation comes after the crop and does not move it: with every axis mirrored,
    the augmented sample is exactly the plain crop flipped."""
    plain = _sample(tiny_datamodule(tiny_bids))
    flipped = _sample(tiny_datamodule(tiny_bids, augmentation={**NONE, "flip_prob": 1.0}))
    for key in ("image", "label"):
        assert torch.equal(flipped[key], torch.flip(plain[key], dims=(1, 2, 3)))
    assert plain["label"].sum() > 0  # the check is not on an empty label


def test_full_augmentation_is_seeded_keeps_labels_binary_and_changes_the_image(tiny_bids):
    dm = tiny_datamodule(tiny_bids, augmentation=ALWAYS)
    plain = _sample(tiny_datamodule(tiny_bids))
    first, again, other_epoch = _sample(dm), _sample(dm), _sample(dm, epoch=4)
    assert first["image"].equal(again["image"]) and first["label"].equal(again["label"])
    assert not first["image"].equal(other_epoch["image"])
    assert first["image"].shape == plain["image"].shape == (1, 16, 12, 8)
    assert set(torch.unique(first["label"]).tolist()) <= {0.0, 1.0}
    assert not torch.allclose(first["image"], plain["image"])
    assert type(first["image"]) is torch.Tensor  # plain tensors, as without augmentation


def test_rotation_and_zoom_move_label_and_image_together():
    """An image equal to its label stays aligned with it: nearest-neighbour labels against
    bilinear intensities thresholded at 0.5 disagree only on a thin boundary shell."""
    cube = np.zeros((1, 32, 32, 32), dtype=np.float32)
    cube[0, 8:22, 10:26, 12:20] = 1.0
    spatial = {**NONE, "affine_prob": 1.0, "rotate_deg": 30.0, "scale_range": [0.8, 1.2]}
    transform = Compose(augmentation_transforms(spatial))
    for seed in range(5):
        transform.set_random_state(seed=seed)
        out = transform({"image": torch.from_numpy(cube), "label": torch.from_numpy(cube)})
        label, image = out["label"].numpy(), out["image"].numpy()
        assert not np.array_equal(label, cube)  # it did move
        assert set(np.unique(label)) <= {0.0, 1.0}
        disagree = np.logical_xor(label > 0.5, image > 0.5).sum()
        assert disagree <= 0.05 * label.sum()
        assert 0.4 * cube.sum() < label.sum() < 2.0 * cube.sum()  # zoom 0.8..1.2 per axis


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flip_prob": 1.5}, r"data.augmentation.flip_prob=1.5 must lie in \[0, 1\]"),
        (
            {"affine_prob": 0.2, "scale_range": [1.2, 0.8]},
            r"data.augmentation.scale_range=\[1.2, 0.8\] must be \[low, high\]",
        ),
        ({"gamma_prob": 0.3, "gamma_range": 2}, r"data.augmentation.gamma_range=2 must be"),
        ({"mirror": 0.5}, r"data.augmentation.mirror=0.5 is not an augmentation setting"),
        (
            {"lesion_prob": 0.5, "lesion_edge_sigma": -1},
            r"data.augmentation.lesion_edge_sigma=-1.0 must be >= 0 voxels",
        ),
    ],
)
def test_bad_augmentation_settings_are_named(tiny_bids, change, message):
    """The library names its parameter (``augmentation.flip_prob``); the training task puts
    it under ``data.``, as the user writes it."""
    with pytest.raises(StrokeSegError, match=f"^{message.removeprefix('data.')}"):
        tiny_datamodule(tiny_bids, augmentation={**NONE, **change})
    with pytest.raises(StrokeSegError, match=f"^{message}"):
        with config_section("data"):
            tiny_datamodule(tiny_bids, augmentation={**NONE, **change})
    partial = dict(NONE)
    del partial["noise_std"]
    with pytest.raises(StrokeSegError, match="^augmentation.noise_std= is missing"):
        augmentation_transforms(partial)
    with pytest.raises(StrokeSegError, match="^data.augmentation.noise_std= is missing"):
        with config_section("data"):
            augmentation_transforms(partial)


def test_config_groups_reach_the_datamodule(tiny_bids, tmp_path):
    default = compose_train(tmp_path / "a", tiny_bids)
    assert dict(default.data.augmentation) == NONE
    cfg = compose_train(
        tmp_path / "b", tiny_bids, ["augmentation=standard", "data.augmentation.flip_prob=0.25"]
    )
    dm = instantiate(cfg.data, run_dir=None)
    assert [t.prob for t in dm.augment] == [0.25] * 3 + [0.2, 0.1, 0.15, 0.3]
    kinds = [type(t).__name__ for t in dm.augment]
    assert kinds == ["RandFlipd"] * 3 + [
        "RandAffined",
        "RandGaussianNoised",
        "RandScaleIntensityd",
        "RandAdjustContrastd",
    ]
