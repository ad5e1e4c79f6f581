"""Seeded, vectorised synthetic sky: elliptical galaxies with bars and spiral hints on noise.

Same distributions as the seed notebook's generator, but every image draws from its own random
stream keyed by (seed, split, index), so image i is the same whatever N or the chunk size is, and
a chunk of images is rendered with array operations instead of one Python loop per galaxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from astroseg.data.normalize import normalize_array
from astroseg.params import DataParams

SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Chunk:
    """Images [start, start + len) of one split, with what each contains."""
    start: int
    images: np.ndarray      # float32 (B, H, W), normalised to [0, 1] by data.normalize
    masks: np.ndarray       # uint8 (B, H, W), 1 = galaxy
    n_sources: np.ndarray   # uint8 (B,)
    has_bar: np.ndarray     # bool (B,)
    has_spiral: np.ndarray  # bool (B,)


@dataclass
class _Draws:
    """Per-image random draws, stacked over a chunk: (B, H, W) noise and (B, G) galaxy values."""
    noise: np.ndarray
    active: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    peak: np.ndarray
    bar: np.ndarray
    bar_length: np.ndarray
    bar_width: np.ndarray
    spiral: np.ndarray
    turns: np.ndarray


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image, independent of every other image's."""
    return np.random.default_rng([seed, SPLIT_KEYS[split], index])


def _draw_one(p: DataParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # The draw order and sizes are fixed (max_count galaxies, bar and spiral values always drawn),
    # so switching a feature on or off never shifts the stream of what follows.
    g = p.galaxies
    n_max = g.count[1]
    shape = (p.height, p.width)
    noise = p.noise.gaussian_sigma * rng.standard_normal(shape, dtype=np.float32)
    noise += p.noise.poisson_scale * rng.poisson(p.noise.poisson_rate, shape).astype(np.float32)
    n = rng.integers(g.count[0], g.count[1], endpoint=True)
    return {
        "noise": noise,
        "active": np.arange(n_max) < n,
        "cx": rng.uniform(g.margin, p.width - g.margin, n_max),
        "cy": rng.uniform(g.margin, p.height - g.margin, n_max),
        "a": rng.uniform(*g.a, n_max),
        "b": rng.uniform(*g.b, n_max),
        "theta": rng.uniform(0.0, np.pi, n_max),
        "peak": rng.uniform(*g.peak, n_max),
        "bar": rng.random(n_max) < p.bar.probability,
        "bar_length": rng.uniform(*p.bar.length, n_max),
        "bar_width": rng.uniform(*p.bar.width, n_max),
        "spiral": rng.random(n_max) < p.spiral.probability,
        "turns": rng.uniform(*p.spiral.turns, n_max),
    }


def _draw(p: DataParams, split: str, indices: range) -> _Draws:
    per_image = [_draw_one(p, image_rng(p.seed, split, i)) for i in indices]
    return _Draws(**{k: np.stack([d[k] for d in per_image]) for k in per_image[0]})


def render(p: DataParams, split: str, indices: range, raw: bool = False) -> Chunk:
    """Render images `indices` of `split`; identical output for an index whatever the chunking.

    `raw` skips the normalisation (flux as drawn: noise plus profiles), for writing sky files.
    """
    d = _draw(p, split, indices)
    f32 = np.float32
    yy, xx = np.mgrid[0:p.height, 0:p.width].astype(f32)
    # (B, G, H, W) offsets from every galaxy centre, rotated into its frame.
    x0 = xx - d.cx[..., None, None].astype(f32)
    y0 = yy - d.cy[..., None, None].astype(f32)
    ct = np.cos(d.theta)[..., None, None].astype(f32)
    st = np.sin(d.theta)[..., None, None].astype(f32)
    xr = ct * x0 + st * y0
    yr = ct * y0 - st * x0

    a = d.a[..., None, None].astype(f32)
    b = d.b[..., None, None].astype(f32)
    peak = (d.peak * d.active)[..., None, None].astype(f32)
    profile = peak * np.exp(-0.5 * ((xr / a) ** 2 + (yr / b) ** 2))
    masks = (profile > p.galaxies.mask_level * peak) & d.active[..., None, None]
    images = d.noise + profile.sum(axis=1)

    # Bars and spirals are drawn only where switched on: gather those (image, galaxy) pairs.
    bi, bg = np.nonzero(d.bar & d.active)
    if bi.size:
        w = d.bar_width[bi, bg, None, None].astype(f32)
        half = d.bar_length[bi, bg, None, None].astype(f32)
        bar = np.exp(-0.5 * (yr[bi, bg] / w) ** 2) * (np.abs(xr[bi, bg]) < half)
        np.add.at(images, bi, p.bar.amplitude * bar)
    si, sg = np.nonzero(d.spiral & d.active)
    if si.size:
        r = np.hypot(x0[si, sg], y0[si, sg]) + f32(1e-6)
        angle = np.arctan2(y0[si, sg], x0[si, sg])
        k = (0.5 * d.turns[si, sg])[:, None, None].astype(f32)
        ridge = np.sin(k * np.log1p(r) + p.spiral.arms * angle) > p.spiral.ridge_level
        np.add.at(images, si, p.spiral.amplitude * ridge.astype(f32))

    if not raw and p.normalize == "minmax":
        # Vectorised form of astroseg.data.normalize's minmax, the same arithmetic per image.
        images -= images.min(axis=(1, 2), keepdims=True)
        images /= images.max(axis=(1, 2), keepdims=True) + f32(1e-6)
    elif not raw:
        valid = np.ones(images.shape[1:], dtype=bool)
        images = np.stack([normalize_array(im, valid, p.normalize, "synthetic image")[0]
                           for im in images])
    return Chunk(
        start=indices.start,
        images=images.astype(f32),
        masks=masks.any(axis=1).astype(np.uint8),
        n_sources=d.active.sum(axis=1).astype(np.uint8),
        has_bar=(d.bar & d.active).any(axis=1),
        has_spiral=(d.spiral & d.active).any(axis=1),
    )


def generate(p: DataParams, split: str, n: int) -> Iterator[Chunk]:
    """Yield the `n` images of `split` in chunks of `p.chunk`, so memory stays bounded."""
    for start in range(0, n, p.chunk):
        yield render(p, split, range(start, min(n, start + p.chunk)))
