"""The training loss of Tomita et al. (2020): an affine combination of BCE and Dice.

The paper (Methods; details in the unavailable Appendix E2) calls its objective "an affine
combination of the binary cross entropy (BCE) loss function and the Dice loss function
(Milletari et al., 2016)". The weights and the Dice form come from the authors' code
(``docs/paper.md``, section "Loss")::

    L = 0.1 * BCE(logits, g) + 0.9 * (1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps))

with ``p = sigmoid(logits)``, BCE averaged over all voxels, and the Dice sums taken over the
whole batch (batch Dice; with the paper's batch size 1 the same as per-sample Dice). The
reference code's ``eps`` is machine epsilon (``sys.float_info.epsilon``, 2.2e-16), so that is
the default here; ``loss.smooth=1`` is the common "smoothed Dice" and an option. The two differ
on crops without lesion voxels: with eps ~ 0 such a crop's Dice term is 1 whatever the network
does, so it gives no Dice gradient and only the BCE term acts; with eps = 1 the term is
``sum(p) / (sum(p) + 1)`` and keeps pushing the probabilities down (docs/training.md, "Dice
smoothing", has the measured values).

Both terms are computed in float32 whatever the network's precision: under bf16 autocast the
logits arrive in bfloat16, and the Dice sums over ~10^6 voxels would otherwise be rounded to
bfloat16's 8-bit mantissa (on CPU, autocast leaves ``sum``, ``sigmoid`` and the division in
bfloat16; docs/training.md, "bf16"). In float32 training the cast is a no-op, so the loss is
bit-identical to the uncast one.

Implementation: MONAI's ``DiceLoss(sigmoid=True, batch=True, smooth_nr=eps, smooth_dr=eps)``
computes exactly this Dice term for a single output channel (MONAI 1.6 forms the denominator
as ``2 * (tp + fp/2 + fn/2) = sum(p) + sum(g)``; ``tests/test_loss.py`` checks it against
a NumPy hand computation to 1e-6 and against MONAI's own ``DiceCELoss``), and
``torch.nn.BCEWithLogitsLoss`` (mean reduction) is the BCE term that MONAI's ``DiceCELoss``
uses for one channel. We compose the two rather than calling ``DiceCELoss`` so that the two
terms can be logged separately (:meth:`BCEDiceLoss.terms`).
"""

from __future__ import annotations

import math
import sys

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["BCEDiceLoss", "REFERENCE_SMOOTH", "deep_supervision_weights"]

# The Dice smoothing of the authors' code (docs/paper.md, "Loss").
REFERENCE_SMOOTH = sys.float_info.epsilon


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - batch soft Dice)`` on logits.

    Args:
        bce_weight: weight of the voxel-mean binary cross entropy (paper code: 0.1).
        dice_weight: weight of the soft Dice loss (paper code: 0.9).
        smooth: ``eps`` added to both the Dice numerator and denominator. Machine epsilon
            as in the reference code: it keeps the loss defined (and zero) when a batch has
            neither predicted nor true lesion voxels, and adds no Dice gradient on crops
            without lesion. 1.0 (a recipe option) makes such crops push probabilities down.
        batch_dice: Dice sums over the whole batch (the reference code; with its batch size
            1 the same as per-sample). False (an option, not in the paper) averages one Dice
            per crop, as nnU-Net's default does, so that with several crops per step a crop
            with a small lesion weighs as much as one with a large lesion.

    ``forward(logits, target)`` takes logits and a binary target of the same shape
    ``(B, 1, D, H, W)`` and returns a scalar.
    """

    def __init__(
        self,
        bce_weight: float = 0.1,
        dice_weight: float = 0.9,
        smooth: float = REFERENCE_SMOOTH,
        batch_dice: bool = True,
    ) -> None:
        super().__init__()
        for key, value in (("loss.bce_weight", bce_weight), ("loss.dice_weight", dice_weight)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{key}={value} must be a finite number >= 0")
        if bce_weight == 0 and dice_weight == 0:
            raise ValueError(
                "loss.bce_weight and loss.dice_weight are both 0; at least one must be positive"
            )
        if not math.isfinite(smooth) or smooth <= 0:
            raise ValueError(
                f"loss.smooth={smooth} must be a finite number > 0 (it keeps the Dice "
                "defined for batches without lesion voxels)"
            )
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.bce = nn.BCEWithLogitsLoss()
        self.batch_dice = bool(batch_dice)
        self.dice = DiceLoss(
            sigmoid=True, batch=self.batch_dice, smooth_nr=self.smooth, smooth_dr=self.smooth
        )

    def terms(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted ``(bce, dice_loss)`` pair, e.g. for logging."""
        if logits.shape != target.shape:
            raise ValueError(
                f"loss: logits shape {tuple(logits.shape)} and target shape "
                f"{tuple(target.shape)} differ"
            )
        if logits.dim() < 3:
            raise ValueError(
                f"loss: expected (B, C, *spatial) tensors, got shape {tuple(logits.shape)}"
            )
        # float32 sums under bf16/fp16 autocast; float32 (and float64) logits pass untouched.
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        target = target.to(dtype=logits.dtype)
        return self.bce(logits, target), self.dice(logits, target)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce, dice = self.terms(logits, target)
        return self.bce_weight * bce + self.dice_weight * dice

    def extra_repr(self) -> str:
        return (
            f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, "
            f"smooth={self.smooth}, batch_dice={self.batch_dice}"
        )


def deep_supervision_weights(levels: int) -> list[float]:
    """Loss weights of the deep-supervision outputs, finest first (``model.deep_supervision``).

    nnU-Net's scheme (Isensee et al. 2021): each coarser output counts half as much as the
    one above it, and the weights are normalised to sum to 1, so that the loss keeps the
    scale of the single-output loss: 4/7, 2/7, 1/7 for three outputs. Used with MONAI's
    ``DeepSupervisionLoss``, which scores output ``i`` against the target resized to its
    grid by nearest-neighbour interpolation (nnU-Net also down-samples with order 0).
    """
    raw = [0.5**i for i in range(max(1, int(levels)))]
    return [w / sum(raw) for w in raw]
