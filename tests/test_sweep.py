"""Cluster sweeps: the Optuna sweeper (run locally on a tiny budget) and the SLURM launcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.helpers import CONF_DIR, TINY_TRAIN_OVERRIDES, run_train_cli


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_optuna_search_space_and_objective():
    cfg = _compose(["hparams_search=optuna", "name=search"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert set(sweeper.params) == {"stage.lr", "loss.bce_weight", "loss.dice_weight"}
    assert cfg.optim.lr == cfg.stage.lr  # the swept stage LR is the optimiser's


def test_slurm_launcher_asks_for_one_task_per_gpu_on_the_trainers_nodes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.num_nodes=2",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.partition=gpu",
            "name=cv",
        ]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert cfg.trainer.devices == "auto"  # Lightning takes the job's 4 GPUs
    single = _compose(["hydra/launcher=slurm", "name=one"]).hydra.launcher
    assert (single.nodes, single.gpus_per_node, single.tasks_per_node) == (1, 1, 1)
    assert launcher.partition == "gpu" and launcher.timeout_min > 0
    assert cfg.trainer.strategy == "ddp"


@pytest.mark.slow
def test_local_optuna_sweep_maximises_the_returned_validation_dsc(tiny_bids, tmp_path):
    """Two trials on tiny data, study kept in SQLite; the best value is a trial's final DSC."""
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        *TINY_TRAIN_OVERRIDES,
        "stage.max_epochs=1",
        f"data.root={tiny_bids}",
        f"paths.runs_dir={tmp_path}",
        "name=search",
    ]
    proc = run_train_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "search" / "multirun"
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [t.name for t in trials] == ["0_zoom_in", "1_zoom_in"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    finals = {}
    for trial in trials:
        config = yaml.safe_load((trial / "config.yaml").read_text())
        assert config["optim"]["lr"] == config["stage"]["lr"]
        assert 1e-5 <= config["stage"]["lr"] <= 3e-3
        finals[trial.name] = json.loads((trial / "summary.json").read_text())["final_val_dsc"]
    assert results["best_value"] == pytest.approx(max(finals.values()))
    assert set(results["best_params"]) == {"stage.lr", "loss.bce_weight", "loss.dice_weight"}
    assert Path(tmp_path / "study.db").stat().st_size > 0
