"""The seed notebook's model: one overlapping patch embedding, a ViT encoder, a conv decoder.

Kept so the seed's results can always be reproduced. Unlike the notebook, the learned positional
embedding is a parameter from construction (the notebook created it after the optimizer, so it
never trained), and it is resampled when the input size differs from the training size.
`pos_encoding="relative_bias"` replaces it with a learned per-head bias on the attention logits
indexed by the (dy, dx) offset between tokens (as in Swin), which transfers across sizes better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from astroseg.models.layers import Block, init_weights


def patch_kernel(patch_size: int, overlap: float) -> int:
    """Odd kernel covering the stride plus `overlap` of it, so each token sees its neighbours."""
    k = int(patch_size + patch_size * overlap)
    return k + 1 if k % 2 == 0 else k


def _resample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of a (C, h, w) learned grid when the token grid changes size."""
    if tuple(grid.shape[-2:]) == size:
        return grid
    return F.interpolate(grid[None], size=size, mode="bicubic", align_corners=False)[0]


class RelativePositionBias(nn.Module):
    """A learned (heads, 2h-1, 2w-1) table of attention biases by token offset."""

    def __init__(self, num_heads: int, grid: tuple[int, int]):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * grid[0] - 1, 2 * grid[1] - 1))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(1, heads, h*w, h*w) bias for a token grid of h x w."""
        table = _resample(self.table, (2 * h - 1, 2 * w - 1))
        ys, xs = torch.meshgrid(torch.arange(h, device=table.device),
                                torch.arange(w, device=table.device), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        return table[:, ys[:, None] - ys[None] + h - 1, xs[:, None] - xs[None] + w - 1][None]


class TinySegFormer(nn.Module):
    """Single-scale transformer segmenter; logits have the input's spatial size."""

    def __init__(self, image_size: tuple[int, int], in_channels: int = 1, num_classes: int = 1,
                 embed_dim: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 3.0,
                 patch_size: int = 8, overlap: float = 0.5, dropout: float = 0.0,
                 attn_dropout: float = 0.0, pos_encoding: str = "absolute"):
        super().__init__()
        k = patch_kernel(patch_size, overlap)
        self.in_channels = in_channels   # bands: what predict checks inputs against
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, k, stride=patch_size, padding=k // 2)
        self.embed_norm = nn.LayerNorm(embed_dim)
        grid = tuple((s + 2 * (k // 2) - k) // patch_size + 1 for s in image_size)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth))
        if pos_encoding == "absolute":
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
            self.rel_bias = None
        elif pos_encoding == "relative_bias":
            self.pos_embed = None
            self.rel_bias = nn.ModuleList(RelativePositionBias(num_heads, grid) for _ in range(depth))
        else:
            raise ValueError(f"pos_encoding {pos_encoding!r}: expected absolute or relative_bias")
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(embed_dim // 2, num_classes, 1),
        )
        self.apply(init_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes, H, W) logits."""
        H, W = x.shape[-2:]
        z = self.patch_embed(x)
        B, E, h, w = z.shape
        tokens = self.embed_norm(z.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            tokens = tokens + _resample(self.pos_embed[0], (h, w)).flatten(1).T
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, None if self.rel_bias is None else self.rel_bias[i](h, w))
        z = self.norm(tokens).transpose(1, 2).reshape(B, E, h, w)
        z = F.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)
        return self.decoder(z)
