"""`Preprocessing`: the one contract between training and inference about a model's input.

Training writes it into every checkpoint (``hyper_parameters.preprocessing``) as plain data;
inference reads it back with `Preprocessing.from_dict`, which checks every field and refuses
a checkpoint that lacks one in a single sentence naming the checkpoint. What it records is
what a new scan must be turned into before the network sees it: the intensity scaling (the
paper's /255, docs/paper.md "Input"), the training and evaluation crop sizes (the paper's
128³ zoom-in and 144×172×168 zoom-out/evaluation crops at 1 mm), the voxel spacing and grid
shape of the training scans.

Fields added after the first release are optional with a default, so that checkpoints
written before them still load (``grid_shape`` was added in the first wave's second half).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
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
    """

    intensity_mode: str
    intensity_divisor: float
    crop_size: tuple[int, int, int]
    eval_crop: tuple[int, int, int]
    spacing: tuple[float, float, float]
    grid_shape: tuple[int, int, int] | None = None

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
        required = [n for n in known if n != "grid_shape"]
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
        for name in ("crop_size", "eval_crop", "spacing"):
            if len(getattr(pre, name)) != 3:
                raise StrokeSegError(
                    f"{source} has hyper_parameters.preprocessing.{name} of length "
                    f"{len(getattr(pre, name))}; 3 values are needed."
                )
        return pre
