"""The training loss of Tomita et al. (2020): an affine combination of BCE and Dice.

The paper (Methods; details in the unavailable Appendix E2) calls its objective "an affine
combination of the binary cross entropy (BCE) loss function and the Dice loss function
(Milletari et al., 2016)". The weights and the Dice form come from the authors' code
(``docs/paper.md``, section "Loss")::

    L = 0.1 * BCE(logits, g) + 0.9 * (1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps))

with ``p = sigmoid(logits)``, BCE averaged over all voxels, and the Dice sums taken over the
whole batch (batch Dice; with the paper's batch size 1 the same as per-sample Dice).

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

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["BCEDiceLoss"]


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - batch soft Dice)`` on logits.

    Args:
        bce_weight: weight of the voxel-mean binary cross entropy (paper code: 0.1).
        dice_weight: weight of the soft Dice loss (paper code: 0.9).
        smooth: ``eps`` added to both the Dice numerator and denominator. 1.0 as in the
            reference code; it keeps the loss defined (and zero) when a batch has neither
            predicted nor true lesion voxels, and, being small next to the thousands of
            lesion voxels of a typical scan, barely changes the Dice of non-empty batches.

    ``forward(logits, target)`` takes logits and a binary target of the same shape
    ``(B, 1, D, H, W)`` and returns a scalar.
    """

    def __init__(
        self, bce_weight: float = 0.1, dice_weight: float = 0.9, smooth: float = 1.0
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
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=self.smooth, smooth_dr=self.smooth)

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
        target = target.to(dtype=logits.dtype)
        return self.bce(logits, target), self.dice(logits, target)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce, dice = self.terms(logits, target)
        return self.bce_weight * bce + self.dice_weight * dice

    def extra_repr(self) -> str:
        return f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, smooth={self.smooth}"
