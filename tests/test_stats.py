"""Bootstrap CIs, summaries, micro-DSC, R², size quartiles (Sec. 2.5, Tables 2/4/5, Fig. 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stroke_seg import metrics as M
from stroke_seg import stats as S
from stroke_seg.metrics import EmptyPolicy


def test_bootstrap_ci_seeded_and_contains_mean():
    values = np.random.default_rng(0).normal(0.6, 0.2, size=31)
    first = S.bootstrap_ci(values, seed=3)
    assert first == S.bootstrap_ci(values, seed=3)
    assert first != S.bootstrap_ci(values, seed=4)
    lo, hi = first
    assert lo < values.mean() < hi
    lo_m, hi_m = S.bootstrap_ci(values, stat=np.median)
    assert lo_m <= np.median(values) <= hi_m


def test_bootstrap_ci_width_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(size=20)
    large = rng.normal(size=2000)
    w_small = np.subtract(*S.bootstrap_ci(small)[::-1])
    w_large = np.subtract(*S.bootstrap_ci(large)[::-1])
    assert 0 < w_large < w_small / 4


def test_bootstrap_ci_vectorised_1000_by_31_and_matches_loop():
    values = np.random.default_rng(2).random(31)
    lo, hi = S.bootstrap_ci(values, n_resamples=1000, seed=0)
    # Reference computed with an explicit loop over the same index matrix.
    idx = np.random.default_rng(0).integers(0, 31, size=(1000, 31))
    means = np.array([values[row].mean() for row in idx])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    # A stat without an `axis` argument falls back to a row loop with the same result.
    assert S.bootstrap_ci(values, stat=lambda v: float(np.mean(v))) == pytest.approx((lo, hi))


def test_bootstrap_ci_nan_and_degenerate():
    values = np.array([0.1, 0.5, np.nan, 0.9])
    assert S.bootstrap_ci(values) == S.bootstrap_ci(values[~np.isnan(values)])
    assert all(math.isnan(v) for v in S.bootstrap_ci(values, nan_policy="propagate"))
    assert all(math.isnan(v) for v in S.bootstrap_ci([]))
    assert S.bootstrap_ci([0.4]) == (0.4, 0.4)
    with pytest.raises(ValueError):
        S.bootstrap_ci(values, ci=95)


def test_summarize_counts_nans():
    out = S.summarize([1.0, 2.0, np.nan, 3.0, 10.0])
    assert set(out) == {"mean", "median", "ci95", "n", "n_nan"}
    assert out["mean"] == pytest.approx(4.0)
    assert out["median"] == pytest.approx(2.5)
    assert out["n"] == 4 and out["n_nan"] == 1
    assert out["ci95"][0] <= 4.0 <= out["ci95"][1]
    empty = S.summarize([np.nan])
    assert math.isnan(empty["mean"]) and empty["n"] == 0 and empty["n_nan"] == 1


def _rows(policy: EmptyPolicy) -> list[dict]:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(6):
        ref = np.zeros((16, 16, 16), bool)
        pred = np.zeros_like(ref)
        ref[4 : 6 + i, 4:10, 4:10] = True
        if i != 0:  # scan 0: missed lesion
            pred[5 : 7 + i, 4:10, 4 : 10 - (i % 2)] = True
            pred[rng.integers(0, 16), 15, 15] = True
        rows.append(M.scan_metrics(pred, ref, (1.0, 1.0, 1.0), policy=policy))
    return rows


def test_summarize_cases_nan_policy_counts_missed_lesion():
    rows = _rows(EmptyPolicy.nan())
    out = S.summarize_cases(rows, n_resamples=200, seed=0)
    assert out["n_cases"] == 6
    assert out["empty_cases"] == {"none": 5, "both_empty": 0, "missed": 1, "false_alarm": 0}
    assert out["empty_policy"] == "nan"
    assert out["hd_mm"]["n"] == 5 and out["hd_mm"]["n_nan"] == 1
    assert out["dsc"]["n"] == 6 and out["dsc"]["n_nan"] == 0  # the missed lesion's DSC 0 counts
    assert out["mdsc"]["n"] == 0 and out["mdsc"]["n_nan"] == 6  # no probability maps
    assert out["dsc"]["mean"] == pytest.approx(np.mean([r["dsc"] for r in rows]))
    tp = sum(r["tp"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    fn = sum(r["fn"] for r in rows)
    assert out["micro_dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_summarize_cases_worst_case_includes_penalty():
    rows = _rows(EmptyPolicy.worst_case())
    out = S.summarize_cases(rows, metric_keys=["hd_mm", "dsc"], n_resamples=200)
    assert out["hd_mm"]["n"] == 6 and out["hd_mm"]["n_nan"] == 0
    assert out["hd_mm"]["mean"] == pytest.approx(np.mean([r["hd_mm"] for r in rows]))
    assert rows[0]["hd_mm"] == pytest.approx(M.scan_diagonal_mm((16, 16, 16), (1, 1, 1)))
    assert set(out) == {
        "hd_mm",
        "dsc",
        "n_cases",
        "empty_cases",
        "empty_policy",
        "lesion_connectivity",
        "micro_dsc",
        "by_empty_policy",
    }
    assert out["lesion_connectivity"] == 6


def test_distances_under_both_policies_from_either_run():
    by_nan = S.summarize_cases(_rows(EmptyPolicy.nan()), n_resamples=200)["by_empty_policy"]
    worst_rows = _rows(EmptyPolicy.worst_case())
    by_worst = S.summarize_cases(worst_rows, n_resamples=200)["by_empty_policy"]
    assert by_nan == by_worst
    assert set(by_worst) == {"worst_case", "nan"}
    diagonal = M.scan_diagonal_mm((16, 16, 16), (1, 1, 1))
    for key in ("hd_mm", "hd95_mm", "assd_mm"):
        worst, nan = by_worst["worst_case"][key], by_worst["nan"][key]
        assert worst["n"] == 6 and worst["n_nan"] == 0
        assert worst["mean"] == pytest.approx(np.mean([r[key] for r in worst_rows]))
        assert nan["n"] == 5 and nan["n_nan"] == 1
        assert nan["mean"] == pytest.approx(np.mean([r[key] for r in worst_rows[1:]]))
        # the missed scan adds (diagonal - mean of the others) / 6 to the worst-case mean
        assert worst["mean"] - nan["mean"] == pytest.approx((diagonal - nan["mean"]) / 6)
    # a custom worst-case penalty stays as the rows were scored
    penalised = _rows(EmptyPolicy.worst_case(penalty_mm=50.0))
    out = S.summarize_cases(penalised, n_resamples=200)["by_empty_policy"]
    assert out["worst_case"]["hd_mm"]["mean"] == pytest.approx(
        np.mean([50.0, *[r["hd_mm"] for r in penalised[1:]]])
    )
    assert out["nan"] == by_worst["nan"]
    # no empty case: no second policy to show
    assert "by_empty_policy" not in S.summarize_cases(worst_rows[1:], n_resamples=50)


def test_report_shows_both_policies_when_a_case_is_empty():
    from stroke_seg import report

    rows = _rows(EmptyPolicy.nan())
    summary = report.summary_json(rows, "nan", n_resamples=200)
    by = summary["by_empty_policy"]
    text = report.render_report("r", [], {"m": summary}, {}, {}, {}, 200)
    assert "## HD and ASSD under both empty-mask policies" in text
    table = report.empty_policy_table({"m": summary})
    lines = table.splitlines()
    assert lines[0].startswith("| Methods | Empty-mask policy | Scans averaged | HD (mm)")
    assert lines[2].startswith(
        f"| m | worst_case | 6 | {report.format_ci(by['worst_case']['hd_mm'], 1)}"
    )
    assert lines[3].startswith(
        f"| m | nan (this run) | 5 | {report.format_ci(by['nan']['hd_mm'], 1)}"
    )
    assert table in text
    assert "Volume diff (voxels)" in text
    no_empty = report.summary_json(rows[1:], "nan", n_resamples=50)
    assert "by_empty_policy" not in no_empty
    assert "both empty-mask policies" not in report.render_report(
        "r", [], {"m": no_empty}, {}, {}, {}, 50
    )


def test_micro_dsc_pools_scan_metrics_of_masks():
    # (moved from the removed metrics.MicroDice / micro_dice, every assertion kept)
    def line(bits: str) -> np.ndarray:
        return np.array([c == "1" for c in bits], bool).reshape(1, 1, -1)

    pairs = [
        (line("1111000000"), line("0011111100")),  # TP 2, FP 2, FN 4
        (line("1100000000"), line("1100000000")),  # TP 2
        (line("0000000000"), line("0000000111")),  # FN 3 (missed)
    ]
    rows = [M.scan_metrics(p, r, (1.0, 1.0, 1.0)) for p, r in pairs]
    expected = 2 * 4 / (2 * 4 + 2 + 7)
    assert S.micro_dsc(rows) == pytest.approx(expected)
    assert tuple(sum(r[k] for r in rows) for k in ("tp", "fp", "fn")) == (4, 2, 7)
    assert S.summarize_cases(rows, n_resamples=10)["micro_dsc"] == pytest.approx(expected)
    assert S.micro_dsc([]) == 1.0  # no voxel of any mask: the empty value


def test_summarize_cases_missing_keys():
    rows = [{"dsc": 0.5}, {"dsc": 0.7, "hd_mm": 3.0}]
    with pytest.raises(ValueError, match="hd_mm"):
        S.summarize_cases(rows, metric_keys=["dsc", "hd_mm"])
    out = S.summarize_cases(rows, metric_keys=["dsc", "assd_mm"])
    assert "assd_mm" not in out and "micro_dsc" not in out


def test_micro_dsc_by_hand():
    rows = [{"tp": 2, "fp": 2, "fn": 4}, {"tp": 2, "fp": 0, "fn": 0}, {"tp": 0, "fp": 0, "fn": 3}]
    assert S.micro_dsc(rows) == pytest.approx(8 / (8 + 2 + 7))
    assert S.micro_dsc([{"tp": 0, "fp": 0, "fn": 0}]) == 1.0
    with pytest.raises(ValueError, match="fn"):
        S.micro_dsc([{"tp": 1, "fp": 0}])


def test_r_squared():
    x = np.log10([10, 100, 1000, 10000])
    assert S.r_squared(x, 0.1 * x + 0.2) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    x = rng.random(31) * 4 + 1
    y = 0.1 * x + rng.normal(0, 0.2, 31)
    expected = np.corrcoef(x, y)[0, 1] ** 2
    assert S.r_squared(x, y) == pytest.approx(expected, rel=1e-12)
    # non-finite pairs (log10 of an empty reference) are dropped
    x2 = np.append(x, -np.inf)
    y2 = np.append(y, 0.0)
    assert S.r_squared(x2, y2) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(S.r_squared([1.0], [2.0]))
    assert math.isnan(S.r_squared([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def _percentile_groups(sizes) -> list[list[int]]:
    """Table 4's groups straight from the definition: [q_k, q_k+1) of np.percentile."""
    edges = [-np.inf, *np.percentile(sizes, [25, 50, 75]), np.inf]
    return [
        sorted((i for i, v in enumerate(sizes) if lo <= v < hi), key=lambda i: sizes[i])
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]


def test_quartile_groups_31_are_percentile_groups():
    sizes = np.random.default_rng(4).choice(100000, size=31, replace=False) + 10
    groups = S.quartile_groups(sizes)
    assert [len(g) for g in groups] == [8, 7, 8, 8]  # np.array_split would give 8, 8, 8, 7
    assert [g.tolist() for g in groups] == _percentile_groups(sizes)
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(31))
    for lower, upper in zip(groups[:-1], groups[1:], strict=True):
        assert sizes[lower].max() < sizes[upper].min()
    # the median scan sits exactly on the 50th-percentile cut-off and opens the upper group
    q25, q50, q75 = S.quartile_cutoffs(sizes)
    median_scan = int(np.argsort(sizes)[15])
    assert sizes[median_scan] == q50 and groups[2][0] == median_scan
    assert (q25, q75) == (np.mean(np.sort(sizes)[7:9]), np.mean(np.sort(sizes)[22:24]))
    assert [len(g) for g in S.quartile_groups(np.arange(8))] == [2, 2, 2, 2]
    assert [len(g) for g in S.quartile_groups(np.arange(9))] == [2, 2, 2, 3]
    assert [len(g) for g in S.quartile_groups([])] == [0, 0, 0, 0]


def test_quartile_groups_ties():
    # tied sizes share a group; a tie on a cut-off goes up with it
    tied = S.quartile_groups([5, 5, 5, 5, 1])
    assert [g.tolist() for g in tied] == [[4], [], [], [0, 1, 2, 3]]
    # 31 scans with four equal sizes spanning the 25th percentile (sorted positions 6-9)
    sizes = np.arange(31, dtype=float) * 10
    sizes[6:10] = 65.0
    sizes = sizes[np.random.default_rng(0).permutation(31)]
    groups = S.quartile_groups(sizes)
    assert S.quartile_cutoffs(sizes)[0] == 65.0
    assert [len(g) for g in groups] == [6, 9, 8, 8]
    assert [g.tolist() for g in groups] == _percentile_groups(sizes)
    assert set(sizes[groups[1]][:4]) == {65.0}
    # ties inside a group keep their input order; the smallest size, tied on the 25th
    # percentile, leaves the 0-25% group empty
    groups = S.quartile_groups([3, 1, 1, 1, 2, 9, 9, 9])
    assert [g.tolist() for g in groups] == [[], [1, 2, 3, 4], [0], [5, 6, 7]]


def test_summarize_by_size_quartile():
    sizes, dscs = range(31, 0, -1), np.linspace(0, 1, 31)
    rows = [{"ref_voxels": v, "dsc": d} for v, d in zip(sizes, dscs, strict=True)]
    blocks = S.summarize_by_size_quartile(rows, metric_keys=["dsc"], n_resamples=100)
    assert [b["group"] for b in blocks] == list(S.QUARTILE_LABELS)
    assert [b["n_cases"] for b in blocks] == [8, 7, 8, 8]
    assert blocks[0]["size_range"] == [1.0, 8.0]
    assert blocks[2]["size_range"] == [16.0, 23.0]
    assert blocks[3]["size_range"] == [24.0, 31.0]
    assert [b["cutoffs"] for b in blocks] == [[None, 8.5], [8.5, 16.0], [16.0, 23.5], [23.5, None]]
    assert blocks[0]["dsc"]["mean"] > blocks[3]["dsc"]["mean"]
