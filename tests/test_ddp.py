"""Multi-process training: DDP samplers, one run folder per run, metrics reduced over ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities import rank_zero_only

from stroke_seg.checkpoints import load_matching_weights
from stroke_seg.data.samplers import EpochSampler, ShardSampler
from stroke_seg.inference import load_model
from stroke_seg.lit_module import full_volume_dice
from stroke_seg.train import build_loggers, build_module
from tests.helpers import (
    REPO,
    TINY_TRAIN_OVERRIDES,
    compose_train,
    make_bids_tree,
    run_train_cli,
)


def test_epoch_sampler_shards_every_epoch_across_ranks():
    """Each rank takes its share of the epoch's permutation; together one crop per scan
    (padded to equal length with crops of their own); a new epoch gives a new order."""
    n, world = 7, 3
    shards = []
    for rank in range(world):
        sampler = EpochSampler(n, seed=4, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert (
        [len(s) for s in shards]
        == [3, 3, 3]
        == [len(EpochSampler(n, 4, world, r)) for r in range(world)]
    )
    keys = [k for shard in shards for k in shard]
    assert {k[1] for k in keys} == set(range(n))
    assert len(set(keys)) == len(keys)  # the two padded repeats are distinct keys
    assert sum(len(k) == 3 for k in keys) == 2 and all(k[0] == 2 for k in keys)
    single = EpochSampler(n, seed=4)
    single.set_epoch(2)
    assert [k for k in keys if len(k) == 2] != list(single)  # interleaved, not blocks
    assert sorted(k for k in keys if len(k) == 2) == sorted(single)
    later = EpochSampler(n, seed=4, num_replicas=world, rank=0)
    later.set_epoch(3)
    assert list(later) != shards[0]


def test_shard_sampler_splits_validation_without_padding():
    assert [list(ShardSampler(5, 2, r)) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert [list(ShardSampler(1, 2, r)) for r in range(2)] == [[0], [0]]
    assert list(ShardSampler(3)) == [0, 1, 2]


def test_wandb_run_id_is_written_by_rank_zero_only(tiny_bids, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(tmp_path / "run", tiny_bids, ["logger=wandb"])
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    build_loggers(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "wandb_id.txt").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    build_loggers(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip()


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    return make_bids_tree(tmp_path_factory.mktemp("ddp_bids"), n=8, seed=3)


# 4 training scans (2 steps per rank and epoch) and 3 validation scans, split 2 + 1 over the
# ranks, so a mean of per-rank means would differ from the mean over scans.
DDP_OVERRIDES = [
    "data.split_proportions=[4,3,1]",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "name=ddp",
]


def test_two_process_cpu_ddp_run(ddp_data, tmp_path):
    result = run_train_cli(
        *TINY_TRAIN_OVERRIDES, *DDP_OVERRIDES, f"data.root={ddp_data}", f"paths.runs_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    # one run folder for the run, not one per rank, holding one set of checkpoints
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    run_dir = tmp_path / "ddp" / "zoom_in"
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["zoom_in"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["n_train"] == 4 and summary["n_val"] == 3
    assert summary["global_steps"] == 4  # 2 epochs x 4 scans / 2 processes

    # the checkpoint loads for inference and as a stage's starting weights
    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.preprocessing.crop_size == (16, 16, 16)
    cfg = compose_train(tmp_path / "check", ddp_data, ["data.split_proportions=[4,3,1]"])
    datamodule = instantiate(cfg.data, run_dir=None)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.preprocessing().to_dict())
    load_matching_weights(module, run_dir / "checkpoints" / "last.ckpt")

    # val/dsc of the 2-process run == the mean over the 3 scans in one process
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    single = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/dsc"]
    assert summary["final_val_dsc"] == pytest.approx(single, abs=1e-6)
    # ... which differs from the mean of the two ranks' means (scans 0, 2 | 1)
    per_scan = []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            pred = (torch.sigmoid(module(batch["image"])) > 0.5).float()
            per_scan.append(
                float(full_volume_dice(pred, batch["label"].float(), batch["label_total"])[0])
            )
    assert single == pytest.approx(sum(per_scan) / 3, abs=1e-6)
    rank_means = ((per_scan[0] + per_scan[2]) / 2 + per_scan[1]) / 2
    assert abs(rank_means - single) > 1e-4

    metrics = (run_dir / "logs" / "metrics.csv").read_text()
    assert "val/dsc" in metrics and "train/loss_epoch" in metrics
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["speed"] == {
        "channels_last": False,
        "compile": False,
        "compile_mode": "default",
    }


def test_local_multirun_with_ddp_is_refused_in_one_sentence(ddp_data, tmp_path):
    result = run_train_cli(
        "-m",
        *TINY_TRAIN_OVERRIDES,
        *DDP_OVERRIDES,
        f"data.root={ddp_data}",
        f"paths.runs_dir={tmp_path}",
        "seed=1,2",
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: A local multirun (-m) cannot train each job with trainer.strategy=ddp on 2 devices"
    )
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_spawned_ddp_is_refused_in_one_sentence(ddp_data, tmp_path):
    result = run_train_cli(
        *TINY_TRAIN_OVERRIDES,
        *DDP_OVERRIDES,
        "trainer.strategy=ddp_spawn",
        f"data.root={ddp_data}",
        f"paths.runs_dir={tmp_path}",
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: trainer.strategy=ddp_spawn / ddp_fork / ddp_notebook is not supported")
    )
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_torchrun_run_and_multirun_keep_one_folder_per_job(ddp_data, tmp_path):
    """Under torchrun every process composes the config itself; with name= fixed, a run keeps
    one folder, and a multirun runs its jobs in lock-step, one folder per job."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [*TINY_TRAIN_OVERRIDES, *DDP_OVERRIDES, f"data.root={ddp_data}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}

    def launch(*extra: str, multirun: bool = False) -> subprocess.CompletedProcess:
        command = [*torchrun, str(REPO / "train.py"), *(["-m"] if multirun else []), *args, *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    single = launch(f"paths.runs_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-3000:]
    run_dir = tmp_path / "single" / "ddp" / "zoom_in"
    assert [p.name for p in (tmp_path / "single" / "ddp").iterdir()] == ["zoom_in"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_steps"] == 4 and summary["n_train"] == 4  # 2 epochs x 4 crops / 2

    sweep = launch("seed=1,2", f"paths.runs_dir={tmp_path / 'sweep'}", multirun=True)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep" / "ddp" / "multirun").iterdir())
    assert [j for j in jobs if not j.startswith(".")][:2] == ["0_zoom_in", "1_zoom_in"]
    for job in ("0_zoom_in", "1_zoom_in"):
        job_dir = tmp_path / "sweep" / "ddp" / "multirun" / job
        assert json.loads((job_dir / "summary.json").read_text())["global_steps"] == 4


def test_the_process_group_is_destroyed_once_at_exit(tmp_path, monkeypatch):
    """A gloo group left open at interpreter exit can abort a finished run (exit -6); the
    entry point registers its destruction once, for the end of the process."""
    import torch.distributed as dist

    from stroke_seg import distributed

    registered = []
    monkeypatch.setattr(distributed, "_close_registered", False)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    distributed.close_process_group_at_exit()
    distributed.close_process_group_at_exit()
    assert registered == [distributed.close_process_group]

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    registered[0]()
    assert not dist.is_initialized()
    registered[0]()  # a second call (nothing left to destroy) is harmless
