"""The real Hydra configs of conf/, composed as the entry points compose them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

import stroke_seg.config  # noqa: F401  (registers the config resolvers)
from tests.helpers.paths import CONF_DIR

# The tiny-run settings (conf/debug/tiny.yaml: tiny net and crops, 2 CPU epochs, no
# progress bar), for composed configs and command lines alike.
TINY_TRAIN_OVERRIDES = ["debug=tiny"]


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``config_name`` (train, evaluate, predict, ...) of conf/ with ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_train(run_dir: Path, data_root: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The real train config, shrunk for seconds-long CPU runs, writing into ``run_dir``."""
    cfg = compose_config("train", [*TINY_TRAIN_OVERRIDES, f"data.root={data_root}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


# evaluate.py in seconds: CPU, the paper's centre crop, 200 bootstrap resamples.
EVAL_FAST = ["inference.device=cpu", "inference.mode=centre_crop", "bootstrap.n_resamples=200"]


def compose_eval(overrides: Sequence[str]) -> DictConfig:
    """The evaluate config with ``overrides``."""
    return compose_config("evaluate", overrides)


def compose_predict(overrides: Sequence[str]) -> DictConfig:
    """The predict config with ``overrides``, on the CPU."""
    return compose_config("predict", [*overrides, "inference.device=cpu"])


def inference_options(**changes: object) -> dict:
    """conf/inference/default.yaml on the CPU, with `changes`: Predictor keyword arguments."""
    options = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "inference" / "default.yaml"))
    return {**options, "device": "cpu", **changes}
