"""The seed notebook's model: one overlapping patch embedding, a ViT encoder, a conv decoder.

Kept so the seed's results can always be reproduced. Unlike the notebook, the learned positional
embedding is a parameter from construction (the notebook created it after the optimizer, so it
never trained), and it is resampled when the input size differs from the training size.
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


class TinySegFormer(nn.Module):
    """Single-scale transformer segmenter; logits have the input's spatial size."""

    def __init__(self, image_size: tuple[int, int], in_channels: int = 1, num_classes: int = 1,
                 embed_dim: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 3.0,
                 patch_size: int = 8, overlap: float = 0.5, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        k = patch_kernel(patch_size, overlap)
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, k, stride=patch_size, padding=k // 2)
        self.embed_norm = nn.LayerNorm(embed_dim)
        grid = [(s + 2 * (k // 2) - k) // patch_size + 1 for s in image_size]
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(embed_dim // 2, num_classes, 1),
        )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes, H, W) logits."""
        H, W = x.shape[-2:]
        z = self.patch_embed(x)
        B, E, h, w = z.shape
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        tokens = self.embed_norm(z.flatten(2).transpose(1, 2)) + pos.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        z = self.norm(tokens).transpose(1, 2).reshape(B, E, h, w)
        z = F.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)
        return self.decoder(z)
