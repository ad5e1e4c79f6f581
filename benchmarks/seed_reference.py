"""The seed notebook's generator and model, transcribed as the baseline benchmarks compare with.

Only benchmarks import this file. It keeps the notebook's way of doing the work (a Python loop per
image, full-frame meshgrids per galaxy; nn.MultiheadAttention; the lazily created positional
embedding), so ratios against it measure what astroseg changed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

H = W = 128


def _rotated(cx, cy, theta):
    yy, xx = np.mgrid[0:H, 0:W]
    x0, y0 = xx - cx, yy - cy
    ct, st = np.cos(theta), np.sin(theta)
    return ct * x0 + st * y0, -st * x0 + ct * y0


def make_sample() -> tuple[np.ndarray, np.ndarray]:
    """One image and mask, the notebook's way (global numpy RNG, one galaxy at a time)."""
    img = np.zeros((H, W), np.float32)
    msk = np.zeros((H, W), np.float32)
    img += 0.02 * np.random.randn(H, W).astype(np.float32)
    img += np.random.poisson(1.0, size=(H, W)).astype(np.float32) * 0.001
    for _ in range(np.random.randint(1, 4)):
        cx, cy = np.random.uniform(20, W - 20), np.random.uniform(20, H - 20)
        a, b = np.random.uniform(4, 12), np.random.uniform(3, 10)
        theta, peak = np.random.uniform(0, np.pi), np.random.uniform(0.7, 1.5)
        xr, yr = _rotated(cx, cy, theta)
        g = peak * np.exp(-0.5 * ((xr / (a + 1e-6)) ** 2 + (yr / (b + 1e-6)) ** 2))
        img += g
        msk = np.maximum(msk, (g > 0.1 * peak).astype(np.float32))
        if np.random.rand() < 0.4:
            xr, yr = _rotated(cx, cy, theta)
            length, width = np.random.uniform(6, 14), np.random.uniform(1.5, 3.5)
            img += 0.2 * np.exp(-0.5 * (yr / width) ** 2) * (np.abs(xr) < length)
        if np.random.rand() < 0.3:
            yy, xx = np.mgrid[0:H, 0:W]
            r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) + 1e-6
            ang = np.arctan2(yy - cy, xx - cx)
            k = np.random.uniform(1.0, 2.5) * 0.5
            img += 0.1 * (np.sin(k * np.log(r + 1.0) + 3 * ang) > 0.9)
    img -= img.min()
    img /= img.max() + 1e-6
    return img.astype(np.float32), msk


class _Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SeedTinySegFormer(nn.Module):
    """The notebook's TinySegFormer (positional embedding created on the first forward)."""

    def __init__(self, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0, patch_size=8, overlap=0.5):
        super().__init__()
        k = int(patch_size + patch_size * overlap)
        k += k % 2 == 0
        self.proj = nn.Conv2d(1, embed_dim, k, stride=patch_size, padding=k // 2)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.pos_emb = None
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(embed_dim // 2, 1, 1))
        self.patch_size = patch_size

    def forward(self, x):
        z = self.proj(x)
        B, E, h, w = z.shape
        z = self.embed_norm(z.flatten(2).transpose(1, 2))
        if self.pos_emb is None:
            self.pos_emb = nn.Parameter(torch.zeros(1, h * w, E).normal_(std=0.02))
        z = z + self.pos_emb
        for blk in self.blocks:
            z = blk(z)
        z = self.norm(z).transpose(1, 2).reshape(B, E, h, w)
        z = F.interpolate(z, scale_factor=self.patch_size, mode="bilinear", align_corners=False)
        return self.decoder(z)
