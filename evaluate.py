"""Evaluate: ``python evaluate.py ckpt=PATH`` or ``predictions=DIR labels=DIR``.

See docs/evaluation.md; everything happens in `stroke_seg.evaluate.run`.
"""

import hydra
from omegaconf import DictConfig

import stroke_seg.config  # noqa: F401  (registers the config resolvers)
from stroke_seg.errors import exit_on_user_error
from stroke_seg.evaluate import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    main()
