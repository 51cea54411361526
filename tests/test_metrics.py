"""Per-scan metrics (paper Sec. 2.5; ATLAS v2.0 challenge) vs DeepMind's library and by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from stroke_seg import metrics as M
from stroke_seg.errors import StrokeSegError
from stroke_seg.metrics import EmptyPolicy

ANISO = (1.0, 1.5, 2.0)


def _deepmind():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import surface_distance

    return surface_distance


def _blob(rng: np.random.Generator, shape=(28, 34, 30), level=0.53) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), 2.0) > level


def _blob_pairs(n: int = 8):
    rng = np.random.default_rng(1234)
    pairs = []
    while len(pairs) < n:
        a, b = _blob(rng), _blob(rng)
        if a.any() and b.any():
            pairs.append((a, b))
    return pairs


# --------------------------------------------------------------------------------------
# Agreement with DeepMind surface-distance (the paper's tool)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["edt", "kdtree", "auto"])
@pytest.mark.parametrize("spacing", [ANISO, (1.0, 1.0, 1.0), (2.0, 0.7, 1.2)])
def test_surface_distances_match_deepmind(spacing, method):
    sd = _deepmind()
    for pred, ref in _blob_pairs(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib = sd.compute_surface_distances(ref, pred, spacing)
        ours = M.surface_distances(pred, ref, spacing, method=method)
        assert set(ours) == set(lib)
        for key in lib:
            np.testing.assert_allclose(ours[key], lib[key], rtol=1e-12, atol=0)


def test_hd_hd95_assd_match_deepmind_anisotropic():
    sd = _deepmind()
    for pred, ref in _blob_pairs(8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib = sd.compute_surface_distances(ref, pred, ANISO)
        hd = sd.compute_robust_hausdorff(lib, 100)
        hd95 = sd.compute_robust_hausdorff(lib, 95)
        d_ref, d_pred = sd.compute_average_surface_distance(lib)
        a_ref, a_pred = lib["surfel_areas_gt"].sum(), lib["surfel_areas_pred"].sum()
        pooled = (d_ref * a_ref + d_pred * a_pred) / (a_ref + a_pred)

        assert M.hausdorff(pred, ref, ANISO) == pytest.approx(hd, rel=1e-9)
        assert M.hd95(pred, ref, ANISO) == pytest.approx(hd95, rel=1e-9)
        assert M.hausdorff(pred, ref, ANISO, percentile=95) == pytest.approx(hd95, rel=1e-9)
        assert M.assd(pred, ref, ANISO) == pytest.approx(pooled, rel=1e-9)
        assert M.assd(pred, ref, ANISO, mode="mean") == pytest.approx(
            0.5 * (d_ref + d_pred), rel=1e-9
        )
        row = M.scan_metrics(pred, ref, ANISO)
        assert row["hd_mm"] == pytest.approx(hd, rel=1e-9)
        assert row["hd95_mm"] == pytest.approx(hd95, rel=1e-9)
        assert row["assd_mm"] == pytest.approx(pooled, rel=1e-9)
        assert row["dsc"] == pytest.approx(sd.compute_dice_coefficient(ref, pred), rel=1e-12)


def test_scattered_islands_kdtree_path_matches_deepmind():
    sd = _deepmind()
    rng = np.random.default_rng(9)
    ref = np.zeros((60, 70, 50), bool)
    ref[20:28, 30:37, 20:26] = True
    pred = ref.copy()
    pred[tuple(rng.integers(0, 50, size=(3, 40)))] = True  # 40 single-voxel islands
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = sd.compute_surface_distances(ref, pred, ANISO)
    for method in ("auto", "kdtree", "edt"):
        ours = M.surface_distances(pred, ref, ANISO, method=method)
        for key in lib:
            np.testing.assert_allclose(ours[key], lib[key], rtol=1e-12, atol=0)
    row = M.scan_metrics(pred, ref, ANISO)
    assert row["hd_mm"] == pytest.approx(sd.compute_robust_hausdorff(lib, 100), rel=1e-12)
    assert row["hd95_mm"] == pytest.approx(sd.compute_robust_hausdorff(lib, 95), rel=1e-12)
    with pytest.raises(ValueError, match="method"):
        M.surface_distances(pred, ref, ANISO, method="fast")


def test_distances_symmetric_in_pred_and_ref():
    pred, ref = _blob_pairs(1)[0]
    assert M.hausdorff(pred, ref, ANISO) == M.hausdorff(ref, pred, ANISO)
    assert M.assd(pred, ref, ANISO) == pytest.approx(M.assd(ref, pred, ANISO), rel=1e-12)


def test_masks_touching_the_volume_border():
    sd = _deepmind()
    ref = np.zeros((12, 10, 8), bool)
    pred = ref.copy()
    ref[:5, :4, 3:] = True
    pred[2:, :6, 5:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = sd.compute_surface_distances(ref, pred, ANISO)
    assert M.hausdorff(pred, ref, ANISO) == pytest.approx(sd.compute_robust_hausdorff(lib, 100))


# --------------------------------------------------------------------------------------
# Hand-computed distances
# --------------------------------------------------------------------------------------


def test_two_cubes_offset_hd_known():
    ref = np.zeros((40, 40, 40), bool)
    pred = ref.copy()
    ref[10:20, 10:20, 10:20] = True
    pred[13:23, 10:20, 10:20] = True  # shifted 3 voxels along axis 0 (2 mm each)
    assert M.hausdorff(pred, ref, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.hd95(pred, ref, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.hausdorff(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    # Shift along the last axis with 2 mm spacing there.
    pred2 = np.roll(ref, 4, axis=2)
    assert M.hausdorff(pred2, ref, ANISO) == pytest.approx(8.0)
    assert M.dice(pred2, ref) == pytest.approx(2 * 600 / 2000)


def test_identical_masks_have_zero_distance():
    pred, _ = _blob_pairs(1)[0]
    assert M.hausdorff(pred, pred, ANISO) == 0.0
    assert M.assd(pred, pred, ANISO) == 0.0
    assert M.dice(pred, pred) == 1.0


def test_single_voxels():
    ref = np.zeros((20, 20, 20), bool)
    pred = ref.copy()
    pred[5, 5, 5] = True
    ref[5, 5, 12] = True
    # Surfaces are the voxels' 8 corners; along axis 2 (2 mm) the corner layers are
    # 6 and 7 voxels apart: HD = 7 * 2 mm, ASSD = mean(6, 7) * 2 mm.
    assert M.hausdorff(pred, ref, ANISO) == pytest.approx(14.0)
    assert M.assd(pred, ref, ANISO) == pytest.approx(13.0)
    assert M.dice(pred, ref) == 0.0
    assert M.hausdorff(ref, ref, ANISO) == 0.0


def test_far_false_positive_island_drives_hd_not_dsc():
    ref = np.zeros((100, 60, 60), bool)
    ref[20:30, 20:30, 20:30] = True
    pred = ref.copy()
    pred[80, 25, 25] = True  # one voxel; its far corner layer is 81 - 30 = 51 voxels away
    spacing = (1.5, 1.0, 1.0)
    assert M.dice(pred, ref) == pytest.approx(2000 / 2001)
    assert M.hausdorff(pred, ref, spacing) == pytest.approx(51 * 1.5)
    assert M.hausdorff(ref, ref, spacing) == 0.0
    # The island's surfels are a tiny fraction of the surface area: HD95 ignores it.
    assert M.hd95(pred, ref, spacing) == 0.0
    assert 0.0 < M.assd(pred, ref, spacing) < 1.0


# --------------------------------------------------------------------------------------
# Overlap metrics by hand
# --------------------------------------------------------------------------------------


def _line(bits: str) -> np.ndarray:
    return np.array([c == "1" for c in bits], bool).reshape(1, 1, -1)


def test_dsc_tpr_precision_by_hand():
    pred = _line("1111000000")
    ref = _line("0011111100")
    # TP = 2, FP = 2, FN = 4
    assert M.confusion_counts(pred, ref) == (2, 2, 4)
    assert M.dice(pred, ref) == pytest.approx(4 / 10)
    assert M.tpr(pred, ref) == pytest.approx(2 / 6)
    assert M.precision(pred, ref) == pytest.approx(2 / 4)


def test_non_bool_masks_are_nonzero():
    pred = _line("1111000000").astype(np.float32) * 255
    ref = _line("0011111100").astype(np.uint8)
    assert M.dice(pred, ref) == pytest.approx(0.4)


def test_shape_mismatch_raises_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        M.scan_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), ANISO)
    with pytest.raises(ValueError, match="shape"):
        M.dice(np.zeros((2, 3, 4)), np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="Probability map shape"):
        M.scan_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), ANISO, prob=np.zeros((2, 3)))


def test_bad_spacing_raises():
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="spacing"):
        M.hausdorff(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.scan_metrics(mask, mask, (1.0, 0.0, 1.0))


# --------------------------------------------------------------------------------------
# Maximal DSC
# --------------------------------------------------------------------------------------


def _constructed_prob():
    prob = np.zeros((4, 10, 10), np.float32)
    ref = np.zeros_like(prob, bool)
    flat_p, flat_r = prob.reshape(-1), ref.reshape(-1)
    flat_r[:10] = True
    flat_p[:5] = 0.9  # 5 confident lesion voxels
    flat_p[5:10] = 0.3  # 5 faint lesion voxels
    flat_p[10:13] = 0.6  # 3 confident false positives
    flat_p[13:113] = 0.2  # 100 faint background voxels
    return prob, ref


def test_max_dice_known_optimum():
    prob, ref = _constructed_prob()
    # Sets: >=0.9 -> 10/15; >=0.6 -> 10/18 (the 0.5 threshold); >=0.3 -> 20/23 (best);
    # >=0.2 -> 20/123; all -> 20/410.
    best, t = M.max_dice_sweep(prob, ref)
    assert best == pytest.approx(20 / 23)
    assert 0.2 < t < 0.3
    assert M.dice(prob > t, ref) == pytest.approx(best)
    assert M.dice(prob > 0.5, ref) == pytest.approx(10 / 18)
    assert M.max_dice(prob, ref, np.linspace(0.05, 0.95, 19)) == pytest.approx(20 / 23)
    assert M.max_dice(prob, ref, [0.5]) == pytest.approx(10 / 18)
    assert M.max_dice(prob, ref, [0.5, 0.95]) == pytest.approx(10 / 18)


def test_max_dice_exact_sweep_equals_brute_force_and_bounds_dice():
    rng = np.random.default_rng(7)
    for _ in range(10):
        ref = _blob(rng, (12, 14, 10), 0.5)
        noise = ndimage.gaussian_filter(rng.random(ref.shape), 1.0)
        prob = np.clip(0.6 * ref + noise - 0.2, 0, 1).astype(np.float32)
        prob = np.round(prob, 2)  # force ties
        brute = max(M.dice(prob >= u, ref) for u in np.unique(prob))
        brute = max(brute, M.dice(np.zeros_like(ref), ref))
        best, t = M.max_dice_sweep(prob, ref)
        assert best == pytest.approx(brute, rel=1e-12)
        assert M.dice(prob > t, ref) == pytest.approx(best, rel=1e-12)
        assert best >= M.dice(prob > 0.5, ref)
        grid = np.linspace(0.05, 0.95, 19)
        grid_best = max(M.dice(prob > g, ref) for g in grid)
        assert M.max_dice(prob, ref, grid) == pytest.approx(grid_best, rel=1e-12)


def test_max_dice_empty_reference_and_nan():
    prob = np.full((3, 3, 3), 0.7, np.float32)
    ref = np.zeros((3, 3, 3), bool)
    assert M.max_dice(prob, ref) == 1.0  # the empty prediction (t >= 0.7) is optimal
    assert M.max_dice(prob, ref, [0.5]) == 0.0
    prob[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="nan"):
        M.max_dice(prob, ref)


# --------------------------------------------------------------------------------------
# ATLAS v2.0 challenge metrics
# --------------------------------------------------------------------------------------


def test_lesion_f1_two_refs_one_hit_one_false_positive():
    ref = np.zeros((30, 30, 30), bool)
    ref[2:6, 2:6, 2:6] = True  # lesion A (hit)
    ref[20:24, 20:24, 20:24] = True  # lesion B (missed)
    pred = np.zeros_like(ref)
    pred[4:8, 4:8, 4:8] = True  # overlaps A
    pred[2:4, 25:28, 12:14] = True  # overlaps nothing
    counts = M.lesion_detection_counts(pred, ref)
    assert counts == {"tp": 1, "fp": 1, "fn": 1, "n_pred": 2, "n_ref": 2}
    assert M.lesion_wise_f1(pred, ref) == pytest.approx(2 * 1 / (2 + 1 + 1))
    assert M.lesion_count_difference(pred, ref) == 0
    assert M.scan_metrics(pred, ref, ANISO)["lesion_f1"] == pytest.approx(0.5)


def test_components_are_6_connected_by_default_26_on_request():
    ref = np.zeros((5, 5, 5), bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True  # corner-touching: one lesion only under 26-connectivity
    ref[4, 4, 0] = True  # isolated
    pred = np.zeros_like(ref)
    pred[2, 2, 2] = True
    counts = M.lesion_detection_counts(pred, ref)
    assert counts == {"tp": 1, "fp": 0, "fn": 2, "n_pred": 1, "n_ref": 3}
    assert M.lesion_count_difference(pred, ref) == 2
    assert M.lesion_wise_f1(pred, ref) == pytest.approx(2 / (2 + 0 + 2))
    counts = M.lesion_detection_counts(pred, ref, connectivity=26)
    assert counts == {"tp": 1, "fp": 0, "fn": 1, "n_pred": 1, "n_ref": 2}
    assert M.lesion_count_difference(pred, ref, connectivity=26) == 1
    assert M.lesion_wise_f1(pred, ref, connectivity=26) == pytest.approx(2 / 3)
    # edge-touching voxels: one lesion under 18- and 26-, two under 6-connectivity
    edge = np.zeros((4, 4, 4), bool)
    edge[1, 1, 1] = edge[2, 2, 1] = True
    empty = np.zeros_like(edge)
    assert [M.lesion_count_difference(edge, empty, c) for c in (6, 18, 26)] == [2, 1, 1]
    assert M.DEFAULT_CONNECTIVITY == 6 and M.LESION_CONNECTIVITIES == (6, 18, 26)


def test_connectivity_is_checked_and_recorded():
    pred, ref = _empty_case_masks("none")
    for connectivity in M.LESION_CONNECTIVITIES:
        row = M.scan_metrics(pred, ref, ANISO, connectivity=connectivity)
        assert row["lesion_connectivity"] == connectivity
    assert M.scan_metrics(pred, ref, ANISO)["lesion_connectivity"] == 6
    for call in (
        lambda: M.scan_metrics(pred, ref, ANISO, connectivity=8),
        lambda: M.lesion_wise_f1(pred, ref, connectivity=8),
        lambda: M.lesion_count_difference(pred, ref, connectivity=8),
        lambda: M.lesion_detection_counts(pred, ref, connectivity=8),
    ):
        with pytest.raises(
            StrokeSegError, match=r"connectivity=8 is not known; use one of 6, 18, 26"
        ):
            call()
    with pytest.raises(ValueError, match="3-D"):
        M.lesion_detection_counts(np.zeros((3, 3), bool), np.zeros((3, 3), bool))


# The ATLAS v2.0 challenge's definitions (npnl/atlas2_grand_challenge, isles/scoring.py after
# commit 55b9524), re-derived here independently of stroke_seg.metrics: one scipy.ndimage.label
# per mask (default structure = 6-connectivity, or `structure`) and a loop over the lesions.
def _challenge_lesion_f1(truth, prediction, structure=None, empty_value=1.0) -> float:
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    tp = fn = fp = 0
    labels, n = ndimage.label(truth, structure=structure)
    for k in range(1, n + 1):
        if np.any((labels == k) & prediction):
            tp += 1
        else:
            fn += 1
    labels, n = ndimage.label(prediction, structure=structure)
    for k in range(1, n + 1):
        if not np.any((labels == k) & truth):
            fp += 1
    denom = tp + (fp + fn) / 2
    return tp / denom if denom else empty_value


def _challenge_count_difference(truth, prediction, structure=None) -> int:
    return abs(ndimage.label(prediction, structure)[1] - ndimage.label(truth, structure)[1])


def _challenge_volume_difference(truth, prediction) -> int:
    return abs(int(np.sum(prediction.astype(np.int64))) - int(np.sum(truth.astype(np.int64))))


_STRUCTURES = {6: None, 26: np.ones((3, 3, 3), bool)}


def _assert_matches_challenge(pred: np.ndarray, ref: np.ndarray) -> None:
    for connectivity, structure in _STRUCTURES.items():
        f1 = _challenge_lesion_f1(ref, pred, structure)
        count = _challenge_count_difference(ref, pred, structure)
        assert M.lesion_wise_f1(pred, ref, connectivity=connectivity) == pytest.approx(f1)
        assert M.lesion_count_difference(pred, ref, connectivity) == count
        row = M.scan_metrics(pred, ref, ANISO, connectivity=connectivity)
        assert row["lesion_f1"] == pytest.approx(f1)
        assert row["lesion_count_diff"] == count
    volume = _challenge_volume_difference(ref, pred)
    assert M.volume_difference_voxels(pred, ref) == volume
    assert row["volume_diff_voxels"] == volume
    assert row["volume_diff_ml"] == pytest.approx(volume * 3.0 / 1000)


def _diagonal(shape, start, n) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for i in range(n):
        mask[start + i, start + i, start + i] = True
    return mask


def test_fragmented_masks_match_challenge_where_6_and_26_disagree():
    shape = (12, 12, 12)
    # reference: a 4-voxel diagonal chain (4 lesions under 6-, 1 under 26-connectivity) and a
    # cube; prediction: hits one voxel of the chain, plus a 3-voxel diagonal chain of its own
    ref = _diagonal(shape, 0, 4)
    ref[7:10, 0:3, 0:3] = True
    pred = np.zeros(shape, bool)
    pred[2, 2, 2] = True
    pred |= _diagonal(shape, 6, 3)
    six = M.lesion_detection_counts(pred, ref)
    assert six == {"tp": 1, "fp": 3, "fn": 4, "n_pred": 4, "n_ref": 5}
    assert M.lesion_wise_f1(pred, ref) == pytest.approx(2 / (2 + 3 + 4))
    assert M.lesion_count_difference(pred, ref) == 1
    # under 26-connectivity the chains are single lesions: TP 1 (chain), FN 1 (cube), FP 1
    assert M.lesion_detection_counts(pred, ref, 26) == {
        "tp": 1, "fp": 1, "fn": 1, "n_pred": 2, "n_ref": 2
    }  # fmt: skip
    assert M.lesion_wise_f1(pred, ref, connectivity=26) == pytest.approx(0.5)
    assert M.lesion_count_difference(pred, ref, 26) == 0
    assert M.volume_difference_voxels(pred, ref) == abs(4 - (4 + 27))
    _assert_matches_challenge(pred, ref)
    # a prediction chain touching the reference at one end: FP 0 under 26, 2 under 6
    touching = _diagonal(shape, 3, 3)
    assert M.lesion_detection_counts(touching, ref)["fp"] == 2
    assert M.lesion_detection_counts(touching, ref, 26)["fp"] == 0
    _assert_matches_challenge(touching, ref)


@pytest.mark.parametrize("side", ["pred", "ref", "both"])
def test_empty_masks_match_challenge(side):
    fragmented = _diagonal((8, 8, 8), 1, 5)
    fragmented[6:8, 0:2, 0] = True
    empty = np.zeros_like(fragmented)
    pred = empty if side in ("pred", "both") else fragmented
    ref = empty if side in ("ref", "both") else fragmented
    _assert_matches_challenge(pred, ref)
    n6, n26 = 6, 2
    expected_f1 = 1.0 if side == "both" else 0.0
    assert M.lesion_wise_f1(pred, ref) == expected_f1
    assert M.lesion_count_difference(pred, ref) == (0 if side == "both" else n6)
    assert M.lesion_count_difference(pred, ref, 26) == (0 if side == "both" else n26)
    assert M.volume_difference_voxels(pred, ref) == (0 if side == "both" else 9)
    counts = M.lesion_detection_counts(pred, ref)
    if side == "ref":  # a false alarm: every predicted lesion is a false positive
        assert counts == {"tp": 0, "fp": n6, "fn": 0, "n_pred": n6, "n_ref": 0}
    if side == "pred":  # a missed scan: every reference lesion is a false negative
        assert counts == {"tp": 0, "fp": 0, "fn": n6, "n_pred": 0, "n_ref": n6}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pred=hnp.arrays(np.bool_, (5, 6, 4)),
    ref=hnp.arrays(np.bool_, (5, 6, 4)),
)
def test_random_fragmented_masks_match_challenge(pred, ref):
    _assert_matches_challenge(pred, ref)


def test_random_fragmented_masks_separate_6_from_26():
    # The seeded masks behind the property test's kind of input do split differently under
    # the two connectivities, so the comparison above can tell them apart.
    rng = np.random.default_rng(7)
    pred, ref = rng.random((2, 10, 12, 9)) < 0.2
    assert M.lesion_count_difference(pred, ref) != M.lesion_count_difference(pred, ref, 26)
    assert M.lesion_wise_f1(pred, ref) != pytest.approx(
        M.lesion_wise_f1(pred, ref, connectivity=26)
    )
    _assert_matches_challenge(pred, ref)


def test_volume_difference_ml_anisotropic():
    ref = np.zeros((10, 10, 10), bool)
    pred = ref.copy()
    ref[:4, :10, :1] = True  # 40 voxels
    pred[:10, :10, 5:6] = True  # 100 voxels
    # voxel = 1 * 1.5 * 2 = 3 mm³; |100 - 40| * 3 mm³ = 180 mm³ = 0.18 ml
    assert M.volume_difference_ml(pred, ref, ANISO) == pytest.approx(0.18)
    assert M.volume_difference_ml(ref, pred, ANISO) == pytest.approx(0.18)
    assert M.volume_difference_voxels(pred, ref) == M.volume_difference_voxels(ref, pred) == 60
    row = M.scan_metrics(pred, ref, ANISO)
    assert row["volume_diff_ml"] == pytest.approx(0.18)
    assert row["volume_diff_voxels"] == 60.0
    assert row["ref_mm3"] == pytest.approx(120.0)
    assert row["ref_voxels"] == 40 and row["pred_voxels"] == 100


# --------------------------------------------------------------------------------------
# Empty-mask policy
# --------------------------------------------------------------------------------------

SHAPE = (10, 12, 14)
DIAG = math.sqrt(10.0**2 + 18.0**2 + 28.0**2)


def _empty_case_masks(case: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros(SHAPE, bool)
    ref = np.zeros(SHAPE, bool)
    if case in ("missed", "none"):
        ref[2:5, 3:6, 4:8] = True
    if case in ("false_alarm", "none"):
        pred[3:6, 3:6, 4:8] = True
    return pred, ref


@pytest.mark.parametrize(
    "case, overlap",
    [
        # (dsc, tpr, precision, lesion_f1)
        ("both_empty", (1.0, 1.0, 1.0, 1.0)),
        ("missed", (0.0, 0.0, 0.0, 0.0)),
        ("false_alarm", (0.0, 0.0, 0.0, 0.0)),
    ],
)
@pytest.mark.parametrize("policy_name", ["worst_case", "nan"])
def test_empty_cases_under_both_policies(case, overlap, policy_name):
    policy = EmptyPolicy.from_name(policy_name)
    pred, ref = _empty_case_masks(case)
    row = M.scan_metrics(pred, ref, ANISO, policy=policy)
    assert row["empty_case"] == case
    assert M.empty_case(pred, ref) == case
    assert row["empty_policy"] == policy_name
    assert (row["dsc"], row["tpr"], row["precision"], row["lesion_f1"]) == overlap
    assert M.dice(pred, ref, policy) == overlap[0]
    assert M.tpr(pred, ref, policy) == overlap[1]
    assert M.precision(pred, ref, policy) == overlap[2]
    assert M.lesion_wise_f1(pred, ref, policy) == overlap[3]
    if policy_name == "worst_case":
        expected = 0.0 if case == "both_empty" else DIAG
        for key in ("hd_mm", "hd95_mm", "assd_mm"):
            assert row[key] == pytest.approx(expected)
        assert M.hausdorff(pred, ref, ANISO, policy=policy) == pytest.approx(expected)
        assert M.hd95(pred, ref, ANISO, policy=policy) == pytest.approx(expected)
        assert M.assd(pred, ref, ANISO, policy=policy) == pytest.approx(expected)
    else:
        for key in ("hd_mm", "hd95_mm", "assd_mm"):
            assert math.isnan(row[key])
        assert math.isnan(M.hausdorff(pred, ref, ANISO, policy=policy))
        assert math.isnan(M.assd(pred, ref, ANISO, policy=policy))
    assert math.isnan(row["mdsc"])
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    assert row["volume_diff_ml"] == pytest.approx(abs(n_pred - n_ref) * 3.0 / 1000)
    assert row["volume_diff_voxels"] == abs(n_pred - n_ref)
    assert row["lesion_count_diff"] == (0.0 if case == "both_empty" else 1.0)
    assert row["scan_diagonal_mm"] == pytest.approx(DIAG)
    # re-scored under the other policy, the row equals one scored under it directly
    other = "nan" if policy_name == "worst_case" else "worst_case"
    direct = M.scan_metrics(pred, ref, ANISO, policy=EmptyPolicy.from_name(other))
    rescored = M.with_policy(row, EmptyPolicy.from_name(other))
    assert rescored.keys() == direct.keys()
    for key, value in direct.items():
        assert rescored[key] == value or (math.isnan(value) and math.isnan(rescored[key])), key


def test_default_policy_is_worst_case_and_penalty_configurable():
    assert M.DEFAULT_POLICY == EmptyPolicy.worst_case()
    pred, ref = _empty_case_masks("missed")
    assert M.hausdorff(pred, ref, ANISO) == pytest.approx(DIAG)
    policy = EmptyPolicy.worst_case(penalty_mm=50.0)
    row = M.scan_metrics(pred, ref, ANISO, policy=policy)
    assert row["hd_mm"] == row["assd_mm"] == 50.0
    assert M.with_policy(row, policy)["hd95_mm"] == 50.0
    assert M.with_policy(row, EmptyPolicy.worst_case())["hd_mm"] == pytest.approx(DIAG)
    assert math.isnan(M.with_policy(row, EmptyPolicy.nan())["assd_mm"])
    none_row = M.scan_metrics(*_empty_case_masks("none"), ANISO)
    assert M.with_policy(none_row, EmptyPolicy.nan())["hd_mm"] == none_row["hd_mm"]
    del row["scan_diagonal_mm"]
    with pytest.raises(ValueError, match="scan_diagonal_mm"):
        M.with_policy(row, EmptyPolicy.worst_case())
    assert M.scan_diagonal_mm(SHAPE, ANISO) == pytest.approx(DIAG)
    with pytest.raises(ValueError, match="Unknown"):
        EmptyPolicy.from_name("zero")


def test_empty_cases_with_probability_map():
    pred, ref = _empty_case_masks("missed")
    prob = np.where(ref, 0.4, 0.0).astype(np.float32)  # lesion seen, below 0.5
    row = M.scan_metrics(prob > 0.5, ref, ANISO, prob=prob)
    assert row["empty_case"] == "missed" and row["dsc"] == 0.0
    assert row["mdsc"] == pytest.approx(1.0)
    pred, ref = _empty_case_masks("both_empty")
    row = M.scan_metrics(pred, ref, ANISO, prob=np.zeros(SHAPE, np.float32))
    assert row["mdsc"] == 1.0


def test_surface_distances_refuses_empty_masks():
    pred, ref = _empty_case_masks("missed")
    with pytest.raises(ValueError, match="missed"):
        M.surface_distances(pred, ref, ANISO)


# --------------------------------------------------------------------------------------
# scan_metrics
# --------------------------------------------------------------------------------------


def test_scan_metrics_keys_and_values():
    pred, ref = _blob_pairs(1)[0]
    prob = ndimage.gaussian_filter(pred.astype(np.float32), 1.0)
    row = M.scan_metrics(prob > 0.5, ref, ANISO, prob=prob)
    expected_keys = set(M.SCAN_METRIC_KEYS) | {
        "tp",
        "fp",
        "fn",
        "ref_voxels",
        "ref_mm3",
        "pred_voxels",
        "scan_diagonal_mm",
        "empty_case",
        "empty_policy",
        "lesion_connectivity",
    }
    assert set(row) == expected_keys
    assert row["empty_case"] == "none"
    p = prob > 0.5
    assert row["dsc"] == pytest.approx(M.dice(p, ref))
    assert row["mdsc"] >= row["dsc"]
    assert row["tpr"] == pytest.approx(M.tpr(p, ref))
    assert row["precision"] == pytest.approx(M.precision(p, ref))
    assert row["lesion_f1"] == pytest.approx(M.lesion_wise_f1(p, ref))
    assert row["lesion_count_diff"] == M.lesion_count_difference(p, ref)
    assert row["volume_diff_voxels"] == M.volume_difference_voxels(p, ref)
    assert row["hd_mm"] == pytest.approx(M.hausdorff(p, ref, ANISO))
    assert (row["tp"], row["fp"], row["fn"]) == M.confusion_counts(p, ref)
    for key in M.SCAN_METRIC_KEYS:
        assert isinstance(row[key], float)
