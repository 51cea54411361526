"""Export a trained model as weights-only safetensors: nothing in it can run code.

``stroke-seg-export ckpt=RUN/checkpoints/last.ckpt out=model.safetensors`` (conf/export.yaml;
``python -m stroke_seg.export`` is the same command)

A Lightning ``.ckpt`` is a pickle. stroke_seg reads it with ``weights_only=True``, so it
cannot run code here, but a model handed to another lab or tool is better shipped in a
format that holds no code by construction: safetensors stores tensors and a string-to-
string metadata table. The network's hyper-parameters, the input preprocessing (intensity
scaling, crop sizes, training spacing) and the threshold go into that table as JSON, so
``predict.py ckpt=model.safetensors`` and ``evaluate.py ckpt=model.safetensors`` rebuild
exactly the model the checkpoint holds. Optimiser state is left out: an exported model
predicts, it does not resume training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stroke_seg.atomic import atomic_path
from stroke_seg.checkpoints import SAFETENSORS_FORMAT
from stroke_seg.errors import StrokeSegError
from stroke_seg.inference import load_model

USAGE = "stroke-seg-export ckpt=PATH.ckpt out=PATH.safetensors [overwrite=true]"


def export_safetensors(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the model of `ckpt` (checked as for prediction) to `out`, atomically."""
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    if not out.name.endswith(".safetensors"):
        raise StrokeSegError(f"out={out} must end in .safetensors.")
    if out.exists() and not overwrite:
        raise StrokeSegError(f"out={out} already exists; pass overwrite=true to replace it.")
    model = load_model(ckpt)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    hparams = {
        "net": model.net_config,
        "preprocessing": model.preprocessing.to_dict(),
        "threshold": model.threshold,
    }
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "hyper_parameters": json.dumps(hparams),
        "exported_from": str(Path(ckpt).expanduser()),
    }
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def run(cfg: Mapping[str, Any]) -> Path:
    """Export as conf/export.yaml (with the command's overrides) says; returns the file."""
    for key in ("ckpt", "out"):
        if not cfg.get(key):
            raise StrokeSegError(f"{key}= is missing; usage: {USAGE}.")
    return export_safetensors(str(cfg["ckpt"]), str(cfg["out"]), bool(cfg["overwrite"]))


if __name__ == "__main__":  # ``python -m stroke_seg.export``: the stroke-seg-export command
    from stroke_seg.cli import export_main

    export_main()
