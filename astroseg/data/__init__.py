"""Data in and out: the synthetic sky, FITS/PNG reading and normalisation, tiling, the HDF5 dataset."""
