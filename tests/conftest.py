"""Shared fixtures: tiny NIfTI trees in the three layouts, and composed train configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import stroke_seg.config  # noqa: F401  (registers the config resolvers)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
TINY_SHAPE = (24, 28, 20)
TINY_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def tiny_preprocessing(crop_size=TINY_SHAPE, **extra: object) -> dict:
    """What a checkpoint of a model trained on the tiny scans carries for inference: /255
    scaling, the training crop, the evaluation crop = the whole tiny scan, 2 mm voxels."""
    return {
        "intensity_mode": "divide",
        "intensity_divisor": 255.0,
        "crop_size": list(crop_size),
        "eval_crop": list(TINY_SHAPE),
        "spacing": [float(v) for v in np.diag(TINY_AFFINE)[:3]],
        **extra,
    }


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = TINY_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def tiny_scan(rng: np.random.Generator, shape=TINY_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'brain' with a dark spherical 'lesion' at a random position."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    centre = rng.uniform(-0.4, 0.4, size=3)
    radius = rng.uniform(0.15, 0.3)
    lesion = (((grid - centre[:, None, None, None]) ** 2).sum(0) < radius**2) & brain
    image = np.where(brain, 150.0, 0.0) + rng.normal(0, 5, shape)
    image[lesion] = 40.0 + rng.normal(0, 5, lesion.sum())
    return np.clip(image, 0, 255).astype(np.float32), lesion.astype(np.uint8)


def bids_paths(root: Path, site: str, sid: str, ses: str = "1") -> tuple[Path, Path]:
    anat = root / "Training" / site / sid / f"ses-{ses}" / "anat"
    stem = f"{sid}_ses-{ses}_space-MNI152NLin2009aSym"
    return anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"


def make_bids_tree(root: Path, n: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        image, mask = tiny_scan(rng)
        t1, lab = bids_paths(root, "R001", f"sub-r001s{i:03d}")
        write_nifti(t1, image)
        write_nifti(lab, mask)
    return root


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight tiny subjects (24x28x20 at 2 mm) in the ATLAS v2.0 / synthetic BIDS layout."""
    return make_bids_tree(tmp_path_factory.mktemp("bids"))


TINY_TRAIN_OVERRIDES = [
    "data.layout=synthetic",
    "data.eval_crop=[24,28,20]",
    "data.split_proportions=[6,1,1]",
    "data.cache_workers=0",
    "model.widths=[4,8]",
    "model.groups=2",
    "stage.crop_size=[16,16,16]",
    "stage.max_epochs=2",
    "optim.restart_period_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "callbacks.validation_picture.every_n_epochs=1",
]


def compose_train(run_dir: Path, data_root: Path, overrides: list[str] = ()) -> DictConfig:
    """The real train config, shrunk for seconds-long CPU runs, writing into ``run_dir``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[*TINY_TRAIN_OVERRIDES, f"data.root={data_root}", *overrides],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def run_entry_point(
    script: str, *args: str, cwd: Path = REPO, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python <script> ARGS`` (train.py, evaluate.py, predict.py) in a subprocess, as a
    user runs it (for multiruns, DDP, CLI errors); output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_train_cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_entry_point("train.py", *args, cwd=cwd, timeout=timeout)


def save_module_checkpoint(
    path: Path, preprocessing: dict, widths=(4, 8), seed: int = 0, **extra: object
) -> Path:
    """What Lightning writes for a freshly built LesionSegModule (its state_dict and
    hyper-parameters, plus any ``extra`` keys), without training it."""
    import torch

    from stroke_seg.lit_module import LesionSegModule

    torch.manual_seed(seed)
    module = LesionSegModule(
        net={"widths": list(widths), "groups": 2, "checkpointing": False},
        loss={"bce_weight": 0.1, "dice_weight": 0.9, "smooth": 1.0},
        optim={"lr": 1e-3},
        preprocessing=preprocessing,
    )
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**checkpoint, **extra}, path)
    return path
