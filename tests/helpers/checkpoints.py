"""Checkpoints as training writes them, made without training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers.scans import ZOOM_OUT_PRE

if TYPE_CHECKING:  # torch is imported when a checkpoint is made, not with the helpers
    import torch


def save_module_checkpoint(
    path: Path, preprocessing: dict, widths=(4, 8), seed: int = 0, **extra: object
) -> Path:
    """What Lightning writes for a freshly built LesionSegModule (its state_dict and
    hyper-parameters, plus any ``extra`` keys), without training it."""
    import torch

    from stroke_seg.lit_module import LesionSegModule

    torch.manual_seed(seed)
    module = LesionSegModule(
        net={"widths": list(widths), "groups": 2, "checkpointing": False},
        loss={"bce_weight": 0.1, "dice_weight": 0.9, "smooth": 1.0},
        optim={"lr": 1e-3},
        preprocessing=preprocessing,
    )
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**checkpoint, **extra}, path)
    return path


def zoom_out_checkpoint(path: Path, widths=(4, 8)) -> Path:
    """An untrained zoom-out model of the tiny scans (crop = eval crop = 24x28x20)."""
    return save_module_checkpoint(path, ZOOM_OUT_PRE, widths)


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a training checkpoint."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
