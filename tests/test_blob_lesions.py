"""Tests of the second lesion simulator (stroke_seg.data.blob_lesions, ``lesions=blob``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from stroke_seg.data import blob_lesions as blob
from stroke_seg.data import synthetic as syn
from stroke_seg.errors import StrokeSegError
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def blob_subjects() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, dict]]:
    return [syn.generate_subject(i, 3, spacing=3.0, lesions="blob") for i in range(6)]


def test_plans_cover_both_hemispheres_sizes_and_contrasts() -> None:
    points = syn._parenchyma_points()
    plans = [blob.plan_blob_lesions(np.random.default_rng([5, i, blob.STREAM]), points)
             for i in range(400)]  # fmt: skip
    totals = np.array([sum(p.volume for p in subject) for subject in plans])
    assert totals.min() >= blob.MIN_TOTAL_MM3 * 0.999 and totals.max() <= blob.MAX_TOTAL_MM3
    # log-uniform: the median sits near the geometric mean of the range
    assert 2000 < np.median(totals) < 6000
    counts = np.bincount([len(subject) for subject in plans], minlength=4)
    assert counts[1] > counts[2] > counts[3] > 0
    lesions = [p for subject in plans for p in subject]
    assert all(abs(p.centre_mm[0]) >= blob.MIDLINE_MM - 1.0 for p in lesions)
    bilateral = [s for s in plans if len({np.sign(p.centre_mm[0]) for p in s}) == 2]
    assert len(bilateral) > 10  # unlike the default generator: one hemisphere per subject
    contrasts = np.array([p.contrast for p in lesions])
    assert contrasts.min() >= 0.30 and contrasts.max() <= 0.75 and contrasts.std() > 0.1


def test_blob_subject_is_deterministic_and_not_the_default(blob_subjects) -> None:
    image, mask, affine, info = blob_subjects[0]
    again = syn.generate_subject(0, 3, spacing=3.0, lesions="blob")
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1])
    default_image, default_mask, _, _ = syn.generate_subject(0, 3, spacing=3.0)
    assert not np.array_equal(mask, default_mask)
    assert np.array_equal(affine, syn.generate_subject(0, 3, spacing=3.0)[2])
    assert image.shape == default_image.shape and image.dtype == np.float32
    assert info["lesion_model"] == {"name": "blob", "version": blob.BLOB_VERSION}
    assert info["territory"] == "any" and "core_value" not in info["appearance"]


def test_blob_lesions_are_hypointense_to_their_surroundings_by_the_drawn_contrast(
    blob_subjects,
) -> None:
    """Each lesion is darker than the parenchyma around it, and the darker the drawn contrast
    the darker the lesion: the ratio to its surroundings follows the plan."""
    rows = []
    for image, mask, _, info in blob_subjects:
        assert mask.any() and (image[mask > 0] > 0).all()  # inside the brain
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        biggest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        lesion = labels == biggest
        ring = ndimage.binary_dilation(lesion, iterations=2) & ~ndimage.binary_dilation(
            mask > 0, iterations=1
        )
        ring &= image > 0
        ratio = image[lesion].mean() / image[ring].mean()
        assert ratio < 0.95
        contrast = min(p["contrast_to_tissue"] for p in info["lesions"])
        rows.append((contrast, ratio))
    contrasts, ratios = np.array(rows).T
    assert np.corrcoef(contrasts, ratios)[0, 1] > 0.5


def test_blob_masks_follow_the_requested_volume(blob_subjects) -> None:
    for _, mask, _, info in blob_subjects:
        realised = info["lesion_volume_mm3"]
        assert realised == pytest.approx(mask.sum() * 27.0)
        assert 0.4 < realised / info["requested_volume_mm3"] < 1.8


def test_dataset_records_the_model_and_sets_are_not_mixed(tmp_path: Path) -> None:
    out = tmp_path / "set"
    syn.generate_dataset(out, 1, seed=0, spacing=3.0, progress=False, lesions="blob")
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["lesion_model"] == {"name": "blob", "version": blob.BLOB_VERSION}
    blob_mask = np.asarray(nib.load(syn.subject_paths(out, 0)[1]).dataobj)
    syn.generate_dataset(out, 1, seed=0, spacing=3.0, progress=False)  # a default set now
    assert "lesion_model" not in json.loads((out / "dataset.json").read_text())
    default_mask = np.asarray(nib.load(syn.subject_paths(out, 0)[1]).dataobj)
    assert not np.array_equal(default_mask, blob_mask)  # rewritten, not reused


def test_wrong_model_or_combination_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(StrokeSegError, match=r"lesions='cubes' is not known; use default"):
        syn.generate_dataset(tmp_path / "a", 1, seed=0, spacing=3.0, lesions="cubes")
    with pytest.raises(StrokeSegError, match=r"lesions=blob cannot be combined with randomise"):
        syn.generate_dataset(tmp_path / "b", 1, spacing=3.0, randomise="lesion", lesions="blob")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_command_says_which_lesions_it_drew(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    overrides = [f"out={out}", "n=1", "spacing=4", "quiet=true", "lesions=blob"]
    syn.main(compose_config("synthetic", overrides))
    line = capsys.readouterr().out.strip()
    assert line.startswith("synthetic set: 1 subjects (blob lesions, seed 0, 4 mm")


def test_mixed_subjects_are_each_the_default_or_the_blob_subject() -> None:
    """lesions=mixed draws each subject by one of the two simulators, on its own random
    stream: every subject is exactly the default or the blob subject of the same (seed,
    index), both occur, and each records which."""
    kinds = []
    for index in range(8):
        image, mask, _, info = syn.generate_subject(index, 2, spacing=4.0, lesions="mixed")
        name = info["lesion_model"]["name"]
        same = syn.generate_subject(index, 2, spacing=4.0, lesions=name)
        assert np.array_equal(image, same[0]) and np.array_equal(mask, same[1])
        kinds.append(name)
    assert set(kinds) == {"default", "blob"}


def test_mixed_set_records_the_share(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    syn.generate_dataset(out, 2, seed=2, spacing=4.0, progress=False, lesions="mixed")
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["lesion_model"] == {
        "name": "mixed",
        "version": blob.BLOB_VERSION,
        "blob_fraction": syn.MIXED_BLOB_FRACTION,
    }
    assert all(s["lesion_model"]["name"] in ("default", "blob") for s in manifest["subjects"])
