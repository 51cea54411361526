"""Scans on disk to training batches, one concern per module (MONAI's layout):

- `io`: reading a NIfTI file (`read_nifti`) and a case (`load_case`); `checks`: what a scan,
  a mask or a subject list must satisfy; `preprocessing`: the `Preprocessing` contract that
  checkpoints carry to inference.
- `discovery`: the (T1, mask) pairs of a layout; `splits`: train/val/test and folds.
- `transforms`, `augment`, `dataset`, `samplers`: the pieces `datamodule` composes into
  Lightning's `StrokeDataModule`; `synthetic`: the synthetic data set.

Nothing is re-exported here: importing any submodule runs this file, and inference imports
`transforms` without loading Lightning, which the DataModule needs.
"""
