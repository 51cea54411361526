"""The 3D residual U-Net ("3D-ResU-Net") of Tomita et al. (2020), Fig. 1.

The paper describes the network only as a figure (Fig. 1: residual blocks, down-sampling
blocks, up-sampling blocks, GroupNorm inside the residual block) and defers the details to
an appendix that is not available. The structure below follows the facts collected in
``docs/paper.md`` (section "Network"), which were read from the authors'
public code:

* 4 resolution levels with widths 32, 64, 128, 256 (full, 1/2, 1/4, 1/8 resolution);
* encoder: a stem residual block ``in -> 32``, then per level
  ``MaxPool3d(2) -> block(C -> 2C) -> block(2C -> 2C)``;
* bottleneck at 1/8 resolution: two *more* residual blocks at 256 channels (on top of the
  two encoder blocks of that level);
* decoder: per level ``ConvTranspose3d(k=2, s=2) + GroupNorm + ReLU (2C -> C)``, concat with
  the encoder skip, ``block(2C -> C) -> block(C -> C)``; the last (full-resolution) level has
  a single block;
* head: a 1x1x1 convolution to one logit channel; no dropout.

With these readings the paper preset has 18,524,609 parameters (18,438,561 with the
original's parameter-free zero-pad/truncate shortcut instead of our 1x1x1 projections),
matching docs/paper.md's "about 18.4 M". Dropping the two bottleneck blocks gives 11.4 M and
keeping only one gives 15.0 M, so the "two more" blocks are extra blocks, not the encoder's.

The paper calls this a "52-layer" model; no way of counting the layers of this structure
(convolutions, with or without the transposed convolutions, the head, the norms) gives
exactly 52, so we do not try to reproduce that number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stroke_seg.errors import option_error

__all__ = ["ResidualBlock3D", "ResUNet3D"]


def _check_groups(channels: int, groups: int, what: str) -> None:
    if channels % groups != 0:
        raise option_error(
            "groups", groups, f"must divide every width, but {what} has {channels} channels."
        )


class ResidualBlock3D(nn.Module):
    """Pre-activation residual block of Fig. 1(b), with GroupNorm for batch size 1.

    ``y = shortcut(x) + ReLU(GN(conv(ReLU(GN(conv(ReLU(x)))))))``, convolutions 3x3x3 with
    padding 1 (size preserving). GroupNorm instead of BatchNorm because the paper trains
    with one volume per batch, where batch statistics are meaningless (Fig. 1 caption).

    Shortcut when ``in_channels != out_channels``: a learned 1x1x1 convolution (no bias).
    The authors' code instead zero-pads (more channels) or truncates (fewer channels) the
    identity, which has no parameters. The notes accept either; the projection is the usual
    clean equivalent (He et al. 2016, option B) and, unlike truncation, lets every input
    channel reach the output through the short path. It costs 86,048 parameters (0.5 %) in
    the paper preset. When the channel count is unchanged the shortcut is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8) -> None:
        super().__init__()
        _check_groups(out_channels, groups, f"a residual block ({in_channels}->{out_channels})")
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        out = F.relu(self.norm1(out))
        out = self.conv2(out)
        out = F.relu(self.norm2(out))
        return out + self.shortcut(x)


class _UpBlock(nn.Module):
    """Up-sampling block of Fig. 1: ConvTranspose3d(k=2, s=2) + GroupNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        _check_groups(out_channels, groups, f"an up-sampling block ({in_channels}->{out_channels})")
        self.conv = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResUNet3D(nn.Module):
    """3D residual U-Net of Tomita et al. (2020), Fig. 1; see the module docstring.

    Args:
        in_channels: input channels (1: a T1-weighted volume).
        out_channels: output logit channels (1: lesion vs background, sigmoid outside).
        widths: channels per resolution level, full resolution first. The number of levels
            is ``len(widths)`` (at least 2), so depth is set by this list; the paper preset
            is ``(32, 64, 128, 256)``. Any spatial dimension of the input must be at least
            ``2 ** (len(widths) - 1)``.
        groups: GroupNorm groups (paper: 8); must divide every width.
        checkpointing: recompute the residual blocks' activations in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) instead of storing them: the same
            result and gradients for less memory and about one more forward pass of time.
            Full-volume crops (144x172x168) at paper widths need this on smaller GPUs.
        deep_supervision: nnU-Net-style deep supervision (not in the paper): a 1x1x1 logit
            head on every decoder level below full resolution. In training mode ``forward``
            then returns the list ``[full, 1/2, 1/4, ...]`` of logits, finest first, which
            MONAI's ``DeepSupervisionLoss`` scores against down-sampled targets with the
            weights of `stroke_seg.losses.deep_supervision_weights`; in
            eval mode (validation, inference, export) it returns the full-resolution logits
            only. Off (the paper), the network has exactly the paper preset's modules,
            names, parameter count and, at a given seed, initial weights: the extra heads are
            created after every paper module, so they draw from the random state last.

    Input sizes need not be divisible by ``2 ** (levels - 1)``: max-pooling floors odd
    sizes, and when an up-sampled map is then smaller than its skip it is resized
    trilinearly to the skip's size, as the original code does (docs/paper.md "Network": 172 is not
    divisible by 8, so the 144x172x168 crop hits this case).

    The constructor takes plain data only, so Lightning's ``save_hyperparameters`` and Hydra
    configs can rebuild the model from a checkpoint.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        groups: int = 8,
        checkpointing: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        # Errors name this constructor's parameters (groups=8); the training task puts them
        # under the config section (model.groups=8).
        if len(widths) < 2:
            raise option_error(
                "widths",
                list(widths),
                "must list at least 2 levels (full resolution first), e.g. [32, 64, 128, 256].",
            )
        if any(w <= 0 for w in widths):
            raise option_error("widths", list(widths), "must all be positive.")
        if int(groups) <= 0:
            raise option_error("groups", groups, "must be a positive integer.")
        for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value <= 0:
                raise option_error(key, value, "must be positive.")
        bad = [w for w in widths if w % groups != 0]
        if bad:
            raise option_error(
                "groups",
                groups,
                f"must divide every width in widths={list(widths)}; it does not divide {bad}.",
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.widths = widths
        self.groups = int(groups)
        self.checkpointing = bool(checkpointing)
        self.deep_supervision = bool(deep_supervision)

        g = self.groups
        self.stem = ResidualBlock3D(in_channels, widths[0], g)
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        # encoder level i (1..L-1): pool, then block(w[i-1] -> w[i]), block(w[i] -> w[i])
        self.encoders = nn.ModuleList(
            nn.ModuleList(
                [
                    ResidualBlock3D(widths[i - 1], widths[i], g),
                    ResidualBlock3D(widths[i], widths[i], g),
                ]
            )
            for i in range(1, len(widths))
        )
        # two extra blocks at the deepest level (docs/paper.md "Network")
        self.bottleneck = nn.ModuleList(
            [ResidualBlock3D(widths[-1], widths[-1], g), ResidualBlock3D(widths[-1], widths[-1], g)]
        )
        # decoder, deepest first: up(w[i] -> w[i-1]), concat skip, block(2w[i-1] -> w[i-1]),
        # then block(w[i-1] -> w[i-1]) except at full resolution (i == 1)
        self.ups = nn.ModuleList(
            _UpBlock(widths[i], widths[i - 1], g) for i in range(len(widths) - 1, 0, -1)
        )
        self.decoders = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            c = widths[i - 1]
            blocks = [ResidualBlock3D(2 * c, c, g)]
            if i != 1:
                blocks.append(ResidualBlock3D(c, c, g))
            self.decoders.append(nn.ModuleList(blocks))
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)
        self._init_weights()
        if self.deep_supervision:
            # One head per decoder level below full resolution, finest first: widths[1],
            # ..., widths[-2] channels (the bottleneck level has no decoder output). Built
            # and initialised after the paper modules, so those keep their seeded weights.
            self.ds_heads = nn.ModuleList(
                nn.Conv3d(widths[i], out_channels, kernel_size=1) for i in range(1, len(widths) - 1)
            )
            for head in self.ds_heads:
                nn.init.kaiming_normal_(head.weight, mode="fan_in", nonlinearity="linear")
                nn.init.zeros_(head.bias)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ResUNet3D:
        """Build from a config mapping with (a subset of) the constructor's keys.

        Unknown keys (other than Hydra's ``_target_`` and a ``name``) are refused with an
        error naming the first, so a typo in ``widhts`` does not silently fall back to the
        default.
        """
        known = {"in_channels", "out_channels", "widths", "groups", "checkpointing"}
        known.add("deep_supervision")
        unknown = sorted(set(cfg) - known - {"_target_", "name"})
        if unknown:
            raise option_error(
                unknown[0],
                cfg[unknown[0]],
                f"is not a network option; use some of {', '.join(sorted(known))}.",
            )
        kwargs = {k: cfg[k] for k in known if k in cfg}
        if "widths" in kwargs:
            kwargs["widths"] = tuple(kwargs["widths"])
        return cls(**kwargs)

    def _init_weights(self) -> None:
        """Kaiming-normal convolutions (docs/paper.md), zero biases, GroupNorm weight 1 bias 0.

        Hidden convolutions feed ReLUs, so they use He init (``fan_out``, gain for ReLU, as
        torchvision's ResNets). The head feeds a sigmoid, not a ReLU, so it uses Kaiming
        normal with linear gain over ``fan_in`` = C = 32: std 1/sqrt(32) = 0.177.

        The reference code's head is a ``ConvTranspose3d`` (kernel 1) with the same fan-out
        ReLU init. PyTorch reads a transposed convolution's weight as (in, out, k...), so its
        "fan_out" there is the 32 input channels: std sqrt(2/32) = 0.25, sqrt(2) times ours.
        Only on our ``Conv3d`` head would that rule see fan-out 1 and give std sqrt(2) = 1.41.
        Initial logit std at paper widths on a 32^3 random input (mean over 200 head draws on
        the same features): 1.13 with ours, 1.58 with the reference's 0.25, 9.0 with 1.41.
        So the linear gain is our choice, not a fix: the reference started unsaturated too,
        with logits sqrt(2) wider; both presets here share this init.
        Deep-supervision heads are initialised like the head, in the constructor after this.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                if m is self.head:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Map ``(B, in_channels, D, H, W)`` to logits ``(B, out_channels, D, H, W)``
        (with deep supervision in training mode: a list of logits, finest first)."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResUNet3D expects input of shape (B, {self.in_channels}, D, H, W), "
                f"got {tuple(x.shape)}"
            )
        min_size = 2 ** (len(self.widths) - 1)
        if min(x.shape[2:]) < min_size:
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} is too small for "
                f"{len(self.widths)} levels: every dimension must be at least {min_size}"
            )
        x = self._block(self.stem, x)
        skips = [x]
        for level in self.encoders:
            x = self.pool(x)
            for block in level:
                x = self._block(block, x)
            skips.append(x)
        for block in self.bottleneck:
            x = self._block(block, x)
        skips.pop()  # the deepest level is the bottleneck itself, not a skip
        supervise = self.deep_supervision and self.training
        coarse: list[torch.Tensor] = []  # decoder outputs below full resolution, coarsest first
        for up, level in zip(self.ups, self.decoders, strict=True):
            skip = skips.pop()
            x = up(x)
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = torch.cat([skip, x], dim=1)
            for block in level:
                x = self._block(block, x)
            if supervise and skips:
                coarse.append(x)
        if not supervise:
            return self.head(x)
        # ds_heads[i] sits at widths[i + 1] channels, i.e. 1 / 2 ** (i + 1) resolution
        return [self.head(x)] + [h(f) for h, f in zip(self.ds_heads, coarse[::-1], strict=True)]
