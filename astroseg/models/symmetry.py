"""The 8 flips and 90-degree rotations of the pixel grid: augmentation and test-time averaging.

An astronomical image has no preferred orientation, and these moves relocate pixels without
resampling them, so fluxes and noise statistics are preserved exactly.
"""

from __future__ import annotations

import torch
from torch import nn

N_OPS = 8


def transform(x: torch.Tensor, op: int) -> torch.Tensor:
    """Apply symmetry `op` (0..7: bit 2 = mirror, bits 0-1 = quarter turns) to the last 2 axes."""
    if op & 4:
        x = x.flip(-1)
    return torch.rot90(x, op & 3, dims=(-2, -1))


def inverse(x: torch.Tensor, op: int) -> torch.Tensor:
    """Undo `transform(., op)`."""
    x = torch.rot90(x, -(op & 3), dims=(-2, -1))
    return x.flip(-1) if op & 4 else x


def augment(x: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random symmetry per sample, the same for image and mask (non-square: no quarter turns)."""
    ops = torch.randint(0, N_OPS, (len(x),), generator=generator)
    if x.shape[-1] != x.shape[-2]:
        ops &= 6  # a quarter turn would change a non-square shape: keep half turns and mirrors
    x, y = x.clone(), y.clone()
    for op in range(1, N_OPS):
        idx = (ops == op).nonzero().flatten()
        if len(idx):
            x[idx], y[idx] = transform(x[idx], op), transform(y[idx], op)
    return x, y


def averaged_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits averaged over all 8 symmetries of the input (test-time augmentation).

    Noise at a source's edge differs in every orientation while the source does not, so the
    average places edges better; it costs 8 forward passes.
    """
    total = None
    for op in range(N_OPS):
        logits = inverse(model(transform(x, op)).float(), op)
        total = logits if total is None else total + logits
    return total / N_OPS
