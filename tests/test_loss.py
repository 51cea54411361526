"""BCEDiceLoss against explicit NumPy formulas and MONAI's DiceCELoss."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from stroke_seg.losses import REFERENCE_SMOOTH, BCEDiceLoss


def hand_terms(
    logits: np.ndarray, target: np.ndarray, eps: float = REFERENCE_SMOOTH
) -> tuple[float, float]:
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
    for eps in (1.0, REFERENCE_SMOOTH):
        ref = DiceCELoss(
            sigmoid=True, batch=True, smooth_nr=eps, smooth_dr=eps, lambda_dice=0.9, lambda_ce=0.1
        )
        torch.testing.assert_close(BCEDiceLoss(smooth=eps)(x, g), ref(x, g))


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
    # an empty target predicted empty is also ~0 with eps = 1 ...
    empty = np.zeros_like(target)
    assert loss_value(BCEDiceLoss(smooth=1.0), np.full_like(target, -20.0), empty) < 1e-6
    # ... but with the reference code's eps ~ 0 its Dice term is 1 (constant, no gradient),
    # however empty the prediction: the loss is the Dice weight
    assert loss_value(loss, np.full_like(target, -20.0), empty) == pytest.approx(0.9, abs=1e-6)


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


# --------------------------------------------------------------------------------------
# Dice smoothing (the reference code's machine epsilon) and float32 loss under autocast
# --------------------------------------------------------------------------------------


def test_default_smooth_is_the_reference_codes_machine_epsilon() -> None:
    assert REFERENCE_SMOOTH == sys.float_info.epsilon
    assert BCEDiceLoss().smooth == sys.float_info.epsilon
    logits, target = sample((1, 1, 4, 5, 6), seed=6)
    _, dice_eps = hand_terms(logits, target, eps=sys.float_info.epsilon)
    _, dice_one = hand_terms(logits, target, eps=1.0)
    got = loss_value(BCEDiceLoss(0.0, 1.0), logits, target)
    assert got == pytest.approx(dice_eps, abs=1e-6)
    assert abs(dice_one - dice_eps) > 1e-3  # so the default is not eps = 1


def _empty_crop_dice(smooth: float, logit: float, autocast: bool) -> tuple[float, float]:
    """Dice term and mean |d Dice / d logit| on a 32^3 crop without lesion voxels."""
    x = torch.full((1, 1, 32, 32, 32), logit, requires_grad=True)
    target = torch.zeros(1, 1, 32, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = x.to(torch.bfloat16) if autocast else x
        _, dice = BCEDiceLoss(smooth=smooth).terms(logits, target)
    dice.backward()
    return float(dice.detach()), float(x.grad.abs().mean())


@pytest.mark.parametrize("autocast", [False, True])
def test_empty_crop_gives_dice_gradient_with_eps_one_only(autocast: bool) -> None:
    """eps = 1: Dice = sum(p) / (sum(p) + 1) keeps pushing p down on a lesion-free crop;
    eps = machine epsilon: Dice = 1 whatever p, no gradient (docs/training.md)."""
    n, logit = 32**3, -9.0
    p = float(torch.sigmoid(torch.tensor(logit)))
    value, grad = _empty_crop_dice(1.0, logit, autocast)
    assert value == pytest.approx(n * p / (n * p + 1), rel=1e-3)
    # d/dx_i [S / (S + 1)] = p (1 - p) / (S + 1)^2
    assert grad == pytest.approx(p * (1 - p) / (n * p + 1) ** 2, rel=2e-2)
    value, grad = _empty_crop_dice(REFERENCE_SMOOTH, logit, autocast)
    assert value == 1.0 and grad < 1e-20


def test_float32_loss_is_bit_identical_to_the_uncast_composition() -> None:
    """The float32 cast is a no-op in float32 training: same value, same gradient, bits."""
    logits, target = sample((1, 1, 6, 7, 8), seed=7)
    x1 = torch.from_numpy(logits).requires_grad_(True)
    x2 = torch.from_numpy(logits.copy()).requires_grad_(True)
    g = torch.from_numpy(target)
    ours = BCEDiceLoss()(x1, g)
    dice = DiceLoss(
        sigmoid=True, batch=True, smooth_nr=REFERENCE_SMOOTH, smooth_dr=REFERENCE_SMOOTH
    )
    plain = 0.1 * torch.nn.BCEWithLogitsLoss()(x2, g) + 0.9 * dice(x2, g)
    assert ours.dtype == torch.float32 and torch.equal(ours, plain)
    ours.backward()
    plain.backward()
    assert torch.equal(x1.grad, x2.grad)


def test_loss_runs_in_float32_under_bf16_autocast() -> None:
    """bf16 logits: the loss equals the float32 loss of the same (rounded) logits exactly;
    without the cast MONAI's Dice sums would come out in bfloat16."""
    logits, target = sample((1, 1, 16, 16, 16), seed=8)
    x = torch.from_numpy(logits).to(torch.bfloat16)
    g = torch.from_numpy(target)
    loss = BCEDiceLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bce, dice = loss.terms(x, g)
        total = loss(x, g)
        uncast = DiceLoss(sigmoid=True, batch=True)(x, g.to(torch.bfloat16))
    assert bce.dtype == dice.dtype == total.dtype == torch.float32
    assert uncast.dtype == torch.bfloat16  # what the cast avoids
    ref_bce, ref_dice = loss.terms(x.float(), g)
    assert torch.equal(bce, ref_bce) and torch.equal(dice, ref_dice)


def test_per_sample_dice_is_the_mean_of_each_crops_dice() -> None:
    """loss.batch_dice=false: one Dice per crop, averaged, against a NumPy hand computation;
    the batch Dice (the paper's) pools the sums and lets the large lesion dominate."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (2, 1, 8, 8, 8)).astype(np.float32)
    target = np.zeros_like(logits)
    target[0, 0, :6, :6, :6] = 1  # a large lesion
    target[1, 0, 3:5, 3:5, 3:5] = 1  # a small one
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def dice(pp, gg):
        return (2 * (pp * gg).sum() + 1.0) / (pp.sum() + gg.sum() + 1.0)

    x, g = torch.from_numpy(logits), torch.from_numpy(target)
    per_sample = float(BCEDiceLoss(0.0, 1.0, smooth=1.0, batch_dice=False)(x, g))
    pooled = float(BCEDiceLoss(0.0, 1.0, smooth=1.0, batch_dice=True)(x, g))
    want_per_sample = 1.0 - np.mean([dice(p[i], target[i]) for i in range(2)])
    want_pooled = 1.0 - dice(p, target)
    assert per_sample == pytest.approx(want_per_sample, abs=1e-6)
    assert pooled == pytest.approx(want_pooled, abs=1e-6)
    assert abs(per_sample - pooled) > 0.01
    # with one crop per batch the two are the same loss
    one = (x[:1], g[:1])
    assert float(BCEDiceLoss(smooth=1.0, batch_dice=False)(*one)) == pytest.approx(
        float(BCEDiceLoss(smooth=1.0, batch_dice=True)(*one)), abs=1e-7
    )
