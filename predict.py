"""Segment new scans: ``python predict.py ckpt=PATH input=FILE_OR_DIR output=DIR``.

See docs/prediction.md; everything happens in `stroke_seg.predict.run`.
"""

import hydra
from omegaconf import DictConfig

import stroke_seg.config  # noqa: F401  (registers the config resolvers)
from stroke_seg.errors import exit_on_user_error
from stroke_seg.predict import run


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    main()
