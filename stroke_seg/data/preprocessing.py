"""`Preprocessing`: the one contract between training and inference about a model's input.

Training writes it into every checkpoint (``hyper_parameters.preprocessing``) as plain data;
inference reads it back with `Preprocessing.from_dict`, which checks every field and refuses
a checkpoint that lacks one in a single sentence naming the checkpoint. What it records is
what a new scan must be turned into before the network sees it: the intensity scaling (the
paper's /255, docs/paper.md "Input"), the training and evaluation crop sizes (the paper's
128³ zoom-in and 144×172×168 zoom-out/evaluation crops at 1 mm), the voxel spacing and grid
shape of the training scans.

It also records the space the training scans lived in, for scans that do not (a clinic's
scan in the scanner's own pose and units, docs/prediction.md): the template they were
registered to and the training scans' brain-intensity reference (`stroke_seg.intensity`),
onto which prediction registers and standardises each new scan.

Fields added after the first release are optional with a default, so that checkpoints
written before them still load (``grid_shape`` was added in the first wave's second half,
``template`` and ``intensity_reference`` with native-space prediction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from stroke_seg.errors import StrokeSegError

INTENSITY_MODES = ("divide", "percentile")


@dataclass(frozen=True)
class Preprocessing:
    """How the training scans were read; inference applies the same to every new scan.

    Attributes:
        intensity_mode: ``divide`` (x / intensity_divisor, the paper's /255) or
            ``percentile`` (0.5-99.5 percentile range to 0-1).
        intensity_divisor: the divisor of ``divide``.
        crop_size: the training crop of the model's last stage (voxels).
        eval_crop: the paper's evaluation centre crop (voxels).
        spacing: voxel size of the training scans (mm, per array axis).
        grid_shape: array shape of the training scans; None in older checkpoints.
        template: the template the training scans were registered to: the name of the
            built-in one (``MNI152NLin2009aSym``, `stroke_seg.registration.DEFAULT_TEMPLATE`)
            or the path of a NIfTI file as the data config gave it; None when unknown (older
            checkpoints).
        intensity_reference: `stroke_seg.intensity.IntensityReference.to_dict` of the
            training scans (plain data; read it with ``IntensityReference.from_dict``), or
            None (older checkpoints: new scans are then not standardised). Plain data here
            because this contract sits below the intensity module; it makes the dataclass
            unhashable, which nothing needs.
    """

    intensity_mode: str
    intensity_divisor: float
    crop_size: tuple[int, int, int]
    eval_crop: tuple[int, int, int]
    spacing: tuple[float, float, float]
    grid_shape: tuple[int, int, int] | None = None
    template: str | None = None
    intensity_reference: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # Normalise the types once, so that two contracts compare equal whatever container
        # (list, tuple, ListConfig) or number type they were built from.
        set_ = object.__setattr__
        set_(self, "intensity_mode", str(self.intensity_mode))
        set_(self, "intensity_divisor", float(self.intensity_divisor))
        set_(self, "crop_size", tuple(int(v) for v in self.crop_size))
        set_(self, "eval_crop", tuple(int(v) for v in self.eval_crop))
        set_(self, "spacing", tuple(float(v) for v in self.spacing))
        if self.grid_shape is not None:
            set_(self, "grid_shape", tuple(int(v) for v in self.grid_shape))
        if self.template is not None:
            set_(self, "template", str(self.template))
        if self.intensity_reference is not None:
            set_(self, "intensity_reference", _plain(self.intensity_reference))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, float, lists) for a checkpoint's hyper-parameters. An optional
        field that is unset is left out, as in the checkpoints written before it existed,
        so that re-writing an old model (``export``) does not change what it records."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}

    def __str__(self) -> str:
        # Reports and messages show the contract as the checkpoint holds it.
        return str(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "the checkpoint") -> Preprocessing:
        """Read a checkpoint's ``preprocessing`` back, or refuse it in one sentence naming
        `source`: a missing required field, a malformed value or an unknown intensity mode."""
        if not isinstance(data, Mapping):
            raise StrokeSegError(
                f"{source} lacks hyper_parameters.preprocessing (input scaling and spacing); "
                "pass a .ckpt written by train.py."
            )
        known = {f.name: f for f in fields(cls)}
        required = [n for n, f in known.items() if f.default is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise StrokeSegError(
                f"{source} lacks hyper_parameters.preprocessing.{missing[0]}; it was not "
                "written by this version of stroke_seg training, so its input scaling is "
                "unknown."
            )
        values = {n: data[n] for n in known if n in data and data[n] is not None}
        try:
            pre = cls(**values)
        except (TypeError, ValueError) as err:
            raise StrokeSegError(
                f"{source} has a malformed hyper_parameters.preprocessing ({err})."
            ) from None
        if pre.intensity_mode not in INTENSITY_MODES:
            raise StrokeSegError(
                f"{source} was trained with intensity_mode={pre.intensity_mode!r}, which this "
                f"version does not know (only {', '.join(INTENSITY_MODES)})."
            )
        if pre.intensity_reference is not None and not isinstance(pre.intensity_reference, Mapping):
            raise StrokeSegError(
                f"{source} has a malformed hyper_parameters.preprocessing.intensity_reference "
                "(not a mapping)."
            )
        for name in ("crop_size", "eval_crop", "spacing"):
            if len(getattr(pre, name)) != 3:
                raise StrokeSegError(
                    f"{source} has hyper_parameters.preprocessing.{name} of length "
                    f"{len(getattr(pre, name))}; 3 values are needed."
                )
        return pre


def _plain(value: Any) -> Any:
    """A (possibly OmegaConf) mapping or sequence as plain dicts, lists and scalars, so that
    two contracts compare equal whatever container they were built from."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
