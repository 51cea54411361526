"""A clinic's scan into the model's template space, checked, and the model's answer back.

The steps, each in its own module: optional N4 bias-field correction on the scan's own grid
(`stroke_seg.intensity`), a header check (`stroke_seg.quality.check_header`), registration to
the template and resampling onto the template grid at the model's training spacing
(`stroke_seg.registration`), intensity standardisation onto the training reference
(`stroke_seg.intensity.standardise`), and the checks on the template grid
(`stroke_seg.quality.check_registered`). The result holds the volume the model reads (before
its own scaling, /255 for the paper) and the mapping that brings the model's probability map
back onto the scan's grid (`PreparedScan.to_native`), where the caller thresholds it.

A scan already on the template grid takes today's path: no registration and, with
``standardise="auto"``, no standardisation either, so that its prediction is bit-identical
to the direct path; the checks still run and flag intensities unlike the training scans'.

`predict_in_template_space` is the whole path for one scan, shared by ``predict.py`` and the
measurements (tools/measure_native.py): prepare, predict on the template grid with a
`stroke_seg.inference.Predictor`, threshold and post-process there (the template-space mask,
for group lesion maps) and, separately, on the scan's own grid after bringing the probability
map back (the native mask).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from stroke_seg.data.io import spacing_of
from stroke_seg.errors import check_choice
from stroke_seg.inference import Predictor
from stroke_seg.intensity import IntensityReference, n4_bias_correction, standardise
from stroke_seg.postprocess import count_components, remove_small_components
from stroke_seg.quality import (
    DEFAULT_THRESHOLDS,
    QualityReport,
    Thresholds,
    check_header,
    check_registered,
)
from stroke_seg.registration import (
    RegistrationOptions,
    Template,
    TemplateMapping,
    on_template_grid,
    register_to_template,
)

STANDARDISE = ("auto", "always", "never")


@dataclass
class PreparedScan:
    """A scan on the template grid, ready for the model, and the way back.

    Attributes:
        volume: what the model reads on the template grid (standardised unless skipped),
            before the model's own intensity scaling. The input array itself when the scan
            was on the template grid and not standardised.
        registered: the scan on the template grid before standardisation.
        mapping: template grid <-> scan grid (`TemplateMapping.to_native`, `.save`).
        quality: the input checks (warnings, refusal).
        standardised: whether `volume` was mapped onto the intensity reference.
        timings: seconds per step (``n4``, ``registration`` with its parts, ``standardise``,
            ``checks``).
    """

    volume: np.ndarray
    registered: np.ndarray
    mapping: TemplateMapping
    quality: QualityReport
    standardised: bool
    timings: dict[str, float] = field(default_factory=dict)

    def to_native(self, prob: np.ndarray) -> np.ndarray:
        """A template-grid probability map on the scan's own grid (linear interpolation,
        clipped to [0, 1]); threshold it there."""
        start = time.perf_counter()
        out = self.mapping.to_native(prob, "linear")
        if not self.mapping.is_identity:
            out = np.clip(out, 0.0, 1.0)
        self.timings["back_warp"] = time.perf_counter() - start
        return out


def prepare_scan(
    image: np.ndarray,
    affine: np.ndarray,
    template: Template,
    reference: IntensityReference | None,
    *,
    source: str = "the scan",
    registration: RegistrationOptions | None = None,
    standardise_mode: str = "auto",
    n4: bool = False,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> PreparedScan:
    """Register, standardise and check one scan (array and RAS affine).

    Args:
        template: the model's template at its training spacing.
        reference: the training scans' intensity reference (None: no standardisation and no
            intensity checks, for checkpoints that do not carry one).
        source: the file, named in every warning and refusal.
        standardise_mode: ``auto`` (standardise every scan that needed registration),
            ``always`` or ``never``.
        n4: N4 bias-field correction on the scan's own grid first (off by default).

    The scan is refused (``quality.refuse``; `QualityReport.raise_if_refused` raises the one
    sentence) after the header check without registering it, when its header is
    implausible; otherwise all checks run and the caller decides.
    """
    check_choice("standardise", standardise_mode, STANDARDISE)
    timings: dict[str, float] = {}
    image = np.asarray(image)
    affine = np.asarray(affine, dtype=np.float64)
    on_grid = on_template_grid(image.shape, affine, template)
    header = QualityReport(source)
    if not on_grid:
        start = time.perf_counter()
        header = check_header(image, affine, template, source, thresholds)
        timings["checks"] = time.perf_counter() - start
        if header.refuse:
            identity = TemplateMapping(image.shape, affine, template, "none")
            return PreparedScan(image, image, identity, header, False, timings)
        if n4:
            start = time.perf_counter()
            image = n4_bias_correction(image, affine)
            timings["n4"] = time.perf_counter() - start
    start = time.perf_counter()
    registered, mapping = register_to_template(image, affine, template, registration, source)
    timings["registration"] = time.perf_counter() - start
    timings.update({f"registration.{k}": v for k, v in mapping.timings.items()})
    do_standardise = reference is not None and (
        standardise_mode == "always" or (standardise_mode == "auto" and not on_grid)
    )
    volume = registered
    if do_standardise:
        start = time.perf_counter()
        volume = standardise(registered, reference, template.spacing, template.brain_mask)
        timings["standardise"] = time.perf_counter() - start
    start = time.perf_counter()
    checks = check_registered(
        registered,
        volume,
        template,
        reference,
        source,
        None if mapping.transform in ("none", "identity") else mapping.template_to_native,
        thresholds,
    )
    timings["checks"] = timings.get("checks", 0.0) + time.perf_counter() - start
    return PreparedScan(volume, registered, mapping, header.merge(checks), do_standardise, timings)


@dataclass
class TemplateSpacePrediction:
    """One scan's prediction through the template space.

    Attributes:
        prepared: the registered, standardised, checked scan (`prepare_scan`).
        prob: lesion probability on the scan's own grid (float32).
        mask: the native mask: ``prob`` > threshold, then components below the predictor's
            ``min_lesion_mm3`` dropped on the scan's grid (uint8 0/1).
        template_prob, template_mask: the same on the template grid (the mask thresholded
            and post-processed there, not resampled from the native one).
        mode: the spatial strategy the predictor used on the template grid.
        removed_lesions: components the post-processing dropped from the native mask.
    """

    prepared: PreparedScan
    prob: np.ndarray
    mask: np.ndarray
    template_prob: np.ndarray
    template_mask: np.ndarray
    mode: str
    removed_lesions: int = 0


def predict_in_template_space(
    predictor: Predictor,
    image: np.ndarray,
    affine: np.ndarray,
    template: Template,
    reference: IntensityReference | None,
    **prepare_options,
) -> TemplateSpacePrediction | PreparedScan:
    """Register, standardise and check one scan, predict on the template grid, and bring the
    result back onto the scan's grid.

    Returns the `PreparedScan` alone when its checks refuse it (``quality.refuse``): nothing
    was predicted. `prepare_options` go to `prepare_scan` (``source``, ``registration``,
    ``standardise_mode``, ``n4``, ``thresholds``).
    """
    prepared = prepare_scan(image, affine, template, reference, **prepare_options)
    if prepared.quality.refuse:
        return prepared
    start = time.perf_counter()
    # On the template grid, the predictor takes its direct (no resampling) path.
    on_template = predictor.predict(prepared.volume, template.affine)
    prepared.timings["inference"] = time.perf_counter() - start
    template_prob = on_template.prob
    template_mask, removed = postprocessed(template_prob, template.spacing, predictor)
    if prepared.mapping.is_identity:
        return TemplateSpacePrediction(
            prepared,
            template_prob,
            template_mask,
            template_prob,
            template_mask,
            on_template.mode,
            removed,
        )
    prob = prepared.to_native(template_prob).astype(np.float32)
    mask, removed = postprocessed(prob, spacing_of(affine), predictor)
    return TemplateSpacePrediction(
        prepared, prob, mask, template_prob, template_mask, on_template.mode, removed
    )


def postprocessed(
    prob: np.ndarray, spacing: tuple[float, float, float], predictor: Predictor
) -> tuple[np.ndarray, int]:
    """The predictor's mask of a probability map on a grid of `spacing` mm (threshold, then
    its ``min_lesion_mm3`` post-processing), and how many components that dropped."""
    binary = (prob > predictor.threshold).astype(np.uint8)
    if predictor.min_lesion_mm3 <= 0:
        return binary, 0
    mask = remove_small_components(
        binary, spacing, predictor.min_lesion_mm3, predictor.connectivity
    )
    return mask, count_components(binary, predictor.connectivity) - count_components(
        mask, predictor.connectivity
    )


def hemisphere(template_mask: np.ndarray, template_affine: np.ndarray) -> str:
    """Which side of the template's midline (world x = 0 in MNI space; x > 0 is right in
    RAS) the lesion lies on: ``left``, ``right``, ``bilateral`` (at least 10 % of its volume
    on each side) or ``none`` (no lesion)."""
    idx = np.argwhere(np.asarray(template_mask) > 0)
    if idx.size == 0:
        return "none"
    x = idx @ np.asarray(template_affine)[0, :3] + np.asarray(template_affine)[0, 3]
    right = float((x > 0).mean())
    if right >= 0.9:
        return "right"
    if right <= 0.1:
        return "left"
    return "bilateral"
