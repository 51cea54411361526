"""stage.time_budget_s: a stage's epochs and its one cosine cycle fitted to a wall-clock budget."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import stroke_seg.budget
from stroke_seg.budget import epochs_for_budget
from stroke_seg.errors import StrokeSegError
from stroke_seg.train import run
from tests.helpers import compose_train


def test_epochs_for_budget_counts_whole_epochs_between_done_and_the_cap():
    # 100 s budget, 25 s gone after 5 epochs, 10 s per epoch: 7 more fit.
    assert epochs_for_budget(100.0, 25.0, 5, 10.0, 200) == 12
    assert epochs_for_budget(100.0, 25.0, 5, 10.0, 9) == 9  # the cap
    assert epochs_for_budget(100.0, 130.0, 5, 10.0, 200) == 5  # over budget: stop now
    assert epochs_for_budget(100.0, 25.0, 5, 0.0, 50) == 50


def _lrs(run_dir):
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    return [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]


def test_budget_shortens_the_stage_and_fits_the_cosine_cycle_to_it(
    tiny_bids, tmp_path, monkeypatch
):
    """The budget's decisions (forced here: 5 epochs of a cap of 8 at the end of epoch 2, then
    4 at the end of epoch 3) end the stage after 4 epochs with the learning rate annealed:
    the cosine runs over 8 x 6 steps, then 5 x 6 from step 12, then 4 x 6 from step 18."""
    decisions = iter([5, 4, 4])
    calls = []

    def decide(*args):
        calls.append(args)
        return next(decisions)

    monkeypatch.setattr(stroke_seg.budget, "epochs_for_budget", decide)
    run_dir = tmp_path / "budget"
    cfg = compose_train(
        run_dir,
        tiny_bids,
        ["stage.max_epochs=8", "optim.restart_period_epochs=8", "stage.time_budget_s=60"],
    )
    run(cfg)
    assert [c[2] for c in calls] == [2, 3]  # epochs done at each decision (window: 1 epoch)
    budget_s, elapsed, done, pace, cap = calls[0]
    assert (budget_s, cap) == (60.0, 8) and elapsed > 0 and pace > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["global_steps"] == 24
    record = summary["time_budget"]
    assert record["epochs"] == 4 and record["max_epochs"] == 8 and record["fit_seconds"] > 0
    lrs = _lrs(run_dir)
    assert len(lrs) == 24
    cos = lambda step, period: 0.5e-3 * (1 + math.cos(math.pi * step / period))  # noqa: E731
    assert lrs[6] == pytest.approx(cos(6, 48))  # before any decision: the cap's cycle
    assert lrs[12] == pytest.approx(cos(12, 30))  # after the first
    assert lrs[18] == pytest.approx(cos(18, 24))  # after the second
    assert lrs[23] == pytest.approx(cos(23, 24)) and lrs[23] < 0.01 * lrs[0]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    saved = next(v for k, v in state.items() if "TimeBudget" in k)
    assert saved["epochs"] == 4  # a resumed run keeps the decision


def test_a_budget_spent_at_the_first_decision_is_said_not_silent(
    tiny_bids, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(stroke_seg.budget, "epochs_for_budget", lambda *args: args[2])
    run_dir = tmp_path / "spent"
    cfg = compose_train(
        run_dir,
        tiny_bids,
        ["stage.max_epochs=8", "optim.restart_period_epochs=8", "stage.time_budget_s=60"],
    )
    with caplog.at_level("WARNING", logger="stroke_seg.budget"):
        run(cfg)
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    warned = [r.getMessage() for r in caplog.records if "is spent after 2 epochs" in r.getMessage()]
    assert len(warned) == 1 and "not annealed" in warned[0]
    # after 12 of 48 steps of the cap's cosine: 85 % of the maximum rate
    assert "at 85 %" in warned[0]


def test_a_generous_budget_trains_max_epochs(tiny_bids, tmp_path):
    run_dir = tmp_path / "generous"
    run(
        compose_train(
            run_dir,
            tiny_bids,
            ["stage.max_epochs=3", "optim.restart_period_epochs=3", "stage.time_budget_s=1e6"],
        )
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["time_budget"]["epochs"] == 3
    assert summary["time_budget"]["seconds_per_epoch"] > 0
    lrs = _lrs(run_dir)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # one cycle, no restart


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["stage.time_budget_s=60"], "optim.restart_period_epochs"),  # tiny: restart every epoch
        (["stage.time_budget_s=0"], "stage.time_budget_s=0"),
        (
            [
                "stage.time_budget_s=60",
                "optim.restart_period_epochs=2",
                "stage.snapshot_epochs=[2]",
            ],
            "stage.snapshot_epochs",
        ),
    ],
)
def test_budget_options_that_cannot_work_are_refused_before_training(
    tiny_bids, tmp_path, overrides, named
):
    run_dir = tmp_path / "refused"
    with pytest.raises(StrokeSegError, match=named.replace(".", r"\.").replace("[", r"\[")):
        run(compose_train(run_dir, tiny_bids, overrides))
    assert not (run_dir / "checkpoints").exists()
