"""Network architectures."""

from stroke_seg.models.resunet import ResidualBlock3D, ResUNet3D

__all__ = ["ResUNet3D", "ResidualBlock3D"]
