"""The installed package: every command is a console script, and a wheel built from the
checkout works outside it, its Hydra configs found inside the installed package."""

from __future__ import annotations

import configparser
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

COMMANDS = {
    "stroke-seg-train": "stroke_seg.cli:train_main",
    "stroke-seg-evaluate": "stroke_seg.cli:evaluate_main",
    "stroke-seg-predict": "stroke_seg.cli:predict_main",
    "stroke-seg-export": "stroke_seg.cli:export_main",
    "stroke-seg-crossval": "stroke_seg.cli:crossval_main",
    "stroke-seg-synthetic": "stroke_seg.data.synthetic:main",
    "stroke-seg-bench": "stroke_seg.bench:main",
}
# A key of each command's config, printed by --help only if the config was found.
CONFIG_KEY = {
    "stroke-seg-train": "stage:",
    "stroke-seg-evaluate": "empty_policy:",
    "stroke-seg-predict": "continue_prediction:",
    "stroke-seg-export": "overwrite:",
    "stroke-seg-crossval": "runs:",
    "stroke-seg-synthetic": "spacing:",
    "stroke-seg-bench": "sections:",
}


def test_every_command_is_a_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == COMMANDS
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_installed_commands_work_outside_the_checkout(tmp_path):
    """Build a wheel from a copy of the checkout, install it (no dependencies: they are this
    environment's) into an empty folder, and run every command's --help from a third folder
    with only the installed copy on the path."""
    source = tmp_path / "source"
    for name in ("stroke_seg", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source])
    (wheel,) = wheels.glob("stroke_seg-*.whl")
    _run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel])

    entry_points = configparser.ConfigParser()
    entry_points.read(next(site.glob("stroke_seg-*.dist-info")) / "entry_points.txt")
    assert dict(entry_points["console_scripts"]) == COMMANDS
    assert (site / "stroke_seg" / "conf" / "train.yaml").is_file()
    assert (site / "stroke_seg" / "conf" / "inference" / "default.yaml").is_file()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    env.pop("PROJECT_ROOT", None)
    probe = "import stroke_seg, stroke_seg.config as c; print(stroke_seg.__file__, c.config_path())"
    module_file, config_dir = _run(
        [sys.executable, "-c", probe], cwd=outside, env=env
    ).stdout.split()
    # the installed copy, not the checkout's editable install
    assert (
        Path(module_file).is_relative_to(site) and Path(config_dir) == site / "stroke_seg" / "conf"
    )
    for command in COMMANDS:
        script = site / "bin" / command
        result = _run([sys.executable, str(script), "--help"], cwd=outside, env=env)
        assert "== Config" in result.stdout and CONFIG_KEY[command] in result.stdout, command
    assert sorted(p.name for p in outside.iterdir()) == []  # --help writes nothing
