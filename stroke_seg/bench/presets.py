"""What the benchmark measures: the demo and paper presets composed from conf/, the tiny
``quick=true`` stand-ins, and the names of the sections and speed options.

The presets are read from the same config files as training (``experiment=demo`` and
``experiment=paper``, each stage), so the benchmark measures exactly what ``train.py``
would run, its loss and optimiser settings included, and no copy can drift.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stroke_seg.config import config_path
from stroke_seg.errors import StrokeSegError

# The project's config folder, the one train.py reads.
CONF_DIR = Path(config_path())

PRESETS = ("demo", "paper")
STAGES = ("zoom_in", "zoom_out")
OPTIONS = ("fp32", "bf16", "channels_last", "compile")
SECTIONS = ("train", "memory", "data", "inference", "evaluation")
# The ATLAS grid at 1 mm (the paper's scans; docs/paper.md "Data").
FULL_SCAN = (197, 233, 189)
FULL_SPACING = (1.0, 1.0, 1.0)
# quick=true: tiny networks, crops and scan, so every section runs in seconds (for tests).
QUICK_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "widths": [4, 8],
        "groups": 2,
        "crops": {"zoom_in": [16, 16, 16], "zoom_out": [16, 20, 24]},
    },
    "paper": {
        "widths": [8, 16],
        "groups": 4,
        "crops": {"zoom_in": [16, 16, 16], "zoom_out": [24, 28, 20]},
    },
}
QUICK_SCAN = (32, 36, 28)


@cache
def _composed(experiment: str, stage: str) -> DictConfig:
    """The train config of ``experiment=<experiment> stage=<stage>``, composed once."""
    if not (CONF_DIR / "train.yaml").is_file():
        raise StrokeSegError(
            f"The benchmark reads its presets from {CONF_DIR}, which does not exist; "
            "reinstall stroke_seg or run it from a source checkout (make bench)."
        )
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"experiment={experiment}", f"stage={stage}", "name=bench"]
    if GlobalHydra.instance().is_initialized():
        # Inside the bench command (a Hydra app on this same conf/): compose there.
        return compose("train", overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides)


def config_presets() -> dict[str, dict[str, Any]]:
    """Network widths, groups and crop sizes of ``experiment=demo`` and ``experiment=paper``."""
    presets: dict[str, dict[str, Any]] = {}
    for name in PRESETS:
        crops = {
            stage: [int(v) for v in _composed(name, stage).stage.crop_size] for stage in STAGES
        }
        cfg = _composed(name, STAGES[0])
        presets[name] = {
            "widths": [int(v) for v in cfg.model.widths],
            "groups": int(cfg.model.groups),
            "crops": crops,
        }
    return presets


def training_recipe(preset: str, stage: str) -> dict[str, dict[str, Any]]:
    """The loss and optimiser settings that ``train.py experiment=<preset> stage=<stage>``
    uses (``loss`` and ``optim`` of the composed config, interpolations resolved); the
    quick presets take those of the real preset of the same name."""
    cfg = _composed(preset, stage)
    return {
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),  # type: ignore[dict-item]
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),  # type: ignore[dict-item]
    }


def input_scaling(preset: str) -> dict[str, Any]:
    """The intensity scaling of the preset's data config (the paper's /255)."""
    data = _composed(preset, STAGES[0]).data
    return {
        "intensity_mode": str(data.intensity_mode),
        "intensity_divisor": float(data.intensity_divisor),
    }


def inference_defaults() -> dict[str, Any]:
    """The ``inference`` config group's options (conf/inference/default.yaml), for callers
    that run the benchmark without composing conf/bench.yaml."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "inference" / "default.yaml"))  # type: ignore[return-value]
