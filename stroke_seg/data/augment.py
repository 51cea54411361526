"""Optional spatial and intensity augmentation of training crops (``augmentation=standard``).

The paper trained without augmentation (Sec. 2.3; docs/paper.md "Optimisation"), so the
default, ``augmentation=none``, adds no transform at all and the paper's crops are unchanged.
``augmentation=standard`` follows the kinds and probabilities of nnU-Net's default 3-D
pipeline (Isensee et al. 2021, Suppl. Note 4): mirroring, rotation and scaling, Gaussian
noise, brightness and gamma, with ranges narrowed for T1 intensities scaled to 0..1.

Every transform is MONAI's own. They act on the crop (after cropping, so a rotation costs the
crop's voxels, not the whole scan's) and draw from the random state that
`EpochSeededCacheDataset` seeds from (seed, epoch, scan), so augmented runs stay
reproducible and resume exactly. Labels are moved with nearest-neighbour interpolation and so
stay binary; intensity transforms touch the image only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
)

from stroke_seg.errors import check_keys, check_range, option_error

KEYS = ("flip_prob", "affine_prob", "rotate_deg", "scale_range", "noise_prob", "noise_std")
KEYS += ("brightness_prob", "brightness_range", "gamma_prob", "gamma_range")
# Errors name a setting as ``augmentation.<key>``: `StrokeDataModule`'s parameter that holds
# these settings; the training task puts it under ``data.``.
PARAMETER = "augmentation"


def _prob(settings: Mapping[str, Any], key: str) -> float:
    return check_range(f"{PARAMETER}.{key}", float(settings[key]), 0.0, 1.0)


def _range(settings: Mapping[str, Any], key: str) -> tuple[float, float]:
    value = settings[key]
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low, high = math.nan, math.nan
    if not 0.0 < low <= high:
        shown = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        raise option_error(f"{PARAMETER}.{key}", shown, "must be [low, high] with 0 < low <= high.")
    return low, high


def augmentation_transforms(settings: Mapping[str, Any] | None) -> list[MapTransform]:
    """The MONAI transforms for ``settings`` (conf/augmentation/*.yaml); a probability of 0
    leaves its transform out, so ``augmentation=none`` returns an empty list."""
    if not settings:
        return []
    check_keys(
        settings,
        KEYS,
        "an augmentation setting",
        "start from augmentation=standard or augmentation=none, which set every key.",
        prefix=f"{PARAMETER}.",
    )
    both = ["image", "label"]
    steps: list[MapTransform] = []
    flip = _prob(settings, "flip_prob")
    if flip:
        # Each axis mirrored on its own, as nnU-Net does.
        steps += [RandFlipd(both, prob=flip, spatial_axis=axis) for axis in range(3)]
    affine = _prob(settings, "affine_prob")
    if affine:
        angle = math.radians(float(settings["rotate_deg"]))
        low, high = _range(settings, "scale_range")
        steps.append(
            RandAffined(
                both,
                prob=affine,
                rotate_range=(angle, angle, angle),
                # MONAI's scale_range is added to 1: a zoom factor in [low, high].
                scale_range=((low - 1, high - 1),) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    noise = _prob(settings, "noise_prob")
    if noise:
        steps.append(
            RandGaussianNoised(
                "image", prob=noise, mean=0.0, std=float(settings["noise_std"]), sample_std=True
            )
        )
    brightness = _prob(settings, "brightness_prob")
    if brightness:
        low, high = _range(settings, "brightness_range")
        # RandScaleIntensityd multiplies by 1 + factor.
        steps.append(RandScaleIntensityd("image", factors=(low - 1, high - 1), prob=brightness))
    gamma = _prob(settings, "gamma_prob")
    if gamma:
        steps.append(
            RandAdjustContrastd(
                "image", prob=gamma, gamma=_range(settings, "gamma_range"), retain_stats=True
            )
        )
    return steps
