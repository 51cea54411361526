"""The commands run in a subprocess, as a user runs them (multiruns, DDP, CLI errors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO


def _run(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_entry_point(
    script: str, *args: str, cwd: Path = REPO, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python <script> ARGS`` (train.py, evaluate.py, predict.py) in a subprocess; output
    captured as text."""
    return _run([sys.executable, str(REPO / script), *args], cwd, timeout)


def run_module(
    module: str, *args: str, cwd: Path = REPO, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m <module> ARGS`` (stroke_seg.bench, stroke_seg.data.synthetic, ...) in a
    subprocess; output captured as text."""
    return _run([sys.executable, "-m", module, *args], cwd, timeout)


def run_train_cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_entry_point("train.py", *args, cwd=cwd, timeout=timeout)
