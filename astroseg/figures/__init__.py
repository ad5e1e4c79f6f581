"""Figures: the PNG plots of the pipeline and the offline HTML report."""
