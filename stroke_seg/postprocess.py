"""Post-processing of predicted lesion masks: drop connected components below a size in mm³.

Not in the paper (Tomita et al. 2020 threshold the probabilities at 0.5 and stop). A short or
small-data training leaves false-positive islands far from the lesion, which cost DSC, HD
and the lesion count; removing components below a volume is the usual remedy. nnU-Net
(Isensee et al. 2021) decides its post-processing on the validation predictions: it keeps a
candidate only if it improves the mean validation Dice over no post-processing. The same rule
is `choose_min_lesion_mm3`: try each candidate size, keep the one with the highest mean
validation DSC, and only if it beats 0 (no post-processing).

One implementation for every consumer: `stroke_seg.inference.Predictor` applies
`remove_small_components` to its masks (``min_lesion_mm3=`` in evaluate and predict), and
``evaluate.py min_lesion_mm3=auto`` chooses the size on the validation scans with
`choose_min_lesion_mm3`.

Components are found with ``scipy.ndimage.label``; the default connectivity is 6 (faces
only, scipy's own default), the connectivity the project's metrics count lesions with.
Sizes are in mm³ (voxels x voxel volume), so a threshold means the same at 1 mm and 2 mm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from stroke_seg.errors import StrokeSegError, check_choice, option_error

__all__ = [
    "CANDIDATES_MM3",
    "ComponentStats",
    "check_min_lesion_mm3",
    "choose_min_lesion_mm3",
    "chosen_value",
    "component_stats",
    "remove_small_components",
    "structure",
]

# Sizes tried by `choose_min_lesion_mm3` (mm³): from about one 2 mm voxel to ~1.5 ml, the
# size below which the external set showed lesions are mostly missed anyway.
CANDIDATES_MM3 = (8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0)
_RANK = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int = 6) -> np.ndarray:
    """The 3x3x3 neighbourhood of ``connectivity`` 6 (faces), 18 (+ edges) or 26 (+ corners)."""
    check_choice("connectivity", connectivity, list(_RANK))
    return ndimage.generate_binary_structure(3, _RANK[int(connectivity)])


def _voxel_mm3(spacing: Sequence[float]) -> float:
    values = [float(v) for v in spacing]
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise StrokeSegError(f"spacing={list(spacing)} must be three positive voxel sizes in mm.")
    return float(np.prod(values))


def check_min_lesion_mm3(value: Any) -> float:
    """A size threshold in mm³: a finite number >= 0 (0 = no post-processing)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out) or out < 0:
        raise option_error(
            "min_lesion_mm3", value, "must be a number of mm³ >= 0 (0 = keep every component)."
        )
    return out


def count_components(mask: np.ndarray, connectivity: int = 6) -> int:
    """The number of connected components (lesions) of a mask (nonzero = lesion)."""
    return int(ndimage.label(np.asarray(mask) > 0, structure=structure(connectivity))[1])


def remove_small_components(
    mask: np.ndarray, spacing: Sequence[float], min_mm3: float, connectivity: int = 6
) -> np.ndarray:
    """``mask`` (any dtype, nonzero = lesion) without the components smaller than ``min_mm3``
    mm³, as uint8 0/1. ``min_mm3 = 0`` returns the mask unchanged (as uint8)."""
    min_mm3 = check_min_lesion_mm3(min_mm3)
    binary = np.asarray(mask) > 0
    if min_mm3 == 0 or not binary.any():
        return binary.astype(np.uint8)
    labels, n = ndimage.label(binary, structure=structure(connectivity))
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * _voxel_mm3(spacing)
    keep = sizes >= min_mm3
    keep[0] = False
    return keep[labels].astype(np.uint8)


@dataclass(frozen=True)
class ComponentStats:
    """What the DSC of one scan needs under any size threshold: the volume (mm³), voxel
    count and true-positive voxels of each predicted component, and the reference size."""

    sizes_mm3: np.ndarray
    voxels: np.ndarray
    tp: np.ndarray
    ref_voxels: int

    def dsc(self, min_mm3: float) -> float:
        """DSC after dropping components below ``min_mm3`` (both empty -> 1, as the metrics)."""
        keep = self.sizes_mm3 >= min_mm3
        pred = int(self.voxels[keep].sum())
        denom = pred + self.ref_voxels
        return 1.0 if denom == 0 else 2.0 * int(self.tp[keep].sum()) / denom


def component_stats(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], connectivity: int = 6
) -> ComponentStats:
    """Label ``pred`` once and keep per-component facts, so that every candidate threshold
    is scored without labelling again."""
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise StrokeSegError(f"prediction {pred.shape} and reference {ref.shape} differ in shape.")
    labels, n = ndimage.label(pred, structure=structure(connectivity))
    voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    tp = np.bincount(labels[ref].ravel(), minlength=n + 1)[1:]
    return ComponentStats(voxels * _voxel_mm3(spacing), voxels, tp, int(ref.sum()))


def choose_min_lesion_mm3(
    scans: Iterable[ComponentStats], candidates: Sequence[float] = CANDIDATES_MM3
) -> dict[str, Any]:
    """nnU-Net's rule on validation scans: the candidate size with the highest mean DSC,
    if it beats no post-processing (strictly); otherwise 0.

    Returns ``{"min_lesion_mm3", "baseline_dsc", "best_dsc", "candidates": {size: mean
    DSC}, "n_scans"}``; ties between candidates go to the smaller size.
    """
    scans = list(scans)
    if not scans:
        raise StrokeSegError("choosing min_lesion_mm3 needs at least one validation scan.")
    sizes = sorted({check_min_lesion_mm3(c) for c in candidates} - {0.0})
    baseline = float(np.mean([s.dsc(0.0) for s in scans]))
    means = {size: float(np.mean([s.dsc(size) for s in scans])) for size in sizes}
    best_size, best = 0.0, baseline
    for size in sizes:  # ascending: a tie keeps the smaller size
        if means[size] > best:
            best_size, best = size, means[size]
    return {
        "min_lesion_mm3": best_size,
        "baseline_dsc": baseline,
        "best_dsc": best,
        "candidates": {str(size): value for size, value in means.items()},
        "n_scans": len(scans),
    }


def chosen_value(value: Any, model: str | None = None) -> float:
    """``min_lesion_mm3`` from a number, or from the ``postprocessing.json`` that
    ``evaluate.py min_lesion_mm3=auto`` wrote ({model name: record}): the record of ``model``,
    or the only record when the file holds one."""
    text = str(value)
    if not text.endswith(".json"):
        return check_min_lesion_mm3(value)
    path = Path(text).expanduser()
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise option_error(
            "min_lesion_mm3", text, f"is not a readable postprocessing.json ({err})."
        ) from None
    if not isinstance(records, Mapping) or not records:
        records = {}
    if model is not None and model in records:
        record = records[model]
    elif len(records) == 1:
        record = next(iter(records.values()))
    else:
        raise option_error(
            "min_lesion_mm3",
            text,
            f"holds no record for model {model!r} (it has {sorted(records)}); use the same "
            "model names as the run that chose it, or pass a number.",
        )
    if not isinstance(record, Mapping) or "min_lesion_mm3" not in record:
        raise option_error("min_lesion_mm3", text, "holds no min_lesion_mm3 value.")
    return check_min_lesion_mm3(record["min_lesion_mm3"])
