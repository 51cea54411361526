"""The stroke_seg commands: one Hydra entry function per task, in one style.

Every command takes ``key=value`` overrides of its config in ``conf/`` (Hydra), prints a
user's mistake as one ``error: ...`` sentence and exits with status 2; Hydra itself refuses
unknown keys (``+key=value`` adds one) and answers ``--help``. The functions are installed as
console scripts (pyproject.toml) and called by the checkout's ``train.py``, ``evaluate.py``
and ``predict.py``:

===================  ==================  ======================================
command              config              task
===================  ==================  ======================================
stroke-seg-train     conf/train.yaml     `stroke_seg.train.run`
stroke-seg-evaluate  conf/evaluate.yaml  `stroke_seg.evaluate.run`
stroke-seg-predict   conf/predict.yaml   `stroke_seg.predict.run`
stroke-seg-export    conf/export.yaml    `stroke_seg.export.run`
stroke-seg-crossval  conf/crossval.yaml  `stroke_seg.crossval.run`
===================  ==================  ======================================

(``stroke-seg-synthetic`` and ``stroke-seg-bench`` are `stroke_seg.data.synthetic.main` and
`stroke_seg.bench.main`.) Each task module is imported only when its command runs, so that
``stroke-seg-predict`` does not load Lightning and ``--help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from omegaconf import DictConfig

from stroke_seg.config import config_path
from stroke_seg.errors import exit_on_user_error

Command = Callable[[Sequence[str] | None], None]


def hydra_command(config_name: str, task: Callable[[DictConfig], Any]) -> Command:
    """A command running `task` on config `config_name`, composed by Hydra from the command
    line; ``main(argv)`` reads `argv` instead of ``sys.argv[1:]`` (for tests and scripts).
    The task's return value goes to Hydra (a sweeper optimises train's); ``main`` returns
    None, so that a console script exits with status 0."""

    @hydra.main(version_base="1.3", config_path=config_path(), config_name=config_name)
    def hydra_main(cfg: DictConfig) -> Any:
        with exit_on_user_error():
            return task(cfg)

    def main(argv: Sequence[str] | None = None) -> None:
        if argv is None:
            hydra_main()
            return
        saved = sys.argv
        sys.argv = [saved[0] if saved else config_name, *argv]
        try:
            hydra_main()
        finally:
            sys.argv = saved

    main.__name__ = main.__qualname__ = f"{config_name}_main"
    main.__doc__ = f"The {config_name} command (conf/{config_name}.yaml)."
    return main


def _train(cfg: DictConfig) -> float:
    from stroke_seg.train import run

    return run(cfg)  # the final validation DSC, which hparams_search=optuna optimises


def _evaluate(cfg: DictConfig) -> None:
    from stroke_seg.evaluate import run

    run(cfg)


def _predict(cfg: DictConfig) -> None:
    from stroke_seg.predict import run

    run(cfg)


def _export(cfg: DictConfig) -> None:
    from stroke_seg.export import run

    print(f"wrote {run(cfg)}")


def _crossval(cfg: DictConfig) -> None:
    from stroke_seg.crossval import run, summary_line

    print(summary_line(run(cfg)))


train_main = hydra_command("train", _train)
evaluate_main = hydra_command("evaluate", _evaluate)
predict_main = hydra_command("predict", _predict)
export_main = hydra_command("export", _export)
crossval_main = hydra_command("crossval", _crossval)
