"""Reading what the commands wrote."""

from __future__ import annotations

import csv
from pathlib import Path


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (cases.csv, lesions.csv) as dicts of strings."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def list_files(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
