"""Train / val / test splits as JSON files of subject IDs, cut by subject, never by scan.

The paper split 239 ATLAS R1.2 scans into 182 / 26 / 31 (Sec. 2.4); its subject list
(Table E5) is not available, so a split is either a file the user supplies or one generated
reproducibly from a seed with the paper's proportions. Every run writes the split it used
into its run folder, so a result can always be traced to its subjects.

A subject can have several scans: ATLAS R1.2 time points (``<id>_t01``, ``<id>_t02``) and
ATLAS v2.0 sessions (``sub-X_ses-1``, ``sub-X_ses-2``); discovery adds the suffix only when a
subject has more than one (`stroke_seg.data.discovery`). Such scans share one *group*
(`subject_group`), and every function here puts a group in one list: two scans of one brain
in train and test would let the test score rise by memorising the subject. The paper's
proportions apply to groups; a split file that separates a group is refused. With one scan
per subject every group holds one ID, and the splits are those of the ungrouped code.

Cross-validation (`fold_split`) re-cuts the train + val groups of such a split into K
folds; the test subjects stay where they are, so every fold model can be scored (and the
fold models ensembled) on the same held-out scans (`stroke_seg.crossval`).

`resolve_split` is the one place that turns (subjects, split file or seed, fold) into a
split: training (`StrokeDataModule`) and evaluation (`stroke_seg.evaluate`) both call it, so
evaluation regenerates exactly the split training used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from stroke_seg.atomic import write_json
from stroke_seg.errors import StrokeSegError, option_error

PAPER_SPLIT = (182, 26, 31)
SPLIT_NAMES = ("train", "val", "test")
GROUPING = (
    "by subject: the time points (<id>_tNN, ATLAS R1.2) and sessions (sub-X_ses-Y, ATLAS "
    "v2.0) of one subject are in one list; proportions count subjects"
)
"""How splits are cut, as summary.json records it (`stroke_seg.evaluate`)."""

# The suffixes discovery appends to a subject ID when the subject has several scans.
_SCAN_SUFFIX = re.compile(r"^(?P<subject>.+?)_(?:ses-[A-Za-z0-9]+|t\d+)$")


def subject_group(scan_id: str) -> str:
    """The subject a scan ID belongs to: the ID without the session (``_ses-2``, ATLAS v2.0)
    or time-point (``_t02``, ATLAS R1.2) suffix discovery adds to subjects with several scans;
    any other ID is its own group. Training passes scan IDs only, so the group must follow
    from the ID; discovery stores the same value in `Case.group`."""
    match = _SCAN_SUFFIX.match(scan_id)
    return match.group("subject") if match else scan_id


def scan_groups(
    subjects: Iterable[str], groups: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """{group: its sorted scan IDs}, ordered by group name. `groups` maps scan ID -> group
    (e.g. from `Case.group`); IDs it does not name, or all when it is None, are grouped by
    `subject_group`."""
    members: dict[str, list[str]] = {}
    for sid in sorted(set(subjects)):
        group = groups.get(sid, subject_group(sid)) if groups else subject_group(sid)
        members.setdefault(group, []).append(sid)
    return {g: members[g] for g in sorted(members)}


def _scans(members: Mapping[str, list[str]], names: Iterable[str]) -> list[str]:
    return sorted(sid for name in names for sid in members[name])


def make_split(
    subjects: Sequence[str],
    seed: int,
    proportions: Sequence[float] = PAPER_SPLIT,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Shuffle the subjects (groups of scan IDs, `scan_groups`) with ``seed`` and cut them in
    ``proportions``; each list holds the scan IDs of its subjects.

    Sorting first makes the split independent of discovery order; val and test get at
    least one subject each whenever there are three or more subjects, except that a test
    proportion of exactly 0 gives an empty test list (train/val only, for data whose test
    scans are a separate set, as the demo's).
    """
    members = scan_groups(subjects, groups)
    names = list(members)
    n = len(names)
    if n < 3:
        raise StrokeSegError(f"A train/val/test split needs at least 3 subjects; {n} were found.")
    weights = np.asarray(proportions, dtype=float)
    n_val = max(1, int(round(n * weights[1] / weights.sum())))
    n_test = 0 if weights[2] == 0 else max(1, int(round(n * weights[2] / weights.sum())))
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [names[i] for i in order]
    return {
        "train": _scans(members, shuffled[: n - n_val - n_test]),
        "val": _scans(members, shuffled[n - n_val - n_test : n - n_test]),
        "test": _scans(members, shuffled[n - n_test :]),
    }


def fold_split(
    split: dict[str, list[str]],
    fold: int,
    n_folds: int,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Fold ``fold`` of ``n_folds``-fold cross-validation over ``split``'s train + val subjects.

    The pooled subjects (groups of scan IDs, `scan_groups`) are sorted, shuffled with ``seed``
    and cut into ``n_folds`` chunks of near-equal size (`numpy.array_split`); fold K validates
    on the K-th chunk and trains on the others, so the folds' validation sets are disjoint,
    together cover the pool, and never separate the scans of one subject. The test list is
    kept as it is.
    """
    n_folds, fold = int(n_folds), int(fold)
    if n_folds < 2:
        raise option_error(
            "n_folds", n_folds, "is too few; cross-validation needs at least 2 folds."
        )
    if not 0 <= fold < n_folds:
        raise option_error("fold", fold, f"must lie in 0..{n_folds - 1} (n_folds={n_folds}).")
    pool = sorted(set(split["train"]) | set(split["val"]))
    members = scan_groups(pool, groups)
    names = list(members)
    if len(names) < n_folds:
        raise option_error(
            "n_folds", n_folds, f"is more than the {len(names)} train + val subjects."
        )
    order = np.random.default_rng([int(seed), n_folds]).permutation(len(names))
    chunk = np.array_split(order, n_folds)[fold]
    val = _scans(members, (names[i] for i in chunk))
    held = set(val)
    return {
        "train": [s for s in pool if s not in held],
        "val": val,
        "test": sorted(split["test"]),
    }


def resolve_split(
    subjects: Iterable[str],
    split_file: str | Path | None,
    seed: int,
    proportions: Sequence[float] = PAPER_SPLIT,
    fold: int | None = None,
    n_folds: int = 5,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """The split of the discovered `subjects` (scan IDs): read from `split_file` when one is
    given, else generated from `seed` in `proportions` (`make_split`); checked against
    `subjects` either way, a subject's scans in one list (`groups`, else `subject_group`).
    With `fold`, fold `fold` of `n_folds` over its train + val subjects (`fold_split`,
    shuffled with the same `seed`)."""
    subjects = list(subjects)
    if split_file:
        split = load_split(split_file, subjects, groups)
    else:
        split = make_split(subjects, seed, proportions, groups)
        check_split(split, subjects, groups=groups)
    if fold is not None:
        split = fold_split(split, fold, n_folds, seed, groups)
    return split


def load_split(
    path: str | Path,
    subjects: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Read a split file and check it against the discovered ``subjects`` (`check_split`).

    Errors name the file as ``split_file=PATH``, the parameter it is given as; the task puts
    that key under its config section (`stroke_seg.errors.config_section`).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise option_error("split_file", str(path), "does not exist.") from None
    except json.JSONDecodeError as err:
        raise option_error("split_file", str(path), f"is not valid JSON ({err}).") from None
    missing_keys = [
        k for k in SPLIT_NAMES if not isinstance(raw, dict) or not isinstance(raw.get(k), list)
    ]
    if missing_keys:
        raise option_error(
            "split_file",
            str(path),
            f"needs lists named {', '.join(SPLIT_NAMES)}; {', '.join(missing_keys)} missing.",
        )
    split = {k: [str(s) for s in raw[k]] for k in SPLIT_NAMES}
    check_split(split, subjects, source=str(path), groups=groups)
    return split


def check_split(
    split: dict[str, list[str]],
    subjects: Sequence[str] | None,
    source: str = "the split",
    groups: Mapping[str, str] | None = None,
) -> None:
    """Refuse empty train/val lists, overlaps, subjects that are not on disk, and scans of
    one subject (`groups`, else `subject_group`) in two lists."""
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
                f"{source} names {len(absent)} subject(s) not found among the scans of the "
                f"data root (first: {absent[0]}); fix the split file or the data root."
            )
    for group, scans in scan_groups(seen, groups).items():
        lists = {seen[s] for s in scans}
        if len(lists) > 1:
            first = {name: next(s for s in scans if seen[s] == name) for name in lists}
            where = " and ".join(f"{first[n]} in {n}" for n in SPLIT_NAMES if n in lists)
            raise StrokeSegError(
                f"{source} puts the scans of subject {group} in {len(lists)} lists ({where}); "
                "move all of a subject's time points or sessions into one list."
            )


def save_split(split: dict[str, list[str]], path: str | Path, **meta: object) -> Path:
    """Write the split (plus provenance such as the seed) as JSON, atomically."""
    return write_json(path, {**meta, **split})
