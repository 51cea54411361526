"""Every config key has an effect: keys that code reads, set to a non-default value, and the
effect checked on values, shapes and the files written (the "every key is used and tested"
rule). Training keys go through `compose_train` (the real Hydra config), evaluation and
prediction keys through their entry points' `run`. ``amp`` (float16 autocast) only acts on
CUDA and is not tested here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from stroke_seg.data.datamodule import StrokeDataModule
from stroke_seg.data.discovery import discover
from stroke_seg.data.io import load_case
from stroke_seg.evaluate import run as evaluate
from stroke_seg.inference import Predictor
from stroke_seg.metrics import EmptyPolicy
from stroke_seg.predict import run as predict
from stroke_seg.scoring import score_row
from stroke_seg.stats import bootstrap_ci
from stroke_seg.train import run as train
from tests.helpers import (
    EVAL_FAST,
    LPS_AFFINE,
    ZOOM_OUT_PRE,
    checkpoint_weights,
    compose_eval,
    compose_predict,
    compose_train,
    list_files,
    read_rows,
    save_module_checkpoint,
    tiny_scan,
    write_nifti,
)

# Fixtures from conftest.py: `trained` (a real 2-epoch training run on the tiny set) and
# `ckpt` (an untrained zoom-out checkpoint, crop = eval crop = 24x28x20).

# --------------------------------------------------------------------------------------
# Training: data.*, optim.*, trainer.*
# --------------------------------------------------------------------------------------


def _datamodule(run_dir: Path, root: Path, overrides: list[str] = ()) -> StrokeDataModule:
    """The data module exactly as train.py builds it from the composed config."""
    dm = instantiate(compose_train(run_dir, root, list(overrides)).data)
    dm.setup("fit")
    return dm


def _train(run_dir: Path, root: Path, overrides: list[str] = ()) -> float:
    return train(compose_train(run_dir, root, ["stage.max_epochs=1", *overrides]))


@pytest.fixture(scope="module")
def default_run(tiny_bids, tmp_path_factory) -> Path:
    """One epoch with every key at its default, to compare the other runs against."""
    run_dir = tmp_path_factory.mktemp("config_effects") / "default"
    _train(run_dir, tiny_bids)
    return run_dir


def _epoch_images(dm: StrokeDataModule, epoch: int) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [batch["image"] for batch in loader]


def _split_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "split.json").read_text())


def test_split_file_decides_the_training_subjects(tiny_bids, tmp_path):
    """5/2/1 instead of the generated 6/1/1: split.json and summary.json follow the file."""
    split = {
        "train": [f"sub-r001s{i:03d}" for i in (1, 3, 4, 6, 8)],
        "val": ["sub-r001s002", "sub-r001s007"],
        "test": ["sub-r001s005"],
    }
    split_file = tmp_path / "my_split.json"
    split_file.write_text(json.dumps(split))
    run_dir = tmp_path / "run"
    _train(run_dir, tiny_bids, [f"data.split_file={split_file}"])

    written = _split_json(run_dir)
    assert {k: written[k] for k in ("train", "val", "test")} == split
    assert written["source"] == str(split_file)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["n_train"], summary["n_val"]) == (5, 2)
    assert summary["global_steps"] == 5  # one crop per training scan of the file


def test_split_seed_gives_another_split_of_the_same_sizes(tiny_bids, tmp_path):
    def split(seed: int, folder: str) -> dict:
        dm = _datamodule(tmp_path / folder, tiny_bids, [f"data.split_seed={seed}"])
        written = _split_json(tmp_path / folder)
        assert written["seed"] == seed and written["source"] == "generated"
        assert {k: written[k] for k in ("train", "val", "test")} == dm.split
        return dm.split

    default, other, again = split(0, "a"), split(3, "b"), split(3, "c")
    assert other != default and again == other
    for split_ in (default, other):
        assert [len(split_[k]) for k in ("train", "val", "test")] == [6, 1, 1]
        assert sorted(sum(split_.values(), [])) == [f"sub-r001s{i:03d}" for i in range(1, 9)]


def test_batch_size_two_stacks_crops_and_halves_the_steps(tiny_bids, tmp_path, default_run):
    one = _datamodule(tmp_path / "dm1", tiny_bids)
    two = _datamodule(tmp_path / "dm2", tiny_bids, ["data.batch_size=2"])
    singles, pairs = _epoch_images(one, 0), _epoch_images(two, 0)
    assert [tuple(b.shape) for b in pairs] == [(2, 1, 16, 16, 16)] * 3
    assert [tuple(b.shape) for b in singles] == [(1, 1, 16, 16, 16)] * 6
    # the same crops, two at a time (crops depend on (seed, epoch, index) only)
    assert torch.equal(torch.cat(pairs), torch.cat(singles))
    assert next(iter(two.val_dataloader()))["image"].shape[0] == 1  # validation stays 1

    _train(tmp_path / "bs2", tiny_bids, ["data.batch_size=2"])
    steps = [
        json.loads((folder / "summary.json").read_text())["global_steps"]
        for folder in (default_run, tmp_path / "bs2")
    ]
    assert steps == [6, 3]


def test_intensity_divisor_scales_crops_and_is_stored_for_inference(tiny_bids, tmp_path):
    default = _datamodule(tmp_path / "a", tiny_bids)
    hundred = _datamodule(tmp_path / "b", tiny_bids, ["data.intensity_divisor=100"])
    for key in [(0, 0), (1, 3), (2, 5)]:
        ref = default.train_set[key][0]["image"]
        got = hundred.train_set[key][0]["image"]
        assert float(ref.abs().max()) > 0.3  # a crop with brain in it
        torch.testing.assert_close(got, ref * (255.0 / 100.0), rtol=1e-5, atol=1e-6)
    ref_val = next(iter(default.val_dataloader()))["image"]
    got_val = next(iter(hundred.val_dataloader()))["image"]
    torch.testing.assert_close(got_val, ref_val * 2.55, rtol=1e-5, atol=1e-6)
    assert hundred.preprocessing().intensity_divisor == 100.0
    assert default.preprocessing().intensity_divisor == 255.0


def test_pin_memory_reaches_the_data_loaders(tiny_bids, tmp_path):
    pinned = _datamodule(tmp_path / "a", tiny_bids, ["data.pin_memory=true"])
    assert pinned.train_dataloader().pin_memory is True
    assert pinned.val_dataloader().pin_memory is True
    unpinned = _datamodule(tmp_path / "b", tiny_bids, ["data.pin_memory=false"])
    assert unpinned.train_dataloader().pin_memory is False
    assert unpinned.val_dataloader().pin_memory is False
    auto = _datamodule(tmp_path / "c", tiny_bids)  # null: on exactly when CUDA is there
    assert auto.train_dataloader().pin_memory is torch.cuda.is_available()


def test_num_workers_one_gives_the_same_crops_and_the_same_training(
    tiny_bids, tmp_path, default_run
):
    main = _datamodule(tmp_path / "dm0", tiny_bids)
    worker = _datamodule(tmp_path / "dm1", tiny_bids, ["data.num_workers=1"])
    loader = worker.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
    a, b = _epoch_images(main, 2), _epoch_images(worker, 2)
    assert len(a) == len(b) == 6
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    _train(tmp_path / "nw1", tiny_bids, ["data.num_workers=1"])
    config = (tmp_path / "nw1" / "config.yaml").read_text()
    assert "num_workers: 1" in config
    w0 = checkpoint_weights(default_run / "checkpoints" / "last.ckpt")
    w1 = checkpoint_weights(tmp_path / "nw1" / "checkpoints" / "last.ckpt")
    assert w0.keys() == w1.keys()
    for key, value in w0.items():
        torch.testing.assert_close(w1[key], value, rtol=0, atol=1e-6)


def _lrs(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    return [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]


def test_weight_decay_and_eta_min_reach_the_optimiser_and_scheduler(
    tiny_bids, tmp_path, default_run
):
    run_dir = tmp_path / "run"
    _train(run_dir, tiny_bids, ["optim.weight_decay=0.05", "optim.eta_min=2e-4"])
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (group,) = ckpt["optimizer_states"][0]["param_groups"]
    assert group["weight_decay"] == 0.05 and group["lr"] > 0
    (scheduler,) = ckpt["lr_schedulers"]
    assert scheduler["eta_min"] == 2e-4 and scheduler["T_0"] == 6  # 1 epoch of 6 steps
    # cosine from 1e-3 down towards eta_min: half-way (step 3 of 6) is their mean
    lrs = _lrs(run_dir)
    assert len(lrs) == 6 and lrs[0] == pytest.approx(1e-3)
    assert lrs[3] == pytest.approx((1e-3 + 2e-4) / 2)
    assert min(lrs) > 2e-4

    # the defaults (1e-4, 0) give other values, and other weights
    last = default_run / "checkpoints" / "last.ckpt"
    ckpt0 = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt0["optimizer_states"][0]["param_groups"][0]["weight_decay"] == 1e-4
    assert ckpt0["lr_schedulers"][0]["eta_min"] == 0.0
    assert _lrs(default_run)[3] == pytest.approx(0.5e-3)
    w_default, w_decay = ckpt0["state_dict"], ckpt["state_dict"]
    assert any(not torch.equal(w_decay[k], v) for k, v in w_default.items())


def test_bf16_mixed_precision_trains_on_cpu_with_float32_weights(tiny_bids, tmp_path, default_run):
    val_dsc = _train(tmp_path / "bf16", tiny_bids, ["trainer.precision=bf16-mixed"])
    assert math.isfinite(val_dsc) and 0.0 <= val_dsc <= 1.0
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["final_val_dsc"] == val_dsc and summary["global_steps"] == 6
    rows = list(csv.DictReader((tmp_path / "bf16" / "logs" / "metrics.csv").open()))
    logged = [float(r["val/dsc"]) for r in rows if r.get("val/dsc")]
    assert logged and all(math.isfinite(v) for v in logged)
    bf16 = checkpoint_weights(tmp_path / "bf16" / "checkpoints" / "last.ckpt")
    assert {v.dtype for v in bf16.values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in bf16.values() if v.is_floating_point())
    # bf16 autocast really ran: the same run in 32-true ends with other weights
    fp32 = checkpoint_weights(default_run / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(bf16[k], v) for k, v in fp32.items() if v.is_floating_point())


def test_deterministic_runs_give_identical_weights(tiny_bids, tmp_path, monkeypatch):
    # Lightning switches torch's global flag on (and sets CUBLAS_WORKSPACE_CONFIG) for the
    # process; both are put back afterwards so that no other test runs under them.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        _train(tmp_path / "a", tiny_bids, ["trainer.deterministic=true"])
        assert torch.are_deterministic_algorithms_enabled()
        _train(tmp_path / "b", tiny_bids, ["trainer.deterministic=true"])
    finally:
        torch.use_deterministic_algorithms(before)
    a = checkpoint_weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = checkpoint_weights(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------
# Evaluation: split, bootstrap.seed, tta, overlap
# --------------------------------------------------------------------------------------


def _evaluate(trained: Path, root: Path, out: Path, overrides: list[str]) -> list[dict]:
    ckpt = trained / "checkpoints" / "last.ckpt"
    evaluate(
        compose_eval([f"ckpt={ckpt}", f"data.root={root}", f"output={out}", *EVAL_FAST, *overrides])
    )
    return read_rows(out / "cases.csv")


@pytest.mark.parametrize("split", ["val", "all"])
def test_evaluate_split_lists_exactly_its_subjects(trained, tiny_bids, tmp_path, split):
    run_split = _split_json(trained)
    rows = _evaluate(trained, tiny_bids, tmp_path / "out", [f"split={split}"])
    if split == "all":
        expected = [c.subject for c in discover(tiny_bids, "synthetic")]
        assert len(expected) == 8
    else:
        expected = run_split["val"]
        assert set(expected).isdisjoint(run_split["test"])
    assert [r["subject"] for r in rows] == expected
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"] == len(expected)
    assert f"{split}: {len(expected)} scans" in (tmp_path / "out" / "report.md").read_text()


def _shifted_predictions(folder: Path, root: Path) -> None:
    """Each reference mask shifted by a different number of voxels: DSC from 1 downwards."""
    for shift, case in enumerate(discover(root, "synthetic")):
        mask = nib.load(str(case.masks[0]))
        data = np.roll(np.asarray(mask.dataobj).astype(np.uint8), shift, axis=0)
        write_nifti(folder / f"{case.subject}_lesion_mask.nii.gz", data, mask.affine)


def test_bootstrap_seed_changes_the_intervals_and_reproduces_them(tiny_bids, tmp_path):
    preds = tmp_path / "preds"
    _shifted_predictions(preds, tiny_bids)

    def summary(seed: int, name: str) -> tuple[dict, list[float]]:
        out = tmp_path / name
        evaluate(
            compose_eval(
                [
                    f"predictions={preds}",
                    f"labels={tiny_bids}",
                    f"output={out}",
                    "bootstrap.n_resamples=200",
                    f"bootstrap.seed={seed}",
                ]
            )
        )
        assert f"200 resamples, seed {seed}" in (out / "report.md").read_text()
        dsc = [float(r["dsc"]) for r in read_rows(out / "cases.csv")]
        return json.loads((out / "summary.json").read_text()), dsc

    (s0, dsc0), (s7, dsc7), (again, _) = summary(0, "s0"), summary(7, "s7"), summary(7, "s7b")
    assert dsc0 == dsc7 and len(set(dsc0)) > 4  # the same scores, spread out
    assert s7 == again  # the same seed reproduces every interval
    ci0, ci7 = s0["metrics"]["dsc"]["ci95"], s7["metrics"]["dsc"]["ci95"]
    assert ci0 != ci7
    assert s0["metrics"]["dsc"]["mean"] == s7["metrics"]["dsc"]["mean"]
    for seed, ci in ((0, ci0), (7, ci7)):
        assert ci == pytest.approx(list(bootstrap_ci(dsc0, n_resamples=200, seed=seed)))


def _direct_mdsc(ckpt: Path, root: Path, subjects: list[str], **kwargs) -> list[float]:
    """mDSC of each scan from a `Predictor` built with ``kwargs``, without evaluate.py."""
    inference = {**compose_eval([]).inference, "device": "cpu", **kwargs}
    predictor = Predictor.from_config(ckpt, inference)
    by_id = {c.subject: c for c in discover(root, "synthetic")}
    out = []
    for subject in subjects:
        loaded = load_case(by_id[subject])
        result = predictor.predict(loaded["image"], loaded["affine"])
        row = score_row(
            subject,
            result.mask,
            loaded["label"],
            loaded["spacing"],
            result.prob,
            EmptyPolicy.from_name("worst_case"),
            result.mode,
        )
        out.append(row["mdsc"])
    return out


def test_evaluate_tta_averages_flips(trained, tiny_bids, tmp_path):
    """The run's test scan, with and without the 8 flips: mDSC (from the probability map)
    moves, and the TTA value is the one a TTA `Predictor` gives."""
    plain = _evaluate(trained, tiny_bids, tmp_path / "plain", [])
    tta = _evaluate(trained, tiny_bids, tmp_path / "tta", ["inference.tta=true"])
    subjects = [r["subject"] for r in plain]
    assert [r["subject"] for r in tta] == subjects == _split_json(trained)["test"]
    plain_mdsc = [float(r["mdsc"]) for r in plain]
    tta_mdsc = [float(r["mdsc"]) for r in tta]
    assert plain_mdsc != tta_mdsc
    ckpt = trained / "checkpoints" / "last.ckpt"
    direct = _direct_mdsc(ckpt, tiny_bids, subjects, mode="centre_crop", tta=True)
    assert tta_mdsc == pytest.approx(direct, rel=1e-6)
    assert "tta=True" in (tmp_path / "tta" / "report.md").read_text()


def test_evaluate_overlap_acts_on_sliding_windows_only(trained, tiny_bids, tmp_path):
    """16³ windows over the 24x28x20 scan: 12 windows at overlap 0.5, 8 at 0.25."""

    def mdsc(name: str, overrides: list[str]) -> tuple[list[float], set[str]]:
        rows = _evaluate(trained, tiny_bids, tmp_path / name, overrides)
        return [float(r["mdsc"]) for r in rows], {r["mode"] for r in rows}

    sw = ["inference.mode=sliding_window"]
    (half, modes), (quarter, _) = mdsc("sw50", sw), mdsc("sw25", [*sw, "inference.overlap=0.25"])
    assert modes == {"sliding_window"}
    assert half != quarter
    subjects = _split_json(trained)["test"]
    ckpt = trained / "checkpoints" / "last.ckpt"
    direct = _direct_mdsc(ckpt, tiny_bids, subjects, mode="sliding_window", overlap=0.25)
    assert quarter == pytest.approx(direct, rel=1e-6)
    report = (tmp_path / "sw25" / "report.md").read_text()
    assert "mode=sliding_window, overlap=0.25, tta=False" in report  # the report says which
    # the centre crop has no windows: overlap changes nothing there
    crop_half, crop_modes = mdsc("cc50", [])
    crop_quarter, _ = mdsc("cc25", ["inference.overlap=0.25"])
    assert crop_modes == {"centre_crop"} and crop_half == crop_quarter


# --------------------------------------------------------------------------------------
# Prediction: pattern, mode, overlap
# --------------------------------------------------------------------------------------


def _prob(out: Path, name: str) -> np.ndarray:
    return np.asarray(nib.load(str(out / f"{name}_lesion_prob.nii.gz")).dataobj)


def _lesion_rows(out: Path) -> dict[str, dict]:
    return {r["scan"]: r for r in csv.DictReader((out / "lesions.csv").open())}


def test_pattern_selects_the_files_to_predict(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    for rel in ("a_T1w.nii.gz", "sub/b_T1w.nii", "a_mask.nii.gz", "c_flair.nii.gz"):
        image, _ = tiny_scan(rng)
        write_nifti(inputs / rel, image)
    out = tmp_path / "out"
    rows = predict(
        compose_predict(
            [f"ckpt={ckpt}", f"input={inputs}", f"output={out}", "pattern=*T1w.nii*", "qc=false"]
        )
    )
    assert [r["scan"] for r in rows] == ["a_T1w", "b_T1w"]
    assert list_files(out) == sorted(
        ["lesions.csv"] + [f"{n}_T1w_lesion_{k}.nii.gz" for n in "ab" for k in ("mask", "prob")]
    )
    assert set(_lesion_rows(out)) == {"a_T1w", "b_T1w"}
    everything = tmp_path / "all"
    rows = predict(
        compose_predict([f"ckpt={ckpt}", f"input={inputs}", f"output={everything}", "qc=false"])
    )
    assert {r["scan"] for r in rows} == {"a_T1w", "b_T1w", "a_mask", "c_flair"}


def _big_scan(folder: Path, shape=(30, 34, 26)) -> Path:
    image, _ = tiny_scan(np.random.default_rng(5), shape=shape)
    return write_nifti(folder / "big_T1w.nii.gz", image)  # the training grid, > eval crop


@pytest.mark.parametrize("mode", ["centre_crop", "sliding_window"])
def test_prediction_mode_keeps_the_input_grid(ckpt, tmp_path, mode):
    inputs = tmp_path / "in"
    big = _big_scan(inputs)
    other, _ = tiny_scan(np.random.default_rng(6), shape=(32, 36, 26))
    write_nifti(inputs / "lps_T1w.nii.gz", other, LPS_AFFINE)  # resampled and brought back
    out = tmp_path / "out"
    predict(
        compose_predict(
            [
                f"ckpt={ckpt}",
                f"input={inputs}",
                f"output={out}",
                f"inference.mode={mode}",
                "qc=false",
            ]
        )
    )
    rows = _lesion_rows(out)
    assert {r["mode"] for r in rows.values()} == {mode}
    for name, source in (("big_T1w", big), ("lps_T1w", inputs / "lps_T1w.nii.gz")):
        src = nib.load(str(source))
        for kind in ("mask", "prob"):
            img = nib.load(str(out / f"{name}_lesion_{kind}.nii.gz"))
            assert img.shape == src.shape
            np.testing.assert_array_equal(img.affine, src.affine)
    prob = _prob(out, "big_T1w")
    crop = tuple(ZOOM_OUT_PRE["eval_crop"])
    lo = [(d - c) // 2 for d, c in zip(prob.shape, crop, strict=True)]
    inside = np.zeros(prob.shape, bool)
    inside[tuple(slice(s, s + c) for s, c in zip(lo, crop, strict=True))] = True
    assert (prob[inside] > 0).all()  # sigmoid never reaches 0
    if mode == "centre_crop":
        assert (prob[~inside] == 0).all()  # the paper's protocol: outside the crop is negative
    else:
        assert (prob[~inside] > 0).all()  # windows cover the whole scan


def test_prediction_overlap_changes_sliding_windows_slightly(tmp_path):
    """A model trained on 16³ crops over a 24x28x20 scan: 12 windows at overlap 0.5, 8 at 0."""
    model = save_module_checkpoint(
        tmp_path / "small.ckpt", {**ZOOM_OUT_PRE, "crop_size": [16, 16, 16]}
    )
    image, _ = tiny_scan(np.random.default_rng(7))
    scan = write_nifti(tmp_path / "in" / "one_T1w.nii.gz", image)

    def prob(name: str, overrides: list[str]) -> np.ndarray:
        out = tmp_path / name
        args = [f"ckpt={model}", f"input={scan}", f"output={out}", "qc=false", *overrides]
        rows = predict(compose_predict(args))
        assert rows[0]["mode"] == (
            "centre_crop" if "inference.mode=centre_crop" in overrides else "sliding_window"
        )
        return _prob(out, "one_T1w")

    half, none = prob("a", []), prob("b", ["inference.overlap=0"])  # auto: sliding windows here
    again = prob("c", ["inference.mode=sliding_window", "inference.overlap=0.5"])
    assert half.shape == none.shape == image.shape
    assert np.array_equal(half, again)
    diff = np.abs(half - none)
    assert diff.max() > 1e-4  # other windows, other probabilities ...
    assert diff.mean() < 0.1 * half.mean()  # ... from the same model
    centre = "inference.mode=centre_crop"
    crop = prob("d", [centre]), prob("e", [centre, "inference.overlap=0"])
    assert np.array_equal(*crop)  # no windows, nothing to overlap
