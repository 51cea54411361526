"""Checkpoints that survive a crash: Lightning's checkpoint writer, made atomic.

A training run is saved in ``last.ckpt`` after every epoch, so the one file that must never
be half-written is the one being replaced. `AtomicCheckpointIO` writes each checkpoint
through `stroke_seg.atomic.atomic_path`: a temporary file in the same folder, fsync, then
``os.replace`` over the old one, so a kill or a full disk at any moment leaves either the
old or the new checkpoint, complete. Lightning's default writer also renames, but without
fsync, so a power cut can leave a renamed file whose data never reached the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from stroke_seg.atomic import atomic_path


def _as_stored(storage: Any, location: str) -> Any:
    """Lightning's default map_location: leave tensors where torch.load puts them (CPU)."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer: temp file in the same folder, fsync, ``os.replace``.

    Loading forces ``weights_only=True`` unless a caller asks otherwise, so ``resume=`` never
    unpickles code either (see `stroke_seg.checkpoints`). Remote paths (``s3://`` and the
    like) go to Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        # The temporary name is hidden and does not end in .ckpt (`atomic.temporary_path`),
        # so no glob for checkpoints ever picks it up.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = _as_stored, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(
            path,
            map_location=map_location,
            weights_only=True if weights_only is None else weights_only,
        )
