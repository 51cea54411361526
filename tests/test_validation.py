"""Every bad input is refused in one sentence naming the file; no input crashes the loader."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stroke_seg.data.checks import binarize_mask
from stroke_seg.data.discovery import discover_atlas_r12
from stroke_seg.data.io import Case, load_case, read_nifti
from stroke_seg.data.splits import load_split
from stroke_seg.errors import StrokeSegError
from tests.helpers import TINY_AFFINE, TINY_SHAPE, tiny_scan, write_nifti

IMAGE, MASK = tiny_scan(np.random.default_rng(0))


def _case(tmp: Path, image=IMAGE, mask=MASK, mask_affine=TINY_AFFINE) -> Case:
    t1 = write_nifti(tmp / "s1_T1w.nii.gz", image)
    lab = write_nifti(tmp / "s1_mask.nii.gz", mask, mask_affine)
    return Case("s1", t1, (lab,))


def _cut(tmp: Path, name: str, keep: float) -> Path:
    whole = write_nifti(tmp / f"whole_{name}", IMAGE).read_bytes()
    path = tmp / name
    path.write_bytes(whole[: int(len(whole) * keep)])
    return path


def _with(array: np.ndarray, where, value) -> np.ndarray:
    out = array.astype(np.float32)
    out[where] = value
    return out


def _split(tmp: Path, split: dict) -> Path:
    path = tmp / "split.json"
    path.write_text(json.dumps(split))
    return path


def _twice(tmp: Path) -> None:
    for site in ("Site1", "Site2"):
        folder = tmp / site / "000007" / "t01"
        write_nifti(folder / "000007_t1w_deface_stx.nii.gz", IMAGE)
        write_nifti(folder / "000007_LesionSmooth_stx.nii.gz", MASK)
    discover_atlas_r12(tmp)


def _zero_voxel_size(path: Path) -> Path:
    """An sform with a zero column (nibabel itself resets a zero pixdim to 1)."""
    header = nib.Nifti1Header()
    header.set_sform(np.diag([2.0, 0.0, 2.0, 1.0]), code=2)
    nib.save(nib.Nifti1Image(IMAGE, None, header=header), str(path))
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SUBJECTS = ["a", "b", "c"]
# (bad input, how it is made and read, the message the user sees)
CASES: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "missing file",
        lambda t: read_nifti(t / "absent.nii.gz"),
        r"absent\.nii\.gz does not exist\.$",
    ),
    (
        "empty file",
        lambda t: read_nifti(_write_text(t / "e.nii.gz", "")),
        r"e\.nii\.gz is not a readable NIfTI file \(.+\)\.$",
    ),
    (
        "text named .nii.gz",
        lambda t: read_nifti(_write_text(t / "x.nii.gz", "hello")),
        r"x\.nii\.gz is not a readable NIfTI file \(.+\)\.$",
    ),
    (
        "truncated gzip",
        lambda t: read_nifti(_cut(t, "cut.nii.gz", 0.5)),
        r"cut\.nii\.gz is truncated or corrupt \(.+\)\.$",
    ),
    (
        "truncated .nii",
        lambda t: read_nifti(_cut(t, "cut.nii", 0.5)),
        r"cut\.nii is truncated or corrupt \(its header describes 53,760 bytes of data but the "
        r"file holds \d+,\d+\)\.$",
    ),
    (
        "4-D series",
        lambda t: read_nifti(write_nifti(t / "s.nii.gz", np.stack([IMAGE] * 2, -1))),
        r"s\.nii\.gz has shape \(24, 28, 20, 2\); one 3-D volume per file is needed \(split 4-D "
        r"series first\)\.$",
    ),
    (
        "2-D slice",
        lambda t: read_nifti(write_nifti(t / "s.nii.gz", IMAGE[:, :, 0])),
        r"s\.nii\.gz has shape \(24, 28\); one 3-D volume per file is needed\.$",
    ),
    (
        "complex voxels",
        lambda t: read_nifti(write_nifti(t / "c.nii.gz", IMAGE.astype(np.complex64))),
        r"c\.nii\.gz stores complex64 voxels; a scalar, real-valued intensity volume is needed\.$",
    ),
    (
        "NaN intensity",
        lambda t: read_nifti(write_nifti(t / "n.nii.gz", _with(IMAGE, (1, 2, 3), np.nan))),
        r"n\.nii\.gz holds 1 NaN and 0 infinite intensities; .+\.$",
    ),
    (
        "Inf intensity",
        lambda t: read_nifti(
            write_nifti(t / "i.nii.gz", _with(IMAGE, (slice(0, 2), 0, 0), np.inf))
        ),
        r"i\.nii\.gz holds 0 NaN and 2 infinite intensities; .+\.$",
    ),
    (
        "beyond float32",
        lambda t: read_nifti(write_nifti(t / "b.nii.gz", np.full(TINY_SHAPE, 1e300))),
        r"b\.nii\.gz holds intensities beyond the float32 range \(up to 1e\+300\); rescale",
    ),
    (
        "zero voxel size",
        lambda t: read_nifti(_zero_voxel_size(t / "z.nii.gz")),
        r"z\.nii\.gz has an invalid voxel-to-world affine",
    ),
    (
        "all-zero image",
        lambda t: load_case(_case(t, image=np.zeros(TINY_SHAPE, np.float32))),
        r"s1_T1w\.nii\.gz is all zero \(an empty image\); .+\.$",
    ),
    (
        "probabilities",
        lambda t: load_case(_case(t, mask=_with(_with(MASK, (0, 0, 0), 0.3), (0, 0, 1), 0.6))),
        r"s1_mask\.nii\.gz is not a binary mask: besides 0 it holds 3 values \(0\.3, 0\.6, 1\); "
        r"binarise it first \(e\.g\. mask > 0\.5\), or read it with a mask_threshold",
    ),
    (
        "label map 0/1/2",
        lambda t: load_case(_case(t, mask=_with(MASK, (0, 0, 0), 2))),
        r"not a binary mask: besides 0 it holds 2 values \(1, 2\)",
    ),
    (
        "mask of another shape",
        lambda t: load_case(_case(t, mask=MASK[:-1])),
        r"s1_mask\.nii\.gz has shape \(23, 28, 20\) but s1_T1w\.nii\.gz has \(24, 28, 20\); "
        r"image and mask must share one voxel grid\.$",
    ),
    (
        "mask with another affine",
        lambda t: load_case(_case(t, mask_affine=TINY_AFFINE + np.diag([0.01, 0, 0, 0]))),
        r"s1_mask\.nii\.gz and s1_T1w\.nii\.gz have different affines",
    ),
    (
        "duplicate subject IDs",
        _twice,
        r"Subject ID 000007 appears twice under .+ \(.+Site1.+ and .+Site2.+\); "
        r"remove or rename one\.$",
    ),
    (
        "split names a missing subject",
        lambda t: load_split(
            _split(t, {"train": ["a", "zz"], "val": ["b"], "test": ["c"]}), SUBJECTS
        ),
        r"split\.json names 1 subject\(s\) not found among the scans of the data root "
        r"\(first: zz\); fix the split file",
    ),
    (
        "empty split",
        lambda t: load_split(_split(t, {"train": ["a", "b"], "val": [], "test": ["c"]}), SUBJECTS),
        r"The val list of .+split\.json is empty\.$",
    ),
    (
        "subject in two lists",
        lambda t: load_split(
            _split(t, {"train": ["a", "b"], "val": ["b"], "test": ["c"]}), SUBJECTS
        ),
        r"Subject b is in both train and val of .+split\.json\.$",
    ),
]


@pytest.mark.parametrize(
    "make_and_read, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_in_one_sentence(tmp_path, make_and_read, message):
    with pytest.raises(StrokeSegError, match=message) as info:
        make_and_read(tmp_path)
    assert "\n" not in str(info.value)


def test_a_single_volume_4d_file_is_squeezed(tmp_path):
    data, affine = read_nifti(write_nifti(tmp_path / "one.nii.gz", IMAGE[..., None]))
    assert data.shape == TINY_SHAPE and data.dtype == np.float32
    np.testing.assert_array_equal(data, IMAGE)
    np.testing.assert_array_equal(affine, TINY_AFFINE)


def test_a_0_255_mask_is_binarised_with_a_note(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stroke_seg.data.checks"):
        label = load_case(_case(tmp_path, mask=MASK * np.uint8(255)))["label"]
    np.testing.assert_array_equal(label, MASK)
    assert label.dtype == np.uint8
    assert "holds the values {0, 255}; read as a binary mask" in caplog.text


def test_a_probability_mask_is_read_when_thresholding_is_asked(tmp_path):
    prob = np.linspace(0, 1, MASK.size, dtype=np.float32).reshape(MASK.shape)
    np.testing.assert_array_equal(binarize_mask(prob, "p.nii.gz", threshold=0.5), prob > 0.5)
    case = _case(tmp_path, mask=prob)
    np.testing.assert_array_equal(load_case(case, mask_threshold=0.5)["label"], prob > 0.5)


# --------------------------------------------------------------------------------------
# Property: whatever the bytes, the loader succeeds or raises StrokeSegError
# --------------------------------------------------------------------------------------

REAL_TYPES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4}  # code: bytes per voxel
OTHER_TYPES = [32, 128, 1024, 1280, 1536, 1792, 2048, 2304]


@st.composite
def nifti_files(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A NIfTI-1 header followed by data, maybe gzipped: half the time a plausible small
    volume (so the success path and the content checks run too), otherwise random dims,
    datatype and offset; scaling and affine fields are random (NaN and Inf included) and
    the file may be cut anywhere."""
    hdr = nib.Nifti1Header()
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
    if draw(st.booleans()):
        shape = draw(st.lists(st.integers(1, 6), min_size=3, max_size=4))
        code = draw(st.sampled_from(sorted(REAL_TYPES)))
        hdr["dim"] = [len(shape), *shape, *[1] * (7 - len(shape))]
        hdr["datatype"], hdr["bitpix"], hdr["vox_offset"] = code, 8 * REAL_TYPES[code], 352
        n_data = int(np.prod(shape)) * REAL_TYPES[code]
        hdr["pixdim"] = [
            1.0,
            *draw(st.lists(st.floats(0.5, 3), min_size=3, max_size=3)),
            1,
            1,
            1,
            1,
        ]
        hdr["scl_slope"] = draw(st.sampled_from([1.0, 0.0, float("nan")]) | floats)
    else:
        hdr["dim"] = [
            draw(st.integers(-1, 8)),
            *draw(st.lists(st.integers(-32768, 32767), min_size=7, max_size=7)),
        ]
        hdr["datatype"] = draw(
            st.sampled_from([*REAL_TYPES, *OTHER_TYPES]) | st.integers(-32768, 32767)
        )
        hdr["bitpix"] = draw(st.integers(-8, 256))
        hdr["vox_offset"] = draw(st.sampled_from([0.0, 348.0, 352.0]) | st.floats(-1e9, 1e9))
        hdr["pixdim"] = draw(st.lists(floats, min_size=8, max_size=8))
        hdr["scl_slope"] = draw(floats)
        n_data = draw(st.integers(0, 4096))
    hdr["scl_inter"] = draw(st.sampled_from([0.0]) | floats)
    hdr["qform_code"], hdr["sform_code"] = draw(st.integers(-2, 5)), draw(st.integers(-2, 5))
    hdr["srow_x"] = draw(st.lists(floats, min_size=4, max_size=4))
    hdr["quatern_b"] = draw(floats)
    body = hdr.binaryblock + b"\x00" * 4 + draw(st.binary(min_size=n_data, max_size=n_data))
    if draw(st.integers(0, 3)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    return body, draw(st.booleans())


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.one_of(
        st.binary(max_size=2048).map(lambda b: (b, False)),
        st.binary(max_size=2048).map(lambda b: (b, True)),
        nifti_files(),
    )
)
def test_random_bytes_and_headers_never_escape_as_other_errors(tmp_path, content):
    body, gz = content
    path = tmp_path / ("random.nii.gz" if gz else "random.nii")
    path.write_bytes(gzip.compress(body) if gz else body)
    try:
        data, affine = read_nifti(path)
    except StrokeSegError as err:
        assert str(path) in str(err)
    else:
        assert data.ndim == 3 and data.dtype == np.float32 and np.isfinite(data).all()
        assert affine.shape == (4, 4) and np.isfinite(affine).all()
