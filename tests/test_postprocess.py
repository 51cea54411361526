"""Post-processing: components below a size in mm³, connectivity, and the nnU-Net choice rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stroke_seg.errors import StrokeSegError
from stroke_seg.postprocess import (
    choose_min_lesion_mm3,
    chosen_value,
    component_stats,
    remove_small_components,
)


def _blobs() -> np.ndarray:
    """A 3x3x3 cube (27 voxels), a lone voxel, and two voxels touching at a corner only."""
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1:4, 1:4, 1:4] = 1
    mask[8, 8, 8] = 1
    mask[6, 1, 8] = mask[7, 2, 9] = 1
    return mask


def test_sizes_are_millimetres_not_voxels() -> None:
    mask = _blobs()
    # 2 mm voxels = 8 mm³: the cube is 216 mm³, each single voxel 8 mm³
    kept = remove_small_components(mask, (2.0, 2.0, 2.0), 100.0)
    assert kept.dtype == np.uint8 and int(kept.sum()) == 27 and kept[1:4, 1:4, 1:4].all()
    # the same threshold at 1 mm removes everything (the cube is 27 mm³)
    assert int(remove_small_components(mask, (1.0, 1.0, 1.0), 100.0).sum()) == 0
    # anisotropic voxels count by their volume: 1 x 1 x 4 mm = 4 mm³ per voxel
    assert int(remove_small_components(mask, (1.0, 1.0, 4.0), 100.0).sum()) == 27
    # 0 = off: the mask unchanged
    np.testing.assert_array_equal(remove_small_components(mask, (2.0, 2.0, 2.0), 0), mask)


def test_connectivity_decides_what_one_component_is() -> None:
    mask = _blobs()
    spacing = (2.0, 2.0, 2.0)  # the corner pair is 16 mm³ as one component, 8 mm³ as two
    six = remove_small_components(mask, spacing, 10.0)  # default: 6-connectivity
    assert six[6, 1, 8] == 0 and six[7, 2, 9] == 0 and six[8, 8, 8] == 0
    twenty_six = remove_small_components(mask, spacing, 10.0, connectivity=26)
    assert twenty_six[6, 1, 8] == 1 and twenty_six[7, 2, 9] == 1 and twenty_six[8, 8, 8] == 0
    with pytest.raises(StrokeSegError, match="connectivity=8 is not known"):
        remove_small_components(mask, spacing, 10.0, connectivity=8)


def test_component_stats_give_the_dsc_after_each_threshold() -> None:
    pred = _blobs()
    ref = np.zeros_like(pred)
    ref[1:4, 1:4, 1:4] = 1
    ref[1:4, 1:4, 4] = 1  # 9 reference voxels the prediction misses
    stats = component_stats(pred, ref, (2.0, 2.0, 2.0))
    for size in (0.0, 10.0, 20.0, 500.0):
        kept = remove_small_components(pred, (2.0, 2.0, 2.0), size)
        direct = 2 * int((kept & ref).sum()) / (int(kept.sum()) + int(ref.sum()))
        assert stats.dsc(size) == pytest.approx(direct)
    assert stats.dsc(0.0) == pytest.approx(2 * 27 / (30 + 36))
    assert stats.dsc(10.0) == pytest.approx(2 * 27 / (27 + 36))


def test_choice_keeps_a_size_only_if_it_beats_no_postprocessing() -> None:
    spacing = (2.0, 2.0, 2.0)
    pred = _blobs()
    ref = np.zeros_like(pred)
    ref[1:4, 1:4, 1:4] = 1
    islands = component_stats(pred, ref, spacing)  # the 8 mm³ voxels are false positives
    chosen = choose_min_lesion_mm3([islands], candidates=[8.0, 16.0, 32.0, 500.0])
    # 16 mm³ removes the lone voxels (8 mm³ each) and keeps the cube; 8 keeps them (>= 8)
    assert chosen["min_lesion_mm3"] == 16.0
    assert chosen["best_dsc"] == pytest.approx(1.0)
    assert chosen["baseline_dsc"] == pytest.approx(2 * 27 / (30 + 27))
    assert chosen["candidates"]["500.0"] == 0.0 and chosen["n_scans"] == 1
    # small true lesions: removing them only hurts, so nothing is removed
    small = component_stats(pred, pred, spacing)
    assert choose_min_lesion_mm3([small])["min_lesion_mm3"] == 0.0
    # the mean over scans decides: one scan helped a little, one hurt a lot -> 0
    assert choose_min_lesion_mm3([islands, small], [16.0])["min_lesion_mm3"] == 0.0
    with pytest.raises(StrokeSegError, match="at least one validation scan"):
        choose_min_lesion_mm3([])


def test_chosen_value_reads_numbers_and_postprocessing_json(tmp_path) -> None:
    assert chosen_value(0) == 0.0 and chosen_value("64") == 64.0
    path = tmp_path / "postprocessing.json"
    path.write_text(
        json.dumps({"final": {"min_lesion_mm3": 32.0}, "ensemble": {"min_lesion_mm3": 0}})
    )
    assert chosen_value(str(path), "final") == 32.0
    assert chosen_value(str(path), "ensemble") == 0.0
    with pytest.raises(StrokeSegError, match="holds no record for model 'other'"):
        chosen_value(str(path), "other")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"run/last": {"min_lesion_mm3": 8.0}}))
    assert chosen_value(str(one), "anything") == 8.0  # a single record serves any one model
    with pytest.raises(StrokeSegError, match="min_lesion_mm3=-1"):
        chosen_value(-1)
    with pytest.raises(StrokeSegError, match="not a readable postprocessing.json"):
        chosen_value(str(tmp_path / "missing.json"))
