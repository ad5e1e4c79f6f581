"""astroseg: transformer segmentation of astronomical images, as a DVC pipeline."""

__version__ = "0.1.0"
