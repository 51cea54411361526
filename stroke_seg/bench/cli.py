"""``python -m stroke_seg.bench [key=value ...]`` (also installed as stroke-seg-bench): a
Hydra command like the others (`stroke_seg.cli.hydra_command`), configured by
conf/bench.yaml."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from stroke_seg.bench.presets import OPTIONS, SECTIONS
from stroke_seg.cli import hydra_command
from stroke_seg.errors import StrokeSegError, check_choice


def _subset(key: str, value: object, allowed: Sequence[str]) -> list[str]:
    """A list override (``sections=[train,data]``) or a single name (``sections=train``),
    each name checked against `allowed`."""
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not items:
        raise StrokeSegError(f"{key}=[] is empty; name at least one of {', '.join(allowed)}.")
    return [check_choice(key, str(item), allowed) for item in items]


def _number(key: str, value: object, kind: type) -> float | int | None:
    """``value`` as `kind` (None stays None), or one sentence naming the key."""
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise StrokeSegError(f"{key}={value!r} is not {what}.") from None


def run(cfg: DictConfig) -> dict:
    """The benchmark that ``cfg`` (conf/bench.yaml) describes; returns the results."""
    from stroke_seg.bench.run import run_bench

    return run_bench(
        quick=bool(cfg.quick),
        out=cfg.out,
        device=str(cfg.device),
        sections=_subset("sections", cfg.sections, SECTIONS),
        options=_subset("options", cfg.options, OPTIONS),
        run_all=bool(cfg.all),
        data_dir=cfg.data_dir,
        data_spacing=_number("data_spacing", cfg.data_spacing, float),
        data_subjects=_number("data_subjects", cfg.data_subjects, int),
        threads=_number("threads", cfg.threads, int),
        inference=OmegaConf.to_container(cfg.inference, resolve=True),  # type: ignore[arg-type]
    )


# main() reads sys.argv (Hydra) or, main(argv), the given overrides; it serves both
# ``python -m stroke_seg.bench`` and the console script.
main = hydra_command("bench", run)
