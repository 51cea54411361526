"""The project's own MONAI transforms: loading a `Case`, caching lesion indices, and the
intensity scaling that training and inference share.

Everything else in the training and evaluation chains is MONAI's own and is composed in
`stroke_seg.data.datamodule`. This module imports neither Lightning nor the DataModule, so
that inference (`stroke_seg.inference`, ``predict``) can scale a scan exactly as training did
without loading the training stack.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform, ScaleIntensityRanged, ScaleIntensityRangePercentilesd

from stroke_seg.data.io import load_case
from stroke_seg.data.preprocessing import INTENSITY_MODES
from stroke_seg.errors import check_choice


class LoadCased(MapTransform):
    """Load a `Case` into image/label arrays (merging several masks, checking grids).

    Written by hand because MONAI's `LoadImaged` maps one file to one key and does not
    check that an image and its masks share a grid; see `stroke_seg.data.io`.
    """

    def __init__(self, mask_threshold: float | None = None) -> None:
        super().__init__(keys=["case"])
        self.mask_threshold = mask_threshold

    def __call__(self, data: dict) -> dict:
        loaded = load_case(data["case"], self.mask_threshold)
        return {
            "subject": loaded["subject"],
            "image": loaded["image"],
            "label": loaded["label"],
            # Lesion voxels of the whole scan: validation scores a centre crop as if the
            # rest of the volume were predicted negative (paper Sec. 2.4).
            "label_total": float(loaded["label"].sum()),
            "spacing": torch.tensor(loaded["spacing"]),
        }


class ForegroundIndicesd(MapTransform):
    """Cache the flat indices of lesion voxels so foreground-biased cropping is cheap.

    MONAI's `FgBgToIndicesd` also stores every background index (~8 M int64 per 1 mm scan,
    64 MB each), which would not fit in memory for a cached ATLAS training set.
    """

    def __init__(self) -> None:
        super().__init__(keys=["label"])

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        label = np.asarray(data["label"])
        out["fg_indices"] = np.flatnonzero(label.ravel())
        # Never drawn while lesions exist (neg=0), but MONAI needs a non-empty list: the
        # volume centre is where a scan without lesion voxels gets its crop.
        out["bg_indices"] = np.array([label.size // 2], dtype=np.int64)
        return out


def intensity_transform(mode: str, divisor: float) -> MapTransform:
    """``divide``: x / divisor (the paper's /255 for ATLAS R1.2's 0-255 MNI images,
    docs/paper.md "Input"); ``percentile``: 0.5-99.5 percentile range to 0-1, for data without a
    fixed range. The modes are `stroke_seg.data.preprocessing.INTENSITY_MODES`."""
    check_choice("intensity_mode", mode, INTENSITY_MODES)
    if mode == "divide":
        return ScaleIntensityRanged("image", a_min=0.0, a_max=divisor, b_min=0.0, b_max=1.0)
    return ScaleIntensityRangePercentilesd(
        "image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, relative=False
    )
