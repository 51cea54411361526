"""The cached dataset whose random crops are seeded per (seed, epoch, scan).

Volumes are loaded once and kept in memory with MONAI's `CacheDataset` (the reference code
re-read every NIfTI for every sample; `python -m stroke_seg.bench` measures the difference).
What MONAI lacks is a random state tied to the sample rather than to the worker process:
`EpochSeededCacheDataset` re-seeds the random transforms from the key that
`stroke_seg.data.samplers.EpochSampler` yields, so crops (and augmentations) do not depend on
the number of data-loader workers and a resumed run repeats them exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.data import CacheDataset


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
