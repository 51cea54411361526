"""Reading checkpoints safely and handing weights from one stage to the next.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain data
are unpickled, so a checkpoint from elsewhere cannot run code on load. Exported models
(``.safetensors``, `stroke_seg.export`) hold no pickle at all: tensors plus JSON metadata.
The zoom-out stage starts from the zoom-in weights (paper Sec. 2.3); the reference code
copied whatever names and shapes matched and silently skipped the rest, which hides a
wrong checkpoint.
Here every tensor must match, or the run stops with a message saying what differs.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stroke_seg.errors import StrokeSegError


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """Load a Lightning checkpoint as plain data, or explain in one sentence why not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StrokeSegError(f"{key}={path} does not exist; pass the path of a .ckpt file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message spans many lines; keep the one that names the refused object.
        what = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
        raise StrokeSegError(
            f"{key}={path} holds more than tensors and plain data, so it was not loaded "
            f"(it could run code); only checkpoints written by stroke_seg are accepted"
            + (f" [{what}]" if what else "")
            + "."
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types on corrupt files
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise StrokeSegError(f"{key}={path} is not a readable checkpoint ({first_line}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise StrokeSegError(f"{key}={path} is not a Lightning checkpoint (no state_dict).")
    return ckpt


SAFETENSORS_FORMAT = "stroke_seg/1"


def read_safetensors(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """Load an exported model as ``{"state_dict", "hyper_parameters"}``, the shape of a
    Lightning checkpoint, from its tensors and its JSON metadata (no code can run)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise StrokeSegError(f"{key}={path} does not exist; pass the path of a .safetensors file.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - safetensors raises its own and OS errors
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise StrokeSegError(
            f"{key}={path} is not a readable safetensors file ({first_line})."
        ) from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise StrokeSegError(
            f"{key}={path} was not exported by stroke_seg (metadata format "
            f"{meta.get('format')!r}, expected {SAFETENSORS_FORMAT!r}); export it with "
            "python -m stroke_seg.export."
        )
    try:
        hparams = json.loads(meta["hyper_parameters"])
    except (KeyError, json.JSONDecodeError) as err:
        raise StrokeSegError(
            f"{key}={path} has no readable hyper_parameters metadata ({err})."
        ) from None
    return {"state_dict": state, "hyper_parameters": hparams}


def weight_differences(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """How ``state`` differs from a model's own state dict, as one clause ('' if it fits).

    Shared by the stage hand-off and inference, which both refuse any partial load.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    detail = []
    if mismatched:
        k = mismatched[0]
        detail.append(
            f"{len(mismatched)} tensors differ in shape (first {k}: "
            f"{tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model)"
        )
    if missing:
        detail.append(f"{len(missing)} weights of the model are absent (first {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} weights are not in the model (first {unexpected[0]})")
    return "; ".join(detail)


def load_matching_weights(module: nn.Module, path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """Copy every weight of the checkpoint into ``module``; refuse any difference.

    Returns the checkpoint's hyper-parameters (for the record of the run).
    """
    ckpt = read_checkpoint(path, key)
    state = ckpt["state_dict"]
    differences = weight_differences(module.state_dict(), state)
    if differences:
        theirs = ckpt.get("hyper_parameters", {}).get("net")
        ours = getattr(module, "hparams", {}).get("net")
        hint = (
            f"; it was trained with model={dict(theirs)} but this run builds model={dict(ours)}"
            if theirs is not None and ours is not None and dict(theirs) != dict(ours)
            else ""
        )
        raise StrokeSegError(
            f"{key}={path} does not fit this model: {differences}{hint}. "
            "Use a checkpoint of the same model config (e.g. the zoom-in run's "
            "checkpoints/last.ckpt)."
        )
    module.load_state_dict(state, strict=True)
    return dict(ckpt.get("hyper_parameters", {}))
