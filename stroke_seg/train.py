"""Training entry point: the composed Hydra config in, a self-describing run folder out.

``python train.py stage=zoom_in`` then ``python train.py stage=zoom_out ckpt=...`` runs
the zoom-in&out schedule of Tomita et al. (2020), Sec. 2.3 and Table 1. The config is
turned into objects here and nowhere deeper.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from stroke_seg.atomic import write_json, write_text
from stroke_seg.budget import TimeBudget
from stroke_seg.callbacks import FiniteLossGuard, call_logger, guard_logger
from stroke_seg.checkpoints import load_matching_weights, read_checkpoint
from stroke_seg.data.datamodule import StrokeDataModule
from stroke_seg.distributed import check_launch, close_process_group_at_exit, is_rank_zero
from stroke_seg.errors import StrokeSegError, config_section, option_error
from stroke_seg.lit_module import LesionSegModule, check_optim, check_speed
from stroke_seg.precision import resolve_precision
from stroke_seg.safe_io import AtomicCheckpointIO

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse configurations that would waste a run or overwrite one, before any work."""
    if cfg.stage.requires_ckpt and not cfg.ckpt and not cfg.resume:
        raise StrokeSegError(
            f"stage={cfg.stage.name} starts from the zoom-in weights: pass "
            f"ckpt=PATH/TO/zoom_in/checkpoints/last.ckpt (or resume= to continue this stage)."
        )
    if cfg.resume and not Path(cfg.resume).is_file():
        raise StrokeSegError(
            f"resume={cfg.resume} does not exist; pass <run>/checkpoints/last.ckpt."
        )
    if cfg.ckpt and cfg.resume:
        raise StrokeSegError(
            "Pass either ckpt= (start a stage from weights) or resume= (continue a run), not both."
        )
    check_snapshot_epochs(cfg)
    check_time_budget(cfg)
    if cfg.resume:
        read_checkpoint(cfg.resume, key="resume")  # plain data only, or one clear sentence
    existing = run_dir / "checkpoints"
    if not cfg.resume and not cfg.overwrite and existing.is_dir() and any(existing.iterdir()):
        raise StrokeSegError(
            f"Run folder {run_dir} already holds checkpoints; pass resume={existing}/last.ckpt "
            "to continue it, name=<new name> for a new run, or overwrite=true to replace it."
        )


def check_snapshot_epochs(cfg: DictConfig) -> list[str]:
    """Warn about snapshot epochs that will not make a snapshot ensemble: an epoch outside
    1..max_epochs is never saved (a shortened stage, e.g. ``stage.max_epochs=20`` with the
    paper's 50, 100, 150), and one that is not the end of a whole cosine cycle (a multiple of
    optim.restart_period_epochs) is a mid-cycle model. The paper's snapshot ensemble (Sec.
    2.4, after Huang et al. 2017) takes the models at the cycles' ends, where the learning
    rate has annealed to eta_min. Returns the warnings (also logged)."""
    epochs = [int(e) for e in (cfg.stage.get("snapshot_epochs") or [])]
    max_epochs = int(cfg.stage.max_epochs)
    period = int(cfg.optim.get("restart_period_epochs") or 0)
    warnings = []
    outside = [e for e in epochs if not 1 <= e <= max_epochs]
    if outside:
        warnings.append(
            f"stage.snapshot_epochs {epochs}: {outside} outside 1..{max_epochs} "
            "(stage.max_epochs) will not be saved"
        )
    mid = [e for e in epochs if period > 0 and e % period != 0 and e not in outside]
    if mid:
        warnings.append(
            f"stage.snapshot_epochs {epochs}: {mid} not at the end of a cosine cycle (every "
            f"{period} epochs); snapshot ensembles take the models at cycle ends"
        )
    for warning in warnings:
        log.warning(warning)
    return warnings


def check_time_budget(cfg: DictConfig) -> None:
    """A time budget (`stroke_seg.budget`) decides the stage's length at run time, so it needs
    one cosine cycle over the whole stage and no snapshot epochs (which name epochs)."""
    budget = cfg.stage.get("time_budget_s")
    if budget is None:
        return
    if float(budget) <= 0:
        raise option_error(
            "stage.time_budget_s", budget, "must be a positive number of seconds (or null)."
        )
    if list(cfg.stage.get("snapshot_epochs") or []):
        raise StrokeSegError(
            f"stage.time_budget_s={budget} decides the number of epochs at run time, so it "
            f"cannot keep stage.snapshot_epochs={list(cfg.stage.snapshot_epochs)}; set "
            "stage.snapshot_epochs=[] or stage.time_budget_s=null."
        )
    period = int(cfg.optim.get("restart_period_epochs") or 0)
    if period != int(cfg.stage.max_epochs):
        raise StrokeSegError(
            f"stage.time_budget_s={budget} fits one cosine cycle to the budget: set "
            f"optim.restart_period_epochs ({period}) to stage.max_epochs "
            f"({cfg.stage.max_epochs}), or stage.time_budget_s=null."
        )


# What a training run writes into its folder (Hydra's own .hydra/ and train.log belong to the
# run that is starting and are kept).
RUN_OUTPUTS = (
    "checkpoints",
    "logs",
    "val_pictures",
    "wandb",
    "wandb_id.txt",
    "config.yaml",
    "split.json",
    "summary.json",
    "progress.png",
)


def clear_previous_run(cfg: DictConfig, run_dir: Path) -> list[str]:
    """``overwrite=true``: remove the previous run's outputs, so that no stale snapshot,
    picture or wandb id is mistaken for part of the new run. Returns what was removed."""
    if not cfg.overwrite or cfg.resume or not is_rank_zero():
        return []
    if cfg.ckpt and run_dir.resolve() in Path(cfg.ckpt).resolve().parents:
        raise StrokeSegError(
            f"ckpt={cfg.ckpt} lies in the run folder that overwrite=true would replace; "
            "copy it elsewhere first or choose another name=."
        )
    removed = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.info("overwrite=true: removed the previous run's %s", ", ".join(removed))
    return removed


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_module(cfg: DictConfig, preprocessing: dict) -> LesionSegModule:
    """The LightningModule of `cfg`. Each section is checked under its own name first, and the
    network is built under ``model``, so a mistake reads as the key to change
    (``optim.weight_decay``, ``speed.compile``, ``model.groups``)."""
    optim, speed = _plain(cfg.optim), _plain(cfg.get("speed"))
    with config_section("optim"):
        check_optim(optim)
    with config_section("speed"):
        check_speed(speed)
    with config_section("model"):
        return LesionSegModule(
            net=_plain(cfg.model),
            loss=_plain(cfg.loss),
            optim=optim,
            preprocessing=preprocessing,
            stage=str(cfg.stage.name),
            speed=speed,
        )


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """Instantiate the configured loggers; wandb keeps one run id per run folder so that a
    resumed run continues the same wandb run. Every logger is guarded (`guard_logger`): one
    that fails, e.g. cannot reach its server, is switched off with a warning instead of
    stopping training."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:
            continue
        if "WandbLogger" in str(logger_cfg.get("_target_", "")):
            id_file = run_dir / "wandb_id.txt"
            if not is_rank_zero():  # only rank 0 talks to wandb (Lightning's rule too)
                logger = instantiate(logger_cfg)
            else:
                if not id_file.exists():
                    write_text(id_file, uuid.uuid4().hex[:8] + "\n")
                logger = instantiate(logger_cfg, id=id_file.read_text().strip(), resume="allow")
        else:
            logger = instantiate(logger_cfg)
            if cfg.resume and isinstance(logger, CSVLogger) and is_rank_zero():
                keep_csv_history(Path(logger.log_dir))
        loggers.append(guard_logger(logger))
        log.debug("logger %s", name)
    return loggers


def keep_csv_history(log_dir: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing metrics.csv when a run resumes into its
    folder; rename it to metrics.partN.csv first, so the history before the crash is kept."""
    metrics = log_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    n = 1
    while (log_dir / f"metrics.part{n}.csv").exists():
        n += 1
    return metrics.rename(log_dir / f"metrics.part{n}.csv")


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def run(cfg: DictConfig) -> float:
    """Train one stage; returns the final validation DSC (the value sweeps optimise)."""
    run_dir = Path(cfg.paths.output_dir)
    check_config(cfg, run_dir)
    clear_previous_run(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # `auto` becomes the value Lightning takes, and config.yaml records what ran.
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    with config_section("data"):  # the DataModule names its parameters; the user reads data.*
        datamodule: StrokeDataModule = instantiate(cfg.data)
        datamodule.setup("fit")
    module = build_module(cfg, datamodule.preprocessing().to_dict())
    if cfg.ckpt and not cfg.resume:
        load_matching_weights(module, cfg.ckpt, key="ckpt")
        log.info("Initialised %s from %s", cfg.stage.name, cfg.ckpt)

    loggers = build_loggers(cfg, run_dir)
    # The NaN guard comes first so that it runs before any callback that saves a checkpoint;
    # checkpoints are written atomically (a kill while saving keeps the previous one).
    callbacks = [FiniteLossGuard(run_dir / "checkpoints"), *build_callbacks(cfg)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()]
    )
    check_launch(trainer)  # before any DDP process is started
    for logger in loggers:
        logger.log_hyperparams({**_plain(cfg), "n_parameters": module.n_parameters})
    log.info(
        "%s: %d parameters, %d train / %d val scans, crop %s, run folder %s",
        cfg.stage.name,
        module.n_parameters,
        len(datamodule.split["train"]),
        len(datamodule.split["val"]),
        list(datamodule.crop_size),
        run_dir,
    )

    started = time.time()
    close_process_group_at_exit()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume)
    final = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    val_dsc = float(final.get("val/dsc", float("nan")))
    if trainer.is_global_zero:
        write_summary(run_dir, cfg, trainer, module, val_dsc, time.time() - started)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            call_logger(
                logger, lambda lg=logger: lg.experiment.summary.update({"final_val_dsc": val_dsc})
            )
    return val_dsc


def write_summary(
    run_dir: Path,
    cfg: DictConfig,
    trainer: pl.Trainer,
    module: LesionSegModule,
    val_dsc: float,
    seconds: float,
) -> Path:
    """``summary.json``: what was trained, how long, and how well, in one file."""
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_score", None)
    summary = {
        "stage": cfg.stage.name,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "final_val_dsc": val_dsc,
        "best_val_dsc": None if best is None else float(best),
        "n_parameters": module.n_parameters,
        "train_seconds": round(seconds, 1),
        "n_train": len(trainer.datamodule.split["train"]),
        "n_val": len(trainer.datamodule.split["val"]),
        "initialised_from": cfg.ckpt,
        "resumed_from": cfg.resume,
        "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")),
    }
    budget = next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)
    if budget is not None and budget.record() is not None:
        summary["time_budget"] = budget.record()
    return write_json(run_dir / "summary.json", summary)
