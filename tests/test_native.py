"""Tests of the native-space scan builder (stroke_seg.data.native), at 2 mm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stroke_seg.data.native import make_native_scan, native_subject, transform_points
from stroke_seg.errors import StrokeSegError


@pytest.fixture(scope="module")
def pair():
    return native_subject(5, seed=3, spacing=2.0)


def _centroid_world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


def test_grid_is_anisotropic_permuted_and_larger(pair) -> None:
    (image, _, affine, _), nat = pair
    spacing = np.sqrt((nat.affine[:3, :3] ** 2).sum(axis=0))
    assert np.allclose(spacing, [2.0, 2.0, 2.4])
    # each array axis runs along exactly one world axis, as the info string says
    lin = nat.affine[:3, :3] / spacing
    assert np.allclose(np.abs(lin).sum(axis=0), 1.0) and np.allclose(np.abs(lin).sum(axis=1), 1)
    codes = nat.info["axes"]
    for j, (sign, axis) in enumerate(zip(codes[::2], codes[1::2], strict=True)):
        a = "xyz".index(axis)
        assert lin[a, j] == (-1.0 if sign == "-" else 1.0)
    # the field of view is larger than the brain and the background is exactly zero
    fov_mm3 = np.prod(nat.image.shape) * np.prod(spacing)
    brain_mm3 = (nat.image > 0).sum() * np.prod(spacing)
    assert fov_mm3 > 1.5 * brain_mm3
    assert nat.image.min() == 0.0
    edge = np.concatenate([nat.image[0].ravel(), nat.image[-1].ravel(), nat.image[:, 0].ravel()])
    assert np.all(edge == 0)
    # linear interpolation makes every voxel touching the brain nonzero: up to a voxel more
    assert 0.0 <= brain_mm3 / ((image > 0).sum() * 8.0) - 1.0 < 0.12


def test_true_transform_maps_the_lesion_back(pair) -> None:
    (_, mask, affine, info), nat = pair
    native_mm3 = nat.mask.sum() * np.prod(nat.info["voxel_mm"])
    assert abs(native_mm3 / info["lesion_volume_mm3"] - 1.0) < 0.1
    back = transform_points(
        np.linalg.inv(nat.template_to_scanner), _centroid_world(nat.mask, nat.affine)[None]
    )[0]
    assert np.linalg.norm(back - _centroid_world(mask, affine)) < 1.0  # half a voxel
    # the pose really moved it: the scanner-space centroid is elsewhere
    assert np.linalg.norm(_centroid_world(nat.mask, nat.affine) - back) > 2.0


def _back_to_template(nat, shape, affine) -> np.ndarray:
    """The native scan resampled onto the template grid through the true transform (scipy,
    independent of the builder's own slab loop)."""
    to_native = np.linalg.inv(nat.affine) @ nat.template_to_scanner @ affine
    grid = np.indices(shape).reshape(3, -1).astype(np.float64)
    coords = to_native[:3, :3] @ grid + to_native[:3, 3:]
    return ndimage.map_coordinates(nat.image, coords, order=1, prefilter=False).reshape(shape)


def test_scanner_intensities_bias_and_noise(pair) -> None:
    (image, mask, affine, _), nat = pair
    brain = nat.image[nat.image > 0]
    assert np.median(brain) > 300.0  # scanner units, not 0-255
    assert 4.0 <= nat.info["gain"] <= 12.0 and nat.info["noise_sigma"] > 0
    back = _back_to_template(nat, image.shape, affine)
    interior = ndimage.binary_erosion(image > 0, iterations=3)
    assert np.corrcoef(image[interior], back[interior])[0, 1] > 0.85
    # without offset and noise, two scans with the same draws differ by the bias field only
    kwargs = dict(seed=4, offset=(0, 0), noise_fraction=0.0)
    biased = make_native_scan(image, mask, affine, bias_amplitude=0.2, **kwargs)
    flat = make_native_scan(image, mask, affine, bias_amplitude=0.0, **kwargs)
    assert np.array_equal(biased.affine, flat.affine)
    inside = flat.image > 0
    ratio = biased.image[inside] / flat.image[inside]  # = 1 + 0.2 q, |q| <= 1
    assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.2 + 1e-4
    lo, hi = np.percentile(ratio, [1, 99])
    assert hi / lo > 1.15  # it does vary over the brain


def test_same_seed_same_scan_other_seed_other_pose() -> None:
    image = np.zeros((30, 34, 28), np.float32)
    image[5:25, 6:28, 4:24] = 100.0
    mask = np.zeros_like(image, dtype=np.uint8)
    mask[12:16, 14:18, 10:14] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    a = make_native_scan(image, mask, affine, seed=1)
    b = make_native_scan(image, mask, affine, seed=1)
    c = make_native_scan(image, mask, affine, seed=2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.affine, b.affine)
    assert not np.allclose(a.template_to_scanner, c.template_to_scanner)
    rot = a.template_to_scanner[:3, :3]
    assert np.allclose(rot @ rot.T, np.eye(3))  # rigid
    angle = np.degrees(np.arccos((np.trace(rot) - 1) / 2))
    assert 0 < angle <= 12.0 * np.sqrt(3)
    keep = make_native_scan(image, mask, affine, seed=1, permute_axes=False, voxel_mm=(2, 2, 2))
    assert np.all(np.diag(keep.affine)[:3] == 2.0)
    with pytest.raises(StrokeSegError, match="bias_amplitude"):
        make_native_scan(image, mask, affine, bias_amplitude=1.5)
