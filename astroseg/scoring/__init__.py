"""Scoring a model: losses, pixel metrics, evaluation over a split, example predictions."""
