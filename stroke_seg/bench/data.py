"""Section ``data``: crops/s that the training data pipeline delivers.

`StrokeDataModule` keeps the volumes cached in memory; the reference code re-read the NIfTI
files for every sample. Both are timed on a small synthetic set (`stroke_seg.data.synthetic`)
at 1 mm, the ATLAS grid.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def bench_data(
    quick: bool, data_dir: str | None, spacing: float, n_subjects: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Crops/s from the cached pipeline vs re-reading NIfTI for every sample."""
    import nibabel as nib
    from monai.data import DataLoader, Dataset

    from stroke_seg.data.datamodule import StrokeDataModule
    from stroke_seg.data.synthetic import generate_dataset

    tmp = None
    root = Path(data_dir) if data_dir else Path(tmp := tempfile.mkdtemp(prefix="stroke_bench_"))
    try:
        start = time.perf_counter()
        generate_dataset(root, n_subjects, seed=0, spacing=spacing, progress=False)
        generated_s = time.perf_counter() - start
        crop = [16, 16, 16] if quick else [int(round(128 / spacing))] * 3
        dm = StrokeDataModule(
            str(root),
            layout="synthetic",
            crop_size=crop,
            eval_crop=crop,
            split_proportions=(n_subjects - 2, 1, 1),
            cache_workers=0,
            num_workers=0,
            seed=0,
        )
        start = time.perf_counter()
        dm.setup("fit")
        cache_s = time.perf_counter() - start
        n_train = len(dm.train_set)
        min_crops = 2 * n_train if quick else max(50, 10 * n_train)

        def cached_rate(num_workers: int) -> tuple[float, int]:
            dm.num_workers = num_workers
            loader = dm.train_dataloader()
            count, epoch = 0, 0
            it_start = None
            while count < min_crops:
                loader.sampler.set_epoch(epoch)
                for _batch in loader:
                    if it_start is None:  # worker start-up is not throughput
                        it_start = time.perf_counter()
                        continue
                    count += 1
                epoch += 1
            return count / (time.perf_counter() - it_start), count

        cached, n_cached = cached_rate(0)
        workers = 0 if quick else 2
        cached_w, _ = cached_rate(workers) if workers else (math.nan, 0)
        dm.num_workers = 0
        uncached_set = Dataset(
            [{"case": dm.cases[s]} for s in dm.split["train"]], transform=dm.train_set.transform
        )
        loader = DataLoader(uncached_set, batch_size=1, shuffle=False, num_workers=0)
        n_uncached = n_train if quick else 2 * n_train
        count, start = 0, time.perf_counter()
        while count < n_uncached:
            for _batch in loader:
                count += 1
        uncached = count / (time.perf_counter() - start)
        result = {
            "spacing_mm": spacing,
            "n_subjects": n_subjects,
            "n_train_scans": n_train,
            "grid": list(nib.load(str(next(iter(dm.cases.values())).image)).shape[:3]),
            "crop": crop,
            "generate_s": generated_s,
            "cache_fill_s": cache_s,
            "cached_crops_per_s": cached,
            "cached_crops_measured": n_cached,
            f"cached_{workers}_workers_crops_per_s": cached_w if workers else None,
            "nifti_per_sample_crops_per_s": uncached,
            "nifti_crops_measured": count,
            "ratio_cached_vs_nifti": cached / uncached,
        }
        log(
            f"  data: cached {cached:.1f} crops/s, NIfTI per sample {uncached:.2f} crops/s, "
            f"ratio {cached / uncached:.0f}x"
        )
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
