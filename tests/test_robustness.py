"""Crashes, kills, bad checkpoints and a missing network never lose work or run foreign code.

Training runs here use 4 training scans per epoch (split 2:1:1 of the 8 tiny subjects).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

import stroke_seg.predict as predict_module
from stroke_seg.callbacks import FiniteLossGuard
from stroke_seg.checkpoints import load_matching_weights, read_checkpoint
from stroke_seg.errors import StrokeSegError
from stroke_seg.evaluate import run as evaluate
from stroke_seg.losses import BCEDiceLoss
from stroke_seg.outputs import safe_output_path
from stroke_seg.predict import run as predict
from stroke_seg.safe_io import AtomicCheckpointIO
from stroke_seg.train import run as train
from tests.helpers import (
    CONF_DIR,
    REPO,
    TINY_TRAIN_OVERRIDES,
    compose_train,
    save_module_checkpoint,
    tiny_preprocessing,
    tiny_scan,
    write_nifti,
)

SMALL = ["data.split_proportions=[2,1,1]"]  # 4 training scans: 4 steps per epoch
PRE = tiny_preprocessing()


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def module_ckpt(path: Path) -> Path:
    return save_module_checkpoint(path, PRE)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------
# Training: atomic checkpoints, kill and resume, NaN loss, failing loggers
# --------------------------------------------------------------------------------------


def test_a_failed_checkpoint_write_keeps_the_previous_last_ckpt(tiny_bids, tmp_path, monkeypatch):
    """The disk fills up while epoch 2 is being saved: epoch 1's checkpoints stay intact."""
    real_save = torch.save
    targets: list[str] = []

    def disk_full_in_epoch_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step", 0) > 4:
            targets.append(getattr(f, "name", "<memory>"))
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_in_epoch_2)
    run_dir = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device"):
        train(compose_train(run_dir, tiny_bids, [*SMALL, "stage.max_epochs=2"]))
    monkeypatch.setattr(torch, "save", real_save)

    folder = run_dir / "checkpoints"
    # Written by AtomicCheckpointIO straight into a hidden temporary file beside the target
    # (Lightning's own writer serialises into memory first, and has no file name).
    assert len(targets) == 1 and re.fullmatch(r"\.\w+\.ckpt\.\d+\.tmp", Path(targets[0]).name)
    assert Path(targets[0]).parent == folder
    last = read_checkpoint(folder / "last.ckpt")
    assert last["global_step"] == 4  # the end of epoch 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_kill_while_saving_leaves_the_old_checkpoint_loadable(tmp_path):
    """SIGKILL half-way through writing a checkpoint: no cleanup code runs at all."""
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, last)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from stroke_seg.safe_io import AtomicCheckpointIO

        def dying_save(obj, f, *args, **kwargs):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save
        checkpoint = {{"state_dict": {{"w": torch.ones(3)}}}}
        AtomicCheckpointIO().save_checkpoint(checkpoint, {str(last)!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".last.ckpt.*.tmp")], "the kill did not land mid-write"
    torch.testing.assert_close(read_checkpoint(last)["state_dict"]["w"], torch.zeros(3))


class SlowBatches(pl.Callback):
    """Sleeps after every training batch so that a kill lands inside an epoch."""

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(0.15)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tiny_bids, tmp_path):
    """SIGKILL a real `python train.py` inside epoch 2, resume=, and compare with a run that
    was never interrupted: same weights, optimiser state and validation DSC (20-40 s)."""
    epochs = ["stage.max_epochs=3"]
    # This module is importable as the subprocess's callback under the name pytest gave it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    cli = [
        sys.executable,
        str(REPO / "train.py"),
        *TINY_TRAIN_OVERRIDES,
        *SMALL,
        *epochs,
        f"data.root={tiny_bids}",
        f"paths.runs_dir={tmp_path}",
        "name=killed",
        f"+callbacks.slow._target_={__name__}.SlowBatches",
    ]
    run_dir = tmp_path / "killed" / "zoom_in"
    last = run_dir / "checkpoints" / "last.ckpt"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(cli, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2 (4 batches of >= 0.15 s each)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert read_checkpoint(last)["global_step"] == 4  # only epoch 1 was saved
    assert not (run_dir / "summary.json").exists()

    resumed_dsc = train(compose_train(run_dir, tiny_bids, [*SMALL, *epochs, f"resume={last}"]))
    straight_dir = tmp_path / "straight"
    straight_dsc = train(compose_train(straight_dir, tiny_bids, [*SMALL, *epochs]))

    a = read_checkpoint(straight_dir / "checkpoints" / "last.ckpt")
    b = read_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6)
    for key, value in a["optimizer_states"][0]["state"][0].items():
        torch.testing.assert_close(
            b["optimizer_states"][0]["state"][0][key], value, rtol=0, atol=1e-6
        )
    assert resumed_dsc == pytest.approx(straight_dsc, abs=1e-6)
    # The metrics logged before the kill are kept beside the resumed run's.
    before = (run_dir / "logs" / "metrics.part1.csv").read_text()
    assert "train/loss_step" in before and (run_dir / "logs" / "metrics.csv").exists()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_bids, tmp_path, monkeypatch
):
    real_forward = BCEDiceLoss.forward
    training_calls = []

    def nan_at_step_6(self, logits, target):
        loss = real_forward(self, logits, target)
        if torch.is_grad_enabled():
            training_calls.append(1)
            if len(training_calls) == 6:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(BCEDiceLoss, "forward", nan_at_step_6)
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    message = (
        rf"Training stopped: the loss became nan at epoch 2 step 6; the last good checkpoint "
        rf"is {re.escape(str(last))}; lower the learning rate \(optim\.lr\)"
    )
    with pytest.raises(StrokeSegError, match=message):
        train(compose_train(run_dir, tiny_bids, [*SMALL, "stage.max_epochs=3"]))
    good = read_checkpoint(last)
    assert good["global_step"] == 4 and len(training_calls) == 6
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values())
    assert not (run_dir / "summary.json").exists()


def _fake_trainer(epoch: int, step: int) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, global_step=step)


def test_the_guard_refuses_inf_losses_and_non_finite_weights(tmp_path):
    guard = FiniteLossGuard(tmp_path / "checkpoints")
    with pytest.raises(StrokeSegError, match=r"loss became inf at epoch 1 step 3; no checkpoint"):
        guard.on_before_backward(_fake_trainer(0, 2), None, torch.tensor(float("inf")))
    guard.on_before_backward(_fake_trainer(0, 2), None, torch.tensor(0.5))  # finite: passes
    net = torch.nn.Linear(2, 1)
    guard.on_train_epoch_end(_fake_trainer(4, 40), net)
    with torch.no_grad():
        net.bias.fill_(float("nan"))
    with pytest.raises(StrokeSegError, match=r"the weight bias became non-finite at epoch 5"):
        guard.on_train_epoch_end(_fake_trainer(4, 40), net)


class UnreachableLogger(Logger):
    """A logger whose server is out of reach: every call raises."""

    calls = 0

    @property
    def name(self) -> str:
        return "unreachable"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        UnreachableLogger.calls += 1
        raise ConnectionError("cannot reach api.example.org")

    def log_metrics(self, metrics, step=None) -> None:
        UnreachableLogger.calls += 1
        raise ConnectionError("cannot reach api.example.org")


def test_a_logger_that_cannot_reach_its_server_never_stops_training(tiny_bids, tmp_path, caplog):
    UnreachableLogger.calls = 0
    run_dir = tmp_path / "run"
    overrides = [
        *SMALL,
        "stage.max_epochs=1",
        f"+logger.unreachable._target_={__name__}.UnreachableLogger",
    ]
    train(compose_train(run_dir, tiny_bids, overrides))
    assert (run_dir / "summary.json").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "logs" / "metrics.csv").exists()  # the CSV logger went on
    assert "Logger UnreachableLogger failed (ConnectionError: cannot reach" in caplog.text
    assert UnreachableLogger.calls == 1  # switched off after its first failure


# --------------------------------------------------------------------------------------
# Prediction: continue after a kill, inputs untouched, names stay in the output folder
# --------------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands in for SIGKILL inside the process (no `except Exception` catches it)."""


def test_continue_prediction_keeps_finished_scans_and_redoes_the_partial_one(tmp_path, monkeypatch):
    ckpt = module_ckpt(tmp_path / "model.ckpt")
    rng = np.random.default_rng(5)
    inputs = tmp_path / "scans"
    for name in "abc":
        write_nifti(inputs / f"{name}_T1w.nii.gz", tiny_scan(rng)[0])
    before = _digest(inputs)
    out = tmp_path / "out"
    args = [f"ckpt={ckpt}", f"input={inputs}", f"output={out}", "qc=false", "inference.device=cpu"]

    real_save = predict_module.write_nifti
    # What SIGKILL leaves mid-write: the temporary file, named as `atomic.temporary_path`
    # names it in another process.
    stale = ".b_T1w_lesion_mask.nii.gz.99999.tmp.nii.gz"

    def killed_writing_b_mask(path, *a, **k):
        if path.name == "b_T1w_lesion_mask.nii.gz":
            (path.parent / stale).write_bytes(b"\x1f\x8b half")
            raise Killed
        return real_save(path, *a, **k)

    monkeypatch.setattr(predict_module, "write_nifti", killed_writing_b_mask)
    with pytest.raises(Killed):
        predict(_compose("predict", args))
    monkeypatch.setattr(predict_module, "write_nifti", real_save)
    assert sorted(p.name for p in out.iterdir()) == [
        stale,
        "a_T1w_lesion_mask.nii.gz",
        "a_T1w_lesion_prob.nii.gz",
        "b_T1w_lesion_prob.nii.gz",
        "lesions.csv",
    ]
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("a_*")}

    with pytest.raises(StrokeSegError, match=r"already exists .*continue_prediction=true"):
        predict(_compose("predict", args))
    with pytest.raises(StrokeSegError, match=r"either overwrite=true .* or continue_prediction"):
        predict(_compose("predict", [*args, "overwrite=true", "continue_prediction=true"]))

    predicted = []
    real_scan = predict_module.predict_scan
    monkeypatch.setattr(
        predict_module,
        "predict_scan",
        lambda p, space, path, *a: predicted.append(path.name) or real_scan(p, space, path, *a),
    )
    rows = predict(_compose("predict", [*args, "continue_prediction=true"]))
    assert predicted == ["b_T1w.nii.gz", "c_T1w.nii.gz"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("a_*")} == kept
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_T1w_lesion_{k}.nii.gz" for n in "abc" for k in ("mask", "prob")] + ["lesions.csv"]
    )
    assert [r["scan"] for r in rows] == ["a_T1w", "b_T1w", "c_T1w"]

    fresh = tmp_path / "fresh"
    predict(_compose("predict", [*args[:2], f"output={fresh}", "qc=false", "inference.device=cpu"]))
    assert _digest(out) == _digest(fresh)  # the same results as one uninterrupted run
    assert _digest(inputs) == before  # inputs are only ever read


def test_a_result_on_another_grid_is_not_taken_as_finished(tmp_path):
    """continue_prediction keeps a scan's results only when they lie on its grid: a result of
    the same shape but another affine (another scan of that name) is redone."""
    image = tiny_scan(np.random.default_rng(1))[0]
    source = write_nifti(tmp_path / "in" / "a_T1w.nii.gz", image)
    out = tmp_path / "out"
    space = predict_module.Space(None)  # no template: the native files only
    files = predict_module.scan_files(out, "a_T1w", False, space)
    assert list(files) == ["mask", "prob"]
    write_nifti(files["mask"], np.zeros(image.shape, np.uint8))
    write_nifti(files["prob"], np.zeros(image.shape, np.float32))
    assert predict_module.is_finished(out, "a_T1w", source, False, space)
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = [10.0, 0.0, 0.0]
    write_nifti(files["prob"], np.zeros(image.shape, np.float32), affine=shifted)
    assert not predict_module.is_finished(out, "a_T1w", source, False, space)
    files["prob"].unlink()
    assert not predict_module.is_finished(out, "a_T1w", source, False, space)


@pytest.mark.parametrize(
    "name", ["../escape.nii.gz", "/etc/passwd", "a/../../x", "..", "", "a\\..\\b"]
)
def test_output_names_cannot_leave_the_output_folder(tmp_path, name):
    with pytest.raises(StrokeSegError, match="would lie outside output="):
        safe_output_path(tmp_path / "out", name)


def test_output_names_inside_the_folder_are_accepted_but_links_out_are_not(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    assert safe_output_path(out, "a_lesion_mask.nii.gz") == out / "a_lesion_mask.nii.gz"
    assert safe_output_path(out, "figures/a.png") == out / "figures" / "a.png"
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(StrokeSegError, match="leads outside output=.*symbolic link"):
        safe_output_path(out, "link/evil.nii.gz")


# --------------------------------------------------------------------------------------
# Untrusted checkpoints: a pickle payload is refused and never runs
# --------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command (as a malicious checkpoint would)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _poisoned(path: Path, sentinel: Path) -> Path:
    hparams = {"net": {"widths": [4, 8], "groups": 2}, "preprocessing": PRE, "x": Payload(sentinel)}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "epoch": 0}, path)
    return path


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    """The control: the same file *does* run code under torch.load(weights_only=False)."""
    sentinel = tmp_path / "PWNED"
    torch.load(_poisoned(tmp_path / "evil.ckpt", sentinel), weights_only=False)
    assert sentinel.exists()


def test_a_checkpoint_with_a_pickle_payload_is_refused_everywhere(tiny_bids, tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = _poisoned(tmp_path / "evil.ckpt", sentinel)
    refused = r"evil\.ckpt holds more than tensors and plain data, so it was not loaded"
    scan = write_nifti(tmp_path / "in" / "s_T1w.nii.gz", tiny_scan(np.random.default_rng(0))[0])
    attempts = {
        "predict": lambda: predict(
            _compose(
                "predict",
                [
                    f"ckpt={evil}",
                    f"input={scan}",
                    f"output={tmp_path / 'p'}",
                    "inference.device=cpu",
                ],
            )
        ),
        "evaluate": lambda: evaluate(
            _compose(
                "evaluate",
                [
                    f"ckpt={evil}",
                    f"data.root={tiny_bids}",
                    f"output={tmp_path / 'e'}",
                    "inference.device=cpu",
                ],
            )
        ),
        "train resume=": lambda: train(
            compose_train(tmp_path / "t", tiny_bids, [f"resume={evil}"])
        ),
        "zoom-out ckpt=": lambda: load_matching_weights(torch.nn.Linear(1, 1), evil),
        "Lightning loader": lambda: AtomicCheckpointIO().load_checkpoint(evil),
    }
    for what, attempt in attempts.items():
        with pytest.raises((StrokeSegError, Exception)) as info:
            attempt()
        if what != "Lightning loader":
            assert info.type is StrokeSegError and re.search(refused, str(info.value)), what
            assert "posix.system" in str(info.value), what
        assert not sentinel.exists(), f"{what} ran the payload"
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


def test_every_torch_load_in_the_package_is_weights_only():
    """A static check: no torch.load without weights_only=True, no pickle.load(s)."""
    for path in (REPO / "stroke_seg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = getattr(node.func.value, "id", None)
            if owner == "torch" and node.func.attr == "load":
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert flags.get("weights_only") is True, f"{path}:{node.lineno}"
            assert not (owner == "pickle" and node.func.attr in ("load", "loads")), path


# --------------------------------------------------------------------------------------
# No network
# --------------------------------------------------------------------------------------

BLOCK_NETWORK = """
import socket
attempts = []
def _refuse(*args, **kwargs):
    attempts.append(args[:2])
    raise OSError("network blocked by the test")
for owner, name in [(socket.socket, "connect"), (socket.socket, "connect_ex"),
                    (socket, "create_connection"), (socket, "getaddrinfo"),
                    (socket, "gethostbyname")]:
    setattr(owner, name, _refuse)
"""


@pytest.fixture()
def no_network(monkeypatch) -> list:
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network blocked by the test")

    for owner, name in [
        (socket.socket, "connect"),
        (socket.socket, "connect_ex"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
        (socket, "gethostbyname"),
    ]:
        monkeypatch.setattr(owner, name, refuse)
    return attempts


def test_train_evaluate_and_predict_run_without_any_network(tiny_bids, tmp_path, no_network):
    run_dir = tmp_path / "run"
    train(compose_train(run_dir, tiny_bids, [*SMALL, "stage.max_epochs=1"]))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    summaries = evaluate(
        _compose(
            "evaluate",
            [
                f"ckpt={ckpt}",
                f"data.root={tiny_bids}",
                f"output={tmp_path / 'eval'}",
                "inference.device=cpu",
                "bootstrap.n_resamples=20",
            ],
        )
    )
    assert next(iter(summaries.values()))["n"] == 2
    scan = next(tiny_bids.rglob("*_T1w.nii.gz"))
    rows = predict(
        _compose(
            "predict",
            [
                f"ckpt={ckpt}",
                f"input={scan}",
                f"output={tmp_path / 'pred'}",
                "inference.device=cpu",
            ],
        )
    )
    assert len(rows) == 1
    assert no_network == [], f"network attempts: {no_network}"


def test_importing_the_package_reaches_no_network():
    modules = [
        "stroke_seg.train",
        "stroke_seg.evaluate",
        "stroke_seg.predict",
        "stroke_seg.export",
        "stroke_seg.crossval",
        "stroke_seg.cli",
        "stroke_seg.data.synthetic",
        "stroke_seg.report",
    ]
    script = BLOCK_NETWORK + "".join(f"import {m}\n" for m in modules) + "print(len(attempts))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "0"
