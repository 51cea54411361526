"""What multi-process (DDP) training needs from the entry point (docs/scaling.md).

Lightning's ``ddp`` strategy starts the other processes of a node by running the training
command again (under Hydra: with ``hydra.run.dir`` pinned to the parent's run folder, so a
run keeps one folder). torchrun and SLURM start every process themselves; Lightning detects
them and starts none. Two things follow for the entry point:

* a local Hydra multirun (``-m``) cannot use the re-run: every re-started process would run
  the whole sweep, and the next job of the sweep would find a process group whose peers
  have exited. `check_launch` refuses that combination before any process is started.
* only the process of global rank 0 may write files that must be unique per run
  (`is_rank_zero`), because under torchrun or SLURM all processes start at once.

The ``ddp_spawn`` / ``ddp_fork`` strategies are refused too: they run training in child
processes and hand only the weights back, so the loggers, callbacks and the final
validation of `stroke_seg.train.run` in the main process would not see the run.
"""

from __future__ import annotations

import atexit

import pytorch_lightning as pl
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities import rank_zero_only

from stroke_seg.errors import StrokeSegError


def is_rank_zero() -> bool:
    """True in the process of global rank 0 (or when not distributed); Lightning reads the
    rank from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID, ...)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def close_process_group() -> None:
    """Destroy the default process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_close_registered = False


def close_process_group_at_exit() -> None:
    """Destroy the process group when the interpreter exits, not when a run ends.

    Lightning leaves the group open after ``fit``; a gloo group whose worker threads are
    still alive while the interpreter shuts down aborts the process ("terminate called
    without an active exception", exit -6) although training finished. PyTorch asks
    applications to call ``destroy_process_group`` themselves (pytorch/pytorch#190489).
    Not at the end of each run: the jobs of a multirun under torchrun share one group, and
    re-creating it for the next job races between the processes.
    """
    global _close_registered
    if not _close_registered:
        atexit.register(close_process_group)
        _close_registered = True


def starts_own_processes(trainer: pl.Trainer) -> bool:
    """True when this trainer will re-run the command to start its other DDP processes."""
    strategy = trainer.strategy
    env = getattr(strategy, "cluster_environment", None)
    return (
        trainer.world_size > 1
        and isinstance(getattr(strategy, "launcher", None), _SubprocessScriptLauncher)
        and env is not None
        and not env.creates_processes_externally
    )


def check_launch(trainer: pl.Trainer) -> None:
    """Refuse spawned / forked DDP, and a local multirun whose jobs would each start DDP
    processes by re-running the command."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if trainer.world_size > 1 and isinstance(launcher, _MultiProcessingLauncher):
        raise StrokeSegError(
            "trainer.strategy=ddp_spawn / ddp_fork / ddp_notebook is not supported: it trains in "
            "child processes whose logs and callbacks never reach this one. Use "
            "trainer.strategy=ddp (trainer=ddp), which works on CPU and GPU."
        )
    if not HydraConfig.initialized() or not starts_own_processes(trainer):
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise StrokeSegError(
            f"A local multirun (-m) cannot train each job with trainer.strategy=ddp on "
            f"{trainer.world_size} devices: Lightning would re-run the whole sweep in every "
            "extra process. Run the jobs one by one, launch them with hydra/launcher=slurm "
            "(SLURM starts each job's processes), or start the sweep under torchrun "
            "(docs/scaling.md)."
        )
