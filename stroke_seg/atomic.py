"""Atomic file writing: every file stroke_seg writes is complete or absent, never half-written.

Each writer below writes to a hidden temporary file in the target's own folder, flushes it to
disk (fsync), renames it over the target with ``os.replace`` (atomic on POSIX and Windows)
and fsyncs the folder so that the rename itself survives a power cut. A run killed at any
moment therefore leaves the previous file or the new one, complete, plus at most a stale
temporary file, which is never taken for a result.

There is one temporary-name scheme, `temporary_path`: ``.<name>.<pid>.tmp`` beside
``<name>``. It is hidden, and it does not end in the target's suffix, so no glob for
results (``*.ckpt``, ``*_lesion_mask.nii.gz``) ever picks it up. nibabel alone chooses its
format from the file name, so NIfTI temporaries repeat the suffix after ``.tmp``
(``.<name>.<pid>.tmp.nii.gz``); `is_temporary_of` recognises both forms, so that
``continue_prediction`` can remove what a killed run left behind.

The standard library has no atomic writer, and the small ones on PyPI neither fsync the
folder nor handle writers that only take a path (nibabel, safetensors), hence this module.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def temporary_path(path: str | Path, keep_suffix: bool = False) -> Path:
    """The temporary name `path` is written under: ``.<name>.<pid>.tmp`` in its folder, with
    `path`'s NIfTI suffix repeated after it when `keep_suffix` (for writers that choose the
    format from the name)."""
    path = Path(path)
    suffix = ""
    if keep_suffix:
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), path.suffix)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def is_temporary_of(name: str, target: str) -> bool:
    """Whether the file `name` is a temporary file of `target` (see `temporary_path`), left
    by any process."""
    return re.fullmatch(rf"\.{re.escape(target)}\.\d+\.tmp(\.[A-Za-z0-9.]+)?", name) is not None


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield the temporary name of `path` to write to; when the block ends without error,
    fsync it and rename it to `path`; delete it in any case. The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, keep_suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(value: Any) -> Any:
    """nan/inf -> null (JSON has no nan), numpy scalars -> Python numbers, keys -> str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """`obj` as JSON (nan and inf written as null, `json_safe`), atomically."""
    return write_text(path, json.dumps(json_safe(obj), indent=indent) + "\n")


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """A CSV of `columns`, one line per row (a missing value is an empty cell; nan is written
    as 'nan', so that it is not mistaken for a missing value), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return write_text(path, buffer.getvalue())


def write_nifti(
    path: str | Path, array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None
) -> Path:
    """Save `array` with `affine` and the input's `header` (orientation codes, units),
    atomically.

    The data type is the array's; the intensity scaling of the source header is reset so
    that the stored values are the array's values.
    """
    img = nib.Nifti1Image(array, affine, header=None if header is None else header.copy())
    img.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path, keep_suffix=True) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
