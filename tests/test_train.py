"""The training stages end to end on tiny data: hand-off, snapshots, resume, run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stroke_seg.checkpoints import load_matching_weights
from stroke_seg.errors import StrokeSegError
from stroke_seg.lit_module import LesionSegModule
from stroke_seg.train import build_module, run
from tests.helpers import (
    TINY_TRAIN_OVERRIDES,
    checkpoint_weights,
    compose_train,
    run_train_cli,
    tiny_preprocessing,
)


@pytest.fixture(scope="module")
def zoom_in_run(tiny_bids, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "zoom_in"
    run(compose_train(run_dir, tiny_bids))
    return run_dir


def test_run_folder_explains_itself(zoom_in_run):
    names = {p.name for p in zoom_in_run.iterdir()}
    assert {
        "config.yaml",
        "split.json",
        "summary.json",
        "progress.png",
        "checkpoints",
        "logs",
        "val_pictures",
    } <= names
    config = yaml.safe_load((zoom_in_run / "config.yaml").read_text())
    assert config["stage"]["name"] == "zoom_in" and config["stage"]["crop_size"] == [16, 16, 16]
    split = json.loads((zoom_in_run / "split.json").read_text())
    assert len(split["train"]) == 6 and len(split["val"]) == 1 and split["seed"] == 0
    summary = json.loads((zoom_in_run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["n_train"] == 6
    assert 0.0 <= summary["final_val_dsc"] <= 1.0
    assert summary["n_parameters"] > 0
    assert {"best.ckpt", "last.ckpt"} <= set(summary["checkpoints"])
    # every file was written atomically: no temporary file is left beside it
    assert not [p for p in zoom_in_run.rglob(".*") if p.is_file()]
    rows = list(csv.DictReader((zoom_in_run / "logs" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {
        "train/loss_step",
        "train/loss_epoch",
        "val/loss",
        "val/dsc",
        "lr-Adam",
        "time/epoch_s",
    } <= logged
    pictures = sorted(p.name for p in (zoom_in_run / "val_pictures").glob("*.png"))
    assert pictures[:2] == [f"epoch000{e}_{split['val'][0]}.png" for e in (1, 2)]
    assert len(pictures) == 2  # the final stand-alone validation draws nothing
    hparams = torch.load(zoom_in_run / "checkpoints" / "last.ckpt", weights_only=True)[
        "hyper_parameters"
    ]
    assert hparams["net"] == {
        "widths": [4, 8],
        "groups": 2,
        "checkpointing": False,
        "deep_supervision": False,
    }
    assert hparams["preprocessing"]["intensity_divisor"] == 255.0


def test_learning_rate_restarts_every_period(zoom_in_run):
    """Cosine annealing with warm restarts stepped per iteration (period 1 epoch here)."""
    rows = list(csv.DictReader((zoom_in_run / "logs" / "metrics.csv").open()))
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert len(lrs) == 12  # 2 epochs x 6 training scans, one crop each
    assert lrs[0] == pytest.approx(1e-3) and lrs[6] == pytest.approx(1e-3)
    assert lrs[3] == pytest.approx(0.5e-3)  # half-way through the 6-step cycle
    assert all(a > b for a, b in zip(lrs[:5], lrs[1:6], strict=True))


def test_zoom_out_starts_from_zoom_in_weights_and_saves_snapshots(zoom_in_run, tiny_bids, tmp_path):
    ckpt = zoom_in_run / "checkpoints" / "last.ckpt"
    cfg = compose_train(
        tmp_path / "zoom_out",
        tiny_bids,
        [
            "stage=zoom_out",
            f"ckpt={ckpt}",
            "stage.crop_size=[24,28,20]",
            "stage.max_epochs=3",
            "stage.snapshot_epochs=[1,3]",
            "trainer.check_val_every_n_epoch=2",
        ],
    )
    module = build_module(cfg, {})
    load_matching_weights(module, ckpt)
    zoom_in = checkpoint_weights(ckpt)
    assert all(torch.equal(v, zoom_in[k]) for k, v in module.state_dict().items())

    run(cfg)
    snapshots = sorted(p.name for p in (tmp_path / "zoom_out" / "checkpoints").glob("snap*"))
    assert snapshots == ["snapshot_epoch001.ckpt", "snapshot_epoch003.ckpt"]
    first = torch.load(tmp_path / "zoom_out" / "checkpoints" / snapshots[0], weights_only=True)
    assert first["epoch"] == 0 and first["hyper_parameters"]["stage"] == "zoom_out"
    assert first["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(1e-4)
    summary = json.loads((tmp_path / "zoom_out" / "summary.json").read_text())
    assert summary["initialised_from"] == str(ckpt) and summary["epochs"] == 3
    # fine-tuning changed the weights
    last = checkpoint_weights(tmp_path / "zoom_out" / "checkpoints" / "last.ckpt")
    assert not all(torch.equal(v, zoom_in[k]) for k, v in last.items())
    # the progress history holds validation values only for the epoch that validated
    state = torch.load(tmp_path / "zoom_out" / "checkpoints" / "last.ckpt", weights_only=True)
    progress = next(v for k, v in state["callbacks"].items() if "ProgressPlot" in k)["history"]
    assert [("val/dsc" in row) for row in progress] == [False, True, False]


def test_mismatched_checkpoint_is_refused_not_partially_loaded(zoom_in_run, tiny_bids, tmp_path):
    cfg = compose_train(
        tmp_path / "zoom_out",
        tiny_bids,
        [
            "stage=zoom_out",
            f"ckpt={zoom_in_run / 'checkpoints' / 'last.ckpt'}",
            "model.widths=[4,8,16]",
        ],
    )
    with pytest.raises(StrokeSegError, match=r"does not fit this model.*widths.*\[4, 8\]"):
        run(cfg)
    assert not (tmp_path / "zoom_out" / "checkpoints").exists()


def test_module_options_are_named_by_their_config_key(tiny_bids, tmp_path):
    """The network, the optimiser and the speed options name their own parameters; the
    training task puts them under model., optim. and speed., the keys the user changes."""
    for overrides, message in [
        (["model.groups=3"], r"^model.groups=3 must divide every width in widths=\[4, 8\]"),
        (["+model.widhts=[4]"], r"^model.widhts=\[4\] is not a network option"),
        (["~optim.weight_decay"], r"^optim.weight_decay= is missing"),
        (["+optim.momentum=0.9"], r"^optim.momentum=0.9 is not an optimiser option"),
        (["+speed.chanels_last=true"], r"^speed.chanels_last=True is not a speed option"),
    ]:
        cfg = compose_train(tmp_path / "run", tiny_bids, overrides)
        with pytest.raises(StrokeSegError, match=message):
            build_module(cfg, tiny_preprocessing())
    # Weight decay has one source, conf/optim (1e-4, paper Table 1): the module has no default.
    cfg = compose_train(tmp_path / "run", tiny_bids)
    assert cfg.optim.weight_decay == 1e-4
    module = LesionSegModule(net={"widths": [4, 8], "groups": 2}, loss={}, optim={"lr": 1e-3})
    with pytest.raises(StrokeSegError, match=r"^optim.weight_decay= is missing"):
        module.configure_optimizers()


def test_zoom_out_without_ckpt_is_refused(tiny_bids, tmp_path):
    cfg = compose_train(tmp_path / "run", tiny_bids, ["stage=zoom_out"])
    with pytest.raises(StrokeSegError, match="stage=zoom_out starts from the zoom-in weights"):
        run(cfg)


def test_existing_run_folder_is_not_overwritten(zoom_in_run, tiny_bids):
    before = (zoom_in_run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(StrokeSegError, match="already holds checkpoints.*resume="):
        run(compose_train(zoom_in_run, tiny_bids))
    assert (zoom_in_run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_overwrite_replaces_the_previous_runs_outputs(tiny_bids, tmp_path):
    """overwrite=true leaves nothing of the old run that could pass for the new one (a stale
    snapshot would join a snapshot ensemble), and keeps files the run did not write."""
    run_dir = tmp_path / "run"
    run(compose_train(run_dir, tiny_bids, ["stage.max_epochs=1", "stage.snapshot_epochs=[1]"]))
    assert (run_dir / "checkpoints" / "snapshot_epoch001.ckpt").is_file()
    (run_dir / "wandb_id.txt").write_text("old-run-id\n")
    (run_dir / "notes.txt").write_text("mine\n")
    run(compose_train(run_dir, tiny_bids, ["stage.max_epochs=1", "overwrite=true"]))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert json.loads((run_dir / "summary.json").read_text())["checkpoints"] == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert not (run_dir / "wandb_id.txt").exists()
    assert (run_dir / "notes.txt").read_text() == "mine\n"
    inside = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(StrokeSegError, match=r"lies in the run folder that overwrite=true"):
        run(
            compose_train(
                run_dir, tiny_bids, ["stage=zoom_out", f"ckpt={inside}", "overwrite=true"]
            )
        )
    assert inside.is_file()


def test_resume_continues_exactly(tiny_bids, tmp_path):
    """2 epochs, then resume to 4 == 4 epochs straight (weights, optimiser, scheduler)."""
    straight = tmp_path / "straight"
    run(compose_train(straight, tiny_bids, ["stage.max_epochs=4"]))
    split = tmp_path / "split"
    run(compose_train(split, tiny_bids, ["stage.max_epochs=2"]))
    run(
        compose_train(
            split,
            tiny_bids,
            ["stage.max_epochs=4", f"resume={split / 'checkpoints' / 'last.ckpt'}"],
        )
    )
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4 and a["global_step"] == b["global_step"] == 24
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    exp_avg = a["optimizer_states"][0]["state"][0]["exp_avg"]
    torch.testing.assert_close(
        b["optimizer_states"][0]["state"][0]["exp_avg"], exp_avg, rtol=0, atol=1e-6
    )
    history = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    progress = next(v for k, v in history.items() if "ProgressPlot" in k)["history"]
    assert [row["epoch"] for row in progress] == [1, 2, 3, 4]
    assert [row["lr"] for row in progress] == pytest.approx([1e-3] * 4)  # restart each epoch
    assert all("val/dsc" in row for row in progress)


def test_wandb_logger_writes_an_offline_run(tiny_bids, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "wandb_run"
    run(compose_train(run_dir, tiny_bids, ["logger=wandb", "stage.max_epochs=1"]))
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0
    assert (run_dir / "logs" / "metrics.csv").exists()  # CSV stays on beside wandb


def test_cli_user_errors_are_one_sentence(tmp_path):
    missing = run_train_cli(f"paths.runs_dir={tmp_path}", f"data.root={tmp_path / 'absent'}")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: data.root='{tmp_path}")
    assert "Traceback" not in missing.stderr
    no_ckpt = run_train_cli(f"paths.runs_dir={tmp_path}", "stage=zoom_out")
    assert no_ckpt.returncode == 2
    assert "error: stage=zoom_out starts from the zoom-in weights: pass ckpt=" in no_ckpt.stderr
    assert not any(tmp_path.rglob("*.ckpt"))


def test_bad_values_checked_by_a_constructor_are_one_sentence(tiny_bids, tmp_path):
    """Hydra's instantiate re-raises a constructor's error as InstantiationException; the
    user still gets our one sentence, not Hydra's wrapper."""
    bad = run_train_cli(
        *TINY_TRAIN_OVERRIDES,
        f"data.root={tiny_bids}",
        f"paths.runs_dir={tmp_path}",
        "data.augmentation.flip_prob=3",
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: data.augmentation.flip_prob=3.0 must lie in [0, 1]."
    )
    assert "InstantiationException" not in bad.stderr and not any(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_multirun_over_two_seeds(tiny_bids, tmp_path):

    result = run_train_cli(
        "-m",
        *TINY_TRAIN_OVERRIDES,
        "seed=1,2",
        f"data.root={tiny_bids}",
        f"paths.runs_dir={tmp_path}",
        "name=sweep",
        "stage.max_epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep" / "multirun").glob("*_zoom_in"))
    assert [j.name for j in jobs] == ["0_zoom_in", "1_zoom_in"]
    seeds = [yaml.safe_load((j / "config.yaml").read_text())["seed"] for j in jobs]
    assert seeds == [1, 2]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").exists()
        assert json.loads((job / "summary.json").read_text())["epochs"] == 1
    w1, w2 = (checkpoint_weights(j / "checkpoints" / "last.ckpt") for j in jobs)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)


def test_bad_mask_stops_training_with_the_file_named(tmp_path):
    """An error raised inside MONAI's caching reaches the user as our one sentence."""
    from tests.helpers import bids_paths, make_bids_tree, write_nifti

    root = make_bids_tree(tmp_path / "bids", n=4)
    _, mask = bids_paths(root, "R001", "sub-r001s002")
    write_nifti(mask, np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(StrokeSegError, match=r"sub-r001s002.*mask.nii.gz has shape \(5, 5, 5\)"):
        run(compose_train(tmp_path / "run", root, ["data.split_proportions=[2,1,1]"]))
    assert not (tmp_path / "run" / "checkpoints").exists()
