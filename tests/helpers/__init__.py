"""Shared test code: tiny scans and NIfTI trees, composed configs, subprocess runners,
checkpoint builders and file readers. Fixtures live in tests/conftest.py; everything the
test modules share beyond fixtures is imported from here (``from tests.helpers import ...``),
never from another test module."""

from tests.helpers.checkpoints import (
    TEMPLATE_CROP,
    checkpoint_weights,
    native_checkpoint,
    save_module_checkpoint,
    zoom_out_checkpoint,
)
from tests.helpers.configs import (
    EVAL_FAST,
    TINY_TRAIN_OVERRIDES,
    compose_config,
    compose_eval,
    compose_predict,
    compose_train,
    inference_options,
)
from tests.helpers.files import list_files, read_rows
from tests.helpers.paths import CONF_DIR, REPO
from tests.helpers.processes import run_entry_point, run_module, run_train_cli
from tests.helpers.scans import (
    LPS_AFFINE,
    TINY_AFFINE,
    TINY_SHAPE,
    ZOOM_OUT_PRE,
    bids_paths,
    make_bids_tree,
    make_r12_tree,
    r12_paths,
    tiny_datamodule,
    tiny_preprocessing,
    tiny_scan,
    write_nifti,
)

__all__ = [
    "TEMPLATE_CROP",
    "native_checkpoint",
    "CONF_DIR",
    "EVAL_FAST",
    "inference_options",
    "LPS_AFFINE",
    "REPO",
    "TINY_AFFINE",
    "TINY_SHAPE",
    "TINY_TRAIN_OVERRIDES",
    "ZOOM_OUT_PRE",
    "bids_paths",
    "checkpoint_weights",
    "compose_config",
    "compose_eval",
    "compose_predict",
    "compose_train",
    "list_files",
    "make_bids_tree",
    "make_r12_tree",
    "r12_paths",
    "read_rows",
    "run_entry_point",
    "run_module",
    "run_train_cli",
    "save_module_checkpoint",
    "tiny_datamodule",
    "tiny_preprocessing",
    "tiny_scan",
    "write_nifti",
    "zoom_out_checkpoint",
]
