"""Training: the loop and its per-epoch history."""
