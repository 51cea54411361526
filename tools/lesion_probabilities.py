"""Why a model misses lesions: per scan, the probability it gives inside the true lesion and
the DSC at several thresholds (docs/training.md, "What limits the demo").

A missed lesion with probabilities of 0.2-0.4 inside would be a threshold problem (lower
the threshold, chosen on validation data); one with a maximum of 0.01 is a lesion the model
has not learned, which no threshold or post-processing recovers. Scans are sorted by lesion
volume, so the size at which detection fails can be read off.

    python tools/lesion_probabilities.py ckpt=runs/demo/zoom_out/checkpoints/last.ckpt \
        root=data/synthetic_2mm_test
    # a zoom-in checkpoint: mode=centre_crop (sliding windows are slow on a CPU)

Reads ``<root>/**/*_T1w.nii.gz`` and the ATLAS-style ``*_label-L_desc-T1lesion_mask.nii.gz``
beside each; prints one row per scan and the mean DSC per threshold, overall and for
lesions under ``small_ml`` (default 3.7 ml).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_seg.inference import Predictor

THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)


def dsc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 0 when both are empty (no lesion scan has an empty truth)."""
    return float(2 * (pred & truth).sum() / max(int(pred.sum() + truth.sum()), 1))


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    if "ckpt" not in opts or "root" not in opts:
        raise SystemExit("usage: lesion_probabilities.py ckpt=<checkpoint> root=<data folder>")
    predictor = Predictor.from_checkpoints(
        opts["ckpt"].split(","),
        mode=opts.get("mode", "auto"),
        tta=False,
        overlap=0.5,
        device=opts.get("device", "auto"),
        amp=False,
    )
    small_ml = float(opts.get("small_ml", 3.7))
    rows = []
    # glob.glob, not Path.rglob: it follows linked subject folders (Python < 3.13).
    scans = sorted(Path(p) for p in glob.glob(f"{opts['root']}/**/*_T1w.nii.gz", recursive=True))
    if not scans:
        raise SystemExit(f"root={opts['root']} holds no *_T1w.nii.gz scan; point it at a data set.")
    for t1 in scans:
        img = nib.load(t1)
        truth_img = nib.load(str(t1).replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz"))
        truth = np.asarray(truth_img.dataobj) > 0
        prob = predictor.predict(np.asarray(img.dataobj, dtype=np.float32), img.affine).prob
        ml = truth.sum() * float(np.prod(img.header.get_zooms()[:3])) / 1000
        inside = prob[truth] if truth.any() else np.zeros(1)
        rows.append(
            (
                t1.name,
                ml,
                inside.max(),
                np.median(inside),
                [dsc(prob > t, truth) for t in THRESHOLDS],
            )
        )
    rows.sort(key=lambda r: r[1])
    print(
        "scan | lesion ml | max p in lesion | median p in lesion | DSC at "
        + " ".join(map(str, THRESHOLDS))
    )
    for name, ml, pmax, pmed, d in rows:
        print(f"{name} | {ml:.2f} | {pmax:.2f} | {pmed:.2f} | " + " ".join(f"{x:.2f}" for x in d))
    table = np.array([r[4] for r in rows])
    small = np.array([r[1] < small_ml for r in rows], dtype=bool)
    print("mean DSC per threshold, all", len(rows), np.round(table.mean(0), 3).tolist())
    for label, sel in ((f"under {small_ml} ml", small), (f"{small_ml} ml and over", ~small)):
        if sel.any():
            print(
                f"mean DSC per threshold, {label} ({sel.sum()})",
                np.round(table[sel].mean(0), 3).tolist(),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
