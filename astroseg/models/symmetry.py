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


def draw_ops(n: int, generator: torch.Generator, square: bool = True) -> torch.Tensor:
    """`n` random symmetries (CPU int64); a non-square image keeps half turns and mirrors only."""
    ops = torch.randint(0, N_OPS, (n,), generator=generator)
    return ops if square else ops & 6   # a quarter turn would change a non-square shape


def apply_ops(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Apply symmetry `ops[i]` to sample `x[i]` (any leading layout, square or half turns only).

    Selection by `torch.where` instead of indexing: no data-dependent shapes, so on a GPU it
    never waits for the host, and torch.compile sees static shapes.
    """
    ops = ops.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    x = torch.where((ops & 4) != 0, x.flip(-1), x)
    turns = ops & 3
    out = torch.where(turns == 2, x.flip(-2, -1), x)
    if x.shape[-1] == x.shape[-2]:
        out = torch.where(turns == 1, torch.rot90(x, 1, dims=(-2, -1)), out)
        out = torch.where(turns == 3, torch.rot90(x, 3, dims=(-2, -1)), out)
    return out


def augment(x: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random symmetry per sample, the same for image and mask (non-square: no quarter turns)."""
    ops = draw_ops(len(x), generator, x.shape[-1] == x.shape[-2])
    return apply_ops(x, ops), apply_ops(y, ops)


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
