"""Files that survive a crash: atomic checkpoints and output paths that stay in their folder.

A training run is saved in ``last.ckpt`` after every epoch, so the one file that must never
be half-written is the one being replaced. `AtomicCheckpointIO` writes each checkpoint to a
temporary file in the same folder, flushes it to disk (fsync) and renames it over the old
one (``os.replace`` is atomic on POSIX and Windows): a kill or a full disk at any moment
leaves either the old or the new checkpoint, complete. Lightning's default writer also
renames, but without fsync, so a power cut can leave a renamed file whose data never
reached the disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from stroke_seg.errors import StrokeSegError


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Hidden and not ending in .ckpt, so no glob for checkpoints ever picks it up.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = _as_stored, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(
            path,
            map_location=map_location,
            weights_only=True if weights_only is None else weights_only,
        )


def safe_output_path(output_dir: str | Path, name: str) -> Path:
    """``output_dir / name``, refused unless it stays inside `output_dir`.

    Output names are derived from input file names and subject IDs, which come from
    outside; an absolute name, a ``..`` part or a symbolic link out of the folder would
    let a result overwrite a file anywhere.
    """
    output_dir = Path(output_dir)
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise StrokeSegError(
            f"The output name {name!r} would lie outside output={output_dir}; rename the input "
            "so that the name is relative, without '..' or '\\'."
        )
    path = output_dir / rel
    base = output_dir.resolve()
    if base != path.resolve() and base not in path.resolve().parents:
        raise StrokeSegError(
            f"The output name {name!r} leads outside output={output_dir} (through a symbolic "
            "link); remove the link or choose another output=."
        )
    return path
