"""Inference: arrays and HDF5 files, and sliding-window FITS segmentation."""
