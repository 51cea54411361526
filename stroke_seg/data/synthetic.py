"""Synthetic chronic-stroke T1 data set on the MNI152 2009a template (the project's default data).

The real training data of Tomita et al. (2020), ATLAS R1.2 / v2.0, need a data-use agreement,
so the project ships a generator for look-alike data. Every subject starts from the MNI152
2009a symmetric T1 template and its GM/WM probability maps that nilearn carries inside its
wheel (197x233x189 at 1 mm, the ATLAS grid; nothing is downloaded). A subject is made in five
steps, each drawn from ``numpy.random.default_rng([seed, index])`` so that subject ``index``
depends on nothing but ``(seed, index)``:

1. **Lesion(s)** in template space. The total size is drawn from a log-normal distribution
   truncated to the ATLAS v2.0 range, 10 mm^3 to 2.8x10^5 mm^3, with median 4000 mm^3
   (docs/paper.md "Data"). The vascular territory depends on the size: small lesions are
   mostly deep/lacunar (basal ganglia, internal capsule, thalamus, corona radiata), medium
   and large ones mostly in the middle cerebral artery (MCA) territory, some in the posterior
   (PCA) and anterior (ACA) territories; one hemisphere per subject. The shape is a
   randomly oriented ellipsoid distance field around a seed, perturbed by smooth random
   noise and softly kept inside its territory; it is thresholded at the quantile that gives
   the requested volume inside GM+WM (probability >= 0.5) of that hemisphere, and only the
   largest connected part is kept. About 20 % of subjects get 1-3 smaller secondary lesions
   in the same hemisphere.
2. **Chronic-lesion appearance.** The lesion core is a CSF-filled cavity (encephalomalacia):
   its intensity is drawn near the subject's own CSF value (x0.95-1.25, with +-6 % smooth
   texture), so it is as dark as the ventricles, which are the realistic confounder. Its edge
   is a partial-volume ramp 1-3 mm wide, and around it a 1.5-4 mm gliotic rim is 4-12 %
   darker than normal tissue. The mask is the voxels whose cavity fraction is >= 0.5: the
   partial-volume ramp is split at its middle and the gliotic rim is *not* part of the mask
   (a mildly hypointense, unlabelled border, like the ambiguous edge that ATLAS tracers face).
3. **Contrast**: a global gamma (0.8-1.25) and gain (0.88-1.05) on the 0-255 template.
4. **Anatomy**: a random global affine (per-axis scale +-4 %, rotation +-3 deg) plus a smooth
   displacement field (Gaussian radial-basis lattice every 32 mm, 1.5-3.5 mm std per axis)
   warps image and lesion fraction together; the mask is the warped fraction >= 0.5.
5. **Scanner**: a smooth multiplicative bias field (exp of a 60 mm lattice field, 4-8 % std,
   so about +-10-20 % over the brain) and Rician noise (sigma 1.5-4 % of 255) inside the
   brain; the background stays exactly 0 (the template is skull-stripped). Intensities are
   float32 in 0-255 like ATLAS R1.2, which the paper divides by 255.

With ``spacing=2`` (or any other spacing) the template is first resampled to that spacing
(anti-aliased; voxel ``k`` sits at 1 mm voxel ``k * spacing``, so the grid has
``floor((n - 1) / spacing) + 1`` voxels per axis: 99x117x95 at 2 mm) and the subject is
generated there directly. All random fields are defined in millimetres and the lesion seeds
are drawn from a fixed 2 mm candidate list, so the same ``(seed, index)`` gives the same
subject at 1 mm and 2 mm up to resampling.

**Domain randomisation** (``randomise=true``; off by default, not in the
paper), in the spirit of SynthSeg (Billot et al. 2023): per subject, a random tissue contrast
(CSF, GM and WM levels of the template each scaled by a factor in 0.6-1.4, mapped
piecewise-linearly, so contrasts shrink and can partly invert), lesion cores from 0.7x to 2.2x
the CSF value with, in half the subjects, a smooth within-lesion modulation of +-30-100 %
(partly bright, partly dark lesions), a stronger second bias field (log-sd 0.1-0.3), a
gamma of exp(N(0, 0.2)), extra Gaussian noise (0-5 % of 255) and, in half the subjects, a
thick-slice blur along one random axis (2-5 mm FWHM). All of it is drawn from a separate
stream, ``default_rng([seed, index, 0xD0])``, after the default steps have drawn theirs, so the
lesion, anatomy and masks of subject ``(seed, index)`` are the same with and without it; the
images differ. Its version (`RANDOMISATION_VERSION`) and the drawn values are recorded in
``dataset.json``; without it the output is byte-identical to the generator before the option.
``randomise=lesion`` applies only the lesion part of those draws (the core factor and the
within-lesion modulation) on the default tissue contrast and scanner: lesions unlike the
training ones on otherwise familiar scans, the question a new lesion simulator on the same
template asks (``dataset.json`` records ``"mode": "lesion"``).

**Another lesion simulator** (``lesions=blob``): the lesions of
`stroke_seg.data.blob_lesions`, written apart from steps 1-2 above (other places, numbers,
sizes, shapes, contrasts relative to the surrounding tissue, and borders), painted on the
subject's template after its contrast change (step 3) and before steps 4-5.
``lesions=mixed`` draws each subject with one of the two (half each, on its own stream
``default_rng([seed, index, 0x313])``), for training on both. ``dataset.json`` records
``lesion_model``; neither combines with ``randomise``.

The output is the ATLAS v2.0 BIDS layout (``Training/R001/sub-r001s001/ses-1/anat/...``;
subject index ``i`` is subject ``i % 50 + 1`` of site ``R{i // 50 + 1:03d}``), plus
``dataset.json`` with the parameters, per-subject lesion facts and size statistics.

CLI::

    python -m stroke_seg.data.synthetic out=data/synthetic_2mm n=40 seed=0 spacing=2
    python -m stroke_seg.data.synthetic out=data/dr_2mm n=30 seed=2 spacing=2 randomise=true

(a Hydra command, conf/synthetic.yaml; ``overwrite=true`` writes into a foreign folder,
``quiet=true`` hides the progress bar, ``randomise=true`` the domain randomisation,
``randomise=lesion`` its lesion part only, ``lesions=blob`` or ``lesions=mixed`` the second
lesion simulator).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
from omegaconf import DictConfig
from scipy import ndimage, special

from stroke_seg.atomic import atomic_path, write_json
from stroke_seg.config import config_path
from stroke_seg.data import blob_lesions
from stroke_seg.errors import StrokeSegError, exit_on_user_error

GENERATOR = "stroke_seg.data.synthetic"
GENERATOR_VERSION = "1.0.0"
# Version of the optional domain randomisation (recorded in dataset.json when it is on).
RANDOMISATION_VERSION = "1.0.0"
# ``randomise=``: off, everything (true), or the lesion's contrast only.
RANDOMISE_MODES = ("off", "all", "lesion")
# ``lesions=``: this module's lesion model, the second simulator of
# stroke_seg.data.blob_lesions (held-out tests of lesions drawn another way), or a mix: each
# subject drawn by one of the two (training on both).
LESION_MODELS = ("default", "blob", "mixed")
MIXED_BLOB_FRACTION = 0.5  # lesions=mixed: the share of subjects with blob lesions
_MIXED_STREAM = 0x313

MIN_LESION_MM3 = 10.0
MAX_LESION_MM3 = 2.8e5
MEDIAN_LESION_MM3 = 4000.0
LOG_SIGMA = 1.6  # of the log-normal lesion volume, before truncation to [MIN, MAX]
SECONDARY_PROB = 0.2
SUBJECTS_PER_SITE = 50

SPACE = "MNI152NLin2009aSym"
_TEMPLATE_FILES = {
    kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")
}

# Territories as ellipsoids in MNI mm for the left hemisphere (x is mirrored for the right):
# (centre, semi-axes). Rough outlines of the arterial territories, not an atlas.
TERRITORIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "MCA": ((-42.0, -12.0, 12.0), (22.0, 48.0, 36.0)),
    "ACA": ((-8.0, 12.0, 42.0), (10.0, 42.0, 28.0)),
    "PCA": ((-18.0, -72.0, 4.0), (18.0, 24.0, 22.0)),
    "deep": ((-22.0, -6.0, 8.0), (12.0, 22.0, 18.0)),
}
_TERRITORY_NAMES = ("MCA", "ACA", "PCA", "deep")
# Territory probabilities (MCA, ACA, PCA, deep) by lesion volume: [upper bound mm^3, probs].
_TERRITORY_BY_SIZE = (
    (1500.0, (0.30, 0.07, 0.08, 0.55)),
    (15000.0, (0.50, 0.10, 0.15, 0.25)),
    (np.inf, (0.80, 0.08, 0.12, 0.00)),
)


# --------------------------------------------------------------------------------------------
# Template


@dataclass(frozen=True)
class _Template:
    spacing: float
    t1: np.ndarray  # float32, 0-255, 0 outside the brain
    parenchyma: np.ndarray  # bool, GM + WM probability >= 0.5
    affine: np.ndarray
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray]  # world coordinate of each index
    csf_value: float  # median template intensity of CSF (brain, GM + WM < 0.2)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.t1.shape)  # type: ignore[return-value]

    @property
    def voxel_mm3(self) -> float:
        return float(self.spacing**3)


def template_dir() -> Path:
    """The folder inside the installed nilearn that holds the MNI152 2009a template files."""
    import nilearn

    folder = Path(nilearn.__file__).resolve().parent / "datasets" / "data"
    missing = [name for name in _TEMPLATE_FILES.values() if not (folder / name).exists()]
    if missing:
        raise StrokeSegError(
            f"nilearn at {folder} lacks the MNI152 template file(s) {', '.join(missing)}; "
            "reinstall nilearn>=0.10.3 (`pip install --force-reinstall nilearn`)."
        )
    return folder


def grid_shape(spacing: float) -> tuple[int, int, int]:
    """Output grid at ``spacing`` mm: ``floor((n - 1) / spacing) + 1`` of the 1 mm 197x233x189."""
    return tuple(int(np.floor((n - 1) / spacing + 1e-9)) + 1 for n in (197, 233, 189))  # type: ignore[return-value]


def _check_spacing(spacing: float) -> float:
    spacing = float(spacing)
    if not np.isfinite(spacing) or not 1.0 <= spacing <= 4.0:
        raise StrokeSegError(
            f"spacing={spacing} mm is not supported; use a value from 1 to 4 (1 = ATLAS grid)."
        )
    return spacing


def _resample(vol: np.ndarray, spacing: float, order: int = 1) -> np.ndarray:
    """Anti-aliased resampling of a 1 mm volume so that new voxel k sits at old k * spacing."""
    if spacing == 1.0:
        return vol.astype(np.float32)
    sigma = np.sqrt((spacing**2 - 1.0) / 12.0)  # box of width `spacing` minus the 1 mm voxel
    smooth = ndimage.gaussian_filter(vol.astype(np.float32), sigma=sigma)
    shape = grid_shape(spacing)
    if float(spacing).is_integer():
        step = int(spacing)
        sub = smooth[::step, ::step, ::step]
        return np.ascontiguousarray(sub[: shape[0], : shape[1], : shape[2]])
    grid = np.meshgrid(*[np.arange(n) * spacing for n in shape], indexing="ij")
    return ndimage.map_coordinates(smooth, grid, order=order, mode="nearest").astype(np.float32)


@lru_cache(maxsize=4)
def _template(spacing: float) -> _Template:
    folder = template_dir()
    imgs = {kind: nib.load(str(folder / name)) for kind, name in _TEMPLATE_FILES.items()}
    vols = {kind: np.asarray(img.dataobj, dtype=np.float32) for kind, img in imgs.items()}
    affine1 = np.asarray(imgs["t1"].affine, dtype=np.float64)
    brain1 = vols["t1"] > 0
    tissue1 = (vols["gm"] + vols["wm"]) / 255.0
    csf_value = float(np.median(vols["t1"][brain1 & (tissue1 < 0.2)]))
    t1 = _resample(vols["t1"], spacing)
    brain = _resample(brain1.astype(np.float32), spacing) >= 0.5
    t1 = np.where(brain, t1, 0.0).astype(np.float32)
    tissue = _resample(tissue1, spacing)
    parenchyma = brain & (tissue >= 0.5)
    affine = affine1 @ np.diag([spacing, spacing, spacing, 1.0])
    axes_mm = tuple(
        (affine[a, 3] + affine[a, a] * np.arange(n)).astype(np.float64)
        for a, n in enumerate(t1.shape)
    )
    for arr in (t1, parenchyma):
        arr.setflags(write=False)
    return _Template(spacing, t1, parenchyma, affine, axes_mm, csf_value)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def _parenchyma_points() -> np.ndarray:
    """World coordinates (mm) of the 2 mm parenchyma voxels, (n, 3). Lesion seeds are always
    drawn from this 2 mm list so that the random stream does not depend on the output
    spacing."""
    tpl = _template(2.0)
    idx = np.argwhere(tpl.parenchyma)
    pts = np.stack([tpl.axes_mm[a][idx[:, a]] for a in range(3)], axis=1)
    pts.setflags(write=False)
    return pts


@lru_cache(maxsize=1)
def _seed_candidates() -> dict[tuple[str, int], np.ndarray]:
    """World coordinates (mm) of 2 mm parenchyma voxels inside each territory and hemisphere."""
    pts = _parenchyma_points()
    out = {}
    for name, (centre, radii) in TERRITORIES.items():
        for side in (-1, 1):
            c = np.array(centre) * np.array([-side, 1, 1])
            inside = (((pts - c) / np.array(radii)) ** 2).sum(axis=1) <= 1.0
            inside &= pts[:, 0] * side > 2.0
            out[(name, side)] = pts[inside]
    return out


# --------------------------------------------------------------------------------------------
# Random fields


def _smooth_field(
    rng: np.random.Generator,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    lo: np.ndarray,
    hi: np.ndarray,
    step: float,
) -> np.ndarray:
    """Unit-variance smooth random field on the grid ``coords`` (mm, one vector per axis).

    A sum of Gaussian bumps (width ``step``) on a lattice every ``step`` mm covering [lo, hi]
    with standard-normal weights, evaluated separably. The number of random draws depends
    only on (lo, hi, step), never on the grid, so the field is the same at any spacing.
    """
    nodes = [np.arange(lo[a] - 2 * step, hi[a] + 2 * step + 1e-6, step) for a in range(3)]
    weights = rng.standard_normal(tuple(len(n) for n in nodes)).astype(np.float32)
    mats = []
    for a in range(3):
        m = np.exp(-0.5 * ((coords[a][:, None] - nodes[a][None, :]) / step) ** 2)
        m /= np.sqrt((m**2).sum(axis=1, keepdims=True))  # unit variance per voxel
        mats.append(m.astype(np.float32))
    out = np.tensordot(weights, mats[2], axes=([2], [1]))  # (nx, ny, Z)
    out = np.tensordot(out, mats[1], axes=([1], [1]))  # (nx, Z, Y)
    out = np.tensordot(out, mats[0], axes=([0], [1]))  # (Z, Y, X)
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# --------------------------------------------------------------------------------------------
# Lesions


def sample_lesion_volume(rng: np.random.Generator) -> float:
    """One total lesion volume in mm^3: log-normal (median 4000 mm^3, log-sd 1.6) truncated to
    the ATLAS v2.0 range [10, 2.8e5] mm^3 by inverse-CDF sampling (one uniform draw)."""
    mu = np.log(MEDIAN_LESION_MM3)
    a = special.ndtr((np.log(MIN_LESION_MM3) - mu) / LOG_SIGMA)
    b = special.ndtr((np.log(MAX_LESION_MM3) - mu) / LOG_SIGMA)
    z = special.ndtri(a + (b - a) * rng.uniform())
    return float(np.clip(np.exp(mu + LOG_SIGMA * z), MIN_LESION_MM3, MAX_LESION_MM3))


def sample_lesion_volumes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` draws of :func:`sample_lesion_volume` (for statistics and tests)."""
    rng = np.random.default_rng([seed, 0x5EED])
    return np.array([sample_lesion_volume(rng) for _ in range(n)])


def equivalent_radius(volume_mm3: float) -> float:
    """Radius (mm) of the sphere of ``volume_mm3``: the size scale of a lesion's shape."""
    return float((3.0 * volume_mm3 / (4.0 * np.pi)) ** (1 / 3))


def ellipsoid_d2(
    grids: Sequence[np.ndarray],
    centre: Sequence[float],
    axes: Sequence[float],
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Squared normalised distance of every grid point from ``centre``: at most 1 inside the
    ellipsoid with semi-axes ``axes`` (in the units of ``grids``, one broadcastable array
    per axis, e.g. from ``np.ogrid`` or a sparse ``np.meshgrid``). ``rotation``'s columns are
    the ellipsoid's axes in grid coordinates; None keeps them along the grid axes.

    The lesion shape's distance field (`_draw_lesion`) and the benchmark's ellipsoid masks
    (`ellipsoid_mask`) both come from here."""
    rel = [g - c for g, c in zip(grids, centre, strict=True)]
    d2 = 0.0
    for k in range(3):
        if rotation is None:
            comp = rel[k]
        else:
            comp = rotation[0, k] * rel[0] + rotation[1, k] * rel[1] + rotation[2, k] * rel[2]
        d2 = d2 + (comp / axes[k]) ** 2
    return d2


def ellipsoid_mask(
    shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]
) -> np.ndarray:
    """Boolean mask of the axis-aligned ellipsoid (centre and semi-axes in voxels) on a grid
    of ``shape``, computed only inside its bounding box."""
    centre, radii = np.asarray(centre, dtype=np.float64), np.asarray(radii, dtype=np.float64)
    lo = np.maximum(np.floor(centre - radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    mask = np.zeros(tuple(shape), dtype=bool)
    mask[box] = ellipsoid_d2(np.ogrid[box], centre, radii) <= 1
    return mask


def _pick_territory(rng: np.random.Generator, volume: float) -> str:
    for bound, probs in _TERRITORY_BY_SIZE:
        if volume < bound:
            return _TERRITORY_NAMES[int(rng.choice(4, p=probs))]
    raise AssertionError("unreachable")


@dataclass
class _LesionPlan:
    territory: str
    volume: float  # requested, mm^3
    seed_mm: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray
    noise_amp: float
    edge_mm: float
    rim_mm: float


def _plan_lesion(rng: np.random.Generator, volume: float, territory: str, side: int) -> _LesionPlan:
    cands = _seed_candidates()[(territory, side)]
    seed_mm = cands[int(rng.integers(len(cands)))] + rng.uniform(-1.0, 1.0, 3)
    axes = np.exp(rng.normal(0.0, 0.3, 3))
    axes /= np.prod(axes) ** (1 / 3)
    return _LesionPlan(
        territory=territory,
        volume=volume,
        seed_mm=seed_mm,
        axes=axes,
        rotation=_random_rotation(rng),
        noise_amp=float(rng.uniform(0.25, 0.55)),
        edge_mm=float(rng.uniform(1.0, 3.0)),
        rim_mm=float(rng.uniform(1.5, 4.0)),
    )


def _draw_lesion(
    rng: np.random.Generator, tpl: _Template, plan: _LesionPlan, side: int
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Cavity fraction f, gliosis weight g and core texture in a box around the lesion."""
    r = equivalent_radius(plan.volume)
    step = max(0.6 * r, 3.0)
    half = 1.6 * r * float(plan.axes.max()) + 2.0 * plan.noise_amp * r + plan.rim_mm + 8.0
    lo, hi = plan.seed_mm - half, plan.seed_mm + half
    # All draws first, in a fixed order and count.
    box_idx = []
    for a in range(3):
        ax = tpl.axes_mm[a]
        i0 = int(np.searchsorted(ax, lo[a]))
        i1 = int(np.searchsorted(ax, hi[a], side="right"))
        box_idx.append(slice(max(i0, 0), max(min(i1, len(ax)), max(i0, 0) + 1)))
    box = tuple(box_idx)
    coords = tuple(tpl.axes_mm[a][box[a]] for a in range(3))
    noise = _smooth_field(rng, coords, lo, hi, step)  # type: ignore[arg-type]
    texture = _smooth_field(rng, coords, lo, hi, 4.0)  # type: ignore[arg-type]

    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    d2 = ellipsoid_d2((x, y, z), plan.seed_mm, plan.axes, plan.rotation)
    field = 1.0 - np.sqrt(d2) / r + plan.noise_amp * noise
    centre, radii = TERRITORIES[plan.territory]
    c = np.array(centre) * np.array([-side, 1, 1])
    e = np.sqrt(
        ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2
    )
    field = (field - 2.0 * np.maximum(e - 1.3, 0.0)).astype(np.float32)

    allowed = tpl.parenchyma[box] & (x * side > 0.5)
    vals = field[allowed]
    if vals.size == 0:  # cannot happen for seeds from the candidate list; keep it safe
        zero = np.zeros(field.shape, np.float32)
        return box, zero, zero, texture
    target = max(int(round(plan.volume / tpl.voxel_mm3)), 1)
    structure = np.ones((3, 3, 3), bool)
    want = target
    kept = None
    for _ in range(5):
        k = min(want, vals.size)
        t = float(np.partition(vals, vals.size - k)[vals.size - k])
        core = allowed & (field >= t)
        labels, n = ndimage.label(core, structure=structure)
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            kept = labels == (int(np.argmax(sizes)) + 1)
        else:
            kept = core
        got = int(kept.sum())
        if got >= 0.9 * target or k == vals.size:
            break
        want = int(np.ceil(want * target / max(got, 1)))
    assert kept is not None
    discarded = core & ~kept

    grads = np.gradient(field, tpl.spacing)
    gmag = np.sqrt(sum(g.astype(np.float32) ** 2 for g in grads))
    dist = (field - t) / np.maximum(gmag, 0.25 / r)  # ~ signed distance to the edge, mm
    reach = int(np.ceil((plan.edge_mm + plan.rim_mm) / tpl.spacing)) + 1
    near = ndimage.binary_dilation(kept, structure=structure, iterations=reach) & ~discarded
    f = np.clip(0.5 + dist / plan.edge_mm, 0.0, 1.0) * (allowed & near)
    f[kept] = np.maximum(f[kept], 0.5)  # kept voxels stay in the mask whatever the ramp says
    g = np.clip(1.0 + np.minimum(dist, 0.0) / plan.rim_mm, 0.0, 1.0) * near
    g *= tpl.t1[box] > 0
    return box, f.astype(np.float32), g.astype(np.float32), texture


# --------------------------------------------------------------------------------------------
# Subjects


@dataclass
class _SubjectPlan:
    side: int  # -1 left, +1 right (MNI x sign)
    total_volume: float  # sampled total lesion volume, mm^3
    lesions: list[_LesionPlan]  # primary first
    gamma: float
    gain: float
    core_factor: float
    rim_strength: float
    scales: np.ndarray
    angles: np.ndarray
    deform_amp: float
    bias_amp: float
    noise_sigma: float


def _plan_subject(rng: np.random.Generator) -> _SubjectPlan:
    """All scalar draws of one subject, in a fixed order (cheap: no images)."""
    side = -1 if rng.uniform() < 0.5 else 1
    total = sample_lesion_volume(rng)
    n_secondary = 0
    if rng.uniform() < SECONDARY_PROB:
        n_secondary = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    # Secondary lesions take 2-25 % of the total each; the primary keeps the rest, so the
    # total follows the sampler. Too small a total to split gets no secondary lesion.
    fractions = np.exp(rng.uniform(np.log(0.02), np.log(0.25), n_secondary))
    sec_volumes = [float(total * fr) for fr in fractions if total * fr >= MIN_LESION_MM3]
    primary = total - sum(sec_volumes)
    lesions = [_plan_lesion(rng, primary, _pick_territory(rng, primary), side)]
    for v in sec_volumes:
        lesions.append(_plan_lesion(rng, v, _pick_territory(rng, v), side))
    return _SubjectPlan(
        side=side,
        total_volume=total,
        lesions=lesions,
        gamma=float(rng.uniform(0.8, 1.25)),
        gain=float(rng.uniform(0.88, 1.05)),
        core_factor=float(rng.uniform(0.95, 1.25)),
        rim_strength=float(rng.uniform(0.04, 0.12)),
        scales=rng.uniform(0.96, 1.04, 3),
        angles=np.deg2rad(rng.uniform(-3.0, 3.0, 3)),
        deform_amp=float(rng.uniform(1.5, 3.5)),
        bias_amp=float(rng.uniform(0.04, 0.08)),
        noise_sigma=float(rng.uniform(0.015, 0.04)) * 255.0,
    )


def plan_subject(index: int, seed: int) -> dict:
    """The lesion plan of subject ``index`` without making images (cheap; for statistics):
    hemisphere, territories and requested volumes, exactly as :func:`generate_subject` uses."""
    plan = _plan_subject(np.random.default_rng([int(seed), int(index)]))
    return {
        "hemisphere": "left" if plan.side < 0 else "right",
        "total_volume_mm3": plan.total_volume,
        "territory": plan.lesions[0].territory,
        "lesions": [
            {"territory": p.territory, "requested_volume_mm3": p.volume} for p in plan.lesions
        ],
    }


def subject_id(index: int) -> str:
    """BIDS subject label of subject ``index`` (0-based): index 0 -> ``sub-r001s001``,
    index 50 -> ``sub-r002s001`` (50 subjects per site)."""
    site, num = divmod(int(index), SUBJECTS_PER_SITE)
    return f"sub-r{site + 1:03d}s{num + 1:03d}"


def subject_paths(out_dir: str | Path, index: int) -> tuple[Path, Path]:
    """(T1 path, lesion mask path) of subject ``index`` in the ATLAS v2.0 BIDS layout."""
    sub = subject_id(index)
    site = f"R{int(index) // SUBJECTS_PER_SITE + 1:03d}"
    anat = Path(out_dir) / "Training" / site / sub / "ses-1" / "anat"
    stem = f"{sub}_ses-1_space-{SPACE}"
    return anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"


@dataclass
class _Randomisation:
    """The domain-randomisation draws of one subject (see the module docstring)."""

    tissue_factors: np.ndarray  # CSF, GM, WM level factors
    lesion_factor: float  # lesion core value / the subject's CSF value
    partial_amp: float  # within-lesion modulation amplitude, 0 = uniform lesion
    bias_amp: float
    gamma: float
    noise_sigma: float  # intensity units (0-255)
    blur_axis: int  # -1 = no thick-slice blur
    blur_fwhm_mm: float

    def record(self) -> dict:
        return {
            "version": RANDOMISATION_VERSION,
            "tissue_factors_csf_gm_wm": [round(float(v), 4) for v in self.tissue_factors],
            "lesion_factor": round(self.lesion_factor, 4),
            "partial_lesion_amplitude": round(self.partial_amp, 4),
            "bias_log_sd": round(self.bias_amp, 4),
            "gamma": round(self.gamma, 4),
            "noise_sigma": round(self.noise_sigma, 3),
            "blur_axis": self.blur_axis,
            "blur_fwhm_mm": round(self.blur_fwhm_mm, 3),
        }


def _plan_randomisation(rng: np.random.Generator) -> _Randomisation:
    """All scalar draws of the domain randomisation, in a fixed order."""
    tissue = rng.uniform(0.6, 1.4, 3)
    lesion_factor = float(rng.uniform(0.7, 2.2))
    partial = float(rng.uniform(0.3, 1.0)) if rng.uniform() < 0.5 else 0.0
    bias_amp = float(rng.uniform(0.1, 0.3))
    gamma = float(np.exp(rng.normal(0.0, 0.2)))
    noise_sigma = float(rng.uniform(0.0, 0.05)) * 255.0
    blur = rng.uniform() < 0.5
    axis, fwhm = int(rng.integers(3)), float(rng.uniform(2.0, 5.0))
    return _Randomisation(
        tissue, lesion_factor, partial, bias_amp, gamma, noise_sigma, axis if blur else -1, fwhm
    )


@lru_cache(maxsize=4)
def _tissue_levels(spacing: float) -> tuple[float, float, float]:
    """Typical template intensities of CSF, GM and WM: the CSF median, and the 25th and 90th
    percentiles of the parenchyma (GM + WM >= 0.5), where GM and WM dominate."""
    tpl = _template(spacing)
    tissue = tpl.t1[tpl.parenchyma]
    gm, wm = (float(v) for v in np.percentile(tissue, [25, 90]))
    return float(tpl.csf_value), gm, wm


def _contrast_map(spacing: float, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (template intensity -> new intensity) of the random tissue contrast."""
    csf, gm, wm = _tissue_levels(spacing)
    x = np.array([0.0, csf, gm, wm, 255.0])
    y = np.array([0.0, csf * factors[0], gm * factors[1], wm * factors[2], 255.0 * factors[2]])
    return x, np.clip(y, 0.0, 255.0)


def randomise_mode(value: bool | str) -> str:
    """``randomise=`` as one of RANDOMISE_MODES: false/"off", true/"all", or "lesion"."""
    if isinstance(value, bool):
        return "all" if value else "off"
    text = str(value).strip().lower()
    mode = {"false": "off", "true": "all"}.get(text, text)
    if mode not in RANDOMISE_MODES:
        raise StrokeSegError(
            f"randomise={value!r} is not known; use false, true (everything) or lesion "
            "(the lesion's contrast only)."
        )
    return mode


def _paint_default_lesions(
    rng: np.random.Generator,
    dr_rng: np.random.Generator | None,
    dr: _Randomisation | None,
    tpl: _Template,
    plans: list[_LesionPlan],
    side: int,
    t1: np.ndarray,
    core_value: float,
    rim_strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(image with this module's lesions painted in, cavity fraction): each lesion's cavity
    at ``core_value`` with its texture, a partial-volume ramp and the gliotic rim (module
    docstring, step 2); ``dr`` adds the partly bright / partly dark modulation."""
    frac = np.zeros(tpl.shape, np.float32)
    glio = np.zeros(tpl.shape, np.float32)
    core_img = np.full(tpl.shape, core_value, np.float32)
    for lesion in plans:
        box, f, g, texture = _draw_lesion(rng, tpl, lesion, side)
        np.maximum(frac[box], f, out=frac[box])
        np.maximum(glio[box], g, out=glio[box])
        core = core_value * (1.0 + 0.06 * texture)
        if dr is not None and dr_rng is not None and dr.partial_amp > 0:  # partly bright/dark
            coords = tuple(tpl.axes_mm[a][box[a]] for a in range(3))
            lo = np.array([c.min() for c in coords])
            hi = np.array([c.max() for c in coords])
            field = _smooth_field(dr_rng, coords, lo, hi, 8.0)  # type: ignore[arg-type]
            core = core * (1.0 + dr.partial_amp * np.tanh(2.0 * field))
        core_img[box] = np.where(f > 0, core, core_img[box])
    img = t1 * (1.0 - rim_strength * glio)
    return img * (1.0 - frac) + core_img * frac, frac


def lesion_model(value: str) -> str:
    """``lesions=`` as one of LESION_MODELS, or one sentence naming the key."""
    model = str(value).strip().lower()
    if model not in LESION_MODELS:
        raise StrokeSegError(
            f"lesions={value!r} is not known; use default (this generator's lesions), blob "
            "(the second lesion simulator, stroke_seg.data.blob_lesions) or mixed (each "
            "subject by one of the two)."
        )
    return model


def _check_combination(mode: str, model: str) -> None:
    if model != "default" and mode != "off":
        raise StrokeSegError(
            f"lesions={model} cannot be combined with randomise (it draws its own lesion "
            "contrasts on the default scans); drop randomise= or use lesions=default."
        )


def generate_subject(
    index: int,
    seed: int,
    spacing: float = 1.0,
    randomise: bool | str = False,
    lesions: str = "default",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Make subject ``index`` of the set with ``seed``: (T1 float32 0-255, mask uint8 0/1,
    4x4 affine, info dict). Depends only on (seed, index, spacing, randomise, lesions);
    ``randomise`` adds the domain randomisation of the module docstring (same lesion and
    mask), "lesion" only its lesion part; ``lesions="blob"`` draws the lesions with the
    second simulator (stroke_seg.data.blob_lesions) instead of this module's."""
    if int(index) < 0:
        raise StrokeSegError(f"subject index {index} is negative; use 0 or more.")
    spacing = _check_spacing(spacing)
    mode = randomise_mode(randomise)
    model = lesion_model(lesions)
    _check_combination(mode, model)
    set_model = model
    if model == "mixed":  # its own stream: the subject's other draws do not depend on it
        pick = np.random.default_rng([int(seed), int(index), _MIXED_STREAM]).uniform()
        model = "blob" if pick < MIXED_BLOB_FRACTION else "default"
    tpl = _template(spacing)
    rng = np.random.default_rng([int(seed), int(index)])

    plan = _plan_subject(rng)
    side, plans = plan.side, plan.lesions
    gamma, gain = plan.gamma, plan.gain
    core_factor, rim_strength = plan.core_factor, plan.rim_strength
    scales, angles = plan.scales, plan.angles
    deform_amp, bias_amp, noise_sigma = plan.deform_amp, plan.bias_amp, plan.noise_sigma
    dr_rng = np.random.default_rng([int(seed), int(index), 0xD0]) if mode != "off" else None
    dr = _plan_randomisation(dr_rng) if dr_rng is not None else None
    everything = mode == "all"  # tissue contrast and scanner too, not the lesion alone

    # ---- template-space image with lesions ----------------------------------------------
    base = tpl.t1
    base_csf = tpl.csf_value
    if dr is not None and everything:  # random tissue contrast, before gamma and gain
        knots = _contrast_map(spacing, dr.tissue_factors)
        base = np.interp(tpl.t1, *knots).astype(np.float32)
        base_csf = float(np.interp(tpl.csf_value, *knots))
    t1 = 255.0 * (base / 255.0) ** gamma * gain
    csf_value = float(255.0 * (base_csf / 255.0) ** gamma * gain)
    core_value = csf_value * core_factor
    if dr is not None:
        core_value *= dr.lesion_factor
    blob_plans: list[blob_lesions.BlobPlan] = []
    if model == "blob":
        blob_rng = np.random.default_rng([int(seed), int(index), blob_lesions.STREAM])
        blob_plans = blob_lesions.plan_blob_lesions(blob_rng, _parenchyma_points())
        img, frac = blob_lesions.paint_blob_lesions(
            blob_rng, blob_plans, t1, tpl.parenchyma, tpl.axes_mm, spacing
        )
    else:
        img, frac = _paint_default_lesions(
            rng, dr_rng, dr, tpl, plans, side, t1, core_value, rim_strength
        )
    img = np.where(tpl.t1 > 0, img, 0.0).astype(np.float32)

    # ---- warp (output voxel p samples template at c + A (p - c) + u(p)) -----------------
    shape = tpl.shape
    brain_idx = np.argwhere(tpl.t1 > 0)
    margin = int(np.ceil(16.0 / spacing))
    lo_i = np.maximum(brain_idx.min(axis=0) - margin, 0)
    hi_i = np.minimum(brain_idx.max(axis=0) + margin + 1, shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo_i, hi_i, strict=True))
    coords = tuple(tpl.axes_mm[a][crop[a]] for a in range(3))
    fov_lo = np.array([-98.0, -134.0, -72.0])
    fov_hi = np.array([98.0, 98.0, 116.0])
    disp = [_smooth_field(rng, coords, fov_lo, fov_hi, 32.0) * deform_amp for _ in range(3)]
    bias = _smooth_field(rng, coords, fov_lo, fov_hi, 60.0)
    rot = _euler(angles)
    mat = rot @ np.diag(scales)
    centre = np.array([0.0, -18.0, 18.0])
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    rel = (x - centre[0], y - centre[1], z - centre[2])
    sample_idx = np.empty((3,) + disp[0].shape, np.float32)
    for a in range(3):
        q = centre[a] + mat[a, 0] * rel[0] + mat[a, 1] * rel[1] + mat[a, 2] * rel[2] + disp[a]
        sample_idx[a] = (q - tpl.affine[a, 3]) / tpl.affine[a, a]
    warped = ndimage.map_coordinates(img, sample_idx, order=1, cval=0.0, prefilter=False)
    warped_f = ndimage.map_coordinates(frac, sample_idx, order=1, cval=0.0, prefilter=False)
    del sample_idx

    # ---- scanner: bias field and Rician noise inside the brain --------------------------
    inside = warped > 0
    signal = warped * np.exp(bias_amp * bias)
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * noise_sigma
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * noise_sigma
    noisy = np.sqrt((signal + n1) ** 2 + n2**2)
    if dr is not None and everything:
        noisy = _randomise_scanner(dr_rng, dr, noisy, inside, coords, fov_lo, fov_hi, spacing)
    out_crop = np.where(inside, np.clip(noisy, 0.0, 255.0), 0.0).astype(np.float32)
    image = np.zeros(shape, np.float32)
    image[crop] = out_crop
    mask = np.zeros(shape, np.uint8)
    mask_crop = warped_f >= 0.5
    if not mask_crop.any() and warped_f.max() > 0:  # a one-voxel lesion lost in the warp
        mask_crop[np.unravel_index(int(np.argmax(warped_f)), warped_f.shape)] = True
    mask[crop] = mask_crop
    mask &= (image > 0).astype(np.uint8)

    _, n_components = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    voxel = tpl.voxel_mm3
    info = {
        "index": int(index),
        "subject": subject_id(index),
        "seed": int(seed),
        "spacing": spacing,
        "shape": list(shape),
        "hemisphere": "left" if side < 0 else "right",
        "territory": plans[0].territory,
        "lesion_volume_mm3": float(mask.sum()) * voxel,
        "requested_volume_mm3": float(plan.total_volume),
        "n_components": int(n_components),
        "n_lesions_placed": len(plans),
        "lesions": [
            {
                "territory": p.territory,
                "requested_volume_mm3": round(p.volume, 2),
                "seed_mm": [round(float(v), 1) for v in p.seed_mm],
            }
            for p in plans
        ],
        "appearance": {
            "gamma": round(gamma, 4),
            "gain": round(gain, 4),
            "csf_value": round(csf_value, 2),
            "core_value": round(core_value, 2),
            "rim_strength": round(rim_strength, 4),
            "noise_sigma": round(noise_sigma, 3),
            "bias_log_sd": round(bias_amp, 4),
            "deformation_sd_mm": round(deform_amp, 3),
        },
    }
    if dr is not None:
        info["domain_randomisation"] = dr.record() | ({} if everything else {"mode": mode})
    if blob_plans:  # the second simulator's lesions replace the plan's
        first = blob_plans[0].centre_mm[0]
        info |= {
            "hemisphere": "left" if first < 0 else "right",
            "territory": "any",
            "requested_volume_mm3": float(sum(p.volume for p in blob_plans)),
            "n_lesions_placed": len(blob_plans),
            "lesions": [p.record() for p in blob_plans],
        }
        for key in ("core_value", "rim_strength"):
            del info["appearance"][key]
    if set_model != "default":  # which simulator drew this subject's lesions
        version = blob_lesions.BLOB_VERSION if model == "blob" else GENERATOR_VERSION
        info["lesion_model"] = {"name": model, "version": version}
    return image, mask, tpl.affine.copy(), info


def _randomise_scanner(
    rng: np.random.Generator,
    dr: _Randomisation,
    img: np.ndarray,
    inside: np.ndarray,
    coords: tuple[np.ndarray, ...],
    fov_lo: np.ndarray,
    fov_hi: np.ndarray,
    spacing: float,
) -> np.ndarray:
    """Second bias field, gamma, thick-slice blur and extra noise (domain randomisation)."""
    bias = _smooth_field(rng, coords, fov_lo, fov_hi, 40.0)  # type: ignore[arg-type]
    out = np.clip(img * np.exp(dr.bias_amp * bias), 0.0, 255.0)
    out = 255.0 * (out / 255.0) ** dr.gamma
    if dr.blur_axis >= 0:
        sigma = [0.0, 0.0, 0.0]
        sigma[dr.blur_axis] = dr.blur_fwhm_mm / 2.3548 / spacing
        # blur the brain only, normalised by the blurred brain mask (no dark rim from outside)
        weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
        out = ndimage.gaussian_filter(np.where(inside, out, 0.0).astype(np.float32), sigma)
        out = np.where(weight > 1e-3, out / np.maximum(weight, 1e-3), 0.0)
    noise = rng.standard_normal(out.shape, dtype=np.float32) * dr.noise_sigma
    return (out + noise).astype(np.float32)


def _euler(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# --------------------------------------------------------------------------------------------
# Writing the data set


def _save_atomic(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)  # MNI152
    img.set_qform(affine, code=4)
    with atomic_path(path, keep_suffix=True) as tmp:  # nibabel picks the format by name
        nib.save(img, str(tmp))


def _write_json_atomic(obj: dict, path: Path) -> None:
    write_json(path, obj, indent=1)


def _summary(subjects: list[dict]) -> dict:
    vols = np.array([s["lesion_volume_mm3"] for s in subjects], dtype=np.float64)
    if vols.size == 0:
        return {}
    q = np.percentile(vols, [0, 25, 50, 75, 100])
    counts: dict[str, int] = {}
    for s in subjects:
        counts[s["territory"]] = counts.get(s["territory"], 0) + 1
    return {
        "lesion_volume_mm3": {
            "min": float(q[0]),
            "q1": float(q[1]),
            "median": float(q[2]),
            "q3": float(q[3]),
            "max": float(q[4]),
            "mean": float(vols.mean()),
        },
        "fraction_with_secondary_lesions": float(
            np.mean([s["n_lesions_placed"] > 1 for s in subjects])
        ),
        "fraction_with_several_components": float(
            np.mean([s["n_components"] > 1 for s in subjects])
        ),
        "primary_territory_counts": dict(sorted(counts.items())),
        "left_hemisphere_fraction": float(np.mean([s["hemisphere"] == "left" for s in subjects])),
    }


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / "dataset.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("generator") == GENERATOR:
        return data
    return None


def _manifest(
    seed: int,
    spacing: float,
    n: int,
    subjects: list[dict],
    complete: bool,
    randomise: str = "off",
    lesions: str = "default",
) -> dict:
    tpl = _template(spacing)
    record = _manifest_randomisation(randomise)
    extra = {"domain_randomisation": record} if record is not None else {}
    model = _manifest_lesion_model(lesions)
    if model is not None:
        extra["lesion_model"] = model
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "spacing": spacing,
        "n_subjects": int(n),
        "complete": complete,
        "layout": "ATLAS v2.0 BIDS (Training/R00N/sub-*/ses-1/anat)",
        "template": "MNI152 2009a symmetric (nilearn datasets/data)",
        "shape": list(tpl.shape),
        "affine": tpl.affine.tolist(),
        "intensity_range": [0.0, 255.0],
        **extra,
        "summary": _summary(subjects),
        "subjects": subjects,
    }


def _manifest_randomisation(randomise: bool | str) -> dict | None:
    """What dataset.json records under ``domain_randomisation`` (absent = None when off;
    a "lesion"-only set says so, a full one records the version alone, as before)."""
    mode = randomise_mode(randomise)
    if mode == "off":
        return None
    return {"version": RANDOMISATION_VERSION} | ({"mode": mode} if mode != "all" else {})


def _manifest_lesion_model(lesions: str) -> dict | None:
    """What dataset.json records under ``lesion_model`` (absent for this module's lesions,
    so the default set's manifest is what it was before the option)."""
    model = lesion_model(lesions)
    if model == "default":
        return None
    record = {"name": model, "version": blob_lesions.BLOB_VERSION}
    return record | ({"blob_fraction": MIXED_BLOB_FRACTION} if model == "mixed" else {})


def _remove_subject(out_dir: Path, index: int) -> None:
    t1_path, _ = subject_paths(out_dir, index)
    sub_dir = t1_path.parents[2]
    if sub_dir.is_dir():
        shutil.rmtree(sub_dir)
    site_dir = sub_dir.parent
    if site_dir.is_dir() and not any(site_dir.iterdir()):
        site_dir.rmdir()


def generate_dataset(
    out_dir: str | Path,
    n_subjects: int,
    seed: int = 0,
    spacing: float = 1.0,
    overwrite: bool = False,
    progress: bool = True,
    randomise: bool | str = False,
    lesions: str = "default",
) -> Path:
    """Write ``n_subjects`` synthetic subjects in the ATLAS v2.0 BIDS layout plus dataset.json.

    - An identical complete set (same generator version, seed, spacing, n) already in
      ``out_dir`` is left alone and the call returns at once (so ``make demo`` can call it
      every time).
    - A previous synthetic set with the same version, seed and spacing (complete or cut
      short) is resumed: subjects already written are kept, since they would come out the
      same; subjects beyond ``n_subjects`` are removed. A synthetic set made with other
      parameters is replaced subject by subject.
    - Any other non-empty folder is refused (StrokeSegError) unless ``overwrite``; with
      ``overwrite`` the files are written into it and same-named files are replaced, but
      nothing else there is deleted.

    Files are written under a temporary name and renamed, so a killed run leaves no half file.
    ``randomise`` turns on the domain randomisation (module docstring; "lesion": its lesion
    part only); ``lesions="blob"`` draws the lesions with the second simulator
    (stroke_seg.data.blob_lesions). A set made in one mode is never reused for another.
    """
    randomise = randomise_mode(randomise)
    lesions = lesion_model(lesions)
    _check_combination(randomise, lesions)
    out = Path(out_dir).expanduser()
    if int(n_subjects) < 1:
        raise StrokeSegError(f"n_subjects={n_subjects}; ask for at least 1 subject.")
    spacing = _check_spacing(spacing)
    seed = int(seed)
    n = int(n_subjects)
    if out.exists() and not out.is_dir():
        raise StrokeSegError(f"{out} exists and is not a folder; choose another output folder.")
    old = _read_manifest(out) if out.is_dir() else None
    if out.is_dir() and any(out.iterdir()) and old is None and not overwrite:
        raise StrokeSegError(
            f"{out} is not empty and holds no synthetic data set (no dataset.json from "
            f"{GENERATOR}); choose a new or empty folder, or set overwrite=true to write "
            "into it anyway."
        )
    same = (
        old is not None
        and old.get("version") == GENERATOR_VERSION
        and old.get("seed") == seed
        and float(old.get("spacing", -1)) == spacing
        and old.get("domain_randomisation") == _manifest_randomisation(randomise)
        and old.get("lesion_model") == _manifest_lesion_model(lesions)
    )
    reusable: dict[int, dict] = {}
    if same:
        for entry in old.get("subjects", []):
            idx = int(entry.get("index", -1))
            if 0 <= idx < n and all(p.is_file() for p in subject_paths(out, idx)):
                reusable[idx] = entry
        if old.get("complete") and int(old.get("n_subjects", -1)) == n and len(reusable) == n:
            return out
    if old is not None:  # drop subjects of the old set that will not be rewritten as-is
        for entry in old.get("subjects", []):
            idx = int(entry.get("index", -1))
            if idx >= 0 and idx not in reusable:
                _remove_subject(out, idx)
    out.mkdir(parents=True, exist_ok=True)

    subjects: list[dict] = [reusable[i] for i in sorted(reusable)]
    todo = [i for i in range(n) if i not in reusable]
    manifest = functools.partial(_manifest, seed, spacing, n, randomise=randomise, lesions=lesions)
    _write_json_atomic(manifest(subjects, complete=False), out / "dataset.json")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=n - len(todo), desc="synthetic subjects", unit="subj")
    try:
        for i in todo:
            image, mask, affine, info = generate_subject(i, seed, spacing, randomise, lesions)
            t1_path, mask_path = subject_paths(out, i)
            _save_atomic(image, affine, t1_path)
            _save_atomic(mask, affine, mask_path)
            info["t1"] = t1_path.relative_to(out).as_posix()
            info["mask"] = mask_path.relative_to(out).as_posix()
            subjects.append(info)
            subjects.sort(key=lambda s: s["index"])
            _write_json_atomic(manifest(subjects, complete=False), out / "dataset.json")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _write_json_atomic(manifest(subjects, complete=True), out / "dataset.json")
    return out


def _whole(key: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int (at least `minimum`), or one sentence naming the command's key."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise StrokeSegError(f"{key}={value!r} is not a whole number; pass e.g. {key}=40.")
    if minimum is not None and number < minimum:
        raise StrokeSegError(f"{key}={int(number)} is too small; use at least {minimum}.")
    return int(number)


def run(cfg: DictConfig) -> Path:
    """Write the data set that ``cfg`` (conf/synthetic.yaml) asks for and print one summary
    line; returns the folder."""
    if not cfg.get("out"):
        raise StrokeSegError(
            "out= is not set; name the folder to write, e.g. out=data/synthetic_2mm."
        )
    try:
        spacing = float(cfg.spacing)
    except (TypeError, ValueError):
        raise StrokeSegError(
            f"spacing={cfg.spacing!r} is not a number; use a value from 1 to 4 (mm)."
        ) from None
    n, seed = _whole("n", cfg.n, minimum=1), _whole("seed", cfg.seed)
    start = time.perf_counter()
    out = generate_dataset(
        cfg.out,
        n,
        seed=seed,
        spacing=spacing,
        overwrite=bool(cfg.overwrite),
        progress=not cfg.quiet,
        randomise=cfg.randomise,
        lesions=cfg.lesions,
    )
    elapsed = time.perf_counter() - start
    manifest = _read_manifest(out) or {}
    vol = manifest.get("summary", {}).get("lesion_volume_mm3", {})
    n_sec = sum(s.get("n_lesions_placed", 1) > 1 for s in manifest.get("subjects", []))
    shape = "x".join(str(v) for v in manifest.get("shape", []))
    model = manifest.get("lesion_model")
    kind = f"{model['name']} lesions, " if model else ""
    print(
        f"synthetic set: {manifest.get('n_subjects')} subjects ({kind}seed {seed}, "
        f"{spacing:g} mm, grid {shape}) in {out} [{elapsed:.1f} s]; lesion volume "
        f"median {vol.get('median', float('nan')):.0f} mm3 (min {vol.get('min', 0):.0f}, "
        f"max {vol.get('max', 0):.0f}); {n_sec} with secondary lesions",
        flush=True,
    )
    return out


# A Hydra command like the others (conf/synthetic.yaml): ``main()`` reads sys.argv, so it
# serves both ``python -m stroke_seg.data.synthetic`` and the stroke-seg-synthetic script;
# ``main(cfg)`` runs the task on a composed config. Not `stroke_seg.cli.hydra_command`:
# that module is an entry point, above the data layer this generator belongs to.
@hydra.main(version_base="1.3", config_path=config_path(), config_name="synthetic")
def main(cfg: DictConfig) -> None:
    """``python -m stroke_seg.data.synthetic out=DIR [n=40] [seed=0] [spacing=1]``."""
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    main()
