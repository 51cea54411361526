"""OmegaConf resolvers used by the configs in ``conf/``; importing this module registers them.

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
