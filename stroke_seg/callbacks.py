"""Callbacks that make a run folder explain itself and keep the paper's snapshots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from stroke_seg.plotting import plot_case_slices, plot_progress


class SnapshotCheckpoint(pl.Callback):
    """Save a full checkpoint at the end of the listed (1-based) epochs.

    The paper's snapshot ensemble (3D-ResU-Net-E, Sec. 2.4, after Huang et al. 2017) uses
    the zoom-out models at epochs 50, 100 and 150, i.e. at the end of each cosine cycle.
    Files are ``snapshot_epoch050.ckpt`` and so on.
    """

    def __init__(self, epochs: Sequence[int], dirpath: str | Path) -> None:
        self.epochs = sorted(int(e) for e in epochs)
        self.dirpath = Path(dirpath)

    def path_for(self, epoch: int) -> Path:
        return self.dirpath / f"snapshot_epoch{epoch:03d}.ckpt"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs:
            trainer.save_checkpoint(self.path_for(epoch))


class EpochTimer(pl.Callback):
    """Log the wall-clock seconds of each training epoch as ``time/epoch_s``."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("time/epoch_s", time.perf_counter() - self._start, on_epoch=True,
                      batch_size=1)


class ProgressPlot(pl.Callback):
    """Keep a per-epoch history of the logged metrics and redraw ``progress.png``.

    The history is part of the callback's checkpoint state, so a resumed run keeps drawing
    the whole curve whichever logger is used.
    """

    KEYS = ("train/loss_epoch", "val/loss", "val/dsc")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1}
        for key in self.KEYS:
            if key in metrics:
                row[key] = float(metrics[key])
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.history.append(row)
        self._draw()

    @rank_zero_only
    def _draw(self) -> None:
        plot_progress(self.history, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class ValidationPicture(pl.Callback):
    """Every ``every_n_epochs`` epochs, draw axial slices of the first validation case with
    predicted (red) and reference (green) outlines over the T1; save it under ``dirpath``
    and send it to wandb when that logger is active."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 10) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = max(1, int(every_n_epochs))

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        example = getattr(pl_module, "val_example", None)
        epoch = trainer.current_epoch + 1
        if not trainer.training and trainer.state.fn != "fit":
            return  # a stand-alone trainer.validate() after fitting draws nothing
        if trainer.sanity_checking or example is None or epoch % self.every_n_epochs:
            return
        path = plot_case_slices(
            example["image"].numpy(), example["label"].numpy(), example["prob"].numpy() > 0.5,
            self.dirpath / f"epoch{epoch:04d}_{example['subject']}.png",
            title=f"epoch {epoch}: {example['subject']}",
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/example", [str(path)], step=trainer.global_step)
