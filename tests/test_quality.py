"""Input checks on native scans (stroke_seg.quality via stroke_seg.template_space), at 2 mm:
a normal scan passes, a volume that is not a brain, a brain cut off by the field of view, a
header 10x too small and another contrast are each refused in one sentence naming the file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stroke_seg.data.native import bad_scans, native_subject
from stroke_seg.data.synthetic import generate_subject
from stroke_seg.errors import StrokeSegError
from stroke_seg.intensity import compute_reference
from stroke_seg.quality import QualityReport, check_header, check_training_range
from stroke_seg.registration import RegistrationOptions, load_template
from stroke_seg.template_space import prepare_scan

FAST = RegistrationOptions(sampling_rate=0.1, iterations=(60, 30))


@pytest.fixture(scope="module")
def template():
    return load_template(2.0)


@pytest.fixture(scope="module")
def reference():
    volumes = (generate_subject(i, 0, 2.0)[0] for i in range(4))
    return compute_reference(volumes, 2.0, template_mask=load_template(2.0).brain_mask)


@pytest.fixture(scope="module")
def scans():
    return bad_scans(native_subject(1, 5, 2.0)[1])


def _prepare(scans, name, template, reference):
    image, affine = scans[name]
    return prepare_scan(
        image, affine, template, reference, source=f"{name}.nii.gz", registration=FAST
    )


def _one_sentence(text: str, name: str) -> None:
    assert text.startswith(f"{name}.nii.gz ") and text.endswith(".") and "\n" not in text
    assert text.count(". ") == 0  # one sentence


def test_a_normal_native_scan_passes(scans, template, reference) -> None:
    prep = _prepare(scans, "normal", template, reference)
    assert not prep.quality.refuse and prep.quality.warnings == [], prep.quality.values
    values = prep.quality.values
    assert values["correlation"] > 0.5 and values["coverage"] > 0.97
    assert 0.9 < values["registration_scale"] < 1.1
    assert prep.standardised and prep.mapping.transform == "affine"
    # what the model reads sits on the training scale
    own = reference.landmarks_of(prep.volume, 2.0, template.brain_mask)
    assert np.allclose(own, reference.landmarks, rtol=0.01)
    assert {"registration", "standardise", "checks"} <= set(prep.timings)


@pytest.mark.parametrize(
    ("name", "figure", "words"),
    [
        ("noise", "correlation", "not a T1 brain scan"),
        ("top_40_percent", "brain_extent_min_ratio", "cuts the brain off"),
        ("inverted_contrast", "intensity_shape_error", "T1"),
    ],
)
def test_bad_scans_are_refused(scans, template, reference, name, figure, words) -> None:
    prep = _prepare(scans, name, template, reference)
    quality = prep.quality
    assert quality.refuse, quality.values
    _one_sentence(quality.refusal, name)
    assert words in quality.refusal
    assert any(w.startswith(f"{figure}=") for w in quality.warnings), quality.warnings
    with pytest.raises(StrokeSegError, match=f"^{name}.nii.gz "):
        quality.raise_if_refused()


def test_a_wrong_header_scale_is_refused_before_registration(scans, template, reference):
    prep = _prepare(scans, "header_10x_small", template, reference)
    assert prep.quality.refuse
    _one_sentence(prep.quality.refusal, "header_10x_small")
    assert "voxel size" in prep.quality.refusal
    assert prep.quality.values["brain_extent_ratio"] < 0.15
    assert "registration" not in prep.timings and prep.mapping.is_identity


def test_header_check_of_a_normal_scan_and_of_a_scan_with_background(template) -> None:
    (image, _, affine, _), nat = native_subject(2, 5, 2.0)
    assert not check_header(image, affine, template, "a").warnings
    ok = check_header(nat.image, nat.affine, template, "b")
    assert not ok.warnings and 0.9 < ok.values["brain_extent_ratio"] < 1.3
    assert 0.9 < ok.values["brain_extent_min_ratio"] <= ok.values["brain_extent_ratio"]
    # a scan with its background (skull, air: nonzero everywhere) is larger but still a head
    filled = np.where(nat.image > 0, nat.image, 20.0).astype(np.float32)
    head = check_header(filled, nat.affine, template, "c")
    assert not head.refuse
    big = nat.affine.copy()
    big[:3, :3] *= 10.0
    far = check_header(nat.image, big, template, "scan.nii")
    assert far.refuse and far.refusal.startswith("scan.nii holds a nonzero region 10 times")


def test_scan_on_the_template_grid_takes_todays_path(template, reference) -> None:
    image, _, affine, _ = generate_subject(3, 5, 2.0)
    prep = prepare_scan(image, affine, template, reference, source="mni.nii.gz")
    assert prep.volume is image and prep.mapping.is_identity and not prep.standardised
    assert not prep.quality.warnings, prep.quality.values
    prob = np.random.default_rng(1).uniform(size=image.shape).astype(np.float32)
    assert prep.to_native(prob) is prob
    # the same scan in scanner units is flagged: it was not standardised
    scanner = np.where(image > 0, 6.0 * image + 100.0, 0.0).astype(np.float32)
    flagged = prepare_scan(scanner, affine, template, reference, source="units.nii.gz")
    assert flagged.quality.refuse and "standardis" in flagged.quality.refusal
    fixed = prepare_scan(scanner, affine, template, reference, standardise_mode="always")
    assert fixed.standardised and not fixed.quality.warnings


def test_report_merge_and_text() -> None:
    a = QualityReport("x.nii", {"coverage": 0.5}, ["coverage=0.5 low"], "x.nii is cut off.")
    b = QualityReport("x.nii", {"correlation": 0.2}, ["correlation=0.2 low"], "x.nii other.")
    merged = a.merge(b)
    assert merged.refusal == "x.nii is cut off." and set(merged.values) == {
        "coverage",
        "correlation",
    }
    assert merged.warning_text() == "coverage=0.5 low; correlation=0.2 low"
    assert QualityReport("y").warning_text() == "" and not QualityReport("y").refuse


def test_training_range_flags_other_units_and_passes_training_like_scans(template, reference):
    """evaluate.py's check: a scan of the training generator (another seed) lies within a
    few training SDs; the same scan in 0-1 units or with its contrast inverted lies far
    outside and gets a warning naming the figure, never a refusal."""
    image = generate_subject(7, 3, 2.0)[0]
    brain = template.brain_mask
    normal = check_training_range(image, 2.0, reference, "new.nii.gz", brain)
    assert normal.values["intensity_z"] < 4.0 and normal.warnings == []
    unit = check_training_range(image / 255.0, 2.0, reference, "unit.nii.gz", brain)
    assert unit.values["intensity_z"] > 8.0 and not unit.refuse
    assert unit.warnings and unit.warnings[0].startswith("intensity_z=")
    inverted = np.where(image > 0, 255.0 - image, 0.0).astype(np.float32)
    flipped = check_training_range(inverted, 2.0, reference, "inv.nii.gz", brain)
    assert flipped.values["intensity_z"] > 4.0 and flipped.warnings
    # Without the template mask (a scan off the training grid): its own nonzero voxels.
    own = check_training_range(image, 2.0, replace(reference, brain="nonzero"), "x", None)
    assert own.values["intensity_z"] < 4.0
