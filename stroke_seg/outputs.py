"""Where results may be written: output folders that are not silently reused, and output
names that cannot leave their folder.

The checks name the option they check with `key` (``output`` by default), which the task
passes as the user spelled it.
"""

from __future__ import annotations

from pathlib import Path

from stroke_seg.errors import StrokeSegError


def check_output_dir(path: str | Path, overwrite: bool, key: str = "output") -> Path:
    """Refuse an output folder that already holds files unless `overwrite` is set, so that a
    result folder never mixes two runs."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise StrokeSegError(f"{key}={path} is a file; pass a folder for the results.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise StrokeSegError(
            f"{key}={path} already holds files; pass overwrite=true to replace them or choose "
            f"another {key}=."
        )
    return path


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
