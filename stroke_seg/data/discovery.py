"""Find (T1, lesion mask) pairs on disk for the three layouts the project reads.

- ATLAS v2.0 (BIDS, the current public release) and our synthetic set, which is written in
  the same layout on purpose so it goes through the same code path:
  ``Training/R0NN/sub-rXXXsXXX/ses-1/anat/sub-..._ses-1_space-MNI152NLin2009aSym_T1w.nii.gz``
  with ``..._label-L_desc-T1lesion_mask.nii.gz`` beside it.
- ATLAS R1.2 (the release the paper used): ``SiteN/<id>/t01/<id>_t1w_deface_stx.nii.gz`` with
  one or more ``<id>_LesionSmooth*_stx.nii.gz`` masks, merged later by voxel-wise maximum.

Discovery only looks at file names; loading and checking happen in `stroke_seg.data.io`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from stroke_seg.data.checks import check_unique_subjects
from stroke_seg.data.io import Case
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


def discover_atlas_v2(root: str | Path) -> list[Case]:
    """Pairs in the ATLAS v2.0 BIDS layout (also the synthetic set's layout).

    The subject ID is ``sub-...`` plus ``_ses-...`` when a subject has more than one session,
    so that IDs stay unique.
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
        cases.append(Case(sid, image, (mask,)))
    return _checked(cases, root, "ATLAS v2.0 / synthetic (BIDS)")


def discover_atlas_r12(root: str | Path) -> list[Case]:
    """Pairs in the ATLAS R1.2 layout; several ``LesionSmooth`` masks of a subject are kept
    together and merged by voxel-wise maximum when loaded (docs/paper.md "Data")."""
    root = _existing_root(root)
    cases = []
    for image in sorted(root.rglob("*_t1w_deface_stx.nii*")):
        sid = image.name.split("_t1w_deface_stx")[0]
        masks = tuple(sorted(image.parent.glob(f"{sid}_LesionSmooth*_stx.nii*")))
        if not masks:
            raise StrokeSegError(
                f"{image} has no lesion mask beside it: expected {sid}_LesionSmooth*_stx.nii.gz."
            )
        cases.append(Case(sid, image, masks))
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
