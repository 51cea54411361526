"""The LightningDataModule: discovered cases -> cached volumes -> stage-sized crops.

Training follows the paper (Sec. 2.3, Table 1; REFERENCE_NOTES "Optimisation"): one epoch
is one random crop from each training scan, the crop size comes from the training stage
(128³ zoom-in, 144×172×168 zoom-out at 1 mm), crop positions are uniform anywhere in the
volume, and intensities are divided by 255. Foreground-biased crops are an option
(``sampling=foreground``), off by default, and so is augmentation of the crops
(``augmentation=standard``, `stroke_seg.data.augment`; the paper had none). Validation uses
the paper's evaluation input: the centre crop, scored as if every voxel outside it were
predicted negative.

Volumes are loaded once and kept in memory with MONAI's `CacheDataset` (the reference code
re-read every NIfTI for every sample; `python -m stroke_seg.bench` measures the difference).

Cross-validation: ``fold=K`` with ``n_folds`` re-cuts the training + validation subjects of
the split into ``n_folds`` reproducible chunks and validates on chunk K; the test subjects
never move (`stroke_seg.data.splits.fold_split`).

Under DDP (``trainer=ddp``) each process draws its own share of every epoch's crops
(`EpochSampler`) and validates its own share of the validation scans (`ShardSampler`); both
are `DistributedSampler` subclasses, so Lightning uses them as they are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
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
    MapTransform,
    OneOf,
    RandCropByPosNegLabeld,
    RandSpatialCropSamplesd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)
from torch.utils.data import DistributedSampler

from stroke_seg.data.augment import augmentation_transforms
from stroke_seg.data.discovery import Case, discover
from stroke_seg.data.io import load_case, spacing_of
from stroke_seg.data.splits import (
    PAPER_SPLIT,
    check_split,
    fold_split,
    load_split,
    make_split,
    save_split,
)
from stroke_seg.errors import StrokeSegError, user_error_in

log = logging.getLogger(__name__)


class LoadCased(MapTransform):
    """Load a `Case` into image/label arrays (merging several masks, checking grids).

    Written by hand because MONAI's `LoadImaged` maps one file to one key and does not
    check that an image and its masks share a grid; see `stroke_seg.data.io`.
    """

    def __init__(self, mask_threshold: float | None = None) -> None:
        super().__init__(keys=["case"])
        self.mask_threshold = mask_threshold

    def __call__(self, data: dict) -> dict:
        loaded = load_case(data["case"], self.mask_threshold)
        return {
            "subject": loaded["subject"],
            "image": loaded["image"],
            "label": loaded["label"],
            # Lesion voxels of the whole scan: validation scores a centre crop as if the
            # rest of the volume were predicted negative (paper Sec. 2.4).
            "label_total": float(loaded["label"].sum()),
            "spacing": torch.tensor(loaded["spacing"]),
        }


class ForegroundIndicesd(MapTransform):
    """Cache the flat indices of lesion voxels so foreground-biased cropping is cheap.

    MONAI's `FgBgToIndicesd` also stores every background index (~8 M int64 per 1 mm scan,
    64 MB each), which would not fit in memory for a cached ATLAS training set.
    """

    def __init__(self) -> None:
        super().__init__(keys=["label"])

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        label = np.asarray(data["label"])
        out["fg_indices"] = np.flatnonzero(label.ravel())
        # Never drawn while lesions exist (neg=0), but MONAI needs a non-empty list: the
        # volume centre is where a scan without lesion voxels gets its crop.
        out["bg_indices"] = np.array([label.size // 2], dtype=np.int64)
        return out


class EpochSampler(DistributedSampler):
    """Shuffles the training scans anew each epoch from (seed, epoch) alone and yields
    ``(epoch, index)`` keys, so that every crop is drawn from (seed, epoch, index) too.

    A run resumed at an epoch boundary therefore sees exactly the crops the uninterrupted
    run would have seen, with any number of data-loader workers. Lightning calls
    ``set_epoch`` at the start of every epoch.

    With ``num_replicas`` processes (DDP), process ``rank`` takes every ``num_replicas``-th
    key of the epoch's permutation, which is padded by wrapping around (as
    `DistributedSampler`) so that every process makes the same number of steps; a padded
    repeat of a scan gets the key ``(epoch, index, repeat)`` and so a crop of its own. One
    epoch is still one crop per training scan, ``num_replicas`` crops per optimiser step.
    Being a `DistributedSampler`, it is used by Lightning as it is, instead of being wrapped
    in Lightning's `DistributedSamplerWrapper`, whose padding would repeat keys (the same
    crop twice in an epoch).
    """

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            range(n),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=int(seed),
            drop_last=False,
        )
        self.n, self.seed, self.epoch = n, int(seed), 0
        self.num_samples = math.ceil(n / num_replicas) if n else 0
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        keys: list[tuple[int, ...]] = []
        for position in range(self.rank, self.total_size, self.num_replicas):
            index, repeat = int(order[position % self.n]), position // self.n
            keys.append((self.epoch, index) if repeat == 0 else (self.epoch, index, repeat))
        return iter(keys)


class ShardSampler(DistributedSampler):
    """Validation scans in order, split across DDP processes without padding: process
    ``rank`` takes indices ``rank, rank + num_replicas, ...``. With fewer scans than
    processes every process validates all of them (repeats leave the mean unchanged).
    Padding, as `DistributedSampler` does, would count some scans twice in val/dsc."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            range(n), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
        )
        self.n = n
        self.indices = list(range(n)) if n < num_replicas else list(range(rank, n, num_replicas))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class EpochSeededCacheDataset(CacheDataset):
    """`CacheDataset` whose random transforms are re-seeded from (seed, epoch, index) for
    every ``(epoch, index)`` key, or (seed, epoch, index, repeat) for an
    ``(epoch, index, repeat)`` key (see `EpochSampler`); integer keys behave as usual."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = int(seed)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            epoch, index, *repeat = key
            entropy = [self.seed, epoch, index, *repeat]
            sub_seed = np.random.SeedSequence(entropy).generate_state(1)[0]
            self.transform.set_random_state(seed=int(sub_seed))
            key = index
        return super().__getitem__(key)


def intensity_transform(mode: str, divisor: float) -> MapTransform:
    """``divide``: x / divisor (the paper's /255 for ATLAS R1.2's 0-255 MNI images);
    ``percentile``: 0.5-99.5 percentile range to 0-1, for data without a fixed range."""
    if mode == "divide":
        return ScaleIntensityRanged("image", a_min=0.0, a_max=divisor, b_min=0.0, b_max=1.0)
    if mode == "percentile":
        return ScaleIntensityRangePercentilesd(
            "image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, relative=False
        )
    raise StrokeSegError(f"data.intensity_mode={mode!r} is not known; use divide or percentile.")


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
    ) -> None:
        super().__init__()
        if sampling not in ("uniform", "foreground"):
            raise StrokeSegError(
                f"data.sampling={sampling!r} is not known; use uniform or foreground."
            )
        if not 0.0 <= foreground_prob <= 1.0:
            raise StrokeSegError(f"data.foreground_prob={foreground_prob} must lie in [0, 1].")
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
        self.fold = None if fold is None else int(fold)
        self.n_folds = int(n_folds)
        self.cases: dict[str, Case] = {}
        self.split: dict[str, list[str]] = {}
        self.train_set: CacheDataset | None = None
        self.val_set: CacheDataset | None = None

    # -- what inference needs to reproduce the training input (stored in checkpoints) --
    def preprocessing(self) -> dict:
        """Input scaling, crop sizes, voxel spacing (mm) and grid shape of the training scans;
        inference resamples new scans to this spacing and scales them the same way."""
        split = self.resolve_split()
        first = nib.load(str(self.cases[split["train"][0]].image))
        return {
            "intensity_mode": self.intensity_mode,
            "intensity_divisor": float(self.intensity_divisor),
            "crop_size": list(self.crop_size),
            "eval_crop": list(self.eval_crop),
            "spacing": [float(v) for v in spacing_of(first.affine)],
            "grid_shape": [int(v) for v in first.shape[:3]],
        }

    def resolve_split(self) -> dict[str, list[str]]:
        """Discover the cases and read or generate the split (idempotent)."""
        if not self.split:
            self.cases = {c.subject: c for c in discover(self.root, self.layout)}
            if self.split_file:
                split = load_split(self.split_file, list(self.cases))
            else:
                split = make_split(list(self.cases), self.split_seed, self.split_proportions)
                check_split(split, list(self.cases))
            if self.fold is not None:
                split = fold_split(split, self.fold, self.n_folds, self.split_seed)
            self.split = split
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
