"""Scoring predictions against references and writing the result files, shared by evaluation
and cross-validation.

`score_row` turns one scan's prediction into a ``cases.csv`` row (`stroke_seg.metrics`);
`write_results` writes, per model, ``cases.csv``, ``summary.json`` and the Fig. 3 scatter,
then ``report.md`` with the paper's tables (`stroke_seg.report`). `stroke_seg.evaluate` and
`stroke_seg.crossval` both build their rows here, so a fold's ``cases.csv`` is the one
``evaluate.py`` would write for the same model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stroke_seg.atomic import write_csv, write_json, write_text
from stroke_seg.errors import check_choice
from stroke_seg.metrics import DEFAULT_CONNECTIVITY, SCAN_METRIC_KEYS, EmptyPolicy, scan_metrics
from stroke_seg.plotting import plot_dsc_vs_lesion_size
from stroke_seg.report import render_report, size_quartiles, summary_json

CASE_COLUMNS = (
    "subject",
    "lesion_voxels",
    "lesion_mm3",
    *SCAN_METRIC_KEYS,
    "pred_voxels",
    "tp",
    "fp",
    "fn",
    "empty_case",
    "mode",
    "lesion_connectivity",
    # evaluate.py's intensity check (`stroke_seg.evaluate.IntensityCheck`); empty without one
    "intensity_z",
    "warning",
)
EMPTY_POLICIES = ("worst_case", "nan")


@dataclass
class Scored:
    """Per-scan rows of one model (or prediction folder), its figures for report.md, the
    definitions that hold for it alone (e.g. its inference mode) and any other entries of
    its summary.json (e.g. folder mode's unpaired files)."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    figure_links: list[tuple[str, str]] = field(default_factory=list)
    definitions: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def empty_policy(name: str) -> EmptyPolicy:
    """The `EmptyPolicy` named `name` (worst_case or nan), or one sentence naming
    ``empty_policy``."""
    return EmptyPolicy.from_name(check_choice("empty_policy", str(name), EMPTY_POLICIES))


def score_row(
    subject: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    prob: np.ndarray | None,
    policy: EmptyPolicy,
    mode: str,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> dict[str, Any]:
    """One cases.csv row: `scan_metrics` (lesions `connectivity`-connected) plus the subject,
    lesion size and prediction mode."""
    row = scan_metrics(pred, ref, spacing, prob=prob, policy=policy, connectivity=connectivity)
    return {
        "subject": subject,
        "lesion_voxels": row["ref_voxels"],
        "lesion_mm3": row["ref_mm3"],
        "mode": mode,
        **row,
    }


def write_results(
    output: Path,
    results: Sequence[Scored],
    prefix: Mapping[str, str],
    facts: list[tuple[str, str]],
    policy_name: str,
    n_resamples: int,
    seed: int,
    definitions: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """cases.csv, summary.json and dsc_vs_lesion_size.png per model (in ``output /
    prefix[name]``), then report.md; returns {name: summary.json contents}. `definitions`
    (e.g. the precision and split grouping of a run) join each summary's ``definitions``
    with the model's own (`Scored.definitions`)."""
    summaries, quartiles, scatters, links = {}, {}, {}, {}
    for res in results:
        folder = output / prefix[res.name]
        write_csv(folder / "cases.csv", res.rows, CASE_COLUMNS)
        summaries[res.name] = summary_json(
            res.rows,
            policy_name,
            n_resamples,
            seed,
            definitions={**(definitions or {}), **res.definitions},
            extra=res.extra,
        )
        write_json(folder / "summary.json", summaries[res.name])
        quartiles[res.name] = size_quartiles(res.rows, n_resamples, seed)
        scatters[res.name] = f"{prefix[res.name]}dsc_vs_lesion_size.png"
        plot_dsc_vs_lesion_size(res.rows, output / scatters[res.name], res.name)
        links[res.name] = res.figure_links
    facts = [*facts, ("bootstrap", f"{n_resamples} resamples, seed {seed}")]
    text = render_report(
        "Evaluation report", facts, summaries, quartiles, scatters, links, n_resamples
    )
    write_text(output / "report.md", text)
    return summaries
