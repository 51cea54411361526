"""A second lesion simulator, written apart from the default one, for held-out tests.

A model trained on the synthetic set has only seen its generator's lesions: CSF-dark
cavities with a gliotic rim, shaped by an ellipsoid distance field inside a vascular
territory of one hemisphere. Whether it finds stroke lesions that another simulator would
draw on the same template is the question a user with other data asks first.
``randomise=lesion`` (stroke_seg.data.synthetic) only varies the contrast of our own lesion
shapes, and up to white-matter brightness, where a labelled lesion is no longer visible. This
module answers it with a lesion model that makes a different choice at every step, each
still a plausible chronic stroke lesion on T1 (hypointense against the tissue it replaces):

- place: any GM/WM voxel at least 4 mm off the midline, each lesion in its own hemisphere
  (default: a voxel of a vascular-territory ellipsoid chosen by size, one hemisphere);
- number: 1 (70 %), 2 (20 %) or 3 (10 %), the volume split at random (default: 1, with 1-3
  smaller secondary lesions in 20 %);
- size: log-uniform total, 150 mm^3-8e4 mm^3 (default: log-normal, median 4000 mm^3);
- shape: a union of 1-5 spheres along a random walk, Gaussian-smoothed and thresholded at
  the volume (default: an ellipsoid distance field plus a smooth random field);
- intensity: the surrounding parenchyma x 0.30-0.75, 0-15 % texture, so from CSF-dark to
  grey-matter-like in white matter (default: the subject's CSF value x 0.95-1.25);
- border: the normal CDF of the distance to the border, sigma 0.5-1.5 mm, no rim (default:
  a 1-3 mm partial-volume ramp and a 1.5-4 mm gliotic rim 4-12 % darker).

Only the lesion differs: the subject's contrast change (before the lesions are painted, so
their contrast to the tissue holds), warp, bias field and noise (after) are the default
generator's steps (``lesions=blob`` of the synthetic command;
`stroke_seg.data.synthetic.generate_subject`). Every draw comes from its own stream,
``default_rng([seed, index, 0xB10B])``; all of a subject's lesion plans are drawn before any
image is made and lesion centres come from a fixed 2 mm list, so the places, sizes, shapes and
contrasts are the same at any spacing (the fine texture, drawn per voxel, is not). The mask is
the lesion's shape (lesion fraction >= 0.5 after the warp), like the default's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

# Recorded in dataset.json with the model's name; bump it whenever the output changes.
BLOB_VERSION = "1.0.0"
STREAM = 0xB10B  # third entry of the random stream: [seed, index, STREAM]

MIN_TOTAL_MM3 = 150.0
MAX_TOTAL_MM3 = 8.0e4
MIN_EACH_MM3 = 50.0
MIDLINE_MM = 4.0
CONTRAST_RANGE = (0.30, 0.75)  # lesion / surrounding tissue
TEXTURE_RANGE = (0.0, 0.15)
EDGE_SIGMA_MM = (0.5, 1.5)
LOCAL_TISSUE_SIGMA_MM = 3.0


@dataclass
class BlobPlan:
    """The scalar draws of one blob lesion (cheap; no images)."""

    centre_mm: np.ndarray
    volume: float  # requested, mm^3
    n_spheres: int
    sphere_centres_mm: np.ndarray  # (n_spheres, 3)
    sphere_radii_mm: np.ndarray  # (n_spheres,)
    contrast: float
    texture: float
    edge_sigma_mm: float

    def record(self) -> dict:
        return {
            "centre_mm": [round(float(v), 1) for v in self.centre_mm],
            "hemisphere": "left" if self.centre_mm[0] < 0 else "right",
            "requested_volume_mm3": round(self.volume, 2),
            "n_spheres": self.n_spheres,
            "contrast_to_tissue": round(self.contrast, 4),
            "texture": round(self.texture, 4),
            "edge_sigma_mm": round(self.edge_sigma_mm, 3),
        }


def _radius(volume_mm3: float) -> float:
    """Radius (mm) of the sphere of ``volume_mm3``: the size scale of a lesion's spheres and
    of its smoothing (synthetic.equivalent_radius, which this module cannot import: that
    module imports this one)."""
    return float((3.0 * volume_mm3 / (4.0 * np.pi)) ** (1 / 3))


def plan_blob_lesions(rng: np.random.Generator, candidates_mm: np.ndarray) -> list[BlobPlan]:
    """Draw the lesions of one subject: number, split of the total volume, centres (from
    ``candidates_mm``, world coordinates of parenchyma voxels), sphere chains, contrast,
    texture and edge. A fixed order and number of draws per lesion."""
    total = float(np.exp(rng.uniform(np.log(MIN_TOTAL_MM3), np.log(MAX_TOTAL_MM3))))
    count = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    shares = rng.dirichlet(np.ones(count))
    # A share under MIN_EACH_MM3 is no lesion of its own; the others keep the whole total.
    keep = total * shares >= MIN_EACH_MM3
    volumes = list(total * shares[keep] / shares[keep].sum()) if keep.any() else [total]
    pool = candidates_mm[np.abs(candidates_mm[:, 0]) >= MIDLINE_MM]
    plans = []
    for volume in volumes:
        centre = pool[int(rng.integers(len(pool)))] + rng.uniform(-1.0, 1.0, 3)
        n_spheres = int(rng.integers(1, 6))
        radius = _radius(volume)
        steps = rng.standard_normal((n_spheres, 3))
        steps /= np.linalg.norm(steps, axis=1, keepdims=True)
        steps[0] = 0.0
        centres = centre + np.cumsum(0.8 * radius * steps, axis=0)
        radii = radius * np.exp(rng.normal(0.0, 0.25, n_spheres)) * n_spheres ** (-1 / 3)
        plans.append(
            BlobPlan(
                centre_mm=centre,
                volume=float(volume),
                n_spheres=n_spheres,
                sphere_centres_mm=centres,
                sphere_radii_mm=radii,
                contrast=float(rng.uniform(*CONTRAST_RANGE)),
                texture=float(rng.uniform(*TEXTURE_RANGE)),
                edge_sigma_mm=float(rng.uniform(*EDGE_SIGMA_MM)),
            )
        )
    return plans


def _box(axes_mm: tuple[np.ndarray, ...], lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    out = []
    for a in range(3):
        i0 = max(int(np.searchsorted(axes_mm[a], lo[a])), 0)
        i1 = min(int(np.searchsorted(axes_mm[a], hi[a], side="right")), len(axes_mm[a]))
        out.append(slice(i0, max(i1, i0 + 1)))
    return tuple(out)


def paint_blob_lesions(
    rng: np.random.Generator,
    plans: list[BlobPlan],
    t1: np.ndarray,
    parenchyma: np.ndarray,
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(image with the lesions painted in, lesion fraction) on the grid of ``t1``.

    ``t1`` is the subject's template-space image after its contrast change; ``parenchyma``
    the GM + WM >= 0.5 voxels, where lesions may lie. The lesion fraction is above 0.5
    exactly on each lesion's shape (so the mask is the shape) and is the normal CDF of the
    distance to its border (a Gaussian edge). Hand-written because no library draws lesions;
    scipy does the filtering and the distance transforms."""
    image = t1.astype(np.float32, copy=True)
    fraction = np.zeros(t1.shape, np.float32)
    brain = t1 > 0
    for plan in plans:
        reach = float(np.max(plan.sphere_radii_mm)) * 2.0 + 4.0 * plan.edge_sigma_mm + 6.0
        lo = plan.sphere_centres_mm.min(axis=0) - reach
        hi = plan.sphere_centres_mm.max(axis=0) + reach
        box = _box(axes_mm, lo, hi)
        x, y, z = np.meshgrid(*(axes_mm[a][box[a]] for a in range(3)), indexing="ij", sparse=True)
        field = np.full(image[box].shape, -np.inf, np.float32)
        for c, r in zip(plan.sphere_centres_mm, plan.sphere_radii_mm, strict=True):
            d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
            np.maximum(field, (1.0 - d / r).astype(np.float32), out=field)
        field = ndimage.gaussian_filter(field, 0.25 * _radius(plan.volume) / spacing)
        allowed = parenchyma[box]
        values = field[allowed]
        target = min(max(int(round(plan.volume / spacing**3)), 1), values.size)
        threshold = np.partition(values, values.size - target)[values.size - target]
        shape = allowed & (field >= threshold)
        # Drawn for every lesion, used or not, so the stream's length is fixed per lesion.
        noise = rng.standard_normal(field.shape).astype(np.float32)
        texture = ndimage.gaussian_filter(noise, 2.0 / spacing)
        texture /= max(float(texture.std()), 1e-6)
        # Partial volume: the normal CDF of the signed distance (mm) to the shape's border,
        # taken half a voxel out from the voxel centres on either side: > 0.5 exactly inside.
        inside = ndimage.distance_transform_edt(shape, sampling=spacing)
        outside = ndimage.distance_transform_edt(~shape, sampling=spacing)
        signed = np.where(shape, inside, -outside) - np.where(shape, 0.5, -0.5) * spacing
        alpha = (special.ndtr(signed / plan.edge_sigma_mm) * brain[box]).astype(np.float32)
        # The surrounding tissue: a parenchyma-only weighted mean (normalised convolution),
        # so ventricles next to the lesion do not darken its reference.
        sigma = LOCAL_TISSUE_SIGMA_MM / spacing
        weight = ndimage.gaussian_filter(allowed.astype(np.float32), sigma)
        tissue = ndimage.gaussian_filter(np.where(allowed, t1[box], 0.0), sigma)
        tissue = np.where(weight > 1e-3, tissue / np.maximum(weight, 1e-3), t1[box])
        value = tissue * plan.contrast * (1.0 + plan.texture * texture)
        newer = alpha > fraction[box]
        painted = image[box] * (1.0 - alpha) + value * alpha
        image[box] = np.where(newer, painted, image[box])
        fraction[box] = np.maximum(fraction[box], alpha)
    return np.clip(image, 0.0, 255.0).astype(np.float32), fraction
