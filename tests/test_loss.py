"""BCEDiceLoss against explicit NumPy formulas and MONAI's DiceCELoss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from stroke_seg.losses import BCEDiceLoss


def hand_terms(logits: np.ndarray, target: np.ndarray, eps: float = 1.0) -> tuple[float, float]:
    """BCE (voxel mean) and batch Dice loss, written out in float64."""
    x = logits.astype(np.float64)
    g = target.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    bce = float(np.mean(-(g * np.log(p) + (1.0 - g) * np.log(1.0 - p))))
    dice = 1.0 - (2.0 * np.sum(p * g) + eps) / (np.sum(p) + np.sum(g) + eps)
    return bce, float(dice)


def sample(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=shape).astype(np.float32)
    target = (rng.random(shape) < 0.3).astype(np.float32)
    return logits, target


def loss_value(loss: BCEDiceLoss, logits: np.ndarray, target: np.ndarray) -> float:
    return float(loss(torch.from_numpy(logits), torch.from_numpy(target)))


def test_matches_hand_computation() -> None:
    logits, target = sample((1, 1, 4, 5, 6))
    bce, dice = hand_terms(logits, target)
    loss = BCEDiceLoss()
    assert loss_value(loss, logits, target) == pytest.approx(0.1 * bce + 0.9 * dice, abs=1e-6)
    t_bce, t_dice = loss.terms(torch.from_numpy(logits), torch.from_numpy(target))
    assert float(t_bce) == pytest.approx(bce, abs=1e-6)
    assert float(t_dice) == pytest.approx(dice, abs=1e-6)


def test_matches_monai_dicece() -> None:
    logits, target = sample((2, 1, 5, 6, 7), seed=1)
    x, g = torch.from_numpy(logits), torch.from_numpy(target)
    ref = DiceCELoss(
        sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0, lambda_dice=0.9, lambda_ce=0.1
    )
    torch.testing.assert_close(BCEDiceLoss()(x, g), ref(x, g))


def test_weights_change_the_result() -> None:
    logits, target = sample((1, 1, 6, 6, 6), seed=2)
    bce, dice = hand_terms(logits, target)
    assert loss_value(BCEDiceLoss(1.0, 0.0), logits, target) == pytest.approx(bce, abs=1e-6)
    assert loss_value(BCEDiceLoss(0.0, 1.0), logits, target) == pytest.approx(dice, abs=1e-6)
    assert loss_value(BCEDiceLoss(0.5, 0.5), logits, target) == pytest.approx(
        0.5 * bce + 0.5 * dice, abs=1e-6
    )
    assert abs(bce - dice) > 1e-3  # so the three checks above are distinct


def test_smooth_is_used() -> None:
    logits, target = sample((1, 1, 3, 3, 3), seed=3)
    _, dice = hand_terms(logits, target, eps=1e-5)
    got = loss_value(BCEDiceLoss(0.0, 1.0, smooth=1e-5), logits, target)
    assert got == pytest.approx(dice, abs=1e-6)


def test_perfect_prediction_has_near_zero_dice() -> None:
    target = np.zeros((1, 1, 8, 8, 8), dtype=np.float32)
    target[..., 2:6, 2:6, 2:6] = 1
    logits = np.where(target > 0, 20.0, -20.0).astype(np.float32)
    loss = BCEDiceLoss()
    bce, dice = loss.terms(torch.from_numpy(logits), torch.from_numpy(target))
    assert float(dice) < 1e-6 and float(bce) < 1e-6
    # an empty target predicted empty is also ~0 thanks to the smoothing
    empty = np.zeros_like(target)
    assert loss_value(loss, np.full_like(target, -20.0), empty) < 1e-6


def test_batch_dice_pools_over_samples() -> None:
    logits, target = sample((2, 1, 4, 4, 4), seed=4)
    target[1] = 0  # second sample has no lesion
    _, dice = hand_terms(logits, target)
    got = loss_value(BCEDiceLoss(0.0, 1.0), logits, target)
    assert got == pytest.approx(dice, abs=1e-6)
    # not the mean of per-sample dice losses
    per_sample = np.mean([hand_terms(logits[i : i + 1], target[i : i + 1])[1] for i in range(2)])
    assert abs(got - per_sample) > 1e-3


def test_gradient_flows_and_int_target() -> None:
    logits, target = sample((1, 1, 4, 4, 4), seed=5)
    x = torch.from_numpy(logits).requires_grad_(True)
    BCEDiceLoss()(x, torch.from_numpy(target).to(torch.uint8)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"bce_weight": -0.1}, "loss.bce_weight"),
        ({"dice_weight": -1.0}, "loss.dice_weight"),
        ({"bce_weight": 0.0, "dice_weight": 0.0}, "loss.bce_weight and loss.dice_weight"),
        ({"smooth": 0.0}, "loss.smooth"),
        ({"dice_weight": float("nan")}, "loss.dice_weight"),
    ],
)
def test_validation(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        BCEDiceLoss(**kwargs)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ"):
        BCEDiceLoss()(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
