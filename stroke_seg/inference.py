"""From checkpoints to probability maps on the input scan's own voxel grid.

The paper's evaluation protocol (Tomita et al. 2020, Sec. 2.4; docs/paper.md, "Evaluation
protocol") feeds the network one centre crop of 144x172x168 voxels of the 197x233x189 MNI
volume (start = (dim - size) // 2), classifies every voxel outside the crop as negative and
pastes the prediction back into the full volume. That is right only for scans on the
training grid. For anything else this module offers MONAI's Gaussian-weighted sliding
window at the *training crop size*: GroupNorm normalises over the whole input, so a network
must see inputs of the size it was trained on (docs/paper.md, "A measured trap").

Scans on another grid (other voxel size, LPS or other orientation, native space) are
reoriented to the closest canonical (RAS) orientation and resampled to the training spacing
with MONAI's `Orientation` and `Spacing`; the probability map is brought back onto the
input's grid with the same transforms' `inverse`. A scan already on the training grid is
never resampled, so its result is bit-identical to the direct path.

Ensembles (the paper's snapshot ensemble 3D-ResU-Net-E, Sec. 2.4) average probabilities;
optional flip test-time augmentation averages over all 8 combinations of flips along the
three axes (as nnU-Net's mirroring). Everything runs under `torch.inference_mode`, on CUDA
when available (float16 autocast there unless switched off), else on the CPU.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, Orientation, Spacing
from monai.utils import convert_to_tensor
from torch import nn

from stroke_seg.checkpoints import read_checkpoint, read_safetensors, weight_differences
from stroke_seg.data.checks import AFFINE_TOLERANCE_MM
from stroke_seg.data.io import spacing_of
from stroke_seg.data.preprocessing import Preprocessing
from stroke_seg.data.transforms import intensity_transform
from stroke_seg.errors import StrokeSegError, check_choice, check_keys, check_range, option_error
from stroke_seg.models import ResUNet3D
from stroke_seg.postprocess import check_min_lesion_mm3, remove_small_components, structure

MODES = ("auto", "centre_crop", "sliding_window")
# The options of `Predictor`, set by the `inference` config group (conf/inference/default.yaml),
# which is their one source of truth: the constructor has no defaults for them.
INFERENCE_OPTIONS = ("mode", "tta", "overlap", "device", "amp")
# Explicit labels silence MONAI's deprecation warning; they are its (and NIfTI's) defaults.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a (B, 1, X, Y, Z) input to lesion probabilities of the same shape."""


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A network in eval mode with the input preparation it was trained with.

    `preprocessing` is the checkpoint's ``hyper_parameters.preprocessing`` (intensity
    scaling, crop sizes, training spacing) read back as the typed contract; `threshold`
    binarises its probabilities (0.5, paper Sec. 2.5); `source` names where it came from, for
    messages and reports.
    """

    net: nn.Module
    preprocessing: Preprocessing
    threshold: float = 0.5
    source: str = "model"
    net_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain data (a checkpoint's dict) is read with the checkpoint's own validation.
        if not isinstance(self.preprocessing, Preprocessing):
            self.preprocessing = Preprocessing.from_dict(self.preprocessing, self.source)


def load_model(ckpt_path: str | Path, key: str = "ckpt") -> LoadedModel:
    """Rebuild the ResUNet3D a training checkpoint (or an exported ``.safetensors`` model)
    describes and load its weights.

    A ``.ckpt`` is read as plain data (`read_checkpoint`, never executing pickles); a
    ``.safetensors`` file holds no pickle at all (`read_safetensors`). Either is refused,
    in one sentence naming the file, when it lacks the hyper-parameters that describe the
    network (``net``) or its input (``preprocessing``), or when its weights do not fit that
    network exactly (no partial loading).
    """
    source = f"{key}={Path(ckpt_path).expanduser()}"
    reader = read_safetensors if str(ckpt_path).endswith(".safetensors") else read_checkpoint
    try:
        ckpt = reader(ckpt_path, key)
    except StrokeSegError:
        raise
    except Exception as err:  # torch's restricted unpickler raises many types on junk
        raise StrokeSegError(
            f"{source} is not a readable checkpoint ({type(err).__name__}: {err})."
        ) from None
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("net"), Mapping):
        raise StrokeSegError(
            f"{source} has no hyper_parameters.net, so it is not a stroke_seg training "
            "checkpoint; pass a .ckpt written by train.py."
        )
    # Refused in one sentence when absent or incomplete; older checkpoints without the
    # optional fields (grid_shape) still load.
    preprocessing = Preprocessing.from_dict(hparams.get("preprocessing"), source)
    try:
        net = ResUNet3D.from_config(dict(hparams["net"]))
    except (TypeError, ValueError, StrokeSegError) as err:
        raise StrokeSegError(
            f"{source} describes a network that cannot be built ({err})."
        ) from None
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    differences = weight_differences(net.state_dict(), state)
    if differences:
        raise StrokeSegError(
            f"{source} does not fit the network its own hyper-parameters describe "
            f"(net={dict(hparams['net'])}; {differences}); it is a checkpoint of another model."
        )
    net.load_state_dict(state, strict=True)
    net.eval()
    threshold = float(hparams.get("threshold", 0.5))
    return LoadedModel(net, preprocessing, threshold, source, dict(hparams["net"]))


# --------------------------------------------------------------------------------------
# Input preparation: intensity scaling and the training grid
# --------------------------------------------------------------------------------------


def scale_intensity(
    volume: np.ndarray | torch.Tensor, preprocessing: Preprocessing
) -> torch.Tensor:
    """The training scaling of `stroke_seg.data.transforms.intensity_transform` (/255 in the
    paper, Table 1 notes), applied to a (X, Y, Z) volume; returns a plain float32 tensor."""
    transform = intensity_transform(preprocessing.intensity_mode, preprocessing.intensity_divisor)
    image = torch.as_tensor(np.asarray(volume, dtype=np.float32))[None]
    scaled = transform({"image": image})["image"]
    return convert_to_tensor(scaled, dtype=torch.float32, track_meta=False)[0]


def on_training_grid(affine: np.ndarray, spacing: Sequence[float]) -> bool:
    """True when a scan is RAS-oriented with the training voxel size (no resampling needed)."""
    axcodes = nib.aff2axcodes(np.asarray(affine), labels=_RAS_LABELS)
    same_spacing = np.allclose(spacing_of(affine), spacing, rtol=0, atol=AFFINE_TOLERANCE_MM)
    return tuple(axcodes) == ("R", "A", "S") and bool(same_spacing)


def regrid_transform(spacing: Sequence[float]) -> Compose:
    """Closest canonical (RAS) orientation, then bilinear resampling to `spacing` (mm).

    Keep the instance: its `inverse` maps a network-grid map back onto the input grid
    (same shape and affine as the input file).
    """
    return Compose(
        [
            Orientation(axcodes="RAS", labels=_RAS_LABELS),
            Spacing(pixdim=tuple(float(s) for s in spacing), mode="bilinear"),
        ]
    )


# --------------------------------------------------------------------------------------
# Spatial strategies
# --------------------------------------------------------------------------------------


def _as_volume(volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    volume = torch.as_tensor(volume, dtype=torch.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (X, Y, Z) volume, got shape {tuple(volume.shape)}")
    return volume


def centre_crop_slices(
    shape: Sequence[int], size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where the centre crop lies in the volume and in the network input.

    Per axis: a volume at least as large as the crop is cut at start = (dim - size) // 2
    (the paper's x 26:170, y 30:202, z 10:178 on 197x233x189); a smaller one is placed at
    (size - dim) // 2 inside a zero-padded input, as MONAI's `SpatialPad`. (MONAI's
    `CenterSpatialCrop` starts at dim // 2 - size // 2, which differs for odd crop sizes.)
    """
    in_volume, in_input = [], []
    for dim, crop in zip(shape, size, strict=True):
        n = min(dim, crop)
        start_v = (dim - crop) // 2 if dim >= crop else 0
        start_i = 0 if dim >= crop else (crop - dim) // 2
        in_volume.append(slice(start_v, start_v + n))
        in_input.append(slice(start_i, start_i + n))
    return tuple(in_volume), tuple(in_input)


def predict_centre_crop(
    prob_fn: ProbabilityFn, volume: np.ndarray | torch.Tensor, crop_size: Sequence[int]
) -> torch.Tensor:
    """The paper's evaluation input (Sec. 2.4): one centre crop, everything outside 0.

    `volume` is a scaled (X, Y, Z) volume; returns probabilities of the same shape, on its
    device. A volume smaller than the crop is zero-padded for the network.
    """
    volume = _as_volume(volume)
    size = [int(s) for s in crop_size]
    in_volume, in_input = centre_crop_slices(tuple(volume.shape), size)
    net_input = volume.new_zeros((1, 1, *size))
    net_input[(0, 0, *in_input)] = volume[in_volume]
    prob = prob_fn(net_input)[0, 0]
    out = torch.zeros(volume.shape, dtype=torch.float32, device=volume.device)
    out[in_volume] = prob[in_input].float()
    return out


def predict_sliding_window(
    prob_fn: ProbabilityFn,
    volume: np.ndarray | torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
) -> torch.Tensor:
    """Gaussian-weighted sliding windows of the training crop size over the whole volume.

    MONAI's `sliding_window_inference(mode="gaussian")` averages the windows' probabilities
    (pads a volume smaller than a window). Windows of the training size keep GroupNorm's
    statistics as in training (docs/paper.md, "A measured trap").
    """
    volume = _as_volume(volume)
    prob = sliding_window_inference(
        volume[None, None],
        roi_size=[int(s) for s in roi_size],
        sw_batch_size=1,
        predictor=prob_fn,
        overlap=float(overlap),
        mode="gaussian",
        progress=False,
    )
    return convert_to_tensor(prob, track_meta=False)[0, 0].float()


def _flip_sets(tta: bool) -> list[tuple[int, ...]]:
    axes = (2, 3, 4)
    if not tta:
        return [()]
    return [dims for r in range(4) for dims in itertools.combinations(axes, r)]


def probability_fn(
    nets: Sequence[Callable[[torch.Tensor], torch.Tensor]], tta: bool = False
) -> ProbabilityFn:
    """Mean sigmoid probability over `nets` (an ensemble) and, with `tta`, over all 8 flip
    combinations along the three spatial axes (each flip undone before averaging)."""
    flips = _flip_sets(tta)

    def prob(x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for net in nets:
            for dims in flips:
                xi = x.flip(dims) if dims else x
                p = torch.sigmoid(net(xi).float())
                total += p.flip(dims) if dims else p
        return total / (len(nets) * len(flips))

    return prob


# --------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): CUDA when available, else CPU; anything else as torch names it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(str(device))
    except RuntimeError as err:
        raise option_error("device", str(device), f"is not a torch device ({err}).") from None


def check_inference_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The `Predictor` options in `options` (an ``inference`` config group), checked.

    Every option of `INFERENCE_OPTIONS` must be there and no other: their defaults live in
    conf/inference/default.yaml only, so a missing one is a mistake, not a fallback. Errors
    name the option (``mode``); the task adds its config section (``inference.mode``).
    """
    options = dict(options.items())
    check_keys(
        options,
        INFERENCE_OPTIONS,
        "an inference option",
        "set it (conf/inference/default.yaml sets every option).",
    )
    for key in ("tta", "amp"):
        if not isinstance(options[key], bool):
            raise option_error(key, options[key], "must be true or false.")
    return {
        "mode": check_choice("mode", str(options["mode"]), MODES),
        "tta": options["tta"],
        "overlap": check_range("overlap", options["overlap"], 0.0, 1.0, high_open=True),
        "device": options["device"],
        "amp": options["amp"],
    }


def check_ensemble(models: Sequence[LoadedModel]) -> None:
    """Refuse models that cannot be averaged: an ensemble needs one preprocessing and one
    threshold, so that every member reads the scan the same way. The intensity reference is
    left out of the comparison: members trained on other folds of one data set measure
    slightly different landmarks (the ensemble standardises new scans onto its first
    member's, `stroke_seg.predict`)."""

    def reading(model: LoadedModel) -> Preprocessing:
        return replace(model.preprocessing, intensity_reference=None)

    first = models[0]
    for other in models[1:]:
        if reading(other) != reading(first) or other.threshold != first.threshold:
            raise StrokeSegError(
                f"{other.source} was trained with preprocessing {reading(other)} "
                f"(threshold {other.threshold}) but {first.source} with "
                f"{reading(first)} (threshold {first.threshold}); an ensemble needs "
                "models that read scans the same way."
            )


@dataclass
class Prediction:
    """A probability map on the input grid, and how it was made."""

    prob: np.ndarray
    mode: str
    resampled: bool
    threshold: float = 0.5
    # Post-processing (`stroke_seg.postprocess`; 0 = none, the paper): components smaller
    # than this many mm³ are dropped from `mask`, on the grid of `spacing` (mm).
    min_lesion_mm3: float = 0.0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    connectivity: int = 6

    @property
    def mask(self) -> np.ndarray:
        """The binary lesion mask (uint8): probability > threshold (paper Sec. 2.5: 0.5),
        without the components below ``min_lesion_mm3`` when that is set."""
        mask = (self.prob > self.threshold).astype(np.uint8)
        if self.min_lesion_mm3 > 0:
            mask = remove_small_components(
                mask, self.spacing, self.min_lesion_mm3, self.connectivity
            )
        return mask


class Predictor:
    """One model or a snapshot ensemble, applied to whole scans on any voxel grid.

    The options have no defaults: they come from the ``inference`` config group
    (conf/inference/default.yaml), and the commands build predictors through
    `Predictor.from_config` only.

    Args:
        models: loaded models; an ensemble averages their probabilities. All must share
            the same preprocessing and threshold, else the ensemble is refused.
        mode: "centre_crop" (the paper's protocol), "sliding_window", or "auto":
            centre crop when the scan needed no resampling, the model was last trained at
            the evaluation crop size (crop_size == eval_crop, a zoom-out model), the crop
            fits inside the volume (and the volume has the training grid's shape when the
            checkpoint records it); sliding windows of the training crop size otherwise.
        tta: average over the 8 flip combinations along the three axes.
        overlap: sliding-window overlap (0.5 as nnU-Net).
        device: "auto" (CUDA if available, else CPU) or a torch device name.
        amp: float16 autocast on CUDA (ignored on CPU).
        min_lesion_mm3: drop predicted components smaller than this (mm³, on the scan's
            own grid) from the masks; 0 (the paper) keeps them all (`stroke_seg.postprocess`).
            Post-processing is a task option (``min_lesion_mm3=`` of evaluate and predict),
            not part of the ``inference`` group; its default here is the paper's "off".
        connectivity: neighbourhood that makes voxels one component (6, 18 or 26).
    """

    def __init__(
        self,
        models: Sequence[LoadedModel],
        *,
        mode: str,
        tta: bool,
        overlap: float,
        device: str | torch.device | None,
        amp: bool,
        min_lesion_mm3: float = 0.0,
        connectivity: int = 6,
    ) -> None:
        if not models:
            raise ValueError("Predictor needs at least one model.")
        options = check_inference_options(
            {"mode": mode, "tta": tta, "overlap": overlap, "device": device, "amp": amp}
        )
        check_ensemble(models)
        first = models[0]
        self.models = list(models)
        self.preprocessing = first.preprocessing
        self.threshold = float(first.threshold)
        self.mode, self.tta = options["mode"], options["tta"]
        self.overlap, self.amp = options["overlap"], options["amp"]
        self.min_lesion_mm3 = check_min_lesion_mm3(min_lesion_mm3)
        structure(connectivity)  # refuses an unknown connectivity now, not after a scan
        self.connectivity = int(connectivity)
        self.device = resolve_device(device)
        for model in self.models:
            model.net.to(self.device).eval()
        self._regrid = regrid_transform(self.preprocessing.spacing)
        self._prob_fn = probability_fn([m.net for m in self.models], self.tta)

    @classmethod
    def from_checkpoints(
        cls, paths: str | Path | Sequence[str | Path], **options: Any
    ) -> Predictor:
        """Load one checkpoint or a list (snapshot ensemble) and build a predictor."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        return cls([load_model(p) for p in paths], **options)

    @classmethod
    def from_config(
        cls, paths: str | Path | Sequence[str | Path], inference: Mapping[str, Any]
    ) -> Predictor:
        """The predictor of checkpoint(s) `paths` with the options of an ``inference`` config
        group: how evaluate, predict and cross-validation all build theirs. The options are
        checked before any checkpoint is loaded."""
        return cls.from_checkpoints(paths, **check_inference_options(inference))

    def choose_mode(self, shape: Sequence[int], resampled: bool) -> str:
        """The spatial strategy for a network-grid volume of `shape` (see the class doc)."""
        if self.mode != "auto":
            return self.mode
        pre = self.preprocessing
        fits = all(c <= s for c, s in zip(pre.eval_crop, shape, strict=True))
        grid_ok = pre.grid_shape is None or list(pre.grid_shape) == list(shape)
        trained_at_eval_size = pre.crop_size == pre.eval_crop
        if not resampled and fits and grid_ok and trained_at_eval_size:
            return "centre_crop"
        return "sliding_window"

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def predict_network_grid(self, volume: torch.Tensor, mode: str) -> torch.Tensor:
        """Probabilities for a scaled volume already on the training grid (CPU float32)."""
        pre = self.preprocessing
        with torch.inference_mode(), self._autocast():
            x = volume.to(self.device)
            if mode == "centre_crop":
                prob = predict_centre_crop(self._prob_fn, x, pre.eval_crop)
            else:
                prob = predict_sliding_window(self._prob_fn, x, pre.crop_size, self.overlap)
        return prob.float().cpu()

    def predict(self, image: np.ndarray, affine: np.ndarray) -> Prediction:
        """Lesion probabilities for a (X, Y, Z) scan with its affine, on the scan's own grid."""
        affine = np.asarray(affine, dtype=np.float64)
        scaled = scale_intensity(image, self.preprocessing)
        resampled = not on_training_grid(affine, self.preprocessing.spacing)
        if not resampled:
            mode = self.choose_mode(tuple(scaled.shape), False)
            prob = self.predict_network_grid(scaled, mode)
            return self._prediction(prob.numpy(), mode, False, affine)
        moved = self._regrid(MetaTensor(scaled[None], affine=torch.as_tensor(affine)))
        volume = convert_to_tensor(moved, dtype=torch.float32, track_meta=False)[0]
        mode = self.choose_mode(tuple(volume.shape), True)
        prob = self.predict_network_grid(volume, mode)
        prob_mt = MetaTensor(prob[None], meta=dict(moved.meta))
        prob_mt.applied_operations = list(moved.applied_operations)
        back = self._regrid.inverse(prob_mt)
        out = convert_to_tensor(back, dtype=torch.float32, track_meta=False)[0].numpy()
        if out.shape != tuple(image.shape):  # a MONAI change would break the contract
            raise RuntimeError(f"inverse resampling gave {out.shape}, expected {image.shape}")
        return self._prediction(np.clip(out, 0.0, 1.0), mode, True, affine)

    def _prediction(
        self, prob: np.ndarray, mode: str, resampled: bool, affine: np.ndarray
    ) -> Prediction:
        return Prediction(
            prob,
            mode,
            resampled,
            self.threshold,
            self.min_lesion_mm3,
            spacing_of(affine),
            self.connectivity,
        )
