"""Export a trained model as weights-only safetensors: nothing in it can run code.

``python -m stroke_seg.export ckpt=RUN/checkpoints/last.ckpt out=model.safetensors``

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
import sys
from collections.abc import Sequence
from pathlib import Path

from stroke_seg.checkpoints import SAFETENSORS_FORMAT
from stroke_seg.errors import StrokeSegError, exit_on_user_error
from stroke_seg.inference import load_model
from stroke_seg.report import atomic_path

USAGE = "python -m stroke_seg.export ckpt=PATH.ckpt out=PATH.safetensors [overwrite=true]"


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
        "preprocessing": model.preprocessing,
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


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments (as the Hydra entry points take them): ckpt, out, overwrite."""
    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ("ckpt", "out", "overwrite"):
            raise StrokeSegError(f"{item!r} is not understood; usage: {USAGE}.")
        args[key] = value
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise StrokeSegError(f"{key}= is missing; usage: {USAGE}.")
    if args.get("overwrite", "false").lower() not in ("true", "false"):
        raise StrokeSegError(f"overwrite={args['overwrite']} must be true or false.")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    with exit_on_user_error():
        args = parse_args(sys.argv[1:] if argv is None else argv)
        out = export_safetensors(
            args["ckpt"], args["out"], args.get("overwrite", "false").lower() == "true"
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
