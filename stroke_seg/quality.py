"""Input checks: does a scan, once registered and standardised, look like the training data?

A model shown something it was never trained on (not a brain, a brain cut off by the field of
view, a header whose voxel size is wrong by a factor of ten, another contrast) mostly predicts
nothing, and an empty mask written without a word reads as "no lesion". These checks measure
how far a scan is from the training data, give a warning for each figure outside its normal
range and refuse a scan that cannot give a usable result, in one sentence naming the file and
what to do.

The figures (all cheap, computed on the template grid):

- ``brain_extent_ratio`` (before registration, from the header alone): the size of the scan's
  nonzero region in world millimetres over the template brain's, per axis (sorted), geometric
  mean. A brain-only scan is near 1, a scan with skull and background up to ~1.6; a header
  scale that is wrong by 10x gives 0.1 or 10.
- ``brain_extent_min_ratio``: the smallest of those per-axis ratios: a field of view that
  cuts the brain off (an affine registration would stretch the rest over the template).
- ``registration_scale``: the cube root of the determinant of the estimated template-to-scan
  transform: how much the scan's head is larger than the template's (heads vary ~+-15 %).
- ``correlation``: Pearson correlation between the registered, standardised scan and the
  template T1 over the template brain where the scan has data (registration quality; the
  normalised cross-correlation of ANTs' ``GC`` metric).
- ``coverage``: the fraction of the template brain mask that the registered scan's nonzero
  voxels cover (a field of view that cuts the brain off).
- ``intensity_shape_error``: the largest difference between the scan's and the reference's
  brain-tissue landmarks (measured alike, `IntensityReference.landmarks_of`), each mapped onto
  [0, 1] by its first and last landmark: another contrast has another histogram shape,
  whatever its units.
- ``intensity_level_error``: the relative difference between the scan's median brain-tissue
  intensity, as the model will see it, and the reference's (a scan that was not standardised).

`DEFAULT_THRESHOLDS` were calibrated with tools/measure_native.py on 28 synthetic native
scans (seed 1; 16 at 2 x 2 x 2.4 mm, 12 at 1 x 1 x 1.2 mm; reference from 30 training scans),
whose figures ranged: extent ratio 0.99-1.07, shortest-axis ratio 0.96-1.05, registration
scale 0.96-1.03, coverage 0.993-1.0, correlation 0.57-0.84 (MNI-space training scans
themselves: 0.50-0.73, the synthetic anatomy is warped), shape error 0.02-0.12, level error
0.0 after standardisation. The bad inputs gave: uniform noise correlation 0.00; top 40 % of a
brain shortest-axis ratio 0.45 (an affine registration then stretches it over the template:
scale 0.71, coverage 0.96, so coverage alone does not see it); voxel size 10x too small extent
ratio 0.10; inverted contrast correlation -0.61 and shape error 0.30. The limits sit between
the two groups, the warn limits a margin outside the normal range. The figures of a scan go
to ``lesions.csv``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from stroke_seg.errors import StrokeSegError
from stroke_seg.intensity import IntensityReference
from stroke_seg.registration import Template


@dataclass(frozen=True)
class Thresholds:
    """Warn and refuse limits of each figure (see the module doc for how they were set)."""

    extent_ratio_warn: tuple[float, float] = (0.8, 1.8)
    extent_ratio_refuse: tuple[float, float] = (0.5, 2.5)
    extent_min_ratio_warn: float = 0.85
    extent_min_ratio_refuse: float = 0.6
    scale_warn: tuple[float, float] = (0.88, 1.14)
    scale_refuse: tuple[float, float] = (0.75, 1.33)
    correlation_warn: float = 0.4
    correlation_refuse: float = 0.25
    coverage_warn: float = 0.95
    coverage_refuse: float = 0.7
    shape_error_warn: float = 0.22
    shape_error_refuse: float = 0.3
    level_error_warn: float = 0.15
    level_error_refuse: float = 0.5


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class QualityReport:
    """The figures of one scan, the warnings they raise, and the refusal if any.

    Attributes:
        source: the file, as named in every sentence.
        values: figure name -> value (NaN when not computed).
        warnings: one short sentence per figure outside its normal range.
        refusal: the one sentence that refuses the scan, or None.
    """

    source: str
    values: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None

    @property
    def refuse(self) -> bool:
        return self.refusal is not None

    def merge(self, other: QualityReport) -> QualityReport:
        """This report with `other`'s figures and warnings added (the first refusal wins)."""
        return QualityReport(
            self.source,
            {**self.values, **other.values},
            self.warnings + [w for w in other.warnings if w not in self.warnings],
            self.refusal or other.refusal,
        )

    def warning_text(self) -> str:
        """All warnings in one cell (``; ``-separated) for ``lesions.csv``; empty if none."""
        return "; ".join(self.warnings)

    def raise_if_refused(self) -> None:
        if self.refusal is not None:
            raise StrokeSegError(self.refusal)

    def to_dict(self) -> dict:
        return asdict(self)


def _add(
    report: QualityReport,
    name: str,
    value: float,
    bad_low: tuple[float, float] | None,
    bad_high: tuple[float, float] | None,
    warn_text: str,
    refuse_text: str,
) -> None:
    """Record `value`; warn beyond the warn limit, refuse beyond the refuse limit.
    `bad_low` = (warn, refuse) lower limits, `bad_high` = (warn, refuse) upper limits."""
    report.values[name] = float(value)
    if not np.isfinite(value):
        report.warnings.append(f"{name} could not be computed")
        return
    refused = (bad_low is not None and value < bad_low[1]) or (
        bad_high is not None and value > bad_high[1]
    )
    warned = (bad_low is not None and value < bad_low[0]) or (
        bad_high is not None and value > bad_high[0]
    )
    if refused and report.refusal is None:
        report.refusal = f"{report.source} {refuse_text.format(value=value)}."
    if warned or refused:
        report.warnings.append(f"{name}={value:.3g} {warn_text}")


def check_header(
    image: np.ndarray,
    affine: np.ndarray,
    template: Template,
    source: str,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> QualityReport:
    """The header checks, before registration: is the scan's nonzero region about the size
    of a brain in world millimetres (a wrong voxel size makes registration fail slowly), and
    is it as long as a brain along each of its axes (a field of view that cuts it off)?"""
    report = QualityReport(source)
    ratios = _extent_ratios(image, affine, template.brain_mask, template.affine)
    t = thresholds
    _add(
        report,
        "brain_extent_ratio",
        float(np.exp(np.mean(np.log(ratios)))),
        (t.extent_ratio_warn[0], t.extent_ratio_refuse[0]),
        (t.extent_ratio_warn[1], t.extent_ratio_refuse[1]),
        "times the template brain's size: check the voxel size in the header",
        "holds a nonzero region {value:.2g} times the size of the template brain in world "
        "millimetres, so the voxel size in its NIfTI header is wrong (or it is not a brain "
        "scan); fix the header's pixdim/affine and try again",
    )
    _add(
        report,
        "brain_extent_min_ratio",
        float(np.min(ratios)),
        (t.extent_min_ratio_warn, t.extent_min_ratio_refuse),
        None,
        "(shortest extent of the scan's brain relative to the template's): the field of view "
        "may cut the brain off",
        "holds a brain only {value:.0%} as long as the template brain along one axis, so its "
        "field of view cuts the brain off; pass a scan of the whole brain",
    )
    return report


def _extent_ratios(
    image: np.ndarray, affine: np.ndarray, template_mask: np.ndarray, template_affine: np.ndarray
) -> np.ndarray:
    """Sorted world extents (mm) of the scan's nonzero region over the template brain's."""

    def extent(mask: np.ndarray, aff: np.ndarray) -> np.ndarray:
        idx = np.argwhere(mask)
        if idx.size == 0:
            return np.full(3, np.nan)
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1  # voxel edges
        corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1)
        world = np.asarray(aff)[:3, :3] @ (corners - 0.5) + np.asarray(aff)[:3, 3:]
        return np.sort(world.max(axis=1) - world.min(axis=1))

    return extent(np.asarray(image) != 0, affine) / extent(template_mask, template_affine)


def check_registered(
    registered: np.ndarray,
    standardised: np.ndarray,
    template: Template,
    reference: IntensityReference | None,
    source: str,
    template_to_native: np.ndarray | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> QualityReport:
    """The checks on the template grid.

    Args:
        registered: the scan on the template grid before standardisation (its intensity
            histogram shape is compared with the reference's).
        standardised: what the model will see (before its own scaling, e.g. /255).
        template: the template (its T1 is 0 outside the brain).
        reference: the training scans' intensity reference; None skips the intensity checks.
        template_to_native: the registration's 4x4 world matrix; None (a scan on the template
            grid) skips the scale check.
    """
    t = thresholds
    report = QualityReport(source)
    template_image = template.image
    brain = template_image > 0
    has_data = registered != 0
    coverage = float((brain & has_data).sum() / max(int(brain.sum()), 1))
    overlap = brain & has_data
    if overlap.sum() > 100:
        a = standardised[overlap].astype(np.float64)
        b = template_image[overlap].astype(np.float64)
        sd = a.std() * b.std()
        correlation = float(((a - a.mean()) * (b - b.mean())).mean() / sd) if sd > 0 else 0.0
    else:
        correlation = 0.0
    if template_to_native is not None:
        det = abs(float(np.linalg.det(np.asarray(template_to_native)[:3, :3])))
        scale = det ** (1.0 / 3.0)
        _add(
            report,
            "registration_scale",
            scale,
            (t.scale_warn[0], t.scale_refuse[0]),
            (t.scale_warn[1], t.scale_refuse[1]),
            "(head size relative to the template): check the voxel size in the header and the "
            "registration QC picture",
            "registered to the template only by scaling it {value:.2g} times, so its voxel "
            "size in the NIfTI header is probably wrong; fix the header's pixdim/affine and "
            "try again",
        )
    _add(
        report,
        "coverage",
        coverage,
        (t.coverage_warn, t.coverage_refuse),
        None,
        "of the template brain lies inside the field of view: lesions outside it are missed",
        "covers only {value:.0%} of the template brain after registration (field of view cut "
        "off, or a failed registration); pass a scan of the whole brain",
    )
    _add(
        report,
        "correlation",
        correlation,
        (t.correlation_warn, t.correlation_refuse),
        None,
        "with the template after registration: check the registration QC picture",
        "correlates only {value:.2f} with the template T1 after registration, so it is not a "
        "T1 brain scan or its registration failed; check that it is a skull-stripped T1 "
        "scan with a correct header",
    )
    if reference is not None and has_data.any():
        own = reference.landmarks_of(registered, template.spacing, template.brain_mask)
        span = own[-1] - own[0]
        shape = (own - own[0]) / span if span > 0 else np.zeros_like(own)
        shape_error = float(np.abs(shape - reference.normalised()).max())
        _add(
            report,
            "intensity_shape_error",
            shape_error,
            None,
            (t.shape_error_warn, t.shape_error_refuse),
            "(brain histogram unlike the training scans'): is it a T1 scan?",
            "has a brain intensity histogram unlike the training T1 scans' (landmark error "
            "{value:.2f}), so it is probably another contrast or not a brain; pass a T1 scan",
        )
        seen = reference.landmarks_of(standardised, template.spacing, template.brain_mask)
        model_median = float(np.interp(50.0, reference.percentiles, seen))
        ref_median = float(np.interp(50.0, reference.percentiles, reference.landmarks))
        level_error = abs(model_median / ref_median - 1.0) if ref_median > 0 else np.nan
        _add(
            report,
            "intensity_level_error",
            level_error,
            None,
            (t.level_error_warn, t.level_error_refuse),
            "(median brain intensity relative to the training scans'): intensities were not "
            "standardised",
            "has brain intensities {value:.0%} away from the training scans' and was not "
            "standardised; let prediction standardise it (intensity standardisation on)",
        )
    return report


# Beyond this many training standard deviations a landmark is outside anything the model saw
# (evaluate.py): the training scans' own gamma and gain spread them over about +-2 SD, a
# scan in other units (0-1, raw scanner values) lies tens of SD away.
TRAINING_RANGE_SD = 4.0


def check_training_range(
    volume: np.ndarray,
    spacing: float | tuple[float, float, float],
    reference: IntensityReference,
    source: str,
    brain: np.ndarray | None = None,
    limit_sd: float = TRAINING_RANGE_SD,
) -> QualityReport:
    """Does a scan fed to the model as it is (evaluate.py: the paper's /255, no
    standardisation) lie inside the training scans' intensity range? ``intensity_z``: the
    largest distance of its brain-tissue landmarks from the training mean, in training
    standard deviations (`IntensityReference.landmarks_sd`). A warning, never a refusal:
    evaluation scores what it is given, and says when that is unlike the training scans.
    `brain`: the template's brain mask on this grid, for a reference measured inside it."""
    report = QualityReport(source)
    own = reference.landmarks_of(volume, spacing, brain)
    sd = np.maximum(np.asarray(reference.landmarks_sd), 1e-6 * np.abs(reference.landmarks[-1]))
    z = float(np.max(np.abs(own - np.asarray(reference.landmarks)) / sd))
    _add(
        report,
        "intensity_z",
        z,
        None,
        (limit_sd, math.inf),
        f"(training SDs between its brain intensities and the training scans'; > {limit_sd:g}): "
        "other units or another contrast than the model was trained on",
        "",
    )
    return report
