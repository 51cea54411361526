"""Synthetic scans "as the scanner writes them", with a known transform to template space.

A clinic's T1 is not on the MNI grid the model was trained on: the head lies in another pose,
the field of view is larger, the grid is often anisotropic and sagittal (array axes permuted
and flipped relative to RAS), the intensities are in scanner units (hundreds to thousands)
and carry a bias field. This module moves a synthetic template-space subject
(`stroke_seg.data.synthetic`) out to such a scan, so that tests and measurements know the
true answer: the scan, its lesion mask on the same grid, and the exact world-to-world
transform between template space and the scanner.

Geometry, all in RAS millimetres: a template-space point ``p`` lies in the scanner at
``s = R (p - c) + c + t`` (``template_to_scanner``), with ``R`` a random rotation (each Euler
angle within ``max_rotation_deg``) about the brain's centroid ``c`` and ``t`` a random shift
(each axis within ``max_shift_mm``). The native voxel grid has its own spacing per array axis
(default 1 x 1 x 1.2 times the subject's spacing), its array axes are a random permutation of
the scanner's x, y, z with random flips (a sagittal acquisition is one draw of them), and it
covers the posed brain plus a random margin of zero background on every side.

The image is resampled with scipy's ``map_coordinates`` (linear; nearest for the mask) and not
with ANTs, so that tests of `stroke_seg.registration` check it against an independent
implementation of the same geometry. Intensities inside the brain become
``gain * value * bias + offset + noise`` with ``gain`` in 4-12, an offset, a smooth
multiplicative bias field (a random quadratic polynomial of the scanner coordinates, scaled to
at most ``bias_amplitude`` = +-20 % over the brain) and Gaussian noise; outside the brain stays
exactly 0, as in our brain-only template and synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from stroke_seg.errors import check_range


@dataclass(frozen=True)
class NativeScan:
    """A scan on its own grid and the true transform that made it.

    Attributes:
        image: float32 (X, Y, Z) in scanner units, 0 outside the brain.
        mask: uint8 lesion mask on the same grid (nearest-neighbour resampling).
        affine: voxel -> scanner world (RAS mm), as a NIfTI header would hold it.
        template_to_scanner: 4x4 world -> world (RAS mm): where a template-space point lies
            in the scanner. Its inverse brings scanner points back to template space.
        info: the random draws (pose, axes, intensities), for reports.
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    template_to_scanner: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def euler_rotation(angles_rad: np.ndarray) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for angles (rx, ry, rz) in radians."""
    ax, ay, az = (float(a) for a in angles_rad)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bias_field(rng: np.random.Generator):
    """The shape q of a smooth multiplicative field ``1 + amplitude * q(u) / max|q|``: a random
    quadratic polynomial without constant term of the normalised scanner coordinates u."""
    coef = rng.standard_normal(9)

    def evaluate(u: np.ndarray) -> np.ndarray:  # u: (3, N), in [-1, 1] over the brain
        x, y, z = u
        terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
        return sum(c * t for c, t in zip(coef, terms, strict=True))

    return evaluate


def make_native_scan(
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    seed: int | np.random.Generator = 0,
    *,
    voxel_mm: tuple[float, float, float] | None = None,
    max_rotation_deg: float = 12.0,
    max_shift_mm: float = 15.0,
    margin_mm: tuple[float, float] = (10.0, 35.0),
    gain: tuple[float, float] = (4.0, 12.0),
    offset: tuple[float, float] = (0.0, 300.0),
    bias_amplitude: float = 0.2,
    noise_fraction: float = 0.02,
    permute_axes: bool = True,
) -> NativeScan:
    """Move a template-space subject (0-255 image, 0/1 mask, RAS affine with axis-aligned
    voxels as `synthetic.generate_subject` returns) into a random scanner pose and grid.

    Args:
        seed: an int (``numpy.random.default_rng(seed)``) or a generator.
        voxel_mm: native voxel size per array axis; default (1, 1, 1.2) x the subject's
            spacing (1 x 1 x 1.2 mm from a 1 mm subject, 2 x 2 x 2.4 mm from a 2 mm one).
        max_rotation_deg, max_shift_mm: uniform pose ranges per axis.
        margin_mm: range of the zero background added on each side of the posed brain.
        gain, offset: ranges of the scanner-unit scaling inside the brain.
        bias_amplitude: the bias field's largest deviation from 1 over the brain.
        noise_fraction: Gaussian noise sigma as a fraction of the median brain intensity.
        permute_axes: permute and flip the array axes (False keeps RAS order).
    """
    check_range("max_rotation_deg", max_rotation_deg, 0.0, 45.0)
    check_range("bias_amplitude", bias_amplitude, 0.0, 0.9)
    check_range("noise_fraction", noise_fraction, 0.0, 1.0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    affine = np.asarray(affine, dtype=np.float64)
    src_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if voxel_mm is None:
        s = float(src_spacing.mean())
        voxel_mm = (s, s, 1.2 * s)
    voxel = np.asarray(voxel_mm, dtype=np.float64)

    # ---- all random draws first, in a fixed order ---------------------------------------
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    perm = rng.permutation(3) if permute_axes else np.arange(3)
    flips = rng.uniform(size=3) < 0.5 if permute_axes else np.zeros(3, bool)
    margins = rng.uniform(margin_mm[0], margin_mm[1], (2, 3))
    g = float(rng.uniform(*gain))
    b0 = float(rng.uniform(*offset))
    bias = _bias_field(rng)
    noise_seed = int(rng.integers(2**31))

    # ---- pose ---------------------------------------------------------------------------
    brain_idx = np.argwhere(image > 0)
    centre = (affine[:3, :3] @ brain_idx.mean(axis=0)) + affine[:3, 3]
    rot = euler_rotation(angles)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre - rot @ centre + shift

    # ---- native grid: scanner axis perm[j] along array axis j, flipped or not ------------
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in image.shape], indexing="ij"))
    corners = corners.reshape(3, -1).T
    lo_i, hi_i = brain_idx.min(axis=0), brain_idx.max(axis=0)
    box = lo_i + (hi_i - lo_i) * (corners / np.maximum(np.array(image.shape) - 1, 1))
    box_world = (pose[:3, :3] @ (affine[:3, :3] @ box.T + affine[:3, 3:])) + pose[:3, 3:]
    lo_w = box_world.min(axis=1) - margins[0]
    hi_w = box_world.max(axis=1) + margins[1]
    rot_grid = np.zeros((3, 3))
    origin = np.zeros(3)
    shape = []
    for j in range(3):
        a = int(perm[j])
        n = int(np.ceil((hi_w[a] - lo_w[a]) / voxel[j])) + 1
        shape.append(n)
        rot_grid[a, j] = -1.0 if flips[j] else 1.0
        origin[a] = hi_w[a] if flips[j] else lo_w[a]
    native_affine = np.eye(4)
    native_affine[:3, :3] = rot_grid * voxel[None, :]
    native_affine[:3, 3] = origin

    # ---- resample, slab by slab along the first array axis (bounded memory) -------------
    # native voxel v -> scanner s = A v -> template p = pose^-1 s -> source index inv(affine) p
    to_src = np.linalg.inv(affine) @ np.linalg.inv(pose) @ native_affine
    out_img = np.zeros(shape, np.float32)
    out_mask = np.zeros(shape, np.uint8)
    src = np.ascontiguousarray(image, dtype=np.float32)
    src_mask = np.ascontiguousarray(mask, dtype=np.uint8)
    jj, kk = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    slab = max(1, int(4e6 // (shape[1] * shape[2])))
    for i0 in range(0, shape[0], slab):
        ii = np.arange(i0, min(i0 + slab, shape[0]))
        v = np.stack(
            [
                np.broadcast_to(ii[:, None, None], (len(ii), *jj.shape)),
                np.broadcast_to(jj, (len(ii), *jj.shape)),
                np.broadcast_to(kk, (len(ii), *jj.shape)),
            ]
        ).reshape(3, -1)
        q = to_src[:3, :3] @ v + to_src[:3, 3:]
        block = (len(ii), *jj.shape)
        out_img[ii[0] : ii[-1] + 1] = ndimage.map_coordinates(
            src, q, order=1, cval=0.0, prefilter=False
        ).reshape(block)
        out_mask[ii[0] : ii[-1] + 1] = ndimage.map_coordinates(
            src_mask, q, order=0, cval=0
        ).reshape(block)

    # ---- scanner intensities inside the brain -------------------------------------------
    inside = out_img > 0
    idx = np.nonzero(inside)
    world = native_affine[:3, :3] @ np.stack(idx).astype(np.float64) + native_affine[:3, 3:]
    half = np.maximum((world.max(axis=1) - world.min(axis=1)) / 2.0, 1.0)
    u = (world - (world.max(axis=1) + world.min(axis=1))[:, None] / 2.0) / half[:, None]
    q = bias(u)
    q = q / max(float(np.abs(q).max()), 1e-12)
    field_vals = 1.0 + bias_amplitude * q
    signal = g * out_img[idx] * field_vals + b0
    sigma = noise_fraction * float(np.median(signal))
    noise = np.random.default_rng(noise_seed).standard_normal(signal.shape) * sigma
    values = np.maximum(signal + noise, 1e-3)  # stays inside the brain: > 0
    out = np.zeros(shape, np.float32)
    out[idx] = values.astype(np.float32)
    out_mask &= inside.astype(np.uint8)

    info = {
        "rotation_deg": [round(float(a), 3) for a in np.rad2deg(angles)],
        "shift_mm": [round(float(v), 3) for v in shift],
        "axes": "".join(
            ("-" if flips[j] else "+") + "xyz"[int(perm[j])] for j in range(3)
        ),  # e.g. "+y-z+x": array axis 0 runs along +y (anterior), ...
        "voxel_mm": [float(v) for v in voxel],
        "shape": [int(n) for n in shape],
        "gain": round(g, 4),
        "offset": round(b0, 3),
        "bias_amplitude": float(bias_amplitude),
        "noise_sigma": round(sigma, 4),
    }
    return NativeScan(out, out_mask, native_affine, pose, info)


def native_subject(
    index: int, seed: int, spacing: float = 2.0, native_seed: int | None = None, **kwargs: Any
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, dict], NativeScan]:
    """Synthetic subject ``index`` of the set with ``seed`` at ``spacing`` in template space
    (image, mask, affine, info from `synthetic.generate_subject`) and the same subject as a
    native scan (`make_native_scan`; its random draws come from ``[native_seed, index]``,
    ``native_seed`` defaulting to ``seed + 1000``). Extra keyword arguments go to
    `make_native_scan`."""
    from stroke_seg.data.synthetic import generate_subject

    subject = generate_subject(index, seed, spacing)
    rng = np.random.default_rng([int(seed + 1000 if native_seed is None else native_seed), index])
    return subject, make_native_scan(subject[0], subject[1], subject[2], rng, **kwargs)


def bad_scans(scan: NativeScan, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inputs that the input checks (`stroke_seg.quality`) must flag, made from a good native
    scan, as ``name -> (image, affine)``: ``normal`` (the scan itself), ``noise`` (uniform
    noise on its grid, not a brain), ``top_40_percent`` (only the top 40 % of the brain in
    world z: a field of view that cuts it off), ``header_10x_small`` (the voxel size in the
    header 10x too small) and ``inverted_contrast`` (brain intensities reversed: another
    contrast)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 1000, scan.image.shape).astype(np.float32)
    idx = np.argwhere(scan.image > 0)
    world_z = (scan.affine[:3, :3] @ idx.T + scan.affine[:3, 3:])[2]
    cut = scan.image.copy()
    cut[tuple(idx[world_z < np.percentile(world_z, 60)].T)] = 0.0
    tiny = scan.affine.copy()
    tiny[:3, :3] /= 10.0
    inside = scan.image > 0
    inverted = np.where(inside, 1.05 * scan.image.max() - scan.image, 0).astype(np.float32)
    return {
        "normal": (scan.image, scan.affine),
        "noise": (noise, scan.affine),
        "top_40_percent": (cut, scan.affine),
        "header_10x_small": (scan.image, tiny),
        "inverted_contrast": (inverted, scan.affine),
    }


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 world -> world matrix to (N, 3) points."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]
