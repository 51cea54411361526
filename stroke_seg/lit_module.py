"""The LightningModule: residual 3D U-Net + BCE/Dice loss + Adam with warm-restart cosine.

Hyper-parameters are plain data (dicts of numbers and lists) saved into every checkpoint,
so that inference can rebuild the network and its input scaling from the checkpoint alone.

Speed options (``conf/speed/default.yaml``, docs/benchmarks.md) change how the network runs,
not its weights: channels-last memory layout and ``torch.compile`` are applied in
`LesionSegModule.configure_model`, so checkpoints keep the plain parameter names and load
into inference and into the next stage unchanged. bf16 autocast is Lightning's
``trainer.precision=bf16-mixed``; activation checkpointing is ``model.checkpointing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from monai.losses import DeepSupervisionLoss
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from torchmetrics import MeanMetric

from stroke_seg.errors import check_keys, config_section
from stroke_seg.losses import BCEDiceLoss, deep_supervision_weights
from stroke_seg.models import ResUNet3D

SPEED_KEYS = ("channels_last", "compile", "compile_mode")
# Adam + CosineAnnealingWarmRestarts (paper Table 1). Every key is required: the values live in
# conf/optim/adam_cosine.yaml only (weight decay 1e-4, restarts every 50 epochs, eta_min 0).
OPTIM_KEYS = ("lr", "weight_decay", "restart_period_epochs", "eta_min")


def full_volume_dice(
    pred: torch.Tensor, label: torch.Tensor, label_total: torch.Tensor
) -> torch.Tensor:
    """DSC of a prediction on a centre crop scored against the WHOLE reference mask.

    The paper classifies every voxel outside the evaluation crop as negative (Sec. 2.4), so
    lesion voxels outside the crop are false negatives: DSC = 2·TP / (|P| + |G_full|).
    Both empty counts as 1. Works per sample over a batch (dims 1..).
    """
    dims = tuple(range(1, pred.ndim))
    tp = (pred * label).sum(dim=dims)
    denom = pred.sum(dim=dims) + label_total.to(pred.dtype)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-8), torch.ones_like(denom))


class LesionSegModule(pl.LightningModule):
    """Tomita et al. (2020) 3D-ResU-Net training: Sec. 2.2-2.4, Table 1.

    `net` is the `ResUNet3D` config (``conf/model/``), `optim` the optimiser's
    (`OPTIM_KEYS`, all required, checked when training starts), `speed` the speed options
    (`SPEED_KEYS`). Errors name the entry under its parameter (``speed.compile``); the
    network's own errors name the network's parameter (``groups``), and the training task
    puts them under ``model.``.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any],
        preprocessing: Mapping[str, Any] | None = None,
        stage: str = "zoom_in",
        threshold: float = 0.5,
        speed: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = ResUNet3D.from_config(net)
        self.loss_fn = BCEDiceLoss(**loss)
        # model.deep_supervision: in training the network returns one output per decoder
        # level; this scores them all (validation sees the full-resolution output only).
        levels = len(self.net.widths) - 1 if self.net.deep_supervision else 1
        self.ds_loss = DeepSupervisionLoss(self.loss_fn, weights=deep_supervision_weights(levels))
        self.optim_cfg = dict(optim)
        self.threshold = threshold
        with config_section("speed"):
            self.speed = check_speed(speed)
        self._speed_applied = False
        # Epoch means over all validation scans of all ranks: torchmetrics reduces sums and
        # counts across processes, so under DDP with shards of unequal size val/dsc is still
        # the mean over scans (a mean of per-rank means would not be).
        self.train_loss = MeanMetric()
        self.val_dsc = MeanMetric()
        self.val_loss = MeanMetric()
        # The first validation case of the epoch, kept for pictures (ValidationPicture).
        self.val_example: dict[str, torch.Tensor] | None = None

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def configure_model(self) -> None:
        """Apply the speed options once, before the strategy wraps the model (Lightning hook).

        channels-last: parameters and (in `forward`) inputs in ``torch.channels_last_3d``
        layout, which oneDNN / cuDNN convolutions may run faster. compile: ``nn.Module.compile``
        compiles the network in place, so ``state_dict`` names stay ``net.*``.
        """
        if self._speed_applied:
            return
        if self.speed["channels_last"]:
            self.net.to(memory_format=torch.channels_last_3d)
        if self.speed["compile"]:
            self.net.compile(mode=self.speed["compile_mode"])
        self._speed_applied = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.speed["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        if isinstance(logits, list):  # deep supervision: [full, 1/2, 1/4, ...]
            loss = self.ds_loss(logits, batch["label"].float())
        else:
            loss = self.loss_fn(logits, batch["label"].float())
        bs = batch["image"].shape[0]
        # The step value is this process's own; the epoch mean is a metric object, reduced over
        # the processes once per epoch under DDP (not an all-reduce every step).
        self.train_loss.update(loss.detach().float(), weight=bs)
        self.log("train/loss_step", loss.detach(), on_step=True, prog_bar=True, batch_size=bs)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, label = batch["image"], batch["label"].float()
        logits = self(image)
        loss = self.loss_fn(logits, label)
        prob = torch.sigmoid(logits)
        pred = (prob > self.threshold).float()
        dsc = full_volume_dice(pred, label, batch["label_total"])
        bs = image.shape[0]
        self.val_loss.update(loss.detach().float(), weight=bs)
        self.val_dsc.update(dsc.float())
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, batch_size=bs)
        self.log(
            "val/dsc", self.val_dsc, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs
        )
        if batch_idx == 0:
            self.val_example = {
                "subject": batch["subject"][0],
                "image": image[0, 0].detach().cpu(),
                "label": label[0, 0].detach().cpu(),
                "prob": prob[0, 0].detach().float().cpu(),
            }

    def configure_optimizers(self) -> dict:
        """Adam with coupled L2 weight decay and CosineAnnealingWarmRestarts stepped every
        iteration with a period of ``restart_period_epochs`` epochs (Table 1; the library
        scheduler replaces the reference code's restart trick, which collapses the LR to ~0
        on modern PyTorch; docs/paper.md, "Optimisation")."""
        with config_section("optim"):
            cfg = check_optim(self.optim_cfg)
        optimizer = torch.optim.Adam(
            self.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
        )
        steps_per_epoch = max(
            1, int(self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        )
        scheduler = CosineAnnealingWarmRestarts(
            optimizer,
            T_0=max(1, int(cfg["restart_period_epochs"]) * steps_per_epoch),
            eta_min=cfg["eta_min"],
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


def check_optim(optim: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser options, every one of `OPTIM_KEYS` required and none other, so that a
    config without weight decay fails instead of training without it. Errors name the
    option (``weight_decay``); the caller adds the section (``optim.weight_decay``)."""
    optim = dict(optim)
    check_keys(
        optim,
        OPTIM_KEYS,
        "an optimiser option",
        "set it (conf/optim/adam_cosine.yaml has the paper's).",
    )
    return optim


def check_speed(speed: Mapping[str, Any] | None) -> dict[str, Any]:
    """The speed options with their defaults (all off); unknown keys are refused, named as
    the option (``compile``; the caller adds the section)."""
    speed = dict(speed or {})
    check_keys(speed, SPEED_KEYS, "a speed option", "", required=False)
    return {
        "channels_last": bool(speed.get("channels_last", False)),
        "compile": bool(speed.get("compile", False)),
        "compile_mode": str(speed.get("compile_mode") or "default"),
    }
