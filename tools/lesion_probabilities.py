"""Why a model misses lesions: per scan, the probability it gives inside the true lesion and
the DSC at several thresholds (docs/training.md, "What limits the demo").

A missed lesion with probabilities of 0.2-0.4 inside would be a threshold problem (lower
the threshold, chosen on validation data); one with a maximum of 0.01 is a lesion the model
has not learned, which no threshold or post-processing recovers. Scans are sorted by lesion
volume, so the size at which detection fails can be read off.

    python tools/lesion_probabilities.py ckpt=runs/demo/zoom_out/checkpoints/last.ckpt \
        root=data/synthetic_2mm_test
    # a zoom-in checkpoint: mode=centre_crop (sliding windows are slow on a CPU)
    # another layout: layout=atlas_r12 (default synthetic, i.e. ATLAS v2.0 BIDS)

Scans and masks are found and read as training reads them (`stroke_seg.data.discovery`,
`stroke_seg.data.io.load_case`) and scored with `stroke_seg.metrics.dice`; prints one row
per scan and the mean DSC per threshold, overall and for lesions under ``small_ml``
(default 3.7 ml).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from stroke_seg.data.discovery import discover
from stroke_seg.data.io import load_case
from stroke_seg.metrics import dice

THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class ScanRow:
    scan: str
    lesion_ml: float
    max_inside: float  # the largest probability inside the true lesion
    median_inside: float
    dsc: tuple[float, ...]  # one per THRESHOLDS


def scan_row(
    scan: str, prob: np.ndarray, truth: np.ndarray, voxel_ml: float, thresholds=THRESHOLDS
) -> ScanRow:
    """The probability inside `truth` and the DSC of `prob > t` for each threshold `t`."""
    truth = truth.astype(bool)
    inside = prob[truth] if truth.any() else np.zeros(1, dtype=prob.dtype)
    return ScanRow(
        scan=scan,
        lesion_ml=float(truth.sum()) * voxel_ml,
        max_inside=float(inside.max()),
        median_inside=float(np.median(inside)),
        dsc=tuple(dice(prob > t, truth) for t in thresholds),
    )


def summary(rows: list[ScanRow], small_ml: float) -> dict[str, tuple[int, list[float]]]:
    """Mean DSC per threshold for all scans, those under `small_ml` and the rest:
    {label: (n, means)}."""
    table = np.array([r.dsc for r in rows])
    small = np.array([r.lesion_ml < small_ml for r in rows], dtype=bool)
    out = {"all": (len(rows), table.mean(0).tolist())}
    for label, sel in ((f"under {small_ml} ml", small), (f"{small_ml} ml and over", ~small)):
        if sel.any():
            out[label] = (int(sel.sum()), table[sel].mean(0).tolist())
    return out


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    if "ckpt" not in opts or "root" not in opts:
        raise SystemExit("usage: lesion_probabilities.py ckpt=<checkpoint> root=<data folder>")
    from stroke_seg.inference import Predictor  # torch: only once the arguments are right

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
    for case in discover(opts["root"], opts.get("layout", "synthetic")):
        sample = load_case(case)
        prob = predictor.predict(sample["image"], sample["affine"]).prob
        voxel_ml = float(np.prod(sample["spacing"])) / 1000
        rows.append(scan_row(case.subject, prob, sample["label"] > 0, voxel_ml))
    rows.sort(key=lambda r: r.lesion_ml)
    print(
        "scan | lesion ml | max p in lesion | median p in lesion | DSC at "
        + " ".join(map(str, THRESHOLDS))
    )
    for r in rows:
        print(
            f"{r.scan} | {r.lesion_ml:.2f} | {r.max_inside:.2f} | {r.median_inside:.2f} | "
            + " ".join(f"{x:.2f}" for x in r.dsc)
        )
    for label, (n, means) in summary(rows, small_ml).items():
        print(f"mean DSC per threshold, {label} ({n})", np.round(means, 3).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
