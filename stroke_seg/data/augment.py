"""Optional spatial and intensity augmentation of training crops (``augmentation=standard``).

The paper trained without augmentation (Sec. 2.3; docs/paper.md "Optimisation"), so the
default, ``augmentation=none``, adds no transform at all and the paper's crops are unchanged.
``augmentation=standard`` follows the kinds and probabilities of nnU-Net's default 3-D
pipeline (Isensee et al. 2021, Suppl. Note 4): mirroring, rotation and scaling, Gaussian
noise, brightness and gamma, with ranges narrowed for T1 intensities scaled to 0..1.

``augmentation=appearance`` aims at what differs between scanners and lesion appearances
rather than at geometry: on top of noise, brightness and gamma it adds a smooth multiplicative
bias field, Gaussian blur, low-resolution simulation (down- and up-sampling, as nnU-Net's
``SimulateLowResolutionTransform``) and a random scaling of the lesion's own intensity (so
that lesions are seen darker and brighter than the synthetic cavities; MONAI has no
label-restricted intensity transform, hence `RandLesionIntensityd`).

Every transform but `RandLesionIntensityd` is MONAI's own. They act on the crop (after
cropping, so a rotation costs the crop's voxels, not the whole scan's) and draw from the
random state that
`EpochSeededCacheDataset` seeds from (seed, epoch, scan), so augmented runs stay
reproducible and resume exactly. Labels are moved with nearest-neighbour interpolation and so
stay binary; intensity transforms touch the image only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    EnsureTyped,
    GaussianSmooth,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
)

from stroke_seg.errors import check_keys, check_range, option_error

KEYS = ("flip_prob", "affine_prob", "rotate_deg", "scale_range", "noise_prob", "noise_std")
KEYS += ("brightness_prob", "brightness_range", "gamma_prob", "gamma_range")
# Errors name a setting as ``augmentation.<key>``: `StrokeDataModule`'s parameter that holds
# these settings; the training task puts it under ``data.``.
PARAMETER = "augmentation"

# Appearance (augmentation=appearance); every preset sets them (0 = off).
KEYS += ("bias_prob", "bias_coeff", "blur_prob", "blur_sigma", "lowres_prob", "lowres_zoom")
KEYS += ("lesion_prob", "lesion_scale", "lesion_edge_sigma")


class RandLesionIntensityd(RandomizableTransform, MapTransform):
    """With probability ``prob``, multiply the image inside the lesion mask by one factor
    drawn uniformly from ``scale``: a lesion darker or brighter than the training lesions,
    with its mask unchanged. Written by hand because MONAI's intensity transforms act on
    the whole image, not on the voxels of a label.

    ``edge_sigma`` = 0 scales the mask's voxels alone, which leaves a step at the mask's
    border that no scan has. With ``edge_sigma`` > 0 (voxels) the factor fades in over the
    border instead: the weight is 1 on the mask and ``min(1, 2 * G(mask))`` outside it, for a
    Gaussian ``G`` of that sigma (MONAI's `GaussianSmooth`), falling to 0 a few sigma out, as
    a lesion of another contrast would blend into its partial-volume ring."""

    def __init__(self, prob: float, scale: tuple[float, float], edge_sigma: float = 0.0) -> None:
        MapTransform.__init__(self, ["image"])
        RandomizableTransform.__init__(self, prob)
        self.scale = (float(scale[0]), float(scale[1]))
        self.edge_sigma = float(edge_sigma)
        self.factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.factor = float(self.R.uniform(*self.scale))

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        image, label = out["image"], out["label"]
        if self.edge_sigma > 0:
            lesion = torch.as_tensor(np.asarray(label) > 0, dtype=torch.float32)
            blur = torch.clamp(2 * torch.as_tensor(GaussianSmooth(self.edge_sigma)(lesion)), max=1)
            weight = torch.maximum(lesion, blur)
            if isinstance(image, torch.Tensor):
                weight = weight.to(device=image.device, dtype=image.dtype)
            else:
                weight = weight.numpy()
            out["image"] = image * (1 + (self.factor - 1) * weight)
        elif isinstance(image, torch.Tensor):
            lesion = torch.as_tensor(label, device=image.device) > 0
            out["image"] = torch.where(lesion, image * self.factor, image)
        else:
            out["image"] = np.where(np.asarray(label) > 0, image * self.factor, image)
        return out


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
    # Appearance, after the transforms above so that their seeds stay as they were.
    appearance: list[MapTransform] = []
    bias = _prob(settings, "bias_prob")
    if bias:
        coeff = float(settings["bias_coeff"])
        if not 0.0 < coeff <= 1.0:
            raise option_error(f"{PARAMETER}.bias_coeff", coeff, "must lie in (0, 1].")
        # exp of a degree-3 Legendre polynomial field with coefficients in [0, bias_coeff]
        appearance.append(RandBiasFieldd("image", degree=3, coeff_range=(0.0, coeff), prob=bias))
    blur = _prob(settings, "blur_prob")
    if blur:
        sigma = _range(settings, "blur_sigma")  # voxels, drawn per axis
        appearance.append(
            RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=blur)
        )
    lowres = _prob(settings, "lowres_prob")
    if lowres:
        low, high = _range(settings, "lowres_zoom")
        if high > 1.0:
            raise option_error(
                f"{PARAMETER}.lowres_zoom",
                [low, high],
                "must lie in (0, 1] (the factor the crop is down-sampled by before it is "
                "up-sampled back).",
            )
        appearance.append(RandSimulateLowResolutiond("image", prob=lowres, zoom_range=(low, high)))
    lesion = _prob(settings, "lesion_prob")
    if lesion:
        sigma = float(settings["lesion_edge_sigma"])
        if not (math.isfinite(sigma) and sigma >= 0):
            raise option_error(
                f"{PARAMETER}.lesion_edge_sigma", sigma, "must be >= 0 voxels (0 = a hard edge)."
            )
        appearance.append(RandLesionIntensityd(lesion, _range(settings, "lesion_scale"), sigma))
    if appearance:
        # Plain tensors first: MONAI 1.6.1's EnsureChannelFirstd("no_channel") records 2
        # spatial dimensions for our 3-D arrays (MetaTensor.spatial_ndim), and the blur and
        # low-resolution transforms read that; without meta they count the tensor's own.
        steps.append(EnsureTyped(["image", "label"], track_meta=False))
    return steps + appearance
