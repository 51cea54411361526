"""The configs' plumbing: OmegaConf resolvers used in ``conf/`` (importing this module
registers them) and where ``conf/`` is (`config_path`).

``run_dir``: the run folder. A resumed run continues in the folder of the checkpoint it
resumes from (``<run>/checkpoints/last.ckpt`` -> ``<run>``), so its logs, plots and
checkpoints stay together; otherwise the folder named by the config is used.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def run_dir(resume: str | None, default: str) -> str:
    if resume in (None, "", "None", "null"):
        return default
    ckpt = Path(str(resume)).expanduser()
    return str(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)


OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)


def config_path() -> str:
    """Where the commands' Hydra configs are: the checkout's ``conf/`` when running from a
    source tree (so that edits there take effect), else the copy installed inside the
    package, ``stroke_seg/conf/`` (setup.py ships ``conf/`` there).

    A folder rather than Hydra's ``pkg://stroke_seg.conf``: that needs an ``__init__.py``
    among the configs, and pip always installs the package as files.
    """
    package = Path(__file__).resolve().parent
    checkout = package.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return str(checkout)
    return str(package / "conf")
