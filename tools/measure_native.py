"""Measure the native-space path: registration accuracy, time per step, input checks, and
(with a checkpoint) native-space DSC against the same subjects' MNI-space DSC.

Subjects come from `stroke_seg.data.native.native_subject` with a seed other than 0 (seed 0
made the demo's training set). Sections:

- ``registration``: per subject, the estimated template-to-scan transform against the true
  pose (mean displacement over the template brain, mm) and against pose o T_mni, where T_mni
  is the registration of the same subject's MNI-space scan (the synthetic anatomy deviates
  from the template by a random affine and a smooth warp, which an affine registration
  follows, so the pose alone is not the whole answer); Dice between the subject's MNI-space
  mask and its native mask warped to template space (and the same with the true pose, the
  ceiling of two resamplings); time per step; the input-check figures (for calibration).
- ``bad``: the input checks on a volume that is not a brain (uniform noise), a brain cut off
  by the field of view (only the top 40 %), a header whose voxel size is 10x too small, and
  another contrast (inverted T1 intensities inside the brain).
- ``e2e`` (needs ``--ckpt``): `stroke_seg.inference.Predictor` on the template-space volume,
  probabilities back on the native grid, DSC there vs the MNI-space DSC of the same subjects
  (paired bootstrap CI of the difference); also without standardisation, for comparison.

Run (CPU; times are wall and process CPU seconds)::

    python tools/measure_native.py --sections registration,bad --n2 8 --n1 2 --out native.json
    python tools/measure_native.py --sections e2e --ckpt runs/demo/zoom_out/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from stroke_seg.data.native import bad_scans, native_subject, transform_points
from stroke_seg.data.synthetic import generate_subject
from stroke_seg.intensity import IntensityReference, compute_reference, n4_bias_correction
from stroke_seg.metrics import dice
from stroke_seg.quality import Thresholds
from stroke_seg.registration import (
    RegistrationOptions,
    itk_threads,
    load_template,
    register_to_template,
)
from stroke_seg.stats import bootstrap_ci
from stroke_seg.template_space import PreparedScan, predict_in_template_space, prepare_scan


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _brain_points(template) -> np.ndarray:
    idx = np.argwhere(template.brain_mask)
    return idx @ template.affine[:3, :3].T + template.affine[:3, 3]


def _displacement(a: np.ndarray, b: np.ndarray, pts: np.ndarray) -> float:
    return float(np.linalg.norm(transform_points(a, pts) - transform_points(b, pts), axis=1).mean())


def _warp_true(nat, template) -> np.ndarray:
    """The native mask on the template grid through the true pose (scipy, linear >= 0.5)."""
    m = np.linalg.inv(nat.affine) @ nat.template_to_scanner @ template.affine
    grid = np.indices(template.shape).reshape(3, -1).astype(np.float64)
    coords = m[:3, :3] @ grid + m[:3, 3:]
    out = ndimage.map_coordinates(nat.mask.astype(np.float32), coords, order=1, prefilter=False)
    return out.reshape(template.shape) >= 0.5


def _summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(arr, n_resamples=2000, seed=0)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "ci95": [lo, hi],
    }


def _by_spacing(rows: list[dict]):
    """(``"2mm"``/``"1mm"``, the rows of that spacing) for each spacing that has rows."""
    for spacing in (2.0, 1.0):
        sel = [r for r in rows if r["spacing"] == spacing]
        if sel:
            yield f"{spacing:g}mm", sel


def _steps_summary(sel: list[dict]) -> dict:
    """Each timed step's summary over rows (a step a row did not run counts 0 s)."""
    steps = sorted({k for r in sel for k in r["steps_s"]})
    return {k: _summary([r["steps_s"].get(k, 0.0) for r in sel]) for k in steps}


def reference_from(data: str | None, n: int, template):
    """The intensity reference of the training scans: files of a synthetic set, or the first
    `n` seed-0 subjects generated at 2 mm (the demo's training data)."""
    if data:
        import nibabel as nib

        files = sorted(Path(data).glob("Training/*/*/ses-1/anat/*_T1w.nii.gz"))[:n]
        volumes = (np.asarray(nib.load(str(f)).dataobj) for f in files)
    else:
        volumes = (generate_subject(i, 0, 2.0)[0] for i in range(n))
    return compute_reference(volumes, 2.0, template.brain_mask)


def section_registration(args, template, reference, options) -> dict:
    pts = _brain_points(template)
    rows = []
    plan = [(2.0, i) for i in range(args.n2)] + [(1.0, i) for i in range(args.n1)]
    for spacing, index in plan:
        (img, mask, affine, info), nat = native_subject(index, args.seed, spacing)
        if spacing != template.spacing[0]:  # the MNI-space comparator on the model grid
            img, mask, affine, info = generate_subject(index, args.seed, template.spacing[0])
        wall, cpu = time.perf_counter(), _cpu()
        prep = prepare_scan(
            nat.image, nat.affine, template, reference, source=f"sub{index}", registration=options
        )
        prep.to_native(template.brain_mask.astype(np.float32))
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        _, mni_map = register_to_template(img, affine, template, options, force=True)
        t_mni = mni_map.template_to_native  # MNI subject -> template (template point -> subject)
        est = prep.mapping.template_to_native
        warped = prep.mapping.to_template(nat.mask.astype(np.float32)) >= 0.5
        row = {
            "spacing": spacing,
            "index": index,
            "native_shape": list(nat.image.shape),
            "axes": nat.info["axes"],
            "lesion_mm3": info["lesion_volume_mm3"],
            "err_vs_pose_mm": _displacement(est, nat.template_to_scanner, pts),
            "err_vs_pose_x_mni_mm": _displacement(est, nat.template_to_scanner @ t_mni, pts),
            "mni_registration_vs_identity_mm": _displacement(t_mni, np.eye(4), pts),
            "dice_template_space": dice(warped, mask > 0),
            "dice_true_pose": dice(_warp_true(nat, template), mask > 0),
            "wall_s": wall,
            "cpu_s": cpu,
            "steps_s": {k: round(v, 3) for k, v in prep.timings.items()},
            "quality": prep.quality.values,
            "warnings": prep.quality.warnings,
        }
        rows.append(row)
        print(
            f"{spacing:g} mm #{index}: err pose {row['err_vs_pose_mm']:.2f} / pose*mni "
            f"{row['err_vs_pose_x_mni_mm']:.2f} mm, Dice {row['dice_template_space']:.3f} "
            f"(true pose {row['dice_true_pose']:.3f}), wall {wall:.1f} s cpu {cpu:.1f} s, "
            f"steps {row['steps_s']}, qc { ({k: round(v, 3) for k, v in row['quality'].items()}) }"
            f"{' WARN ' + '; '.join(row['warnings']) if row['warnings'] else ''}",
            flush=True,
        )
    out: dict = {"subjects": rows}
    for key, sel in _by_spacing(rows):
        out[key] = {
            name: _summary([r[name] for r in sel])
            for name in (
                "err_vs_pose_mm",
                "err_vs_pose_x_mni_mm",
                "dice_template_space",
                "dice_true_pose",
                "wall_s",
                "cpu_s",
            )
        }
        out[key]["steps_s"] = _steps_summary(sel)
        out[key]["quality"] = {
            k: _summary([r["quality"][k] for r in sel]) for k in sel[0]["quality"]
        }
    if rows:  # ITK thread effect: the same registration twice
        _, nat = native_subject(0, args.seed, 2.0)
        a = register_to_template(nat.image, nat.affine, template, options)[1].template_to_native
        b = register_to_template(nat.image, nat.affine, template, options)[1].template_to_native
        out["repeat_max_displacement_mm"] = float(
            np.linalg.norm(transform_points(a, pts) - transform_points(b, pts), axis=1).max()
        )
        print(
            f"repeat ({itk_threads()} ITK threads): max displacement "
            f"{out['repeat_max_displacement_mm']:.2e} mm",
            flush=True,
        )
    if args.n4 and args.n1:
        _, nat = native_subject(0, args.seed, 1.0)
        start = time.perf_counter()
        n4_bias_correction(nat.image, nat.affine)
        out["n4_1mm_wall_s"] = time.perf_counter() - start
        print(f"N4 at 1 mm: {out['n4_1mm_wall_s']:.1f} s", flush=True)
    return out


def section_bad(args, template, reference, options) -> dict:
    out = {}
    for name, (image, affine) in bad_scans(native_subject(1, 5, 2.0)[1]).items():
        start = time.perf_counter()
        prep = prepare_scan(
            image, affine, template, reference, source=f"{name}.nii.gz", registration=options
        )
        out[name] = {
            "quality": prep.quality.values,
            "warnings": prep.quality.warnings,
            "refusal": prep.quality.refusal,
            "wall_s": time.perf_counter() - start,
        }
        print(
            f"{name}: { ({k: round(v, 3) for k, v in prep.quality.values.items()}) }\n"
            f"  warnings: {prep.quality.warnings}\n  refusal: {prep.quality.refusal}",
            flush=True,
        )
    return out


# Refuse nothing (for the comparison variants only).
LAX = Thresholds(
    extent_ratio_refuse=(0.0, np.inf),
    extent_min_ratio_refuse=0.0,
    scale_refuse=(0.0, np.inf),
    correlation_refuse=-np.inf,
    coverage_refuse=0.0,
    shape_error_refuse=np.inf,
    level_error_refuse=np.inf,
)


def load_predictor(ckpt: str):
    """The predictor of a checkpoint with the inference defaults (conf/inference/default.yaml)
    on the CPU, as predict.py builds it."""
    from omegaconf import OmegaConf

    from stroke_seg.config import config_path
    from stroke_seg.inference import Predictor

    options = OmegaConf.load(Path(config_path()) / "inference" / "default.yaml")
    options.device = "cpu"
    return Predictor.from_config(ckpt, options)


def section_e2e(args, template, reference, options) -> dict:
    """predict.py's path (`predict_in_template_space`) on native scans vs the direct path on
    the same subjects in MNI space."""
    predictor = load_predictor(args.ckpt)
    recorded = predictor.preprocessing.intensity_reference
    if recorded is not None:  # the checkpoint's own, as predict.py uses it
        reference = IntensityReference.from_dict(recorded)
    rows = []
    plan = [(2.0, i) for i in range(args.n2)] + [(1.0, i) for i in range(args.n1)]
    for spacing, index in plan:
        _, nat = native_subject(index, args.seed, spacing)
        img, mask, affine, info = generate_subject(index, args.seed, template.spacing[0])
        start = time.perf_counter()
        mni = predictor.predict(img, affine)
        t_mni = time.perf_counter() - start
        # The comparison variants are predicted whatever their checks say (an unstandardised
        # scan in scanner units is refused by prediction: intensity_level_error).
        variants = {"": {}, "_unstandardised": {"standardise_mode": "never", "thresholds": LAX}}
        if args.n4:
            variants["_n4"] = {"n4": True}
        results = {}
        for suffix, extra in variants.items():
            start = time.perf_counter()
            results[suffix] = predict_in_template_space(
                predictor, nat.image, nat.affine, template, reference, registration=options, **extra
            )
            results[suffix].prepared.timings["total"] = time.perf_counter() - start
        plain = results[""]
        if isinstance(plain, PreparedScan):
            raise SystemExit(
                f"subject {index} at {spacing} mm was refused: {plain.quality.refusal}"
            )
        row = {
            "spacing": spacing,
            "index": index,
            "lesion_mm3": info["lesion_volume_mm3"],
            "dsc_mni": dice(mni.mask, mask),
            "dsc_native": dice(plain.mask, nat.mask),
            "dsc_template_space": dice(plain.template_mask, mask),
            **{f"dsc_native{k}": dice(r.mask, nat.mask) for k, r in results.items() if k},
            "max_prob_native": float(plain.prob.max()),
            "steps_s": {k: round(v, 3) for k, v in plain.prepared.timings.items()},
            "mni_inference_s": t_mni,
            "warnings": plain.prepared.quality.warnings,
        }
        if args.n4:
            row["n4_s"] = results["_n4"].prepared.timings.get("n4", float("nan"))
        rows.append(row)
        print(
            f"{spacing:g} mm #{index} ({row['lesion_mm3']:.0f} mm3): DSC MNI {row['dsc_mni']:.3f}"
            f" native {row['dsc_native']:.3f} template {row['dsc_template_space']:.3f} "
            f"unstandardised {row['dsc_native_unstandardised']:.3f}; steps {row['steps_s']}",
            flush=True,
        )
    out: dict = {"subjects": rows}
    for key, sel in _by_spacing(rows):
        diff = [r["dsc_native"] - r["dsc_mni"] for r in sel]
        out[key] = {
            "dsc_mni": _summary([r["dsc_mni"] for r in sel]),
            "dsc_native": _summary([r["dsc_native"] for r in sel]),
            "dsc_template_space": _summary([r["dsc_template_space"] for r in sel]),
            "dsc_native_unstandardised": _summary([r["dsc_native_unstandardised"] for r in sel]),
            **(
                {
                    "dsc_native_n4": _summary([r["dsc_native_n4"] for r in sel]),
                    "n4_minus_plain": _summary([r["dsc_native_n4"] - r["dsc_native"] for r in sel]),
                }
                if args.n4
                else {}
            ),
            "native_minus_mni": _summary(diff),
            "steps_s": _steps_summary(sel),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="registration,bad")
    parser.add_argument("--seed", type=int, default=1, help="subject seed (not 0: training)")
    parser.add_argument("--n2", type=int, default=8, help="subjects at 2 mm")
    parser.add_argument("--n1", type=int, default=2, help="subjects at 1 mm")
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--reference-data", default=None, help="synthetic set for the reference")
    parser.add_argument("--n-reference", type=int, default=20)
    parser.add_argument("--n4", action="store_true", help="also time N4 at 1 mm")
    parser.add_argument("--interpolation", default="linear", help="linear or bSpline")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.seed == 0:
        parser.error("--seed 0 made the training set; use another")
    template = load_template(2.0)
    reference = reference_from(args.reference_data, args.n_reference, template)
    options = RegistrationOptions(interpolation=args.interpolation)
    results: dict = {
        "itk_threads": itk_threads(),
        "seed": args.seed,
        "registration_options": {k: v for k, v in vars(options).items()},
        "reference": reference.to_dict(),
    }
    sections = {"registration": section_registration, "bad": section_bad, "e2e": section_e2e}
    for name in args.sections.split(","):
        if name == "e2e" and not args.ckpt:
            parser.error("--sections e2e needs --ckpt")
        results[name] = sections[name](args, template, reference, options)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
