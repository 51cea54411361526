"""stroke_seg: chronic stroke lesion segmentation on T1-weighted MRI (Tomita et al. 2020)."""

__version__ = "0.1.0"
