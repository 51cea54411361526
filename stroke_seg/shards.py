"""Splitting one prediction run over many processes, and joining their tables.

A folder of thousands of scans is predicted by ``n`` processes (jobs of a SLURM array, nodes,
or terminals), each given ``shard=i/n`` (``i`` = 0 … n-1): every process lists the same
inputs in the same (sorted) order and takes every n-th one from the i-th, so that the shards
are disjoint, together cover every input, and stay balanced whatever the order of the file
names. Each shard writes its own table, ``lesions.shard-<i>-of-<n>.csv``, so that no two
processes write one file; the merged ``lesions.csv`` is written by whichever shard finishes
and finds every shard table complete, and by ``predict.py merge=true output=DIR`` at any
time (e.g. after a crashed job was rerun).

Hand-written: the shard arithmetic is three lines, and the merge must follow our table's
columns, so no library fits better.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from stroke_seg.atomic import write_csv
from stroke_seg.errors import StrokeSegError

T = TypeVar("T")
log = logging.getLogger(__name__)

TABLE = "lesions.csv"
_SHARD_TABLE = re.compile(r"lesions\.shard-(\d+)-of-(\d+)\.csv")


def parse_shard(value: Any) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None / empty / ``"0/1"`` mean the whole list
    (None). Anything else is refused in one sentence naming ``shard``."""
    if value is None or str(value).strip() in ("", "none", "null"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise StrokeSegError(
            f"shard={value!r} must be i/n with 0 <= i < n, e.g. shard=0/4 ... shard=3/4 for "
            "four processes."
        )
    index, count = int(match[1]), int(match[2])
    return None if count == 1 else (index, count)


def shard_of(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The items of one shard: every n-th from the i-th (all of them without a shard)."""
    if shard is None:
        return list(items)
    index, count = shard
    return list(items[index::count])


def table_name(shard: tuple[int, int] | None) -> str:
    """The table a run writes: ``lesions.csv``, or its shard's own table."""
    if shard is None:
        return TABLE
    return f"lesions.shard-{shard[0]}-of-{shard[1]}.csv"


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a lesions table (none if it is absent or unreadable)."""
    try:
        with path.open(newline="") as f:
            return [row for row in csv.DictReader(f) if row.get("scan")]
    except (OSError, csv.Error):
        return []


def shard_tables(output: Path) -> dict[int, tuple[int, Path]]:
    """{shard index: (shard count, table)} of the shard tables in `output`."""
    found = {}
    for path in sorted(output.glob("lesions.shard-*-of-*.csv")):
        match = _SHARD_TABLE.fullmatch(path.name)
        if match:
            found[int(match[1])] = (int(match[2]), path)
    return found


def merge_tables(
    output: Path, columns: Sequence[str], expected: int | None = None
) -> tuple[Path, int]:
    """Join the shard tables of `output` into ``lesions.csv`` (rows sorted by scan name).

    Refused, in one sentence, when there are no shard tables or they come from runs with
    different shard counts. `expected`: the number of scans of the whole run, when known,
    to say how many are still missing. Returns the table and its number of rows.
    """
    tables = shard_tables(output)
    if not tables:
        raise StrokeSegError(
            f"output={output} holds no lesions.shard-<i>-of-<n>.csv to merge; run "
            "predict.py with shard=i/n first."
        )
    counts = {count for count, _ in tables.values()}
    if len(counts) > 1:
        raise StrokeSegError(
            f"output={output} holds shard tables of runs with {sorted(counts)} shards; "
            "delete the tables of the old run and merge again."
        )
    rows = sorted(
        (row for _, path in tables.values() for row in read_table(path)), key=lambda r: r["scan"]
    )
    path = write_csv(output / TABLE, rows, columns)
    count = counts.pop()
    missing = [i for i in range(count) if i not in tables]
    if missing or (expected is not None and len(rows) < expected):
        log.warning(
            "%s lists %d scan(s)%s; shard(s) %s have not written their table yet",
            path,
            len(rows),
            "" if expected is None else f" of {expected}",
            ", ".join(str(i) for i in missing) or "none",
        )
    return path, len(rows)
