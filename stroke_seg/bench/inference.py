"""Section ``inference``: seconds per full 197x233x189 scan with the paper preset, centre
crop and sliding window (`stroke_seg.inference.Predictor`), with the other options (test-time
augmentation, overlap, autocast) of the ``inference`` config group that evaluate.py and
predict.py use (conf/inference/default.yaml)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from stroke_seg.bench.machine import synchronize
from stroke_seg.bench.presets import FULL_SCAN, FULL_SPACING, QUICK_SCAN, input_scaling
from stroke_seg.bench.probe import count_train_flops


def bench_inference(
    device: torch.device,
    presets: dict,
    quick: bool,
    log: Callable[[str], None],
    inference: Mapping[str, Any],
) -> dict[str, Any]:
    """Seconds per full scan, centre crop and sliding window, with the paper preset and the
    `inference` options (mode and device set here)."""
    from stroke_seg.data.preprocessing import Preprocessing
    from stroke_seg.inference import LoadedModel, Predictor
    from stroke_seg.models import ResUNet3D

    p = presets["paper"]
    shape = QUICK_SCAN if quick else FULL_SCAN
    torch.manual_seed(0)
    net = ResUNet3D(widths=tuple(p["widths"]), groups=p["groups"]).eval()
    # What a paper-preset zoom-out checkpoint carries: the paper's /255 scaling from the
    # composed config, its two crops, the 1 mm ATLAS grid (the scan's own shape).
    pre = Preprocessing(
        **input_scaling("paper"),
        crop_size=p["crops"]["zoom_in"],
        eval_crop=p["crops"]["zoom_out"],
        spacing=FULL_SPACING,
        grid_shape=shape,
    )
    model = LoadedModel(net, pre, 0.5, "bench")
    volume = (np.random.default_rng(0).random(shape, dtype=np.float32) * 255).astype(np.float32)
    affine = np.eye(4)
    out: dict[str, Any] = {"preset": "paper", "scan_shape": list(shape), "device": str(device)}
    for mode in ("centre_crop", "sliding_window"):
        predictor = Predictor([model], **{**inference, "mode": mode, "device": str(device)})
        if device.type == "cuda":  # the first call builds cuDNN plans
            predictor.predict(volume, affine)
        start = time.perf_counter()
        result = predictor.predict(volume, affine)
        synchronize(device)
        seconds = time.perf_counter() - start
        out[f"{mode}_s"] = seconds
        log(f"  inference {mode}: {seconds:.1f} s per scan ({result.mode})")
    flops = count_train_flops(p["widths"], p["groups"], p["crops"]["zoom_out"])["forward"]
    out["centre_crop_forward_flops"] = flops
    out["centre_crop_achieved_flops"] = flops / out["centre_crop_s"]
    out["sliding_window_roi"] = p["crops"]["zoom_in"]
    out["sliding_window_overlap"] = predictor.overlap
    if device.type != "cuda":
        out["amp"] = "off (CPU)"
    else:
        out["amp"] = "float16 autocast" if predictor.amp else "off"
    return out
