"""The LightningModule: residual 3D U-Net + BCE/Dice loss + Adam with warm-restart cosine.

Hyper-parameters are plain data (dicts of numbers and lists) saved into every checkpoint,
so that inference can rebuild the network and its input scaling from the checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from stroke_seg.losses import BCEDiceLoss
from stroke_seg.models import ResUNet3D


def full_volume_dice(pred: torch.Tensor, label: torch.Tensor, label_total: torch.Tensor) -> torch.Tensor:
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
    """Tomita et al. (2020) 3D-ResU-Net training: Sec. 2.2-2.4, Table 1."""

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any],
        preprocessing: Mapping[str, Any] | None = None,
        stage: str = "zoom_in",
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = ResUNet3D(**net)
        self.loss_fn = BCEDiceLoss(**loss)
        self.optim_cfg = dict(optim)
        self.threshold = threshold
        # The first validation case of the epoch, kept for pictures (ValidationPicture).
        self.val_example: dict[str, torch.Tensor] | None = None

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["label"].float())
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, label = batch["image"], batch["label"].float()
        logits = self(image)
        loss = self.loss_fn(logits, label)
        prob = torch.sigmoid(logits)
        pred = (prob > self.threshold).float()
        dsc = full_volume_dice(pred, label, batch["label_total"])
        bs = image.shape[0]
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("val/dsc", dsc.mean(), on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)
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
        on modern PyTorch — REFERENCE_NOTES)."""
        cfg = self.optim_cfg
        optimizer = torch.optim.Adam(
            self.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0)
        )
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs)))
        scheduler = CosineAnnealingWarmRestarts(
            optimizer,
            T_0=max(1, int(cfg.get("restart_period_epochs", 50)) * steps_per_epoch),
            eta_min=cfg.get("eta_min", 0.0),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
