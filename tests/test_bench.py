"""Speed options (channels-last, torch.compile) and the benchmark's machinery (not its numbers)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from stroke_seg.bench.cli import _subset
from stroke_seg.bench.cli import run as run_command
from stroke_seg.bench.evaluation import synthetic_cases
from stroke_seg.bench.presets import (
    OPTIONS,
    SECTIONS,
    config_presets,
    inference_defaults,
    training_recipe,
)
from stroke_seg.bench.probe import count_train_flops
from stroke_seg.bench.report import TARGETS, target_values
from stroke_seg.data.synthetic import ellipsoid_mask
from stroke_seg.errors import StrokeSegError, config_section
from stroke_seg.inference import load_model
from stroke_seg.lit_module import LesionSegModule, check_speed
from stroke_seg.train import run
from tests.helpers import compose_config, compose_train, run_module

NET = {"widths": [4, 8], "groups": 2}
LOSS = {"bce_weight": 0.1, "dice_weight": 0.9}


def test_speed_options_default_off_and_unknown_keys_refused():
    assert check_speed(None) == {
        "channels_last": False,
        "compile": False,
        "compile_mode": "default",
    }
    # The library names the option; the training task puts it under its section.
    with pytest.raises(StrokeSegError, match=r"^chanels_last=True is not a speed option"):
        check_speed({"chanels_last": True})
    with pytest.raises(StrokeSegError, match=r"^speed\.chanels_last=True is not a speed option"):
        with config_section("speed"):
            check_speed({"chanels_last": True})


def test_channels_last_changes_layout_not_results_or_weight_names():
    torch.manual_seed(0)
    plain = LesionSegModule(net=NET, loss=LOSS, optim={"lr": 1e-3})
    fast = LesionSegModule(net=NET, loss=LOSS, optim={"lr": 1e-3}, speed={"channels_last": True})
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    fast.configure_model()  # idempotent (Lightning calls it for fit and validate)
    assert fast.net.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(1, 1, 16, 12, 8)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


def test_training_with_channels_last_writes_loadable_checkpoints(tiny_bids, tmp_path):
    run_dir = tmp_path / "cl"
    run(compose_train(run_dir, tiny_bids, ["speed.channels_last=true", "stage.max_epochs=1"]))
    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.net.stem.conv1.weight.shape[0] == 4


@pytest.mark.slow
def test_training_with_torch_compile(tiny_bids, tmp_path):
    """torch.compile (inductor; needs a C++ compiler on CPU): compiled in place, so the
    checkpoint keeps plain weight names and loads for inference."""
    run_dir = tmp_path / "compiled"
    dsc = run(
        compose_train(
            run_dir,
            tiny_bids,
            ["speed.compile=true", "stage.max_epochs=1", "trainer.check_val_every_n_epoch=2"],
        )
    )
    assert 0.0 <= dsc <= 1.0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(k.startswith("net.") and "_orig_mod" not in k for k in state)
    load_model(run_dir / "checkpoints" / "last.ckpt")


def test_flop_count_matches_a_hand_count_for_the_stem_convolution():
    """FlopCounterMode counts 2·k³·C_in·C_out per output voxel for a convolution; check the
    count grows linearly with the crop and is about 3x the forward for a training step."""
    small = count_train_flops([4, 8], 2, [16, 16, 16])
    big = count_train_flops([4, 8], 2, [32, 16, 16])
    assert big["forward"] == pytest.approx(2 * small["forward"], rel=1e-6)
    # backward ≈ 2 x forward (input and weight gradients; the stem's input needs none)
    assert 2.5 < small["train_step"] / small["forward"] <= 3.0
    stem = 2 * 27 * 1 * 4 * 16**3 + 2 * 27 * 4 * 4 * 16**3  # the stem's two 3x3x3 convs
    assert small["forward"] > stem


def test_synthetic_evaluation_cases_are_realistic():
    cases = synthetic_cases(5, (40, 48, 36), seed=1)
    for pred, ref, prob in cases:
        assert pred.shape == ref.shape == prob.shape == (40, 48, 36)
        assert ref.sum() > 0 and pred.sum() > 0 and 0.0 <= prob.min() and prob.max() <= 1.0
        assert (pred == (prob > 0.5)).all()
    again = synthetic_cases(5, (40, 48, 36), seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(cases, again, strict=True))


def test_evaluation_cases_draw_their_lesions_with_the_synthetic_generator(monkeypatch):
    """The reference lesions are the synthetic set's ellipsoids (one generator, not a copy):
    replacing `stroke_seg.data.synthetic.ellipsoid_mask` changes every case."""
    calls = []

    def counted(shape, centre, radii):
        calls.append(tuple(radii))
        return ellipsoid_mask(shape, centre, radii)

    monkeypatch.setattr("stroke_seg.data.synthetic.ellipsoid_mask", counted)
    cases = synthetic_cases(3, (40, 48, 36), seed=1)
    assert len(calls) == 3 * 3  # reference, prediction, false-positive blob per case
    assert [c[-1] for c in calls[2::3]] == [2.5, 2.5, 2.5]
    assert len(cases) == 3


def test_presets_are_the_experiment_configs():
    """The benchmark measures what train.py runs: the paper's Table 1 network and crops, and
    the demo's, read from conf/experiment (not a copy that could drift)."""
    presets = config_presets()
    assert presets["paper"] == {
        "widths": [32, 64, 128, 256],
        "groups": 8,
        "crops": {"zoom_in": [128, 128, 128], "zoom_out": [144, 172, 168]},
    }
    assert presets["demo"] == {
        "widths": [8, 16, 32, 64],
        "groups": 4,
        "crops": {"zoom_in": [48, 48, 48], "zoom_out": [72, 86, 84]},
    }


def test_loss_optimiser_and_inference_settings_come_from_the_configs():
    """No literal copies: the probe's Adam uses the composed stage's learning rate and the
    optimiser group's weight decay, the inference section the inference group's options."""
    for preset in ("demo", "paper"):
        for stage in ("zoom_in", "zoom_out"):
            cfg = compose_config("train", [f"experiment={preset}", f"stage={stage}", "name=x"])
            recipe = training_recipe(preset, stage)
            assert recipe["optim"]["lr"] == cfg.stage.lr
            assert recipe["optim"]["weight_decay"] == cfg.optim.weight_decay
            assert recipe["loss"] == {k: cfg.loss[k] for k in cfg.loss}
    paper_in = training_recipe("paper", "zoom_in")
    assert paper_in["optim"] == {
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "restart_period_epochs": 50,
        "eta_min": 0.0,
    }  # Table 1
    # The reference code's Dice smoothing is machine epsilon (docs/paper.md "Loss").
    assert paper_in["loss"] == {
        "bce_weight": 0.1,
        "dice_weight": 0.9,
        "smooth": sys.float_info.epsilon,
        "batch_dice": True,
    }
    assert training_recipe("paper", "zoom_out")["optim"]["lr"] == 1e-4
    bench = compose_config("bench")
    assert dict(bench.inference) == inference_defaults()
    assert inference_defaults()["overlap"] == 0.5 and inference_defaults()["tta"] is False


def test_sections_and_options_are_checked():
    assert _subset("sections", "train", SECTIONS) == ["train"]
    assert _subset("options", ["fp32", "bf16"], OPTIONS) == ["fp32", "bf16"]
    with pytest.raises(StrokeSegError, match=r"^sections='trian' is not known; use one of train"):
        _subset("sections", ["train", "trian"], SECTIONS)
    with pytest.raises(StrokeSegError, match=r"^options=\[\] is empty"):
        _subset("options", [], OPTIONS)
    with pytest.raises(StrokeSegError, match=r"^threads='two' is not a whole number\.$"):
        run_command(compose_config("bench", ["threads=two"]))
    with pytest.raises(StrokeSegError, match=r"^device='cdua' is not a torch device"):
        run_command(compose_config("bench", ["device=cdua", "sections=[evaluation]"]))


def test_a_bad_section_ends_in_one_sentence_with_status_2(tmp_path):
    proc = run_module("stroke_seg.bench", "sections=[train,trian]", f"out={tmp_path}/r.json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sections='trian' is not known; use one of train, memory, data, inference, "
        "evaluation."
    ]
    assert not (tmp_path / "r.json").exists()


def test_targets_are_judged():
    results = {
        "data": {"ratio_cached_vs_nifti": 12.0},
        "inference": {"centre_crop_s": 61.0},
        "evaluation": {"total_s": 3.0},
        "train": [],
    }
    targets = target_values(results)
    assert set(targets) == set(TARGETS)
    assert targets["data_cached_vs_nifti_ratio"]["met"] is True
    assert targets["inference_centre_crop_s"]["met"] is False
    assert targets["demo_zoom_in_step_s"] == {"value": None, "target": "< 1", "met": None}


def test_quick_benchmark_writes_results_with_the_expected_keys(tmp_path):
    """`python -m stroke_seg.bench quick=true` (what `make bench` runs, with tiny sizes)."""
    out = tmp_path / "bench" / "results.json"
    proc = run_module("stroke_seg.bench", "quick=true", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # Hydra writes nothing
    assert "targets (2-core CPU):" in proc.stdout
    results = json.loads(out.read_text())
    assert {
        "command",
        "quick",
        "machine",
        "presets",
        "matmul_peak",
        *SECTIONS,
        "targets",
        "total_s",
    } <= set(results)
    assert results["quick"] is True and results["machine"]["device"] == "cpu"
    assert results["command"] == f"python -m stroke_seg.bench quick=true out={out}"
    assert results["matmul_peak"]["fp32_flops"] > 0
    train = results["train"]
    assert {(r["preset"], r["crop_name"], r["option"]) for r in train} == {
        (p, c, o) for p in ("demo", "paper") for c in ("zoom_in", "zoom_out") for o in OPTIONS
    }
    for row in train:
        assert row["status"] in ("ok", "skipped", "failed")
        if row["status"] == "ok":
            assert {
                "step_s",
                "crops_per_s",
                "voxels_per_s",
                "achieved_flops",
                "flop_fraction_of_peak",
                "flops_per_step",
            } <= set(row)
        else:
            assert row["reason"]
    assert any(r["status"] == "ok" and r["option"] == "fp32" for r in train)
    memory = results["memory"]
    assert {(r["crop_name"], r["checkpointing"]) for r in memory} == {
        (c, k) for c in ("zoom_in", "zoom_out") for k in (False, True)
    }
    assert all(r["step_memory_gb"] > 0 for r in memory if r["status"] == "ok")
    assert results["data"]["ratio_cached_vs_nifti"] > 0
    assert {"centre_crop_s", "sliding_window_s"} <= set(results["inference"])
    assert results["inference"]["sliding_window_overlap"] == inference_defaults()["overlap"]
    assert results["evaluation"]["n_scans"] == 31 and results["evaluation"]["n_resamples"] == 1000
    assert set(results["targets"]) == set(TARGETS)
