"""Benchmarks of the whole pipeline on this machine: ``make bench`` (docs/benchmarks.md).

    python -m stroke_seg.bench [quick=true] [out=bench/results.json] [device=auto]
                               [sections=[train,memory,data,inference,evaluation]] [all=true]

A Hydra command (conf/bench.yaml; also installed as ``stroke-seg-bench``). It measures, on
whatever device it finds (CUDA if available, else CPU), one section per module:

* **train** (`stroke_seg.bench.train`): one training step (forward, BCE+Dice loss,
  backward, Adam) of the demo preset (widths 8/16/32/64) and the paper preset
  (32/64/128/256), with their GroupNorm groups, at each preset's zoom-in and zoom-out crop,
  for each speed
  option (fp32, bf16 autocast, channels-last, torch.compile): crops/s, voxels/s, and the
  model FLOP rate (FLOPs of convolutions counted with `torch.utils.flop_counter.FlopCounterMode`
  on the meta device) as a fraction of this machine's measured matmul peak (best of several
  large ``torch.mm``, `stroke_seg.bench.machine`). Each configuration runs in its own
  process (`stroke_seg.bench.probe`), so its peak memory is its own and a crash cannot take
  the benchmark down.
* **memory** (`stroke_seg.bench.memory`): peak memory of one paper-preset training step at
  both crops, with and without activation checkpointing (``model.checkpointing``).
* **data** (`stroke_seg.bench.data`): crops/s that the training data pipeline
  (`StrokeDataModule`: volumes cached in memory) delivers, against re-reading the NIfTI files
  for every sample as the reference code did, on a small synthetic set at 1 mm.
* **inference** (`stroke_seg.bench.inference`): seconds per full 197x233x189 scan with the
  paper preset, centre crop and sliding window (`stroke_seg.inference.Predictor`).
* **evaluation** (`stroke_seg.bench.evaluation`): seconds to score 31 scans at 1 mm with
  every metric plus the summary with 1000 bootstrap resamples.

The presets, loss and optimiser settings come from the training configs
(`stroke_seg.bench.presets`); the targets and the table from `stroke_seg.bench.report`.
``quick=true`` runs every section with tiny sizes in well under a minute (for tests); its
numbers mean nothing. Results go to ``out`` as JSON, and a table is printed.
"""

from stroke_seg.bench.cli import main

__all__ = ["main"]
