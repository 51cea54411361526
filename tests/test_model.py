"""ResUNet3D: structure, parameter count, sizes, gradients, checkpointing, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stroke_seg.errors import StrokeSegError
from stroke_seg.models import ResUNet3D
from stroke_seg.models.resunet import ResidualBlock3D

# The paper preset (widths 32/64/128/256, GroupNorm 8) with our 1x1x1 projection shortcuts.
# The notes say "about 18.4 M"; the original's zero-pad shortcut would give 18,438,561.
PAPER_PARAMS = 18_524_609

NARROW = {"widths": (4, 8, 16, 32), "groups": 4}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_preset_parameter_count() -> None:
    model = ResUNet3D()
    n = n_params(model)
    assert n == PAPER_PARAMS
    assert abs(n - 18.4e6) / 18.4e6 < 0.02


def test_paper_preset_structure() -> None:
    model = ResUNet3D()
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock3D)]
    # stem 1 + encoder 3x2 + bottleneck 2 + decoder 2+2+1
    assert len(blocks) == 1 + 6 + 2 + 5
    assert [len(level) for level in model.decoders] == [2, 2, 1]
    assert model.head.out_channels == 1 and model.head.kernel_size == (1, 1, 1)
    assert not any(isinstance(m, nn.Dropout | nn.Dropout3d) for m in model.modules())
    # zero-pad alternative = our count minus the 1x1x1 projections
    proj = sum(m.shortcut.weight.numel() for m in blocks if isinstance(m.shortcut, nn.Conv3d))
    assert PAPER_PARAMS - proj == 18_438_561


def test_init() -> None:
    model = ResUNet3D(**NARROW)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d) and m.bias is not None:
            assert torch.all(m.bias == 0)


def test_head_init_std_and_the_reference_fan_out() -> None:
    # Our Conv3d head: Kaiming normal, linear gain over fan_in = C, std 1/sqrt(C). Pool the
    # head weights of many narrow models (C = 4: std 0.5) to measure it.
    weights = []
    for seed in range(150):
        torch.manual_seed(seed)
        weights.append(ResUNet3D(**NARROW).head.weight.flatten())
    std = torch.cat(weights).std().item()
    assert std == pytest.approx(1 / math.sqrt(4), rel=0.1)
    # The reference's head, a kernel-1 ConvTranspose3d, has PyTorch fan_out = its C input
    # channels, so fan-out ReLU init gives it std sqrt(2 / C) (0.25 at C = 32), not the
    # sqrt(2) that rule gives a Conv3d head (fan-out 1). The docstring's numbers rest on this.
    transposed = nn.ConvTranspose3d(32, 1, kernel_size=1).weight
    conv = nn.Conv3d(32, 1, kernel_size=1).weight
    assert nn.init._calculate_fan_in_and_fan_out(transposed) == (1, 32)
    assert nn.init._calculate_fan_in_and_fan_out(conv) == (32, 1)
    gain = nn.init.calculate_gain("relu")
    assert gain / math.sqrt(32) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 128, 128, 128), (1, 1, 144, 172, 168), (1, 1, 37, 41, 29), (2, 1, 8, 9, 15)],
)
def test_output_shape_matches_input(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = ResUNet3D(**NARROW).eval()
    with torch.no_grad():
        y = model(torch.rand(shape))
    assert y.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(y).all()


def test_depth_follows_widths() -> None:
    model = ResUNet3D(widths=(4, 8), groups=2).eval()
    assert len(model.encoders) == 1 and len(model.decoders) == 1
    with torch.no_grad():
        assert model(torch.rand(1, 1, 5, 6, 7)).shape == (1, 1, 5, 6, 7)


def test_multi_channel_io() -> None:
    model = ResUNet3D(in_channels=2, out_channels=3, widths=(4, 8, 16), groups=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 12, 12, 12)).shape == (1, 3, 12, 12, 12)


def test_gradient_reaches_first_conv() -> None:
    torch.manual_seed(0)
    model = ResUNet3D(**NARROW)
    model(torch.rand(1, 1, 16, 16, 16)).mean().backward()
    grad = model.stem.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_checkpointing_same_output_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    import stroke_seg.models.resunet as resunet

    calls = []
    real_checkpoint = resunet.checkpoint

    def counting_checkpoint(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(resunet, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    plain = ResUNet3D(**NARROW)
    ckpt = ResUNet3D(**NARROW, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 16, 12, 20)
    y_plain, y_ckpt = plain(x), ckpt(x)
    torch.testing.assert_close(y_ckpt, y_plain)
    assert calls == [False] * 14  # every residual block, non-reentrant
    (y_plain**2).mean().backward()
    (y_ckpt**2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    # no_grad inference skips checkpointing and still works
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), y_plain.detach())
    assert len(calls) == 14


def test_groups_must_divide_widths() -> None:
    with pytest.raises(StrokeSegError, match=r"^groups=8 .*widths=\[32, 64, 100, 256\]"):
        ResUNet3D(widths=(32, 64, 100, 256), groups=8)
    with pytest.raises(StrokeSegError, match="^groups=0 must be a positive integer"):
        ResUNet3D(widths=(4, 8), groups=0)


def test_bad_widths_and_inputs() -> None:
    with pytest.raises(StrokeSegError, match="at least 2 levels"):
        ResUNet3D(widths=(32,))
    model = ResUNet3D(**NARROW)
    with pytest.raises(ValueError, match="at least 8"):
        model(torch.rand(1, 1, 7, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        model(torch.rand(1, 2, 16, 16, 16))


def test_from_config() -> None:
    model = ResUNet3D.from_config({"_target_": "x", "widths": [4, 8, 16], "groups": 2})
    assert model.widths == (4, 8, 16) and model.groups == 2
    with pytest.raises(StrokeSegError, match=r"^widhts=\[4, 8\] is not a network option"):
        ResUNet3D.from_config({"widhts": [4, 8]})


# --------------------------------------------------------------------------------------
# model.deep_supervision (off for the paper)
# --------------------------------------------------------------------------------------

# SHA-256 over (name, float32 bytes) of the paper preset's state dict at torch.manual_seed(0),
# computed on the code before deep supervision existed (torch 2.13 CPU). It pins names,
# shapes, order and initial values at once; a torch release that changes its random
# streams would change it too (then recompute it on a commit without the flag).
PAPER_WEIGHTS_SHA256_SEED0 = "d58d613eed32b1a1e49b6374bcc1fe49e422a6949c0dab60a0fc68a39cb299bb"


def _weights_sha256(model: nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def test_deep_supervision_off_keeps_the_paper_weights_names_and_count() -> None:
    torch.manual_seed(0)
    model = ResUNet3D.from_config({"widths": [32, 64, 128, 256], "deep_supervision": False})
    assert n_params(model) == PAPER_PARAMS
    assert _weights_sha256(model) == PAPER_WEIGHTS_SHA256_SEED0
    assert not any("ds_heads" in k for k in model.state_dict())


def test_deep_supervision_adds_heads_after_the_paper_weights() -> None:
    torch.manual_seed(0)
    plain = ResUNet3D(**NARROW).state_dict()
    torch.manual_seed(0)
    ds = ResUNet3D(**NARROW, deep_supervision=True)
    extra = sorted(set(ds.state_dict()) - set(plain))
    assert extra == [f"ds_heads.{i}.{p}" for i in (0, 1) for p in ("bias", "weight")]
    # the paper modules draw from the random state first: identical initial weights
    assert all(torch.equal(ds.state_dict()[k], v) for k, v in plain.items())
    # heads on widths[1] and widths[2]; the head init (linear gain, zero bias)
    assert [h.in_channels for h in ds.ds_heads] == [8, 16]
    assert all(torch.all(h.bias == 0) for h in ds.ds_heads)
    assert n_params(ds) - n_params(ResUNet3D(**NARROW)) == (8 + 1) + (16 + 1)


def test_deep_supervision_outputs_in_training_full_resolution_in_eval() -> None:
    torch.manual_seed(0)
    model = ResUNet3D(**NARROW, deep_supervision=True)
    x = torch.rand(1, 1, 16, 20, 24)
    outs = model.train()(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 20, 24), (8, 10, 12), (4, 5, 6)]
    with torch.no_grad():
        full = model.eval()(x)
    assert isinstance(full, torch.Tensor) and full.shape == (1, 1, 16, 20, 24)
    # the full-resolution output is the plain network's: the heads only add outputs
    torch.manual_seed(0)
    plain = ResUNet3D(**NARROW).eval()
    with torch.no_grad():
        torch.testing.assert_close(full, plain(x), rtol=0, atol=0)


def test_deep_supervision_loss_weights_halve_and_sum_to_one() -> None:
    from monai.losses import DeepSupervisionLoss

    from stroke_seg.losses import BCEDiceLoss, deep_supervision_weights

    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(1) == [1.0]
    torch.manual_seed(0)
    model = ResUNet3D(**NARROW, deep_supervision=True).train()
    x = torch.rand(1, 1, 16, 16, 16)
    target = (torch.rand(1, 1, 16, 16, 16) > 0.7).float()
    outs = model(x)
    base = BCEDiceLoss()
    got = DeepSupervisionLoss(base, weights=deep_supervision_weights(3))(outs, target)
    # by hand: each output against the target resized by nearest neighbour
    parts = [
        base(o, nn.functional.interpolate(target, size=o.shape[2:], mode="nearest-exact"))
        for o in outs
    ]
    want = sum(w * p for w, p in zip([4 / 7, 2 / 7, 1 / 7], parts, strict=True))
    torch.testing.assert_close(got, want)
    got.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.ds_heads)
