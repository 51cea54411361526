"""The LightningDataModule: discovered cases -> cached volumes -> stage-sized crops.

Training follows the paper (Sec. 2.3, Table 1; docs/paper.md "Optimisation"): one epoch
is one random crop from each training scan, the crop size comes from the training stage
(128³ zoom-in, 144×172×168 zoom-out at 1 mm), crop positions are uniform anywhere in the
volume, and intensities are divided by 255. Foreground-biased crops are an option
(``sampling=foreground``), off by default, and so is augmentation of the crops
(``augmentation=standard``, `stroke_seg.data.augment`; the paper had none). Validation uses
the paper's evaluation input: the centre crop, scored as if every voxel outside it were
predicted negative.

This module only composes; the pieces live beside it, as in MONAI's own layout:
`stroke_seg.data.transforms` (loading a case, lesion indices, intensity scaling),
`stroke_seg.data.dataset` (the cache, seeded per crop), `stroke_seg.data.samplers` (epoch
keys, DDP shards), `stroke_seg.data.splits` (which subjects go where) and
`stroke_seg.data.augment` (the optional augmentation).

Cross-validation: ``fold=K`` with ``n_folds`` re-cuts the training + validation subjects of
the split into ``n_folds`` reproducible chunks and validates on chunk K; the test subjects
never move (`stroke_seg.data.splits.fold_split`).

Errors name this class's parameters (``sampling='middle' is not known``); the training task
puts them under ``data.`` (`stroke_seg.errors.config_section`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytorch_lightning as pl
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    OneOf,
    RandCropByPosNegLabeld,
    RandSpatialCropSamplesd,
    SpatialPadd,
)

from stroke_seg.data.augment import augmentation_transforms
from stroke_seg.data.dataset import EpochSeededCacheDataset
from stroke_seg.data.discovery import discover
from stroke_seg.data.io import Case, read_nifti, spacing_of
from stroke_seg.data.preprocessing import INTENSITY_MODES, Preprocessing
from stroke_seg.data.samplers import EpochSampler, ShardSampler
from stroke_seg.data.splits import PAPER_SPLIT, resolve_split, save_split
from stroke_seg.data.transforms import ForegroundIndicesd, LoadCased, intensity_transform
from stroke_seg.errors import check_choice, check_range, config_section, user_error_in
from stroke_seg.intensity import IntensityReference, compute_reference
from stroke_seg.registration import DEFAULT_TEMPLATE, Template, load_template, on_template_grid

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "foreground")


class StrokeDataModule(pl.LightningDataModule):
    """Cases on disk -> cached, scaled volumes -> random training crops / centre val crops."""

    def __init__(
        self,
        root: str,
        layout: str = "synthetic",
        crop_size: Sequence[int] = (128, 128, 128),
        eval_crop: Sequence[int] = (144, 172, 168),
        split_file: str | None = None,
        split_seed: int = 0,
        split_proportions: Sequence[float] = PAPER_SPLIT,
        sampling: str = "uniform",
        foreground_prob: float = 0.5,
        intensity_mode: str = "divide",
        intensity_divisor: float = 255.0,
        batch_size: int = 1,
        num_workers: int = 0,
        cache_workers: int | None = None,
        pin_memory: bool | None = None,
        run_dir: str | None = None,
        seed: int = 0,
        fold: int | None = None,
        n_folds: int = 5,
        mask_threshold: float | None = None,
        augmentation: Mapping[str, Any] | None = None,
        template: str | None = DEFAULT_TEMPLATE,
        reference_scans: int = 50,
    ) -> None:
        super().__init__()
        check_choice("sampling", sampling, SAMPLINGS)
        check_range("foreground_prob", foreground_prob, 0.0, 1.0)
        check_choice("intensity_mode", intensity_mode, INTENSITY_MODES)
        self.root = root
        self.layout = layout
        self.crop_size = tuple(int(s) for s in crop_size)
        self.eval_crop = tuple(int(s) for s in eval_crop)
        self.split_file = split_file
        self.split_seed = split_seed
        self.split_proportions = tuple(split_proportions)
        self.sampling = sampling
        self.foreground_prob = foreground_prob
        self.intensity_mode = intensity_mode
        self.intensity_divisor = intensity_divisor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_workers = cache_workers
        self.pin_memory = pin_memory
        self.run_dir = run_dir
        self.seed = seed
        self.mask_threshold = mask_threshold
        # Built here so that a bad setting fails before any data is read.
        self.augment = augmentation_transforms(augmentation)
        self.template = None if template is None else str(template)
        self.reference_scans = int(check_range("reference_scans", reference_scans, 1, 100000))
        self.fold = None if fold is None else int(fold)
        self.n_folds = int(n_folds)
        self.cases: dict[str, Case] = {}
        self.split: dict[str, list[str]] = {}
        self.train_set: CacheDataset | None = None
        self.val_set: CacheDataset | None = None

    # -- what inference needs to reproduce the training input (stored in checkpoints) --
    def preprocessing(self) -> Preprocessing:
        """Input scaling, crop sizes, voxel spacing (mm) and grid shape of the training scans,
        the template they lie on and their intensity reference; inference brings new scans
        to that grid and scales them the same way. The checkpoint stores its `to_dict`
        (plain data).

        ``data.template`` is recorded only when the training scans lie on its grid at their
        spacing (our synthetic set and ATLAS lie on MNI152 2009a's): a model trained on any
        other grid records none, with a warning, so that prediction never registers scans to
        a space the model was not trained in (``predict.py template=FILE`` still can)."""
        split = self.resolve_split()
        # The header is enough: spacing and shape without reading the voxels.
        first = nib.load(str(self.cases[split["train"][0]].image))
        spacing = spacing_of(first.affine)
        template = self.grid_template(first.shape[:3], first.affine)
        if self.template is not None and template is None:
            log.warning(
                "data.template=%s: the training scans (grid %s, %s mm) do not lie on its grid, "
                "so the checkpoint records no template and predict.py will resample new scans "
                "instead of registering them (unless given template=FILE)",
                self.template,
                "x".join(str(n) for n in first.shape[:3]),
                "x".join(f"{v:g}" for v in spacing),
            )
        reference = self.intensity_reference(
            split["train"], spacing, None if template is None else template.brain_mask
        )
        return Preprocessing(
            intensity_mode=self.intensity_mode,
            intensity_divisor=self.intensity_divisor,
            crop_size=self.crop_size,
            eval_crop=self.eval_crop,
            spacing=spacing,
            grid_shape=first.shape[:3],
            template=self.template if template is not None else None,
            intensity_reference=reference.to_dict(),
        )

    def grid_template(self, shape: Sequence[int], affine: np.ndarray) -> Template | None:
        """``data.template`` (the built-in MNI152 2009a when it is null, for the reference's
        brain mask only) at the training spacing, if the training scans lie on its grid."""
        spacing = spacing_of(affine)
        if max(spacing) - min(spacing) > 1e-3 or not 0.5 <= spacing[0] <= 8.0:
            return None  # no isotropic template grid to lie on
        path = None if self.template in (None, DEFAULT_TEMPLATE) else self.template
        with config_section("data"):  # a missing file reads data.template=...
            template = load_template(float(spacing[0]), path)
        return template if on_template_grid(shape, affine, template) else None

    def intensity_reference(
        self,
        subjects: Sequence[str],
        spacing: Sequence[float],
        brain: np.ndarray | None,
    ) -> IntensityReference:
        """The brain-intensity landmarks of (the first `reference_scans` of) the training
        scans, as read from disk before the model's scaling: prediction maps a new scan's
        intensities onto them (`stroke_seg.intensity.standardise`), so that a scan in scanner
        units reaches the network as the training scans did. Measured inside the template's
        brain mask `brain` when the training scans lie on its grid (where every registered
        scan is measured too), else inside each scan's nonzero voxels."""
        chosen = list(subjects)[: self.reference_scans]
        log.info("Intensity reference from %d training scan(s)", len(chosen))
        volumes = (read_nifti(self.cases[s].image)[0] for s in chosen)
        return compute_reference(volumes, spacing, brain)

    def resolve_split(self) -> dict[str, list[str]]:
        """Discover the cases and read or generate the split (idempotent)."""
        if not self.split:
            self.cases = {c.subject: c for c in discover(self.root, self.layout)}
            self.split = resolve_split(
                list(self.cases),
                self.split_file,
                self.split_seed,
                self.split_proportions,
                fold=self.fold,
                n_folds=self.n_folds,
            )
        return self.split

    def setup(self, stage: str | None = None) -> None:
        split = self.resolve_split()
        if self.run_dir:
            folds = {} if self.fold is None else {"fold": self.fold, "n_folds": self.n_folds}
            save_split(
                split,
                Path(self.run_dir) / "split.json",
                root=str(self.root),
                seed=self.split_seed,
                source=self.split_file or "generated",
                **folds,
            )
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(split["train"], self._train_transforms())
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(split["val"], self._eval_transforms())

    def _dataset(self, subjects: Sequence[str], transform: Compose) -> CacheDataset:
        items = [{"case": self.cases[s]} for s in subjects]
        workers = self.cache_workers if self.cache_workers is not None else min(4, len(items))
        try:
            return EpochSeededCacheDataset(
                items,
                transform,
                cache_rate=1.0,
                seed=self.seed,
                num_workers=workers or None,
                progress=False,
                copy_cache=False,
            )
        except RuntimeError as err:
            # MONAI wraps errors raised inside a transform ("applying transform ..."); a
            # bad file must still reach the user as our one-sentence StrokeSegError.
            user_error = user_error_in(err)
            if user_error is None:
                raise
            raise user_error from None

    def _load_and_scale(self) -> list:
        return [
            LoadCased(self.mask_threshold),
            EnsureChannelFirstd(["image", "label"], channel_dim="no_channel"),
            intensity_transform(self.intensity_mode, self.intensity_divisor),
        ]

    # MONAI's crops return MetaTensors; plain tensors keep checkpoints free of MONAI types
    # (so they load with torch.load(weights_only=True)) and batches light.
    _PLAIN = EnsureTyped(["image", "label"], track_meta=False)

    def _train_transforms(self) -> Compose:
        steps = self._load_and_scale() + [
            SpatialPadd(["image", "label"], spatial_size=self.crop_size),
        ]
        # Both crop transforms return a one-element list, which MONAI's collate flattens.
        uniform = RandSpatialCropSamplesd(
            ["image", "label"], roi_size=self.crop_size, num_samples=1, random_size=False
        )
        # After the crop: augmentation works on the crop's voxels only (stroke_seg.data.augment).
        if self.sampling == "uniform":
            return Compose(steps + [uniform, *self.augment, self._PLAIN])
        foreground = RandCropByPosNegLabeld(
            ["image", "label"],
            label_key="label",
            spatial_size=self.crop_size,
            pos=1.0,
            neg=0.0,
            num_samples=1,
            fg_indices_key="fg_indices",
            bg_indices_key="bg_indices",
        )
        pick = OneOf(
            [foreground, uniform], weights=[self.foreground_prob, 1 - self.foreground_prob]
        )
        return Compose(
            steps
            + [ForegroundIndicesd(), pick, DeleteItemsd(["fg_indices", "bg_indices"])]
            + [*self.augment, self._PLAIN]
        )

    def _eval_transforms(self) -> Compose:
        return Compose(
            self._load_and_scale()
            + [CenterSpatialCropd(["image", "label"], roi_size=self.eval_crop), self._PLAIN]
        )

    def _replicas(self) -> tuple[int, int]:
        """(number of processes, this process's rank) from the attached trainer, else (1, 0)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, dataset: CacheDataset, shuffle: bool) -> DataLoader:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        world, rank = self._replicas()
        sampler = (
            EpochSampler(len(dataset), self.seed, world, rank)
            if shuffle
            else ShardSampler(len(dataset), world, rank)
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else 1,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
