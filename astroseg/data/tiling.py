"""Tiles and sliding windows over big images: positions, cutting, and blending weights."""

from __future__ import annotations

import numpy as np


def starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts covering [0, size): every `stride`, plus a last one flush with the end."""
    if size <= tile:
        return [0]
    out = list(range(0, size - tile + 1, stride))
    if out[-1] != size - tile:
        out.append(size - tile)
    return out


def pad_to(image: np.ndarray, height: int, width: int, value: float = 0) -> np.ndarray:
    """`image` padded at the bottom/right to at least (height, width) with `value`."""
    ph, pw = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if ph == 0 and pw == 0:
        return image
    return np.pad(image, ((0, ph), (0, pw)), constant_values=value)


def cut_tiles(arrays: list[np.ndarray], tile: int, stride: int, pos: np.ndarray | None = None
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut same-shaped (H, W) arrays into (N, tile, tile) stacks at the (N, 2) (y, x) starts
    `pos` (default: every `stride`, covering the field); also return the starts.

    Fields smaller than a tile are padded (callers pad their valid mask with False).
    """
    if pos is None:
        h, w = arrays[0].shape
        ys, xs = starts(h, tile, stride), starts(w, tile, stride)
        pos = np.array([(y, x) for y in ys for x in xs], dtype=np.int32)
    arrays = [pad_to(a, tile, tile) for a in arrays]
    stacks = [np.stack([a[y:y + tile, x:x + tile] for y, x in pos]) if len(pos)
              else np.zeros((0, tile, tile), a.dtype) for a in arrays]
    return stacks, pos.reshape(-1, 2)


def ramp(size: int, overlap: int) -> np.ndarray:
    """1-D blending weight: a raised-cosine rise over `overlap` pixels at each end, 1 inside.

    Overlapping windows' weights cross-fade, so where one window's prediction (worse near its
    border, where the model saw zero padding) hands over to the next there is no step. The
    weight never reaches 0, so a pixel seen by one window only (image border) keeps its value.
    """
    w = np.ones(size, dtype=np.float32)
    n = min(overlap, size // 2)
    if n > 0:
        t = (np.arange(n, dtype=np.float32) + 0.5) / n
        rise = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:n], w[size - n:] = rise, rise[::-1]
    return np.maximum(w, 1e-3)


def window_weight(height: int, width: int, overlap: int) -> np.ndarray:
    """2-D blending weight of one (height, width) window: the outer product of two ramps."""
    return np.outer(ramp(height, overlap), ramp(width, overlap))
