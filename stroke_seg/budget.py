"""Train a stage for a wall-clock budget instead of a fixed number of epochs (not in the paper).

``stage.time_budget_s=600`` makes ``stage.max_epochs`` a cap: after a few epochs the callback
measures how long an epoch takes on this machine (validation included) and sets the number
of epochs to what fits in the budget, and the cosine cycle to that length, so the stage still
anneals the learning rate to ``eta_min`` at its end. The demo's zoom-in then trains about 40
epochs on a CPU without native bf16 and about 100 on one with it, each run finishing its
schedule. Why not Lightning's ``Trainer(max_time=...)``: it stops wherever the clock runs out,
in the middle of the cosine cycle, at a high learning rate; and a fixed epoch count cannot
keep a CPU demo under its time on slow machines while using the fast ones. `experiment=paper`
and `experiment=recipe` leave it off (``null``): the paper's Table 1 is a number of epochs.

The budget covers the fit loop (training epochs and their validations); the start-up (data
caching, imports) and the final stand-alone validation are outside it. It needs one cosine
cycle over the whole stage (``optim.restart_period_epochs`` equal to ``stage.max_epochs``) and
no snapshot epochs, both checked by `stroke_seg.train.check_config`, because a budget changes
the length of the stage. The epoch count decided is saved in the checkpoint, so a resumed run
keeps it, and written to ``summary.json`` (``time_budget``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from stroke_seg.errors import StrokeSegError

log = logging.getLogger(__name__)


def epochs_for_budget(
    budget_s: float, elapsed_s: float, epochs_done: int, seconds_per_epoch: float, max_epochs: int
) -> int:
    """How many epochs the stage runs in all: those done plus the whole epochs that fit in
    what is left of the budget, never fewer than those done nor more than `max_epochs`."""
    left = budget_s - elapsed_s
    more = math.floor(left / seconds_per_epoch) if seconds_per_epoch > 0 else max_epochs
    return int(min(max_epochs, max(epochs_done, epochs_done + more)))


class TimeBudget(pl.Callback):
    """Fit the stage's epochs, and its one cosine cycle, to `seconds` of wall-clock.

    Epoch 1 is a warm-up (data caching, kernel selection) and is not timed. The pace is the
    mean wall-clock of the epochs since then, measured over whole windows of
    ``max(1, check_val_every_n_epoch)`` epochs so that it includes the validations' share.
    The first decision comes at the end of the first window and is taken again at the end of
    every later one, so that a pace that drifts (a machine that slows down, epochs that cost
    more than the first ones) still ends the stage close to the budget; each change moves the
    end of the cosine cycle by the epochs it adds or removes. Decisions are broadcast from
    rank 0, so every DDP process trains the same epochs. A resumed run keeps the last decision
    saved in its checkpoint and decides nothing more (the time before the interruption is not
    known). `seconds` None: the callback does nothing.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = None if seconds is None else float(seconds)
        self.epochs: int | None = None  # the latest decision (or restored from a checkpoint)
        self.seconds_per_epoch: float | None = None
        self.max_epochs: int | None = None
        self.fit_seconds: float | None = None
        self._resumed = False
        self._steps_per_epoch = 0
        self._fit_start = 0.0
        self._window_start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds is None:
            return
        self.max_epochs = self.max_epochs or int(trainer.max_epochs)
        self._fit_start = time.perf_counter()
        if self.epochs is not None:  # resumed: keep the decision saved in the checkpoint
            self._resumed = True
            trainer.fit_loop.max_epochs = self.epochs
            return
        period = self._scheduler(trainer).T_0
        if period != trainer.estimated_stepping_batches:
            raise StrokeSegError(
                "stage.time_budget_s needs one cosine cycle over the whole stage: set "
                "optim.restart_period_epochs to stage.max_epochs."
            )
        self._steps_per_epoch = period // self.max_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds is not None and trainer.current_epoch == 1 and not self._resumed:
            self._window_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so the window includes it.
        if self.seconds is None or self._resumed:
            return
        done = trainer.current_epoch + 1
        window = max(1, int(trainer.check_val_every_n_epoch or 1))
        if done >= trainer.fit_loop.max_epochs or done < 1 + window or (done - 1) % window:
            return
        now = time.perf_counter()
        pace = (now - self._window_start) / (done - 1)
        epochs = epochs_for_budget(self.seconds, now - self._fit_start, done, pace, self.max_epochs)
        epochs = int(trainer.strategy.broadcast(epochs, src=0))
        self.seconds_per_epoch = float(trainer.strategy.broadcast(pace, src=0))
        if epochs == self.epochs:
            return
        first = self.epochs is None
        self.epochs = epochs
        rate_before = trainer.optimizers[0].param_groups[0]["lr"]
        self._apply(trainer)
        if epochs == done:
            # The budget is spent: the stage ends now, and its last steps ran at a rate the
            # cosine never annealed. Say so rather than hand over a half-trained model quietly.
            log.warning(
                "stage.time_budget_s=%g is spent after %d epochs (%.2f s each): the stage ends "
                "with the learning rate at %.0f %% of its maximum, not annealed; raise "
                "stage.time_budget_s or set it to null for stage.max_epochs.",
                self.seconds,
                done,
                self.seconds_per_epoch,
                100 * rate_before / max(self._scheduler(trainer).base_lrs[0], 1e-30),
            )
        log.info(
            "stage.time_budget_s=%g: %.2f s per epoch after %d epochs, so %s%d epochs "
            "(stage.max_epochs %d) in one cosine cycle",
            self.seconds,
            self.seconds_per_epoch,
            done,
            "" if first else "now ",
            self.epochs,
            self.max_epochs,
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds is not None and not self._resumed:
            self.fit_seconds = time.perf_counter() - self._fit_start

    def _apply(self, trainer: pl.Trainer) -> None:
        """Shorten the fit loop and the cosine cycle to the decided epochs. The scheduler
        keeps its position (steps done); only the cycle length changes, so the learning rate
        moves by at most the difference between two points early on two cosines."""
        trainer.fit_loop.max_epochs = self.epochs
        scheduler = self._scheduler(trainer)
        scheduler.T_0 = scheduler.T_i = max(1, self._steps_per_epoch * self.epochs)
        # The scheduler already set the next step's rate with the old cycle; set it again with
        # the new one (the scheduler's own formula), so the change applies from the next step.
        rates = [
            scheduler.eta_min
            + (base - scheduler.eta_min)
            * (1 + math.cos(math.pi * scheduler.T_cur / scheduler.T_i))
            / 2
            for base in scheduler.base_lrs
        ]
        for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = rates  # what get_last_lr() and the LR monitor read

    @staticmethod
    def _scheduler(trainer: pl.Trainer) -> CosineAnnealingWarmRestarts:
        configs = trainer.lr_scheduler_configs
        if len(configs) != 1 or not isinstance(configs[0].scheduler, CosineAnnealingWarmRestarts):
            raise StrokeSegError(
                "stage.time_budget_s works with the cosine schedule of conf/optim/"
                "adam_cosine.yaml; set stage.time_budget_s=null for another scheduler."
            )
        return configs[0].scheduler

    def record(self) -> dict[str, Any] | None:
        """What the budget decided, for summary.json (None when it is off)."""
        if self.seconds is None:
            return None
        return {
            "budget_s": self.seconds,
            "seconds_per_epoch": self.seconds_per_epoch,
            "epochs": self.epochs,
            "max_epochs": self.max_epochs,
            "fit_seconds": None if self.fit_seconds is None else round(self.fit_seconds, 1),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "seconds_per_epoch": self.seconds_per_epoch,
            "max_epochs": self.max_epochs,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = state_dict.get("epochs")
        self.seconds_per_epoch = state_dict.get("seconds_per_epoch")
        self.max_epochs = state_dict.get("max_epochs")
