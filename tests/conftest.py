"""Fixtures shared by the test modules. Shared code that is not a fixture lives in
tests/helpers (``from tests.helpers import ...``); no test module imports another."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import compose_train, make_bids_tree, zoom_out_checkpoint


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight tiny subjects (24x28x20 at 2 mm) in the ATLAS v2.0 / synthetic BIDS layout."""
    return make_bids_tree(tmp_path_factory.mktemp("bids"))


@pytest.fixture(scope="module")
def trained(tiny_bids: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-epoch training run on the tiny set (debug=tiny); returns its run folder."""
    from stroke_seg.train import run as train

    run_dir = tmp_path_factory.mktemp("eval_runs") / "zoom_in"
    train(compose_train(run_dir, tiny_bids))
    return run_dir


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained zoom-out checkpoint of the tiny scans (crop = eval crop = 24x28x20).
    A module may define its own ``ckpt`` (test_export does), which then takes precedence."""
    return zoom_out_checkpoint(tmp_path_factory.mktemp("predict_ckpt") / "model.ckpt")
