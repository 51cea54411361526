"""Callbacks that make a run folder explain itself, keep the paper's snapshots, and keep a
run's work safe from a diverging loss or a logger that cannot reach its server."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from stroke_seg.errors import StrokeSegError
from stroke_seg.plotting import plot_case_slices, plot_progress

log = logging.getLogger(__name__)


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
            trainer.save_checkpoint(self.path_for(epoch), weights_only=False)


class LastCheckpoint(Checkpoint):
    """Write ``last.ckpt`` at the end of every training epoch and when training ends, so a
    run killed at any moment resumes (``resume=``) losing at most one epoch.

    Lightning 2.6's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes last.ckpt only
    when training ends. Being a `Checkpoint`, this callback is run by Lightning after all
    other callbacks, so the file holds their up-to-date state (the ProgressPlot history)
    and `FiniteLossGuard` has checked the weights first. Writes are atomic
    (`stroke_seg.safe_io.AtomicCheckpointIO`).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the finished loop state: epoch = max_epochs
        trainer.save_checkpoint(self.path, weights_only=False)


class EpochTimer(pl.Callback):
    """Log the wall-clock seconds of each training epoch as ``time/epoch_s``."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log(
            "time/epoch_s", time.perf_counter() - self._start, on_epoch=True, batch_size=1
        )


class ProgressPlot(pl.Callback):
    """Keep a per-epoch history of the logged metrics and redraw ``progress.png``.

    The history is part of the callback's checkpoint state, so a resumed run keeps drawing
    the whole curve whichever logger is used.
    """

    TRAIN_KEYS = ("train/loss_epoch",)
    VAL_KEYS = ("val/loss", "val/dsc")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict[str, float]] = []
        self._lr_at_start = float("nan")
        self._validated = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = False
        if trainer.optimizers:
            self._lr_at_start = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        # Validation values only for epochs that validated: callback_metrics keeps the last
        # ones, which would otherwise be drawn again at every epoch in between.
        keys = self.TRAIN_KEYS + (self.VAL_KEYS if self._validated else ())
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, "lr": self._lr_at_start}
        row.update({key: float(metrics[key]) for key in keys if key in metrics})
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
            example["image"].numpy(),
            example["label"].numpy(),
            example["prob"].numpy() > 0.5,
            self.dirpath / f"epoch{epoch:04d}_{example['subject']}.png",
            title=f"epoch {epoch}: {example['subject']}",
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/example", [str(path)], step=trainer.global_step)


class FiniteLossGuard(pl.Callback):
    """Stop training at the first NaN or infinite loss, before it can reach a checkpoint.

    The loss is checked before its backward pass, so the weights it would produce never
    exist; the weights are checked again at the end of every epoch, before any checkpoint
    callback runs (Lightning runs checkpoint callbacks last, and `train.run` puts this guard
    first), so ``last.ckpt`` always holds the last finite weights. The run stops with a
    `StrokeSegError` that names that checkpoint and what to try.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.last = Path(checkpoint_dir) / "last.ckpt"

    def _stop(self, trainer: pl.Trainer, what: str) -> None:
        where = f"epoch {trainer.current_epoch + 1} step {trainer.global_step + 1}"
        good = (
            f"the last good checkpoint is {self.last}"
            if self.last.is_file()
            else "no checkpoint was saved before it"
        )
        raise StrokeSegError(
            f"Training stopped: {what} at {where}; {good}; lower the learning rate (optim.lr) "
            "or check the training scans, then start again (or pass resume= with that "
            "checkpoint)."
        )

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._stop(trainer, f"the loss became {float(loss.detach().float().sum())}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, param in pl_module.named_parameters():
            if not bool(torch.isfinite(param.detach()).all()):
                self._stop(trainer, f"the weight {name} became non-finite")


# --------------------------------------------------------------------------------------
# Loggers that fail
# --------------------------------------------------------------------------------------

_LOGGER_METHODS = (
    "log_hyperparams",
    "log_metrics",
    "log_graph",
    "log_image",
    "save",
    "finalize",
    "after_save_checkpoint",
)


def call_logger(logger: Logger, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (something done with `logger`); if it raises, warn once, switch the
    logger off for the rest of the run and carry on. A logger that has failed is not
    called again: a wandb server out of reach would otherwise stall every step."""
    if getattr(logger, "stroke_seg_failure", None):
        return None
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - any logger failure must not stop training
        logger.stroke_seg_failure = f"{type(err).__name__}: {err}"
        log.warning(
            "Logger %s failed (%s); training goes on without it (checkpoints are unaffected).",
            type(logger).__name__,
            logger.stroke_seg_failure,
        )
        return None


def guard_logger(logger: Logger) -> Logger:
    """Wrap `logger`'s methods with `call_logger`, so that a logger that cannot write or
    reach its server never stops training; the object (and its type) stays the same."""
    for name in _LOGGER_METHODS:
        method = getattr(logger, name, None)
        if callable(method):

            @functools.wraps(method)
            def guarded(*args: Any, _method: Callable = method, **kwargs: Any) -> Any:
                return call_logger(logger, lambda: _method(*args, **kwargs))

            setattr(logger, name, guarded)
    return logger
