"""The analysis tools under tools/ (not a package: loaded from their files)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_lesion_probabilities_row_tells_unlearned_from_threshold_problem():
    lp = _load("lesion_probabilities")
    truth = np.zeros((10, 10, 10), dtype=bool)
    truth[2:6, 2:6, 2:6] = True  # 64 voxels
    prob = np.zeros(truth.shape, dtype=np.float32)
    prob[truth] = 0.35  # a lesion seen, but under 0.5: found from threshold 0.3 down
    prob[2, 2, 2] = 0.8
    row = lp.scan_row("s1", prob, truth, voxel_ml=0.008)
    assert row.lesion_ml == pytest.approx(64 * 0.008)
    assert row.max_inside == pytest.approx(0.8)
    assert row.median_inside == pytest.approx(0.35)
    # 0.5 and 0.4: one voxel of 64 -> 2 / 65; 0.3 and below: all of it.
    assert row.dsc == pytest.approx((2 / 65, 2 / 65, 1.0, 1.0, 1.0))


def test_lesion_probabilities_summary_splits_by_size():
    lp = _load("lesion_probabilities")
    rows = [
        lp.ScanRow("a", 1.0, 0.0, 0.0, (0.0, 0.1)),
        lp.ScanRow("b", 2.0, 0.0, 0.0, (0.2, 0.3)),
        lp.ScanRow("c", 10.0, 0.9, 0.8, (0.8, 0.9)),
    ]
    out = lp.summary(rows, small_ml=3.7)
    assert out["all"][0] == 3 and out["all"][1] == pytest.approx([1.0 / 3, 1.3 / 3])
    assert out["under 3.7 ml"] == (2, pytest.approx([0.1, 0.2]))
    assert out["3.7 ml and over"] == (1, pytest.approx([0.8, 0.9]))


def test_lesion_probabilities_main_scores_every_scan_against_its_mask(tiny_bids, ckpt, capsys):
    """End to end on the tiny scans: one row per scan, its lesion volume read from the mask
    on disk, and DSCs between 0 and 1 (the untrained checkpoint's values are whatever they are)."""
    import nibabel as nib

    lp = _load("lesion_probabilities")
    assert lp.main([f"ckpt={ckpt}", f"root={tiny_bids}", "device=cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in out if line.startswith("sub-")]
    masks = sorted(tiny_bids.rglob("*_mask.nii.gz"))
    assert len(rows) == len(masks) == 8
    want = {}
    for m in masks:
        img = nib.load(m)
        ml = float((np.asarray(img.dataobj) > 0).sum() * np.prod(img.header.get_zooms()) / 1000)
        want[m.name.split("_")[0]] = ml
    for scan, ml, max_p, median_p, dscs in rows:
        assert float(ml) == pytest.approx(want[scan.split("_")[0]], abs=0.01)
        assert 0 <= float(median_p) <= float(max_p) <= 1
        assert all(0 <= float(d) <= 1 for d in dscs.split())
    assert any(line.startswith("mean DSC per threshold, all (8)") for line in out)


def test_compare_recipes_table_prints_each_figure_of_a_row():
    cr = _load("compare_recipes")

    def scores(dsc, lo, hi, hd=None, f1=None):
        return {"n": 30, "dsc": dsc, "dsc_ci95": [lo, hi], "hd95_mm": hd, "lesion_f1": f1}

    row = {
        "row": "demo",
        "what": "the demo",
        "val_dsc": 0.8164,
        "n_val": 4,
        "zoom_in_epochs": 101,
        "train_seconds": 726.0,
        "test": {"final": scores(0.7371, 0.616, 0.837, 2.8, 0.84), "ensemble": scores(0.736, 0, 1)},
        "external": {"final": scores(0.7132, 0.595, 0.818)},
        "randomised": {"final": scores(0.133, 0.05, 0.23)},
        "lesions": {"final": scores(0.4512, 0.31, 0.58)},
        "simulator": {"final": scores(0.6021, 0.52, 0.68)},
    }
    # a row scored before the two other-lesion sets existed: their cells are dashes
    older = {k: v for k, v in row.items() if k not in ("lesions", "simulator")}
    head, rule, line, old_line = cr.table([row, older]).splitlines()
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == len(head.strip("|").split("|")) == rule.count("---")
    assert cells == [
        "demo: the demo",
        "0.816 (4)",
        "0.737 [0.616, 0.837] (n=30)",
        "0.736",
        "0.713 [0.595, 0.818] (n=30)",
        "0.133 (n=30)",
        "0.451 [0.310, 0.580] (n=30)",
        "0.602 [0.520, 0.680] (n=30)",
        "2.8",
        "0.840",
        "101",
        "12.1 min",
    ]
    assert [c.strip() for c in old_line.strip("|").split("|")][6:8] == ["—", "—"]


def test_compare_recipes_pairs_each_row_with_the_row_it_changes(tmp_path, monkeypatch):
    """Differences per scan over the subjects both rows were scored on, the row's `versus`
    (demo against paper), and each row's ensemble against its final model."""
    cr = _load("compare_recipes")
    monkeypatch.setattr(cr, "REPO", tmp_path)

    def write(name, label, dsc, model="final"):
        path = cr.cases_csv(tmp_path / "cmp", name, label, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["subject,dsc,lesion_mm3"] + [f"s{i},{d},1.0" for i, d in enumerate(dsc)]
        path.write_text("\n".join(lines) + "\n")

    for label in cr.LABELS:
        write("paper", label, [0.5, 0.6, 0.7, 0.2])
        if label not in ("lesions", "simulator"):  # demo not scored there (an older run)
            write("demo", label, [0.7, 0.7, 0.7])  # s3 not scored: left out of the pairing
    write("paper", "test", [0.5, 0.6, 0.7, 0.2], "ensemble")
    write("demo", "test", [0.7, 0.8, 0.6], "ensemble")
    diffs = cr.paired_differences(tmp_path / "cmp", ["paper", "demo"])
    assert set(diffs) == {"demo − paper", "paper: ensemble − final", "demo: ensemble − final"}
    d = diffs["demo − paper"]["external"]
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.1)
    assert d["ci95"][0] == pytest.approx(0.0) and d["ci95"][1] == pytest.approx(0.2)
    assert "lesions" not in diffs["demo − paper"]
    e = diffs["demo: ensemble − final"]
    assert set(e) == {"test"} and e["test"]["mean"] == pytest.approx(0.0, abs=1e-12)
    line = cr.paired_table(diffs).splitlines()[3]  # after the head, the rule and demo − paper
    assert line == "| paper: ensemble − final | +0.000 [+0.000, +0.000] (n=4) | — | — | — | — |"
