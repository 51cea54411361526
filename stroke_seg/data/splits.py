"""Train / val / test splits as JSON files of subject IDs.

The paper split 239 ATLAS R1.2 scans into 182 / 26 / 31 (Sec. 2.4); its subject list
(Table E5) is not available, so a split is either a file the user supplies or one generated
reproducibly from a seed with the paper's proportions. Every run writes the split it used
into its run folder, so a result can always be traced to its subjects.

Cross-validation (`fold_split`) re-cuts the train + val subjects of such a split into K
folds; the test subjects stay where they are, so every fold model can be scored (and the
fold models ensembled) on the same held-out scans (`stroke_seg.crossval`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stroke_seg.errors import StrokeSegError

PAPER_SPLIT = (182, 26, 31)
SPLIT_NAMES = ("train", "val", "test")


def make_split(
    subjects: Sequence[str], seed: int, proportions: Sequence[float] = PAPER_SPLIT
) -> dict[str, list[str]]:
    """Shuffle the sorted subject IDs with ``seed`` and cut them in ``proportions``.

    Sorting first makes the split independent of discovery order; val and test get at
    least one subject each whenever there are three or more subjects, except that a test
    proportion of exactly 0 gives an empty test list (train/val only, for data whose test
    scans are a separate set, as the demo's).
    """
    ids = sorted(set(subjects))
    if len(ids) < 3:
        raise StrokeSegError(
            f"A train/val/test split needs at least 3 subjects; data.root holds {len(ids)}."
        )
    weights = np.asarray(proportions, dtype=float)
    n = len(ids)
    n_val = max(1, int(round(n * weights[1] / weights.sum())))
    n_test = 0 if weights[2] == 0 else max(1, int(round(n * weights[2] / weights.sum())))
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    split = {
        "train": sorted(shuffled[: n - n_val - n_test]),
        "val": sorted(shuffled[n - n_val - n_test : n - n_test]),
        "test": sorted(shuffled[n - n_test :]),
    }
    return split


def fold_split(
    split: dict[str, list[str]], fold: int, n_folds: int, seed: int
) -> dict[str, list[str]]:
    """Fold ``fold`` of ``n_folds``-fold cross-validation over ``split``'s train + val subjects.

    The pooled subjects are sorted, shuffled with ``seed`` and cut into ``n_folds`` chunks of
    near-equal size (`numpy.array_split`); fold K validates on the K-th chunk and trains on
    the others, so the folds' validation sets are disjoint and together cover the pool. The
    test list is kept as it is.
    """
    n_folds, fold = int(n_folds), int(fold)
    if n_folds < 2:
        raise StrokeSegError(f"data.n_folds={n_folds}; cross-validation needs at least 2 folds.")
    if not 0 <= fold < n_folds:
        raise StrokeSegError(
            f"data.fold={fold} must lie in 0..{n_folds - 1} (data.n_folds={n_folds})."
        )
    pool = sorted(set(split["train"]) | set(split["val"]))
    if len(pool) < n_folds:
        raise StrokeSegError(
            f"data.n_folds={n_folds} is more than the {len(pool)} train + val subjects."
        )
    order = np.random.default_rng([int(seed), n_folds]).permutation(len(pool))
    chunk = np.array_split(order, n_folds)[fold]
    val = sorted(pool[i] for i in chunk)
    held = set(val)
    return {
        "train": [s for s in pool if s not in held],
        "val": val,
        "test": sorted(split["test"]),
    }


def load_split(path: str | Path, subjects: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Read a split file and check it against the discovered ``subjects``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StrokeSegError(f"data.split_file {path} does not exist.") from None
    except json.JSONDecodeError as err:
        raise StrokeSegError(f"data.split_file {path} is not valid JSON ({err}).") from None
    missing_keys = [k for k in SPLIT_NAMES if not isinstance(raw.get(k), list)]
    if missing_keys:
        raise StrokeSegError(
            f"data.split_file {path} needs lists named {', '.join(SPLIT_NAMES)}; "
            f"{', '.join(missing_keys)} missing."
        )
    split = {k: [str(s) for s in raw[k]] for k in SPLIT_NAMES}
    check_split(split, subjects, source=str(path))
    return split


def check_split(
    split: dict[str, list[str]], subjects: Sequence[str] | None, source: str = "the split"
) -> None:
    """Refuse empty train/val lists, overlaps, and subjects that are not on disk."""
    for name in ("train", "val"):
        if not split[name]:
            raise StrokeSegError(f"The {name} list of {source} is empty.")
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for sid in split[name]:
            if sid in seen:
                raise StrokeSegError(
                    f"Subject {sid} is in both {seen[sid]} and {name} of {source}."
                )
            seen[sid] = name
    if subjects is not None:
        known = set(subjects)
        absent = [s for s in seen if s not in known]
        if absent:
            raise StrokeSegError(
                f"{source} names {len(absent)} subject(s) not found under data.root "
                f"(first: {absent[0]}); fix the split file or data.root."
            )


def save_split(split: dict[str, list[str]], path: str | Path, **meta: object) -> Path:
    """Write the split (plus provenance such as the seed) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, **split}, indent=2) + "\n")
    return path
