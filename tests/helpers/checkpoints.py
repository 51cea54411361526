"""Checkpoints as training writes them, made without training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers.scans import ZOOM_OUT_PRE

if TYPE_CHECKING:  # torch is imported when a checkpoint is made, not with the helpers
    import torch


def save_module_checkpoint(
    path: Path,
    preprocessing: dict,
    widths=(4, 8),
    seed: int = 0,
    threshold: float = 0.5,
    head_bias: float | None = None,
    **extra: object,
) -> Path:
    """What Lightning writes for a freshly built LesionSegModule (its state_dict and
    hyper-parameters, plus any ``extra`` keys), without training it. `head_bias` sets the
    output layer's bias (e.g. -30: a model that finds nothing anywhere)."""
    import torch

    from stroke_seg.lit_module import LesionSegModule

    torch.manual_seed(seed)
    module = LesionSegModule(
        net={"widths": list(widths), "groups": 2, "checkpointing": False},
        loss={"bce_weight": 0.1, "dice_weight": 0.9, "smooth": 1.0},
        optim={"lr": 1e-3},
        preprocessing=preprocessing,
        threshold=threshold,
    )
    if head_bias is not None:
        with torch.no_grad():
            module.net.head.bias.fill_(head_bias)
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


# The template grid at 2 mm (99x117x95) and a zoom-out crop that fits it, divisible by 8.
TEMPLATE_CROP = (96, 112, 88)


def native_checkpoint(path: Path, n_reference: int = 3, **options: object) -> Path:
    """An untrained zoom-out model of the 2 mm template grid, as training on the synthetic
    set records it: the built-in template and the intensity reference of `n_reference`
    seed-0 synthetic subjects (the demo's training data). `options` go to
    `save_module_checkpoint` (threshold, head_bias)."""
    from stroke_seg.data.synthetic import generate_subject
    from stroke_seg.intensity import compute_reference
    from stroke_seg.registration import DEFAULT_TEMPLATE, load_template

    template = load_template(2.0)
    reference = compute_reference(
        (generate_subject(i, 0, 2.0)[0] for i in range(n_reference)), 2.0, template.brain_mask
    )
    preprocessing = {
        "intensity_mode": "divide",
        "intensity_divisor": 255.0,
        "crop_size": list(TEMPLATE_CROP),
        "eval_crop": list(TEMPLATE_CROP),
        "spacing": [2.0, 2.0, 2.0],
        "grid_shape": list(template.shape),
        "template": DEFAULT_TEMPLATE,
        "intensity_reference": reference.to_dict(),
    }
    return save_module_checkpoint(path, preprocessing, **options)
