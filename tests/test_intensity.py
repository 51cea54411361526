"""Tests of intensity standardisation and N4 (stroke_seg.intensity)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stroke_seg.data.synthetic import generate_subject
from stroke_seg.errors import StrokeSegError
from stroke_seg.intensity import (
    PERCENTILES,
    IntensityReference,
    brain_landmarks,
    compute_reference,
    n4_bias_correction,
    piecewise_linear,
    standardise,
    tissue_mask,
)


@pytest.fixture(scope="module")
def subjects() -> list[np.ndarray]:
    return [generate_subject(i, 0, 2.0)[0] for i in range(3)]


@pytest.fixture(scope="module")
def reference(subjects) -> IntensityReference:
    return compute_reference(subjects, spacing=2.0)


def test_tissue_mask_erodes_the_rim_in_millimetres(subjects) -> None:
    brain = subjects[0] > 0
    two_voxels = tissue_mask(subjects[0], 4.0, 2.0)
    assert np.array_equal(two_voxels, ndimage.binary_erosion(brain, iterations=2))
    assert np.array_equal(
        tissue_mask(subjects[0], 4.0, (1.0, 1.0, 1.2)).sum(),
        ndimage.binary_erosion(brain, iterations=4).sum(),
    )
    assert np.array_equal(tissue_mask(subjects[0], 0.0, 2.0), brain)
    small = np.zeros((12, 12, 12), np.float32)
    small[2:10, 2:10, 2:10] = 1.0  # 512 voxels: eroding would leave too few, so it does not
    assert tissue_mask(small, 4.0, 2.0).sum() == 512


def test_reference_is_the_mean_of_brain_tissue_percentiles(subjects, reference) -> None:
    table = np.stack(
        [
            np.percentile(s[ndimage.binary_erosion(s > 0, iterations=2)], PERCENTILES)
            for s in subjects
        ]
    )
    assert np.allclose(reference.landmarks, table.mean(axis=0))
    assert np.allclose(reference.landmarks_sd, table.std(axis=0))
    assert reference.n_scans == 3 and reference.percentiles == PERCENTILES
    assert reference.erode_mm == 4.0
    assert 0 < reference.landmarks[0] < reference.landmarks[-1] <= 255  # training units
    plain = compute_reference(subjects, spacing=2.0, erode_mm=0.0)
    assert np.allclose(
        plain.landmarks, np.mean([np.percentile(s[s > 0], PERCENTILES) for s in subjects], axis=0)
    )
    assert plain.landmarks[0] < reference.landmarks[0]  # the rim is darker than the tissue
    # a generator works as well as a list (training streams its scans)
    again = compute_reference((s for s in subjects), spacing=2.0)
    assert again == reference


def test_reference_in_the_template_brain_ignores_a_scans_own_rim(subjects) -> None:
    """A registered native scan has a wider partial-volume rim than the training scans; in
    the template's brain mask (eroded) it does not move the landmarks, so standardisation
    leaves the tissue as it was (the rim made the demo model miss every lesion before)."""
    from stroke_seg.registration import load_template

    tpl = load_template(2.0)
    ref = compute_reference(subjects, 2.0, template_mask=tpl.brain_mask)
    assert ref.brain == "template" and IntensityReference.from_dict(ref.to_dict()) == ref
    inner = ndimage.binary_erosion(tpl.brain_mask, iterations=2)
    table = [np.percentile(s[inner & (s > 0)], PERCENTILES) for s in subjects]
    assert np.allclose(ref.landmarks, np.mean(table, axis=0))
    with pytest.raises(ValueError, match="template brain mask"):
        ref.landmarks_of(subjects[0], 2.0)
    scan = subjects[1]
    rim = ndimage.binary_dilation(scan > 0, iterations=2) & (scan == 0)
    rimmed = np.where(rim, 10.0, scan).astype(np.float32)  # two voxels of dark rim
    same = ref.landmarks_of(rimmed, 2.0, tpl.brain_mask)
    before = ref.landmarks_of(scan, 2.0, tpl.brain_mask)
    # the subject's warped edge enters the eroded template mask in a few places: p1 moves a bit
    assert np.allclose(same, before, rtol=0.05) and np.allclose(same[1:], before[1:], rtol=0.01)
    a = standardise(scan, ref, 2.0, tpl.brain_mask)
    b = standardise(rimmed, ref, 2.0, tpl.brain_mask)
    diff = np.abs(a[scan > 0] - b[scan > 0])  # 0-255 scale
    assert diff.max() < 10.0 and diff.mean() < 1.0, (diff.max(), diff.mean())
    own = compute_reference([scan], 2.0)  # in its own nonzero voxels the rim moves more
    shift_own = abs(own.landmarks_of(rimmed, 2.0)[0] / own.landmarks[0] - 1)
    assert shift_own > 2 * abs(same[0] / before[0] - 1)


def test_reference_round_trips_as_plain_data(reference) -> None:
    data = reference.to_dict()
    assert all(isinstance(v, (list, int, float, str)) for v in data.values())
    assert IntensityReference.from_dict(data) == reference
    broken = {**data, "landmarks": data["landmarks"][:-1]}
    with pytest.raises(StrokeSegError, match="^model.ckpt has a malformed intensity reference"):
        IntensityReference.from_dict(broken, "model.ckpt")
    with pytest.raises(StrokeSegError, match="malformed"):
        IntensityReference.from_dict({"landmarks": [1, 2]}, "model.ckpt")


def test_scanner_units_map_back_onto_the_training_scale(subjects) -> None:
    """A scan in scanner units (gain and offset) is an increasing function of the training
    scan, and its landmarks move with it: standardising onto the scan's own reference
    recovers the 0-255 scan inside the landmark range."""
    scan = subjects[0]
    ref = compute_reference([scan], spacing=2.0)
    brain = scan > 0
    scanner = np.where(brain, 7.3 * scan + 180.0, 0.0).astype(np.float32)
    out = standardise(scanner, ref, 2.0)
    assert out.dtype == np.float32
    assert np.all(out[~brain] == 0)
    assert np.allclose(out[brain], scan[brain], rtol=1e-4, atol=5e-3)
    assert np.allclose(ref.landmarks_of(out, 2.0), ref.landmarks, rtol=1e-4)


def test_landmarks_land_on_the_reference_and_the_ends_extrapolate(subjects, reference) -> None:
    scan = subjects[1]
    brain = scan > 0
    curved = np.where(brain, 40.0 * np.sqrt(scan + 1.0), 0.0).astype(np.float32)  # other curve
    out = standardise(curved, reference, 2.0)
    assert np.allclose(reference.landmarks_of(out, 2.0), reference.landmarks, rtol=2e-3, atol=0.05)
    assert not np.allclose(brain_landmarks(out), reference.landmarks, rtol=0.02)  # rim differs
    assert np.all(np.diff(out[brain][np.argsort(curved[brain])]) >= -1e-4)  # monotone
    assert out.min() >= 0.0
    # beyond the last landmark the last segment continues linearly (no clamping)
    y = piecewise_linear(
        np.array([0.0, 5.0, 10.0, 12.0]), np.array([2.0, 4.0, 8.0]), np.array([0.0, 1.0, 3.0])
    )
    assert np.allclose(y, [-1.0, 1.5, 4.0, 5.0])


def test_constant_volume_does_not_crash(reference) -> None:
    flat = np.zeros((20, 20, 20), np.float32)
    flat[5:15, 5:15, 5:15] = 50.0
    out = standardise(flat, reference, 2.0)
    assert np.isfinite(out).all() and np.all(out[flat == 0] == 0)
    with pytest.raises(ValueError, match="empty"):
        standardise(np.zeros((4, 4, 4), np.float32), reference, 2.0)


def test_n4_removes_a_smooth_bias_field() -> None:
    """Two tissues in an ellipsoid under a smooth multiplicative field: N4 flattens it. (On
    the synthetic brains N4 barely helps: their contrast varies smoothly by design, and it
    costs ~20 s at 2 mm; it stays an option, off by default.)"""
    shape = (48, 56, 44)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (g**2).sum(0) < 0.8
    noise = np.random.default_rng(0).normal(0, 3, shape)
    scan = np.where(brain, np.where(g[0] > 0.1, 150.0, 100.0) + noise, 0).astype(np.float32)
    bias = (1.0 + 0.25 * g[0]) * (1.0 - 0.15 * g[2] ** 2)
    biased = np.where(brain, scan * bias, 0.0).astype(np.float32)
    corrected = n4_bias_correction(biased, np.diag([3.0, 3.0, 3.0, 1.0]))
    assert corrected.shape == shape and np.all(corrected[~brain] == 0)

    def spread(volume: np.ndarray) -> float:  # of the log-ratio to the unbiased scan
        return float(np.std(np.log(volume[brain] / scan[brain])))

    assert spread(biased) > 0.08
    assert spread(corrected) < 0.4 * spread(biased), (spread(corrected), spread(biased))
