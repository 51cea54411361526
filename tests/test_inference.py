"""Inference: the paper's centre crop, sliding windows, ensembles, flip TTA and resampling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stroke_seg.data.preprocessing import Preprocessing
from stroke_seg.errors import StrokeSegError
from stroke_seg.inference import (
    LoadedModel,
    Predictor,
    centre_crop_slices,
    check_inference_options,
    load_model,
    on_training_grid,
    predict_centre_crop,
    predict_sliding_window,
    probability_fn,
    resolve_device,
    scale_intensity,
)
from stroke_seg.models import ResUNet3D
from tests.helpers import inference_options as options
from tests.helpers import tiny_preprocessing

PRE = tiny_preprocessing(crop_size=[16, 16, 16])


class ConstantLogit(nn.Module):
    """Logit 2 everywhere; remembers the input shapes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return torch.full_like(x, 2.0)


class DarkIsLesion(nn.Module):
    """Voxel-wise and so flip-equivariant: scaled intensity below 0.37 is lesion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.37 - x) * 40.0


class RampAlongX(nn.Module):
    """Ignores the input: a logit ramp along x, so flips are visible in the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3, 3, x.shape[2], device=x.device)[None, None, :, None, None]
        return ramp.expand_as(x).clone()


def _sphere_scan(shape, affine, centre_mm, radius_mm=11.0):
    """Bright background (150) with a dark (40) sphere given in world millimetres."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    lesion = np.linalg.norm(xyz - np.asarray(centre_mm), axis=-1) < radius_mm
    return np.where(lesion, 40.0, 150.0).astype(np.float32), lesion.astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _save_ckpt(path: Path, net: nn.Module, net_kwargs: dict, preprocessing=PRE, **extra) -> Path:
    """A checkpoint in the training format (plain data, `net.` prefixed weights)."""
    hparams = {"net": net_kwargs, "preprocessing": preprocessing, "threshold": 0.5, **extra}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    kwargs = {"widths": [4, 8], "groups": 2, "checkpointing": False}
    return _save_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", ResUNet3D(**kwargs), kwargs)


# --------------------------------------------------------------------------------------
# Spatial strategies
# --------------------------------------------------------------------------------------


def test_centre_crop_matches_the_paper_indices_and_zeroes_the_rest():
    stub = ConstantLogit()
    volume = torch.zeros(197, 233, 189)
    prob = predict_centre_crop(probability_fn([stub]), volume, (144, 172, 168))
    assert stub.shapes == [(1, 1, 144, 172, 168)]
    inside = torch.zeros_like(prob, dtype=torch.bool)
    inside[26:170, 30:202, 10:178] = True
    assert torch.allclose(prob[inside], torch.sigmoid(torch.tensor(2.0)))
    assert torch.count_nonzero(prob[~inside]) == 0
    assert prob.shape == volume.shape


def test_centre_crop_pads_a_small_volume_like_monai():
    volume_slices, input_slices = centre_crop_slices((10, 20, 5), (16, 16, 8))
    assert volume_slices == (slice(0, 10), slice(2, 18), slice(0, 5))
    assert input_slices == (slice(3, 13), slice(0, 16), slice(1, 6))
    seen = {}

    def prob_fn(x):
        seen["input"] = x.clone()
        return torch.sigmoid(torch.full_like(x, 2.0))

    volume = torch.rand(10, 20, 5) + 1.0
    prob = predict_centre_crop(prob_fn, volume, (16, 16, 8))
    assert torch.equal(seen["input"][0, 0, 3:13, :, 1:6], volume[:, 2:18, :])
    assert seen["input"][0, 0, :3].abs().sum() == 0
    assert torch.count_nonzero(prob[:, :2]) == 0 and torch.count_nonzero(prob[:, 18:]) == 0
    assert torch.all(prob[:, 2:18] > 0.5)


def test_sliding_window_covers_the_volume_with_training_sized_windows():
    stub = ConstantLogit()
    volume = torch.rand(30, 41, 19)
    prob = predict_sliding_window(probability_fn([stub]), volume, (16, 16, 16), overlap=0.5)
    assert prob.shape == volume.shape
    assert set(stub.shapes) == {(1, 1, 16, 16, 16)}
    assert torch.allclose(prob, torch.sigmoid(torch.tensor(2.0)))
    # A voxel-wise model gives the voxel-wise result whatever the window weights.
    dark = predict_sliding_window(probability_fn([DarkIsLesion()]), volume, (16, 16, 16))
    assert torch.allclose(dark, torch.sigmoid((0.37 - volume) * 40.0), atol=1e-6)


def test_flip_tta_averages_over_undone_flips():
    volume = torch.rand(12, 10, 8)
    plain = probability_fn([DarkIsLesion()])(volume[None, None])
    tta = probability_fn([DarkIsLesion()], tta=True)(volume[None, None])
    assert torch.allclose(plain, tta, atol=1e-6)  # equivariant model: TTA changes nothing
    ramp = probability_fn([RampAlongX()], tta=True)(volume[None, None])[0, 0]
    # Half the passes see x flipped and flip their output back: the mean is symmetric in x.
    assert torch.allclose(ramp, ramp.flip(0), atol=1e-6)
    assert torch.allclose(ramp, torch.full_like(ramp, ramp.mean()), atol=1e-6)


# --------------------------------------------------------------------------------------
# Checkpoints and ensembles
# --------------------------------------------------------------------------------------


def test_ensemble_of_identical_checkpoints_equals_the_single_model(tiny_ckpt, tmp_path):
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(tiny_ckpt.read_bytes())
    image = np.random.default_rng(0).uniform(0, 200, (24, 28, 20)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    single = Predictor.from_checkpoints(tiny_ckpt, **options(mode="centre_crop"))
    both = Predictor.from_checkpoints([tiny_ckpt, copy], **options(mode="centre_crop"))
    expected = single.predict(image, affine).prob
    assert 0.0 < expected.min() and expected.max() < 1.0  # a real network, not a constant
    np.testing.assert_allclose(both.predict(image, affine).prob, expected, atol=1e-6)


def test_load_model_rebuilds_the_net_in_eval_mode(tiny_ckpt):
    loaded = load_model(tiny_ckpt)
    assert not loaded.net.training and loaded.threshold == 0.5
    assert loaded.preprocessing.to_dict() == PRE and loaded.source.endswith("tiny.ckpt")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    net = ResUNet3D(widths=[4, 8, 16], groups=2)
    bad = _save_ckpt(tmp_path / "other.ckpt", net, {"widths": [4, 8], "groups": 2})
    with pytest.raises(StrokeSegError, match=r"other\.ckpt does not fit the network its own"):
        load_model(bad)
    no_pre = _save_ckpt(tmp_path / "nopre.ckpt", net, {"widths": [4, 8, 16], "groups": 2})
    ckpt = torch.load(no_pre, weights_only=True)
    del ckpt["hyper_parameters"]["preprocessing"]
    torch.save(ckpt, no_pre)
    with pytest.raises(StrokeSegError, match=r"nopre\.ckpt lacks hyper_parameters\.preprocessing"):
        load_model(no_pre)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 1}}, foreign)
    with pytest.raises(StrokeSegError, match="not a stroke_seg training checkpoint"):
        load_model(foreign)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(StrokeSegError, match=r"junk\.ckpt (is not a readable|holds more than)"):
        load_model(junk)


def test_ensemble_of_models_with_different_preprocessing_is_refused():
    other = {**PRE, "spacing": [1.0, 1.0, 1.0]}
    models = [
        LoadedModel(DarkIsLesion(), PRE, source="a"),
        LoadedModel(DarkIsLesion(), other, source="b"),
    ]
    with pytest.raises(StrokeSegError, match="an ensemble needs models that read scans the same"):
        Predictor(models, **options())
    with pytest.raises(StrokeSegError, match="mode='whole' is not known"):
        Predictor(models[:1], **options(mode="whole"))
    # Members of other folds differ in their intensity reference only: averaged, and the
    # ensemble standardises onto the first member's reference.
    ref = {"percentiles": [20, 99], "landmarks": [100, 200], "landmarks_sd": [1, 1], "n_scans": 3}
    folds = [
        LoadedModel(DarkIsLesion(), {**PRE, "intensity_reference": {**ref, "landmarks": land}})
        for land in ([100, 200], [101, 199])
    ]
    predictor = Predictor(folds, **options())
    assert predictor.preprocessing.intensity_reference["landmarks"] == [100, 200]


def test_the_predictor_options_have_one_source_the_inference_config():
    """conf/inference/default.yaml sets every Predictor option and the constructor has no
    defaults to contradict it; a missing, unknown or mistyped option is one sentence."""
    model = LoadedModel(DarkIsLesion(), PRE)
    assert set(options()) == {"mode", "tta", "overlap", "device", "amp"}
    with pytest.raises(TypeError, match="missing 5 required keyword-only arguments"):
        Predictor([model])
    predictor = Predictor([model], **options())
    assert (predictor.mode, predictor.tta, predictor.overlap, predictor.amp) == (
        "auto",
        False,
        0.5,
        True,
    )
    for changed, message in [
        ({"overlap": 1.0}, r"^overlap=1.0 must lie in \[0, 1\)"),
        ({"tta": "yes"}, r"^tta='yes' must be true or false"),
        ({"device": "gpu0"}, r"^device='gpu0' is not a torch device"),
    ]:
        with pytest.raises(StrokeSegError, match=message):
            Predictor([model], **options(**changed))
    with pytest.raises(StrokeSegError, match=r"^sw_batch=2 is not an inference option; use mode"):
        check_inference_options(options(sw_batch=2))
    missing = {k: v for k, v in options().items() if k != "amp"}
    with pytest.raises(StrokeSegError, match=r"^amp= is missing") as info:
        check_inference_options(missing)
    assert info.value.key == "amp"


# --------------------------------------------------------------------------------------
# Grids, intensity, modes, devices
# --------------------------------------------------------------------------------------


def test_scan_on_the_training_grid_is_not_resampled_and_matches_the_direct_path():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image, _ = _sphere_scan((24, 28, 20), affine, (20.0, 30.0, 18.0))
    predictor = Predictor([LoadedModel(DarkIsLesion(), PRE)], **options(mode="centre_crop"))
    result = predictor.predict(image, affine)
    direct = predict_centre_crop(
        probability_fn([DarkIsLesion()]),
        scale_intensity(image, Preprocessing.from_dict(PRE)),
        PRE["eval_crop"],
    )
    assert not result.resampled and result.mode == "centre_crop"
    assert np.array_equal(result.prob, direct.numpy())


def test_lps_scan_at_another_spacing_is_predicted_on_its_own_grid():
    """LPS, 1.5 mm: reoriented and resampled to 2 mm RAS for the model, then mapped back."""
    affine = np.diag([-1.5, -1.5, 1.5, 1.0])
    affine[:3, 3] = [30.0, 33.0, -26.0]
    shape = (40, 44, 36)
    image, lesion = _sphere_scan(shape, affine, centre_mm=(8.0, -6.0, 4.0))
    assert not on_training_grid(affine, PRE["spacing"])
    predictor = Predictor([LoadedModel(DarkIsLesion(), PRE)], **options())
    result = predictor.predict(image, affine)
    assert result.resampled and result.mode == "sliding_window"
    assert result.prob.shape == shape and result.prob.dtype == np.float32
    assert _dice(result.mask, lesion) > 0.9
    # A mirrored placement would miss: the lesion is off-centre in x and y.
    assert _dice(result.mask[::-1, ::-1], lesion) < 0.2


def test_auto_mode_uses_the_centre_crop_only_where_the_paper_protocol_holds():
    zoom_out = {**PRE, "crop_size": [24, 28, 20]}
    predictor = Predictor([LoadedModel(DarkIsLesion(), zoom_out)], **options())
    assert predictor.choose_mode((24, 28, 20), resampled=False) == "centre_crop"
    assert predictor.choose_mode((30, 30, 30), resampled=False) == "centre_crop"
    assert predictor.choose_mode((24, 28, 19), resampled=False) == "sliding_window"
    assert predictor.choose_mode((24, 28, 20), resampled=True) == "sliding_window"
    zoom_in = Predictor([LoadedModel(DarkIsLesion(), PRE)], **options())  # GroupNorm trap
    assert zoom_in.choose_mode((24, 28, 20), resampled=False) == "sliding_window"
    grid = {**zoom_out, "grid_shape": [30, 30, 30]}
    recorded = Predictor([LoadedModel(DarkIsLesion(), grid)], **options())
    assert recorded.choose_mode((24, 28, 20), resampled=False) == "sliding_window"


def test_intensity_scaling_is_the_training_scaling():
    image = np.array([[[0.0, 127.5, 255.0]]], dtype=np.float32)
    divide = Preprocessing.from_dict(PRE)
    assert torch.allclose(scale_intensity(image, divide), torch.tensor([[[0.0, 0.5, 1.0]]]))
    ramp = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    scaled = scale_intensity(ramp, Preprocessing.from_dict({**PRE, "intensity_mode": "percentile"}))
    assert math.isclose(float(np.percentile(scaled.numpy(), 99.5)), 1.0, abs_tol=1e-5)


def test_device_defaults_to_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu").type == "cpu"
