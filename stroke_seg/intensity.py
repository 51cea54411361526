"""Intensity standardisation: a new scan's brain intensities mapped onto the training scans'.

The paper's models read ATLAS scans scaled 0-255 and divide by 255 (docs/paper.md "Input");
a clinic's scan is in scanner units (hundreds to thousands, with an offset and another
contrast curve). Before the model's own scaling, every scan is therefore mapped onto an
*intensity reference* computed from the training scans, in the style of Nyúl & Udupa's
piecewise-linear histogram standardisation (Nyúl, Udupa & Zhang, IEEE TMI 2000): landmarks
are percentiles of the intensities inside the brain (default 20, 30, ..., 90, 99; see
`PERCENTILES` for why not from the 1st), the
reference is their mean over the training scans, and a new scan's intensities are mapped
piecewise-linearly from its own landmarks onto the reference's, continuing the first and
last segments linearly beyond the ends. Outside the brain stays 0.

Nyúl's original first maps each training scan's [p1, p99] onto a common standard scale; our
training scans share one scale already (0-255, ATLAS and the synthetic set), so the reference
stays in training units and the model's own scaling (/255) applies unchanged afterwards.

Why not a library: MONAI has no Nyúl standardisation (its ``HistogramNormalize`` equalises a
histogram to a flat one, ``ScaleIntensityRangePercentiles`` maps two landmarks linearly).
TorchIO's ``HistogramStandardization`` is Nyúl's method, but it learns its landmarks from image
*files* into a ``.npy`` file mapped onto its own [0, 100] scale, and would add torchio (and its
dependencies) to the project for one ``np.interp``. Here the reference is plain data (a few
floats) that training stores in the checkpoint, and the mapping is a few lines of numpy.

The brain is the volume's nonzero voxels (our template and synthetic data are skull-stripped
with an exact 0 background). The landmarks are taken inside the template's brain mask eroded
by 4 mm (`tissue_mask`), for the training scans and for every scan registered to the template
alike: the partial-volume rim at a scan's edge changes with every resampling and would
otherwise move the low landmarks, which govern the dark range where chronic lesions lie.

Optional N4 bias-field correction (ANTsPy's ``n4_bias_field_correction``) removes a smooth
multiplicative field in the scan's own space, before registration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from stroke_seg.errors import StrokeSegError

# Deciles from the 20th, and the 99th percentile. Below the 20th percentile a chronic-stroke
# brain's histogram is the lesion cavity and CSF, whose share differs from subject to subject
# (0 to a fifth of the brain): with the 1st and 10th percentiles as landmarks a subject with
# a small lesion had its dark range pushed towards black, and the demo model's native-space
# DSC on 8 hard subjects fell 0.16 below the MNI-space DSC instead of 0.06
# (tools/measure_native.py).
PERCENTILES: tuple[float, ...] = (20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def tissue_mask(
    volume: np.ndarray,
    erode_mm: float,
    spacing: float | Sequence[float],
    brain: np.ndarray | None = None,
) -> np.ndarray:
    """Where the landmarks are measured: `brain` (default: the volume's nonzero voxels) eroded
    by `erode_mm` millimetres, and only where the volume has data (nonzero).

    The outermost voxels of a brain-only scan mix brain and background, and how many there
    are depends on the scan's resolution and on every resampling it went through: a native
    scan resampled onto the template grid gains a rim of low values one to two voxels wide,
    wider than the training scans'. Left in, it moved the low landmarks by up to a third of
    the range, the standardisation then lifted the rim and the dark tissue (where chronic
    lesions lie) and the demo model found nothing (measured: native DSC 0.00-0.03 instead of
    0.85). On the template grid the brain to erode is therefore the *template's* brain mask,
    the same for the training scans and for every registered scan whatever its own rim.
    Falls back to the un-eroded brain when the erosion would leave fewer than 1000 voxels
    (tiny test volumes)."""
    data = np.asarray(volume) != 0
    region = data if brain is None else np.asarray(brain, dtype=bool) & data
    step = float(np.min(np.atleast_1d(spacing)))
    iterations = int(round(float(erode_mm) / step)) if erode_mm > 0 else 0
    if iterations == 0:
        return region
    base = data if brain is None else np.asarray(brain, dtype=bool)
    eroded = ndimage.binary_erosion(base, iterations=iterations) & data
    return eroded if eroded.sum() >= 1000 else region


def brain_landmarks(
    volume: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: Sequence[float] = PERCENTILES,
) -> np.ndarray:
    """The intensity percentiles of `volume` inside `mask` (default: its nonzero voxels)."""
    volume = np.asarray(volume)
    inside = volume != 0 if mask is None else np.asarray(mask, dtype=bool)
    values = volume[inside]
    if values.size == 0:
        raise ValueError("the brain mask is empty; there are no intensities to standardise")
    return np.percentile(values.astype(np.float64), list(percentiles))


@dataclass(frozen=True)
class IntensityReference:
    """The training scans' brain-intensity landmarks, as plain data for a checkpoint.

    Attributes:
        percentiles: where the landmarks sit (percent of the brain tissue's voxels).
        landmarks: the mean over the training scans of each scan's landmarks.
        landmarks_sd: their standard deviation over the training scans (for input checks).
        n_scans: how many scans the reference was computed from.
        erode_mm: the brain was eroded by this much before the landmarks were taken
            (`tissue_mask`); new scans are measured the same way.
        brain: ``template`` (landmarks inside the template's brain mask, for scans on the
            template grid) or ``nonzero`` (inside each scan's own nonzero voxels).
    """

    percentiles: tuple[float, ...]
    landmarks: tuple[float, ...]
    landmarks_sd: tuple[float, ...]
    n_scans: int
    erode_mm: float = 0.0
    brain: str = "nonzero"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("percentiles", "landmarks", "landmarks_sd"):
            set_(self, name, tuple(float(v) for v in getattr(self, name)))
        set_(self, "n_scans", int(self.n_scans))
        set_(self, "erode_mm", float(self.erode_mm))
        n = len(self.percentiles)
        if n < 2 or len(self.landmarks) != n or len(self.landmarks_sd) != n:
            raise ValueError("percentiles, landmarks and landmarks_sd need the same length >= 2")
        if np.any(np.diff(self.percentiles) <= 0) or np.any(np.diff(self.landmarks) <= 0):
            raise ValueError("percentiles and landmarks must increase strictly")
        if not 0.0 <= self.erode_mm <= 20.0:
            raise ValueError(f"erode_mm={self.erode_mm} must lie in [0, 20]")
        if self.brain not in ("template", "nonzero"):
            raise ValueError(f"brain={self.brain!r} must be 'template' or 'nonzero'")

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (for ``hyper_parameters`` in a checkpoint)."""
        return {
            "percentiles": list(self.percentiles),
            "landmarks": list(self.landmarks),
            "landmarks_sd": list(self.landmarks_sd),
            "n_scans": self.n_scans,
            "erode_mm": self.erode_mm,
            "brain": self.brain,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "the checkpoint"
    ) -> IntensityReference:
        """Read it back, or refuse in one sentence naming `source`."""
        try:
            return cls(
                data["percentiles"],
                data["landmarks"],
                data["landmarks_sd"],
                data["n_scans"],
                data.get("erode_mm", 0.0),
                data.get("brain", "nonzero"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StrokeSegError(
                f"{source} has a malformed intensity reference ({type(err).__name__}: {err}); "
                "it was not written by this version of stroke_seg training."
            ) from None

    def normalised(self) -> np.ndarray:
        """The landmarks mapped onto [0, 1] by their first and last: the histogram's shape."""
        land = np.asarray(self.landmarks)
        return (land - land[0]) / (land[-1] - land[0])

    def landmarks_of(
        self,
        volume: np.ndarray,
        spacing: float | Sequence[float],
        template_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """A scan's landmarks measured as the reference's: same percentiles, same erosion, and
        inside the template's brain mask when the reference was computed with one."""
        if self.brain == "template" and template_mask is None:
            raise ValueError("this reference was measured in the template brain mask; pass it")
        brain = template_mask if self.brain == "template" else None
        return brain_landmarks(
            volume, tissue_mask(volume, self.erode_mm, spacing, brain), self.percentiles
        )


def compute_reference(
    volumes: Iterable[np.ndarray],
    spacing: float | Sequence[float],
    template_mask: np.ndarray | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    erode_mm: float = 4.0,
) -> IntensityReference:
    """The reference of a list (or any iterable, e.g. a generator reading files one at a
    time) of training volumes with voxel size `spacing` (mm).

    With `template_mask` (the template's brain on the same grid, as the training scans of
    this project are), the landmarks are measured inside it eroded by `erode_mm`, where every
    registered scan is measured too (`tissue_mask`); without it, inside each volume's own
    nonzero voxels eroded by `erode_mm`."""
    rows = []
    for volume in volumes:
        tissue = tissue_mask(volume, erode_mm, spacing, template_mask)
        rows.append(brain_landmarks(volume, tissue, percentiles))
    if not rows:
        raise ValueError("compute_reference needs at least one volume")
    table = np.stack(rows)
    brain = "nonzero" if template_mask is None else "template"
    return IntensityReference(
        tuple(percentiles), table.mean(axis=0), table.std(axis=0), len(rows), erode_mm, brain
    )


def _strictly_increasing(values: np.ndarray) -> np.ndarray:
    """Landmarks with ties (a volume of few distinct values) nudged apart, so that the
    piecewise-linear map stays a function; the input checks flag such scans anyway."""
    out = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    span = max(float(out[-1] - out[0]), 1e-6)
    steps = np.arange(out.size) * span * 1e-6
    return np.maximum.accumulate(out + steps)


def piecewise_linear(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp`` that continues the first and last segments linearly instead of clamping."""
    xp = np.asarray(xp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    y[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return y


def standardise(
    volume: np.ndarray,
    reference: IntensityReference,
    spacing: float | Sequence[float],
    template_mask: np.ndarray | None = None,
) -> np.ndarray:
    """`volume` (voxel size `spacing`, mm) mapped onto `reference` at every nonzero voxel.

    The volume's landmarks are measured as the reference's (`IntensityReference.landmarks_of`,
    inside `template_mask` when the reference was measured in the template's brain); every
    nonzero voxel is mapped piecewise-linearly from them to the reference's landmarks,
    extrapolated linearly beyond the first and last, and kept > 0 (the training scans are
    >= 0); zero voxels stay 0. Returns float32.
    """
    volume = np.asarray(volume)
    inside = volume != 0
    own = _strictly_increasing(reference.landmarks_of(volume, spacing, template_mask))
    out = np.zeros(volume.shape, np.float32)
    values = volume[inside].astype(np.float64)
    mapped = piecewise_linear(values, own, np.asarray(reference.landmarks))
    # Kept above 0 so that a brain voxel extrapolated below zero stays in the brain (nonzero)
    # for the checks and for a second standardisation; the floor is 1e-6 of the reference's
    # range, i.e. black for the model.
    floor = 1e-6 * (reference.landmarks[-1] - reference.landmarks[0])
    out[inside] = np.maximum(mapped, floor)
    return out


def n4_bias_correction(
    image: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    shrink_factor: int = 4,
) -> np.ndarray:
    """ANTs' N4 bias-field correction of a scan on its own grid, inside `mask` (default:
    the nonzero voxels); outside stays 0. Returns float32 of the same shape."""
    from stroke_seg.registration import _ants, _to_ants  # sets the ITK thread count first

    ants = _ants()
    image = np.asarray(image, dtype=np.float32)
    inside = image != 0 if mask is None else np.asarray(mask, dtype=bool)
    img = _to_ants(image, affine)
    msk = _to_ants(inside.astype(np.float32), affine)
    corrected = ants.n4_bias_field_correction(img, mask=msk, shrink_factor=int(shrink_factor))
    out = corrected.numpy().astype(np.float32)
    return np.where(inside, out, 0.0).astype(np.float32)
