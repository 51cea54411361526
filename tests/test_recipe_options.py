"""Recipe options of issue 10 (each one config key, off for experiment=paper): each changes
what it claims to change, on values and files (the config-effects pattern)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from monai.losses import DeepSupervisionLoss

from stroke_seg.data.discovery import discover
from stroke_seg.data.io import load_case
from stroke_seg.data.splits import make_split
from stroke_seg.errors import StrokeSegError
from stroke_seg.evaluate import run as evaluate
from stroke_seg.inference import Predictor
from stroke_seg.lit_module import LesionSegModule
from stroke_seg.postprocess import choose_min_lesion_mm3, component_stats, remove_small_components
from stroke_seg.predict import run as predict
from stroke_seg.train import check_snapshot_epochs
from stroke_seg.train import run as train
from tests.helpers import (
    EVAL_FAST,
    checkpoint_weights,
    compose_eval,
    compose_predict,
    compose_train,
    inference_options,
    read_rows,
    save_module_checkpoint,
    tiny_preprocessing,
)

EPS = sys.float_info.epsilon


# --------------------------------------------------------------------------------------
# loss.smooth
# --------------------------------------------------------------------------------------


def test_loss_smooth_default_is_machine_epsilon_and_reaches_the_module(tiny_bids, tmp_path):
    default = compose_train(tmp_path / "a", tiny_bids)
    assert default.loss.smooth == EPS
    one = compose_train(tmp_path / "b", tiny_bids, ["loss.smooth=1.0"])
    modules = [
        LesionSegModule(net=dict(c.model), loss=dict(c.loss), optim=dict(c.optim))
        for c in (default, one)
    ]
    assert [m.loss_fn.smooth for m in modules] == [EPS, 1.0]
    # the same empty-lesion batch: Dice term 1 (no gradient) with eps, < 1 with eps = 1
    logits, target = torch.full((1, 1, 8, 8, 8), -4.0), torch.zeros(1, 1, 8, 8, 8)
    dice = [float(m.loss_fn.terms(logits, target)[1]) for m in modules]
    assert dice[0] == 1.0 and 0.5 < dice[1] < 0.95


# --------------------------------------------------------------------------------------
# model.deep_supervision
# --------------------------------------------------------------------------------------

THREE_LEVELS = ["model.widths=[4,8,16]", "model.groups=2"]


def test_deep_supervision_trains_extra_heads_and_infers_with_the_full_head(tiny_bids, tmp_path):
    plain_dir, ds_dir = tmp_path / "plain", tmp_path / "ds"
    train(compose_train(plain_dir, tiny_bids, ["stage.max_epochs=1", *THREE_LEVELS]))
    train(
        compose_train(
            ds_dir, tiny_bids, ["stage.max_epochs=1", *THREE_LEVELS, "model.deep_supervision=true"]
        )
    )
    plain = checkpoint_weights(plain_dir / "checkpoints" / "last.ckpt")
    ds = checkpoint_weights(ds_dir / "checkpoints" / "last.ckpt")
    assert sorted(set(ds) - set(plain)) == ["net.ds_heads.0.bias", "net.ds_heads.0.weight"]
    # the extra loss changed the shared weights too
    assert any(not torch.equal(ds[k], v) for k, v in plain.items() if v.is_floating_point())
    # inference rebuilds the deep-supervision net and returns one full-resolution map
    predictor = Predictor.from_checkpoints(
        ds_dir / "checkpoints" / "last.ckpt", **inference_options()
    )
    case = discover(tiny_bids, "synthetic")[0]
    loaded = load_case(case)
    result = predictor.predict(loaded["image"], loaded["affine"])
    assert result.prob.shape == loaded["image"].shape


def test_deep_supervision_training_step_uses_the_weighted_loss(tiny_bids, tmp_path):
    cfg = compose_train(tmp_path, tiny_bids, [*THREE_LEVELS, "model.deep_supervision=true"])
    torch.manual_seed(0)
    module = LesionSegModule(net=dict(cfg.model), loss=dict(cfg.loss), optim=dict(cfg.optim))
    module.train()
    x = torch.rand(1, 1, 16, 16, 16)
    y = (torch.rand(1, 1, 16, 16, 16) > 0.8).float()
    outs = module(x)
    assert isinstance(outs, list) and len(outs) == 2
    ref = DeepSupervisionLoss(module.loss_fn, weights=[2 / 3, 1 / 3])(outs, y)
    assert float(module.ds_loss(outs, y)) == pytest.approx(float(ref))
    assert abs(float(ref) - float(module.loss_fn(outs[0], y))) > 1e-4  # not the plain loss


# --------------------------------------------------------------------------------------
# min_lesion_mm3 (evaluate and predict share stroke_seg.postprocess)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_ckpt(tmp_path_factory) -> Path:
    """An untrained zoom-out model: its masks are many small islands."""
    folder = tmp_path_factory.mktemp("post_ckpt")
    return save_module_checkpoint(folder / "model.ckpt", tiny_preprocessing(), seed=3)


def _eval(ckpt: Path, root: Path, out: Path, extra: list[str]) -> list[dict[str, str]]:
    overrides = [f"ckpt={ckpt}", f"data.root={root}", f"output={out}", *EVAL_FAST, *extra]
    evaluate(compose_eval(overrides))
    return read_rows(out / "cases.csv")


def test_min_lesion_mm3_removes_small_components_in_evaluation(noisy_ckpt, tiny_bids, tmp_path):
    plain = _eval(noisy_ckpt, tiny_bids, tmp_path / "a", [])
    post = _eval(noisy_ckpt, tiny_bids, tmp_path / "b", ["min_lesion_mm3=40"])
    assert [r["subject"] for r in plain] == [r["subject"] for r in post]
    # by hand: the predictor's mask without the components below 40 mm³ (2 mm voxels)
    predictor = Predictor.from_checkpoints(noisy_ckpt, **inference_options(mode="centre_crop"))
    cases = {c.subject: c for c in discover(tiny_bids, "synthetic")}
    for a, b in zip(plain, post, strict=True):
        loaded = load_case(cases[a["subject"]])
        mask = predictor.predict(loaded["image"], loaded["affine"]).mask
        kept = remove_small_components(mask, loaded["spacing"], 40.0)
        assert int(a["pred_voxels"]) == int(mask.sum())
        assert int(b["pred_voxels"]) == int(kept.sum())
    assert sum(int(r["pred_voxels"]) for r in post) < sum(int(r["pred_voxels"]) for r in plain)
    assert "min_lesion_mm3=40" in (tmp_path / "b" / "report.md").read_text()


def test_min_lesion_mm3_auto_is_chosen_on_the_val_scans(noisy_ckpt, tiny_bids, tmp_path):
    out = tmp_path / "auto"
    _eval(noisy_ckpt, tiny_bids, out, ["min_lesion_mm3=auto"])
    (name, record), *_ = json.loads((out / "postprocessing.json").read_text()).items()
    # the same rule by hand on the val split that training would use
    cases = {c.subject: c for c in discover(tiny_bids, "synthetic")}
    split = make_split(list(cases), 0, (182, 26, 31))
    predictor = Predictor.from_checkpoints(noisy_ckpt, **inference_options(mode="centre_crop"))
    stats = []
    for subject in split["val"]:
        loaded = load_case(cases[subject])
        mask = predictor.predict(loaded["image"], loaded["affine"]).mask
        stats.append(component_stats(mask, loaded["label"], loaded["spacing"]))
    want = choose_min_lesion_mm3(stats)
    assert record["min_lesion_mm3"] == want["min_lesion_mm3"]
    assert record["baseline_dsc"] == pytest.approx(want["baseline_dsc"])
    assert record["n_scans"] == len(split["val"]) and record["connectivity"] == 6
    # the file can be passed back: the test split is post-processed with the chosen value
    again = _eval(
        noisy_ckpt, tiny_bids, tmp_path / "again", [f"min_lesion_mm3={out}/postprocessing.json"]
    )
    by_number = _eval(
        noisy_ckpt, tiny_bids, tmp_path / "num", [f"min_lesion_mm3={record['min_lesion_mm3']}"]
    )
    assert [r["pred_voxels"] for r in again] == [r["pred_voxels"] for r in by_number]


def test_min_lesion_mm3_in_predict_and_its_refusals(noisy_ckpt, tiny_bids, tmp_path):
    scan = discover(tiny_bids, "synthetic")[0].image

    def mask_voxels(name: str, extra: list[str]) -> int:
        rows = predict(
            compose_predict(
                [f"ckpt={noisy_ckpt}", f"input={scan}", f"output={tmp_path / name}", "qc=false"]
                + extra
            )
        )
        return int(rows[0]["lesion_voxels"])

    assert mask_voxels("b", ["min_lesion_mm3=40"]) < mask_voxels("a", [])
    with pytest.raises(StrokeSegError, match="min_lesion_mm3=-3"):
        predict(
            compose_predict(
                [f"ckpt={noisy_ckpt}", f"input={scan}", f"output={tmp_path / 'c'}"]
                + ["min_lesion_mm3=-3"]
            )
        )
    with pytest.raises(StrokeSegError, match="min_lesion_mm3 post-processes predictions made"):
        evaluate(
            compose_eval(
                [f"predictions={tmp_path / 'a'}", f"labels={tiny_bids}", "min_lesion_mm3=10"]
                + [f"output={tmp_path / 'd'}"]
            )
        )


# --------------------------------------------------------------------------------------
# augmentation=appearance
# --------------------------------------------------------------------------------------


def test_appearance_augmentation_changes_intensities_only(tiny_bids, tmp_path):
    cfg = compose_train(tmp_path / "a", tiny_bids, ["augmentation=appearance"])
    dm = instantiate(cfg.data, run_dir=None)
    kinds = [type(t).__name__ for t in dm.augment]
    assert kinds == [
        "RandGaussianNoised",
        "RandScaleIntensityd",
        "RandAdjustContrastd",
        "EnsureTyped",
        "RandBiasFieldd",
        "RandGaussianSmoothd",
        "RandSimulateLowResolutiond",
        "RandLesionIntensityd",
    ]
    dm.setup("fit")
    plain = instantiate(compose_train(tmp_path / "b", tiny_bids).data, run_dir=None)
    plain.setup("fit")
    changed = 0
    for key in [(e, i) for e in range(4) for i in range(3)]:
        a, b = dm.train_set[key][0], plain.train_set[key][0]
        assert torch.equal(a["label"], b["label"])  # no geometry: the same crop, same mask
        assert a["image"].shape == b["image"].shape
        changed += not torch.equal(a["image"], b["image"])
        again = dm.train_set[key][0]
        assert torch.equal(a["image"], again["image"])  # seeded from (seed, epoch, scan)
    assert changed >= 6


def test_lesion_intensity_scales_the_lesion_voxels_only():
    from stroke_seg.data.augment import RandLesionIntensityd

    image = torch.full((1, 6, 6, 6), 0.5)
    label = torch.zeros(1, 6, 6, 6)
    label[0, 2:4, 2:4, 2:4] = 1
    t = RandLesionIntensityd(1.0, (1.5, 2.0))
    t.set_random_state(0)
    out = t({"image": image, "label": label})["image"]
    factor = float(out[0, 2, 2, 2] / 0.5)
    assert 1.5 <= factor <= 2.0
    assert torch.equal(out[label == 0], image[label == 0])
    assert torch.allclose(out[label > 0], torch.full((8,), 0.5 * factor))


def test_lesion_intensity_with_a_soft_edge_fades_in_over_the_border():
    """lesion_edge_sigma > 0: the full factor on the lesion and its border voxels, a partial
    one just outside, none far away; the same draw as the hard edge for the same seed."""
    from stroke_seg.data.augment import RandLesionIntensityd

    image = torch.full((1, 16, 16, 16), 0.5)
    label = torch.zeros(1, 16, 16, 16)
    label[0, 6:10, 6:10, 6:10] = 1
    t = RandLesionIntensityd(1.0, (1.5, 2.0), edge_sigma=1.0)
    t.set_random_state(0)
    out = t({"image": image, "label": label})["image"][0]
    hard = RandLesionIntensityd(1.0, (1.5, 2.0))
    hard.set_random_state(0)
    factor = float(hard({"image": image, "label": label})["image"][0, 7, 7, 7] / 0.5)
    assert torch.allclose(out[label[0] > 0], torch.full((64,), 0.5 * factor))
    ring = float(out[10, 8, 8] / 0.5)  # one voxel outside a face: part of the factor
    assert 1.0 < ring < factor
    assert float(out[13, 8, 8]) == pytest.approx(0.5, abs=1e-3)  # 4 sigma out: all but untouched
    assert float(out[0, 0, 0]) == 0.5


# --------------------------------------------------------------------------------------
# stage.snapshot_epochs and the train/val-only split
# --------------------------------------------------------------------------------------


def test_snapshot_epochs_off_the_cycle_ends_or_the_stage_are_warned(tiny_bids, tmp_path, caplog):
    def cfg(epochs: str, period: int = 2):
        return compose_train(
            tmp_path,
            tiny_bids,
            ["stage.max_epochs=6", f"stage.snapshot_epochs={epochs}"]
            + [f"optim.restart_period_epochs={period}"],
        )

    assert check_snapshot_epochs(cfg("[2,4,6]")) == []  # the demo's: cycle ends
    with caplog.at_level(logging.WARNING, logger="stroke_seg.train"):
        warned = check_snapshot_epochs(cfg("[3,6,8]"))
    assert warned == [
        "stage.snapshot_epochs [3, 6, 8]: [8] outside 1..6 (stage.max_epochs) will not be saved",
        "stage.snapshot_epochs [3, 6, 8]: [3] not at the end of a cosine cycle (every 2 epochs); "
        "snapshot ensembles take the models at cycle ends",
    ]
    assert "[8] outside 1..6" in caplog.text and "[3] not at the end" in caplog.text


def test_zero_test_proportion_gives_a_train_val_split():
    subjects = [f"s{i:02d}" for i in range(40)]
    split = make_split(subjects, 0, (34, 6, 0))
    assert [len(split[k]) for k in ("train", "val", "test")] == [34, 6, 0]
    assert len(make_split(subjects, 0, (34, 6, 1))["test"]) == 1  # a small share still >= 1


# --------------------------------------------------------------------------------------
# bf16: the loss stays float32 in a real bf16-mixed training step
# --------------------------------------------------------------------------------------


def test_bf16_mixed_training_step_computes_the_loss_in_float32(tiny_bids, tmp_path):
    cfg = compose_train(tmp_path, tiny_bids)
    module = LesionSegModule(net=dict(cfg.model), loss=dict(cfg.loss), optim=dict(cfg.optim))
    x = torch.rand(1, 1, 16, 16, 16)
    batch = {"image": x, "label": (torch.rand(1, 1, 16, 16, 16) > 0.8).float()}
    seen = {}
    original = module.loss_fn.dice.forward

    def spy(logits, target):
        seen["dice_input"] = logits.dtype
        out = original(logits, target)
        seen["dice_output"] = out.dtype
        return out

    module.loss_fn.dice.forward = spy
    module.log = lambda *a, **k: None  # no trainer attached
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.training_step(batch, 0)
        assert module(x).dtype == torch.bfloat16  # the network itself runs in bf16
    assert loss.dtype == torch.float32
    assert seen == {"dice_input": torch.float32, "dice_output": torch.float32}
    assert np.isfinite(float(loss))


def test_loss_batch_dice_reaches_the_module(tiny_bids, tmp_path):
    default = compose_train(tmp_path / "a", tiny_bids)
    per_crop = compose_train(tmp_path / "b", tiny_bids, ["loss.batch_dice=false"])
    modules = [
        LesionSegModule(net=dict(c.model), loss=dict(c.loss), optim=dict(c.optim))
        for c in (default, per_crop)
    ]
    assert [m.loss_fn.dice.batch for m in modules] == [True, False]


# --------------------------------------------------------------------------------------
# trainer.precision=auto
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "chosen"), [(True, "bf16-mixed"), (False, "32-true")])
def test_precision_auto_picks_bf16_only_where_it_is_native(monkeypatch, native, chosen):
    from stroke_seg import precision

    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: native)
    assert precision.resolve_precision("auto", "cpu") == chosen
    # explicit values pass through whatever the hardware
    assert precision.resolve_precision("32-true", "cpu") == "32-true"
    assert precision.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_explicit_bf16_on_emulating_hardware_is_warned(monkeypatch, caplog):
    from stroke_seg import precision

    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: False)
    with caplog.at_level(logging.WARNING, logger="stroke_seg.precision"):
        precision.resolve_precision("bf16-mixed", "cpu")
    assert "no native bf16" in caplog.text and "trainer.precision=auto" in caplog.text
    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stroke_seg.precision"):
        precision.resolve_precision("bf16-mixed", "cpu")
    assert caplog.text == ""


def test_precision_auto_is_resolved_before_the_run_folder_records_it(
    tiny_bids, tmp_path, monkeypatch
):
    from stroke_seg import precision

    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: False)
    cfg = compose_train(tmp_path / "run", tiny_bids, ["trainer.precision=auto"])
    train(cfg)
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert "precision: 32-true" in written and "precision: auto" not in written
