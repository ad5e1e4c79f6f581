"""Figures: the PNG plots of the pipeline."""
