"""Train a stage: ``python train.py stage=zoom_in`` / ``stage=zoom_out ckpt=...``.

See README.md; everything happens in `stroke_seg.train.run`.
"""

import hydra
from omegaconf import DictConfig

import stroke_seg.config  # noqa: F401  (registers the config resolvers)
from stroke_seg.errors import exit_on_user_error
from stroke_seg.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        return run(cfg)


if __name__ == "__main__":
    main()
