"""A scan in its own space to the model's template grid, and probabilities back onto the scan.

The models of this framework have only seen scans registered to the MNI152 2009a template
(ATLAS v2.0's space and our synthetic set's; docs/paper.md "Data"). A clinic's scan lies in
the scanner's own pose and grid, so inference first estimates the scan's transform to the
template, resamples the scan onto the template grid at the model's training spacing, lets the
model predict there, and brings the probability map back onto the scan's own grid through the
inverse transform (linear interpolation; the caller thresholds there, so that the mask keeps
the native resolution).

Registration is ANTsPy's (``antspyx``, the ANTs registration engine, a well-kept library and
the standard of the field) and not hand-written: a rigid stage, then an affine stage started
from it (``transform="affine"``, the default), optionally followed by SyN (``"syn"``, off by
default: our models were trained on affinely aligned scans and SyN adds tens of seconds).
SimpleITK could do the same, but ANTs' multi-resolution rigid/affine stages with Mattes mutual
information, its centre-of-mass initialisation and its transform files are what the
neuroimaging community already reads and reuses (``antsApplyTransforms``). The estimation runs
on both images resampled to ``registration_spacing`` (2 mm): an affine transform has 12
parameters, which a 2 mm image determines well, and it makes the estimation several times
cheaper than at 1 mm; the final resampling then uses the full-resolution scan.

Reproducibility: ANTs draws its metric samples at random. Every call runs with
``ANTS_RANDOM_SEED`` set to a fixed seed (``RegistrationOptions.seed``), and ITK runs on one
thread unless the user says otherwise, so the same scan gives a bit-identical transform every
time. ITK reads its thread count from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per
process, at its first use; importing this module sets it explicitly to 1 unless the variable
is already set. Measured on the 2-core development machine (tools/measure_native.py): two
threads did not make the registration faster (5.0 s either way at 2 mm) but made repeated
registrations of one scan differ by 0.2-0.3 mm on average (0.7 mm at most), because ITK's
parallel sums change the optimiser's path. Many scans are better spread over processes
(one thread each) than over threads; set the variable (e.g. to the number of cores) before
the first import to trade reproducibility for threads.

A scan already on the template grid (same shape, affine within 1 µm) is not registered at all:
`register_to_template` returns the input array itself and an identity mapping, so that the
prediction is bit-identical to the direct path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from stroke_seg.atomic import atomic_path
from stroke_seg.data.checks import AFFINE_TOLERANCE_MM
from stroke_seg.errors import StrokeSegError, check_choice, check_range

# Before ANTs (ITK) is first imported and used: ITK reads this once per process. One thread
# keeps registrations bit-identical (see the module doc); the user's own setting wins.
DEFAULT_ITK_THREADS = 1
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(DEFAULT_ITK_THREADS))

TRANSFORMS = ("identity", "rigid", "affine", "syn")
METRICS = ("mattes", "gc")
DEFAULT_TEMPLATE = "MNI152NLin2009aSym"
# ANTs works in LPS world coordinates, NIfTI (and this project) in RAS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_threads() -> int:
    """The ITK thread count of this process (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``; ITK
    read it at its first use, so a later change of the variable has no effect)."""
    return int(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1"))


def _ants():
    import ants  # imported late: the thread count above must be set first

    return ants


# --------------------------------------------------------------------------------------------
# Template


@dataclass(frozen=True, eq=False)
class Template:
    """The model's template on its training grid.

    Attributes:
        name: ``MNI152NLin2009aSym`` for the default, else the file's stem; used in output
            names (``<name>_space-<template>_...``).
        image: float32 on the template grid, 0 outside the brain (our template is brain-only;
            a template with skull needs its brain mask, see `brain_mask`).
        affine: voxel -> world (RAS mm).
    """

    name: str
    image: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def brain_mask(self) -> np.ndarray:
        """The template's brain: its nonzero voxels (our template is skull-stripped)."""
        return self.image > 0


@lru_cache(maxsize=8)
def load_template(spacing: float = 2.0, path: str | None = None) -> Template:
    """The template at `spacing` mm.

    Without `path`: nilearn's MNI152 2009a symmetric T1 (in its wheel, nothing downloaded),
    resampled exactly as `stroke_seg.data.synthetic` does for the synthetic set, so that the
    grid is the training grid (99x117x95 at 2 mm, 197x233x189 at 1 mm). With `path`: that
    NIfTI file, reoriented to RAS and resampled (linear) to `spacing` if needed.
    """
    spacing = check_range("spacing", spacing, 0.5, 8.0)
    if path is None:
        from stroke_seg.data.synthetic import SPACE, _template

        tpl = _template(spacing)
        return Template(SPACE, tpl.t1, tpl.affine.copy())
    file = Path(path).expanduser()
    if not file.is_file():
        raise StrokeSegError(f"template={file} does not exist; pass a NIfTI T1 template file.")
    try:
        img = nib.as_closest_canonical(nib.load(str(file)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types on junk
        raise StrokeSegError(f"template={file} is not a readable NIfTI file ({err}).") from None
    if data.ndim != 3 or not np.isfinite(data).all() or not (data > 0).any():
        raise StrokeSegError(
            f"template={file} must be one 3-D volume with finite values and a nonzero brain."
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    name = file.name.split(".")[0]
    if np.allclose(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), spacing, atol=1e-4):
        return Template(name, data, affine)
    ants = _ants()
    moved = ants.resample_image(_to_ants(data, affine), (spacing,) * 3, False, 0)
    out, out_affine = _from_ants(moved)
    return Template(name, np.maximum(out, 0.0).astype(np.float32), out_affine)


def on_template_grid(shape: Sequence[int], affine: np.ndarray, template: Template) -> bool:
    """Whether a scan lies on the template grid (same shape, affine within 1 µm)."""
    return tuple(int(n) for n in shape) == template.shape and bool(
        np.allclose(np.asarray(affine, dtype=np.float64), template.affine, atol=AFFINE_TOLERANCE_MM)
    )


# --------------------------------------------------------------------------------------------
# ANTs <-> numpy


def _to_ants(array: np.ndarray, affine: np.ndarray):
    """An ANTs image (LPS physical space) of a RAS-affine numpy volume, through ANTsPy's own
    NIfTI conversion (which removes a shear below 0.5 degrees and refuses a larger one)."""
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm", "sec")
    return _ants().from_nibabel_nifti(img)


def _from_ants(image) -> tuple[np.ndarray, np.ndarray]:
    """(float32 array, RAS affine) of an ANTs image; the array keeps ANTs' index order."""
    direction = np.asarray(image.direction, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.spacing, dtype=np.float64)[None, :]
    lps[:3, 3] = np.asarray(image.origin, dtype=np.float64)
    return image.numpy().astype(np.float32), _RAS_TO_LPS @ lps


@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """ANTs reads ``ANTS_RANDOM_SEED`` at every registration for its metric sampling."""
    old = os.environ.get("ANTS_RANDOM_SEED")
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ANTS_RANDOM_SEED", None)
        else:
            os.environ["ANTS_RANDOM_SEED"] = old


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class RegistrationOptions:
    """How the scan is registered; the defaults are measured in tools/measure_native.py.

    Attributes:
        transform: ``affine`` (rigid, then affine; the default), ``rigid``, ``syn`` (rigid,
            affine, then SyN) or ``identity`` (trust the header: resample only, for scans
            already in template space on another grid).
        metric: ``mattes`` (Mattes mutual information, robust to scanner units and contrast)
            or ``gc`` (global correlation, assumes a linear intensity relation).
        bins: histogram bins of Mattes MI.
        sampling_rate: fraction of the fixed (template) voxels drawn per level.
        shrink_factors, smoothing_sigmas, iterations: the multi-resolution schedule of each
            linear stage (one entry per level; sigmas in voxels of the shrunk image).
        registration_spacing: mm; both images are resampled to it for the estimation only.
        seed: ``ANTS_RANDOM_SEED`` for the metric sampling.
        syn_iterations: SyN's iterations per level (coarse to fine), with ``transform=syn``.
        interpolation: how the scan is resampled onto the template grid: ``linear`` or
            ``bSpline`` (sharper, negative overshoot clipped to 0).
    """

    transform: str = "affine"
    metric: str = "mattes"
    bins: int = 32
    sampling_rate: float = 0.1
    shrink_factors: tuple[int, ...] = (4, 2)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0)
    iterations: tuple[int, ...] = (100, 30)
    registration_spacing: float = 2.0
    seed: int = 20200
    syn_iterations: tuple[int, ...] = (40, 20, 0)
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        check_choice("transform", self.transform, TRANSFORMS)
        check_choice("metric", self.metric, METRICS)
        check_choice("interpolation", self.interpolation, ("linear", "bSpline"))
        check_range("sampling_rate", self.sampling_rate, 0.01, 1.0)
        check_range("registration_spacing", self.registration_spacing, 0.5, 8.0)
        check_range("bins", self.bins, 8, 256)
        lengths = {len(self.shrink_factors), len(self.smoothing_sigmas), len(self.iterations)}
        if len(lengths) != 1 or 0 in lengths:
            raise StrokeSegError(
                f"shrink_factors={list(self.shrink_factors)}, smoothing_sigmas="
                f"{list(self.smoothing_sigmas)} and iterations={list(self.iterations)} must "
                "have one entry per level, the same number each."
            )
        set_ = object.__setattr__
        set_(self, "shrink_factors", tuple(int(v) for v in self.shrink_factors))
        set_(self, "smoothing_sigmas", tuple(float(v) for v in self.smoothing_sigmas))
        set_(self, "iterations", tuple(int(v) for v in self.iterations))
        set_(self, "syn_iterations", tuple(int(v) for v in self.syn_iterations))

    def _linear_kwargs(self) -> dict[str, Any]:
        sigmas = tuple(int(s) if float(s).is_integer() else s for s in self.smoothing_sigmas)
        return {
            "aff_metric": "mattes" if self.metric == "mattes" else "GC",
            "aff_sampling": int(self.bins),
            "aff_random_sampling_rate": float(self.sampling_rate),
            "aff_iterations": self.iterations,
            "aff_shrink_factors": self.shrink_factors,
            "aff_smoothing_sigmas": sigmas,
        }


# --------------------------------------------------------------------------------------------
# The mapping between a scan's grid and the template grid


class TemplateMapping:
    """The transform between one scan's own grid and the template grid.

    Built by `register_to_template`. `to_native` brings a template-grid volume (the
    probability map) onto the scan's grid; `to_template` does the opposite (masks, QC);
    `save` writes the transform as an ANTs/ITK ``.mat`` file that ``antsApplyTransforms``
    and ``ants.apply_transforms`` read (with the template as fixed image).

    Attributes:
        native_shape, native_affine: the scan's grid.
        template: the template (grid and image).
        transform: what was estimated (``none`` when the scan was on the template grid).
        template_to_native: 4x4 world -> world (RAS mm) of the linear part: where a template
            point lies in the scan's world (identity for ``none`` and ``identity``).
        timings: seconds per step of the registration (``rigid``, ``affine``, ``syn``, ...).
    """

    def __init__(
        self,
        native_shape: Sequence[int],
        native_affine: np.ndarray,
        template: Template,
        transform: str,
        files: Sequence[str] = (),
        inverse_files: Sequence[str] = (),
        workdir: tempfile.TemporaryDirectory | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.native_shape = tuple(int(n) for n in native_shape)
        self.native_affine = np.asarray(native_affine, dtype=np.float64)
        self.template = template
        self.transform = transform
        self._files = list(files)  # ANTs forward list (moving=native -> fixed=template)
        self._inverse_files = list(inverse_files)
        self._workdir = workdir  # keeps the transform files alive as long as the mapping
        self.timings = dict(timings or {})
        self.template_to_native = self._linear_matrix()

    @property
    def is_identity(self) -> bool:
        """True when the scan was on the template grid: both directions return the input."""
        return self.transform == "none"

    def _affine_file(self) -> str | None:
        mats = [f for f in self._files if f.endswith(".mat")]
        return mats[0] if mats else None

    def _linear_matrix(self) -> np.ndarray:
        path = self._affine_file()
        if path is None:
            return np.eye(4)
        tx = _ants().read_transform(path)
        params = np.asarray(tx.parameters, dtype=np.float64)
        centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
        mat = params[:9].reshape(3, 3)
        lps = np.eye(4)  # ITK: y = A (x - c) + t + c, fixed (template) -> moving (scan), LPS
        lps[:3, :3] = mat
        lps[:3, 3] = params[9:12] + centre - mat @ centre
        return _RAS_TO_LPS @ lps @ _RAS_TO_LPS

    def _check(self, volume: np.ndarray, shape: tuple[int, ...], grid: str) -> np.ndarray:
        volume = np.asarray(volume)
        if tuple(volume.shape) != tuple(shape):
            raise ValueError(f"expected a volume on the {grid} grid {shape}, got {volume.shape}")
        return volume

    def to_native(self, volume: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """A template-grid volume resampled onto the scan's grid (float32; 0 outside)."""
        volume = self._check(volume, self.template.shape, "template")
        if self.is_identity:
            return volume
        check_choice("interpolation", interpolation, ("linear", "nearestNeighbor"))
        ants = _ants()
        fixed = _to_ants(np.zeros(self.native_shape, np.float32), self.native_affine)
        moving = _to_ants(volume, self.template.affine)
        invert = [not f.endswith(".nii.gz") for f in self._inverse_files]
        out = ants.apply_transforms(
            fixed, moving, self._inverse_files, interpolator=interpolation, whichtoinvert=invert
        )
        return out.numpy().astype(np.float32)

    def to_template(self, volume: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """A scan-grid volume resampled onto the template grid (float32; 0 outside)."""
        volume = self._check(volume, self.native_shape, "scan")
        if self.is_identity:
            return volume
        check_choice("interpolation", interpolation, ("linear", "nearestNeighbor"))
        ants = _ants()
        fixed = _to_ants(np.zeros(self.template.shape, np.float32), self.template.affine)
        moving = _to_ants(volume, self.native_affine)
        out = ants.apply_transforms(fixed, moving, self._files, interpolator=interpolation)
        return out.numpy().astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Write the linear transform (ANTs ``.mat``, template = fixed, scan = moving) to
        `path`, atomically; with SyN the warp fields are written beside it
        (``<stem>_warp.nii.gz`` and ``<stem>_inverse_warp.nii.gz``)."""
        ants = _ants()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        src = self._affine_file()
        tx = (
            ants.read_transform(src)
            if src is not None
            else ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
        )
        # Written under the project's temporary names (`stroke_seg.atomic`), so that a
        # killed run's leftovers are recognised and removed like every other result's.
        with atomic_path(path, keep_suffix=True) as tmp:
            ants.write_transform(tx, str(tmp))
        warps = [f for f in self._files if f.endswith(".nii.gz")]
        inverse = [f for f in self._inverse_files if f.endswith(".nii.gz")]
        stem = path.name[: -len(".mat")] if path.name.endswith(".mat") else path.stem
        for files, suffix in ((warps, "_warp.nii.gz"), (inverse, "_inverse_warp.nii.gz")):
            for f in files:
                with atomic_path(path.with_name(stem + suffix), keep_suffix=True) as tmp_w:
                    ants.image_write(ants.image_read(f), str(tmp_w))
        return path


# --------------------------------------------------------------------------------------------
# Registration


def _check_input(image: np.ndarray, affine: np.ndarray, source: str) -> None:
    if image.ndim != 3:
        raise StrokeSegError(f"{source} has shape {image.shape}; one 3-D volume is needed.")
    if not np.isfinite(image).all():
        raise StrokeSegError(f"{source} holds NaN or infinite values; fix or mask them first.")
    if not (image != 0).any():
        raise StrokeSegError(f"{source} is all zero; there is nothing to register.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine)) < 1e-9:
        raise StrokeSegError(
            f"{source} has a degenerate affine (voxel-to-world matrix); fix its NIfTI header."
        )


def register_to_template(
    image: np.ndarray,
    affine: np.ndarray,
    template: Template,
    options: RegistrationOptions | None = None,
    source: str = "the scan",
    force: bool = False,
) -> tuple[np.ndarray, TemplateMapping]:
    """Register a scan (its array and RAS affine) to `template` and resample it onto the
    template grid (`force`: also a scan already on the template grid, for measurements).

    Returns the template-grid volume (float32, linear interpolation, 0 outside the scan's
    field of view) and the `TemplateMapping` that brings template-grid volumes (the
    probability map) back onto the scan's grid. A scan already on the template grid comes
    back as the very same array with an identity mapping (no registration, bit-identical
    to the direct path). `source` names the scan in error messages.
    """
    import time

    options = options or RegistrationOptions()
    image = np.asarray(image)
    affine = np.asarray(affine, dtype=np.float64)
    if not force and on_template_grid(image.shape, affine, template):
        return image, TemplateMapping(image.shape, affine, template, "none")
    _check_input(image, affine, source)
    ants = _ants()
    timings: dict[str, float] = {}
    workdir = tempfile.TemporaryDirectory(prefix="stroke_seg_reg_")
    prefix = str(Path(workdir.name) / "reg_")
    try:
        moving_full = _to_ants(image, affine)
    except ValueError as err:  # ANTsPy refuses a sheared affine
        raise StrokeSegError(
            f"{source} has a sheared affine that ANTs cannot represent ({err}); reslice it "
            "to an orthogonal grid first."
        ) from None
    fixed_full = _to_ants(template.image, template.affine)
    if options.transform == "identity":
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
        files = [prefix + "0GenericAffine.mat"]
        ants.write_transform(tx, files[0])
        inverse = list(files)
    else:
        start = time.perf_counter()
        reg_spacing = (float(options.registration_spacing),) * 3
        fixed = (
            fixed_full
            if np.allclose(template.spacing, reg_spacing, atol=1e-4)
            else _to_ants(*_template_at(template, options.registration_spacing))
        )
        moving = ants.resample_image(moving_full, reg_spacing, False, 0)
        timings["downsample"] = time.perf_counter() - start
        # Each stage starts from the transforms of the one before: rigid, affine, SyN.
        stages = [("rigid", "Rigid", {})]
        if options.transform in ("affine", "syn"):
            stages.append(("affine", "Affine", {}))
        if options.transform == "syn":
            syn = {"reg_iterations": options.syn_iterations, "syn_metric": "mattes"}
            stages.append(("syn", "SyNOnly", syn))
        files: list[str] = []
        with _ants_seed(options.seed):
            for name, kind, extra in stages:
                start = time.perf_counter()
                reg = ants.registration(
                    fixed,
                    moving,
                    type_of_transform=kind,
                    outprefix=f"{prefix}{name}_",
                    **({"initial_transform": files} if files else {}),
                    **options._linear_kwargs(),
                    **extra,
                )
                timings[name] = time.perf_counter() - start
                # After SyN: [warp, affine] and [affine, inverse warp] (the initial affine is
                # collapsed in); after a linear stage its one affine file.
                files, inverse = list(reg["fwdtransforms"]), list(reg["invtransforms"])
    start = time.perf_counter()
    warped = ants.apply_transforms(
        fixed_full, moving_full, files, interpolator=options.interpolation
    )
    timings["resample"] = time.perf_counter() - start
    mapping = TemplateMapping(
        image.shape, affine, template, options.transform, files, inverse, workdir, timings
    )
    out = warped.numpy().astype(np.float32)
    if options.interpolation != "linear":
        np.maximum(out, 0.0, out=out)
    return out, mapping


def _template_at(template: Template, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The template image at another spacing (for the estimation only)."""
    if template.name == DEFAULT_TEMPLATE:
        other = load_template(float(spacing))
        return other.image, other.affine
    ants = _ants()
    moved = ants.resample_image(_to_ants(template.image, template.affine), (spacing,) * 3, False, 0)
    return _from_ants(moved)
