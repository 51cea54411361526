"""Find (T1, lesion mask) pairs on disk for the three layouts the project reads.

- ATLAS v2.0 (BIDS, the current public release) and our synthetic set, which is written in
  the same layout on purpose so it goes through the same code path:
  ``Training/R0NN/sub-rXXXsXXX/ses-1/anat/sub-..._ses-1_space-MNI152NLin2009aSym_T1w.nii.gz``
  with ``..._label-L_desc-T1lesion_mask.nii.gz`` beside it.
- ATLAS R1.2 (the release the paper used): ``SiteN/<id>/t01/<id>_t1w_deface_stx.nii.gz`` with
  one or more ``<id>_LesionSmooth*_stx.nii.gz`` masks, merged later by voxel-wise maximum.

A subject with several scans (R1.2 time points ``t01``, ``t02``; v2.0 sessions) gets one
scan ID per scan, the subject ID plus ``_tNN`` or ``_ses-Y``, and every scan of it the same
`Case.group` (`stroke_seg.data.splits.subject_group`), so that splits keep them together.
A subject with one scan keeps its plain ID, as before.

Discovery only looks at file names; loading and checking happen in `stroke_seg.data.io`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from stroke_seg.data.checks import check_unique_subjects
from stroke_seg.data.io import Case
from stroke_seg.data.splits import subject_group
from stroke_seg.errors import StrokeSegError, check_choice, option_error

# Said with a missing or empty root. The command names the config group and key because it
# is the one way to read data that needs no agreement; everything else names `root`.
ATLAS_HELP = (
    "ATLAS needs a data-use agreement "
    "(https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html); "
    "download it and pass its folder as root, or make the synthetic set with "
    "`python -m stroke_seg.data.synthetic out=DIR` and train with data=synthetic "
    "data.root=DIR"
)


_V2_T1 = re.compile(
    r"^(sub-[A-Za-z0-9]+)_ses-([A-Za-z0-9]+)_space-MNI152NLin2009aSym_T1w\.nii(\.gz)?$"
)


_TIME_POINT = re.compile(r"^t\d+$")  # R1.2 time-point folders: t01, t02, ...


def discover_atlas_v2(root: str | Path) -> list[Case]:
    """Pairs in the ATLAS v2.0 BIDS layout (also the synthetic set's layout).

    The scan ID is ``sub-...`` plus ``_ses-...`` when a subject has more than one session,
    so that IDs stay unique; the group is ``sub-...``.
    """
    root = _existing_root(root)
    found: list[tuple[str, str, Path]] = []
    for image in sorted(root.rglob("*_space-MNI152NLin2009aSym_T1w.nii*")):
        match = _V2_T1.match(image.name)
        if not match:
            continue
        mask_name = image.name.replace("_T1w.nii", "_label-L_desc-T1lesion_mask.nii")
        mask = image.with_name(mask_name)
        if not mask.exists():
            raise StrokeSegError(f"{image} has no lesion mask beside it: expected {mask.name}.")
        found.append((match.group(1), match.group(2), image))
    sessions: dict[str, int] = {}
    for subject, _, _ in found:
        sessions[subject] = sessions.get(subject, 0) + 1
    cases = []
    for subject, session, image in found:
        sid = subject if sessions[subject] == 1 else f"{subject}_ses-{session}"
        mask = image.with_name(image.name.replace("_T1w.nii", "_label-L_desc-T1lesion_mask.nii"))
        cases.append(Case(sid, image, (mask,), group=subject))
    return _checked(cases, root, "ATLAS v2.0 / synthetic (BIDS)")


def discover_atlas_r12(root: str | Path) -> list[Case]:
    """Pairs in the ATLAS R1.2 layout; several ``LesionSmooth`` masks of a scan are kept
    together and merged by voxel-wise maximum when loaded (docs/paper.md "Data").

    The scan ID is the file name's ``<id>``; when several time-point folders (``t01``,
    ``t02``, ...) hold a scan of one ``<id>``, each scan's ID is ``<id>_<time point>`` and
    all share the group ``<id>``.
    """
    root = _existing_root(root)
    found = []
    for image in sorted(root.rglob("*_t1w_deface_stx.nii*")):
        prefix = image.name.split("_t1w_deface_stx")[0]
        masks = tuple(sorted(image.parent.glob(f"{prefix}_LesionSmooth*_stx.nii*")))
        if not masks:
            expected = f"{prefix}_LesionSmooth*_stx.nii.gz"
            raise StrokeSegError(f"{image} has no lesion mask beside it: expected {expected}.")
        found.append((prefix, image, masks))
    # How many time points each <id> has; a folder that is not one counts as its own.
    time_points = Counter(prefix for prefix, _ in {(p, i.parent.name) for p, i, _ in found})
    cases = []
    for prefix, image, masks in found:
        sid = prefix
        if time_points[prefix] > 1 and _TIME_POINT.match(image.parent.name):
            sid = f"{prefix}_{image.parent.name}"
        # Anything else that repeats an ID (two sites' 000007/t01) is refused by _checked.
        cases.append(Case(sid, image, masks, group=subject_group(sid)))
    return _checked(cases, root, "ATLAS R1.2")


LAYOUTS: dict[str, Callable[[str | Path], list[Case]]] = {
    "atlas_v2": discover_atlas_v2,
    "synthetic": discover_atlas_v2,
    "atlas_r12": discover_atlas_r12,
}


def discover(root: str | Path, layout: str) -> list[Case]:
    """The cases under `root` in `layout` (one of `LAYOUTS`), sorted by subject ID."""
    check_choice("layout", layout, sorted(LAYOUTS))
    return LAYOUTS[layout](root)


def _existing_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise option_error("root", str(path), f"does not exist. {ATLAS_HELP}.")
    return path


def _checked(cases: list[Case], root: Path, layout: str) -> list[Case]:
    if not cases:
        raise option_error(
            "root", str(root), f"holds no scans in the {layout} layout. {ATLAS_HELP}."
        )
    check_unique_subjects(((c.subject, c.image) for c in cases), root)
    return sorted(cases, key=lambda c: c.subject)
