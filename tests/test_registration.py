"""Tests of registration to the template and back (stroke_seg.registration), at 2 mm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from stroke_seg.data.native import make_native_scan, native_subject, transform_points
from stroke_seg.data.synthetic import generate_subject
from stroke_seg.errors import StrokeSegError
from stroke_seg.registration import (
    RegistrationOptions,
    load_template,
    on_template_grid,
    register_to_template,
)

REPO = Path(__file__).resolve().parents[1]
# Cheaper than the defaults (fewer samples): these tests check geometry, not the last 0.5 mm.
FAST = RegistrationOptions(sampling_rate=0.1, iterations=(60, 30))


@pytest.fixture(scope="module")
def template():
    return load_template(2.0)


@pytest.fixture(scope="module")
def posed_template(template):
    """The template itself in a scanner pose: the true answer is the pose, exactly."""
    empty = np.zeros(template.shape, np.uint8)
    nat = make_native_scan(template.image, empty, template.affine, seed=21, noise_fraction=0.01)
    volume, mapping = register_to_template(nat.image, nat.affine, template, FAST, "posed.nii.gz")
    return nat, volume, mapping


def _brain_points(template) -> np.ndarray:
    idx = np.argwhere(template.brain_mask)
    return idx @ template.affine[:3, :3].T + template.affine[:3, 3]


def test_template_is_the_synthetic_training_grid(template) -> None:
    image, _, affine, _ = generate_subject(0, 0, 2.0)
    assert template.shape == image.shape == (99, 117, 95)
    assert np.array_equal(template.affine, affine)
    assert template.name == "MNI152NLin2009aSym" and template.spacing == (2.0, 2.0, 2.0)
    assert 1.5e6 < template.brain_mask.sum() * 8.0 < 2.5e6  # a brain, in mm^3


def test_template_from_file_and_missing_file(tmp_path: Path, template) -> None:
    path = tmp_path / "my_template.nii"
    nib.save(nib.Nifti1Image(template.image, template.affine), str(path))  # .nii: fast
    same = load_template(2.0, str(path))
    assert same.name == "my_template" and np.array_equal(same.image, template.image)
    coarse = load_template(4.0, str(path))
    assert coarse.spacing == (4.0, 4.0, 4.0) and coarse.shape == (50, 59, 48)
    with pytest.raises(StrokeSegError, match="template=.*does not exist"):
        load_template(2.0, str(tmp_path / "nope.nii.gz"))


def test_scan_on_the_template_grid_is_not_touched(template) -> None:
    image, _, affine, _ = generate_subject(1, 5, 2.0)
    assert on_template_grid(image.shape, affine, template)
    volume, mapping = register_to_template(image, affine, template)
    assert volume is image and mapping.is_identity
    prob = np.random.default_rng(0).uniform(size=template.shape).astype(np.float32)
    assert mapping.to_native(prob) is prob and mapping.to_template(prob) is prob
    nudged = affine.copy()
    nudged[0, 3] += 0.01  # 10 µm off: another grid
    assert not on_template_grid(image.shape, nudged, template)


def test_registration_recovers_a_known_pose(posed_template, template) -> None:
    nat, volume, mapping = posed_template
    pts = _brain_points(template)
    error = np.linalg.norm(
        transform_points(mapping.template_to_native, pts)
        - transform_points(nat.template_to_scanner, pts),
        axis=1,
    )
    assert error.mean() < 1.0, error.mean()  # half a template voxel
    assert error.max() < 2.5
    assert mapping.transform == "affine" and {"rigid", "affine"} <= set(mapping.timings)
    brain = template.brain_mask
    assert np.corrcoef(volume[brain], template.image[brain])[0, 1] > 0.9


def test_resampling_matches_an_independent_implementation(posed_template, template) -> None:
    """ANTs' resampling through its own transform files = scipy through our 4x4 matrix: the
    LPS/RAS and fixed/moving conventions are right."""
    nat, volume, mapping = posed_template
    to_native_index = np.linalg.inv(nat.affine) @ mapping.template_to_native @ template.affine
    grid = np.indices(template.shape).reshape(3, -1).astype(np.float64)
    coords = to_native_index[:3, :3] @ grid + to_native_index[:3, 3:]
    ours = ndimage.map_coordinates(nat.image, coords, order=1, prefilter=False)
    assert np.abs(ours.reshape(template.shape) - volume).max() < 1e-3 * nat.image.max()


def test_back_to_the_native_grid(posed_template, template) -> None:
    nat, _, mapping = posed_template
    brain = mapping.to_native(template.brain_mask.astype(np.float32))
    assert brain.shape == nat.image.shape and brain.dtype == np.float32
    assert 0.0 <= brain.min() and brain.max() <= 1.0 + 1e-6
    a, b = brain >= 0.5, nat.image > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    with pytest.raises(ValueError, match="template grid"):
        mapping.to_native(np.zeros(nat.image.shape, np.float32))


def test_saved_transform_is_read_by_ants(posed_template, template, tmp_path: Path) -> None:
    import ants

    from stroke_seg.registration import _to_ants

    nat, volume, mapping = posed_template
    path = mapping.save(tmp_path / "out" / "scan_to_template.mat")
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    again = ants.apply_transforms(
        _to_ants(template.image, template.affine), _to_ants(nat.image, nat.affine), [str(path)]
    )
    assert np.allclose(again.numpy(), volume, atol=1e-3 * nat.image.max())


def test_lesion_lands_on_the_template_space_mask(template) -> None:
    (_, mask, _, info), nat = native_subject(7, seed=9, spacing=2.0)
    assert info["lesion_volume_mm3"] > 3000  # large enough for a Dice at 2 mm
    _, mapping = register_to_template(nat.image, nat.affine, template, FAST)
    warped = mapping.to_template(nat.mask.astype(np.float32)) >= 0.5
    dice = 2 * (warped & (mask > 0)).sum() / (warped.sum() + mask.sum())
    assert dice > 0.6, dice


def test_identity_transform_resamples_by_header(template) -> None:
    image, _, affine, _ = generate_subject(1, 5, 2.0)  # MNI space, 2 mm grid
    coarse = load_template(4.0)
    volume, mapping = register_to_template(
        image, affine, coarse, RegistrationOptions(transform="identity")
    )
    assert np.allclose(mapping.template_to_native, np.eye(4))
    assert volume.shape == coarse.shape == (50, 59, 48)
    # 4 mm voxel k sits on 2 mm voxel 2k: linear resampling picks it exactly
    assert np.allclose(volume, image[::2, ::2, ::2], atol=1e-3)


def test_bad_options_and_inputs(template) -> None:
    with pytest.raises(StrokeSegError, match="^transform='bspline' is not known"):
        RegistrationOptions(transform="bspline")
    with pytest.raises(StrokeSegError, match="^sampling_rate=0.0 must lie in"):
        RegistrationOptions(sampling_rate=0.0)
    with pytest.raises(StrokeSegError, match="one entry per level"):
        RegistrationOptions(iterations=(10, 10, 10))
    zeros = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(StrokeSegError, match="^scan.nii.gz is all zero"):
        register_to_template(zeros, np.eye(4), template, FAST, "scan.nii.gz")
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(StrokeSegError, match="^scan.nii.gz has a sheared affine"):
        register_to_template(zeros + 1, sheared, template, FAST, "scan.nii.gz")


_DETERMINISM = """
import json, sys
import numpy as np
from stroke_seg.data.native import make_native_scan
from stroke_seg.registration import RegistrationOptions, itk_threads, load_template
from stroke_seg.registration import register_to_template
tpl = load_template(2.0)
nat = make_native_scan(tpl.image, np.zeros(tpl.shape, np.uint8), tpl.affine, seed=3)
out = {"threads": itk_threads()}
for name, seed in (("a", 1), ("b", 1), ("c", 2)):
    opts = RegistrationOptions(
        seed=seed, sampling_rate=0.05, iterations=(20,), shrink_factors=(4,),
        smoothing_sigmas=(2,), transform="rigid",
    )
    mapping = register_to_template(nat.image, nat.affine, tpl, opts)[1]
    out[name] = mapping.template_to_native.tolist()
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh interpreter (ITK reads its thread count once per process)
def test_registration_is_deterministic_with_one_thread() -> None:
    """With one ITK thread and a fixed seed, two registrations are bit-identical; another
    seed draws other samples (so the seed is really used)."""
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("ANTS_RANDOM_SEED", None)
    run = subprocess.run(
        [sys.executable, "-c", _DETERMINISM], env=env, capture_output=True, text=True, check=True
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["threads"] == 1
    assert out["a"] == out["b"]
    assert out["a"] != out["c"]


def test_itk_threads_are_set_explicitly_and_the_users_setting_wins() -> None:
    code = "from stroke_seg.registration import itk_threads; print(itk_threads())"
    for preset, expected in ((None, "1"), ("2", "2")):
        env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
        env["PYTHONPATH"] = str(REPO)
        if preset is not None:
            env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = preset
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.stdout.strip() == expected, run.stderr
