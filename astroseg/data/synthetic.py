"""Seeded synthetic sky: elliptical galaxies with bars and spiral hints on noise.

The seed notebook's distributions, rendered about ten times faster per image on one core:
  - every image draws from its own counter-based stream, numpy's Philox keyed by (seed, split,
    index), so image i is the same whatever N, the chunk size or the number of worker
    processes is, and no two images share a stream;
  - the random numbers come straight from the bit generator as raw words: Box-Muller for the
    Gaussian noise, a table lookup on the 8 bits of each word that Box-Muller leaves unused for
    the Poisson counts (exact: the bytes that fall on a table boundary are resolved with 53 more
    bits), linear maps for the uniforms;
  - each galaxy and bar is rendered in the box where it exceeds 1e-3 of the noise sigma (the
    tail left out changes a pixel by at most that per source, a few 1e-3 sigma in all); only
    the spiral ridges, which the seed draws out to the image edges, take the whole image.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from astroseg.data.normalize import normalize_array
from astroseg.data.parallel import ordered_map
from astroseg.errors import ParamsError
from astroseg.params import DataParams

SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
INDEX_BITS = 48      # image index in the low bits of the second key word, split above it
_FIELDS = ("cx", "cy", "a", "b", "theta", "peak", "bar", "bar_length", "bar_width", "spiral",
           "turns")


@dataclass
class Chunk:
    """Images [start, start + len) of one split, with what each contains."""
    start: int
    images: np.ndarray      # float32 (B, H, W), or (B, C, H, W) for C bands; normalised
    masks: np.ndarray       # uint8 (B, H, W), class index (1 = galaxy in the seed sky)
    meta: dict[str, np.ndarray]      # per image (B,): n_sources, has_bar, has_spiral (seed sky)
    objects: dict[str, np.ndarray]   # gal_* -> float32 (B, K): truth per galaxy, NaN-padded


def image_stream(seed: int, split: str, index: int) -> np.random.Philox:
    """The counter-based random stream of one image, independent of every other image's."""
    if not 0 <= index < 2 ** INDEX_BITS:
        raise ValueError(f"image index {index} out of range [0, 2^{INDEX_BITS})")
    # uint64 explicitly: a list with a seed >= 2^63 would go through float64 and collide.
    key = np.array([seed, (SPLIT_KEYS[split] << INDEX_BITS) | index], dtype=np.uint64)
    return np.random.Philox(key=key)


def _uniforms(stream: np.random.Philox, n: int) -> np.ndarray:
    """`n` float64 uniforms in [0, 1) from 53 bits each."""
    return (stream.random_raw(n) >> np.uint64(11)) * (1.0 / 2 ** 53)


@functools.lru_cache(maxsize=8)
def _poisson_table(rate: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """scale x count for each byte value (NaN where a CDF step falls inside the byte's
    interval of [0, 1)), and the CDF itself for resolving those bytes."""
    if rate > 1e4:
        raise ParamsError(f"data.noise.poisson_rate = {rate:g}: expected <= 10000")
    last = int(rate + 40 * math.sqrt(rate) + 60)
    k = np.arange(last + 1)
    if rate > 0:
        log_pmf = k * math.log(rate) - rate - np.array([math.lgamma(i + 1) for i in k])
    else:
        log_pmf = np.where(k == 0, 0.0, -np.inf)
    cdf = np.cumsum(np.exp(log_pmf))
    cdf[-1] = 1.0
    edges = np.arange(257) / 256
    low = np.searchsorted(cdf, edges[:-1], side="right")      # count at a byte's lower edge
    high = np.searchsorted(cdf, edges[1:], side="left")       # ... just below its upper edge
    table = np.where(low == high, scale * np.minimum(low, last), np.nan).astype(np.float32)
    return table, cdf


def _noise(stream: np.random.Philox, p: DataParams, out: np.ndarray) -> None:
    """Write Gaussian plus scaled Poisson noise of the stream's image into `out` (H * W,).

    Box-Muller on 24-bit uniforms (tails to 5.8 sigma) for the Gaussian; the Poisson count of
    each pixel is a table lookup on the 8 low bits of the same words, which Box-Muller leaves
    unused and which are independent of the high 24. A byte whose interval holds a CDF step
    is resolved exactly with 53 more bits. One image at a time: its arrays stay in the cache.
    """
    n = p.height * p.width
    half = (n + 1) // 2
    words = stream.random_raw(half).view(np.uint32)
    radius = (words[:half] >> 8).astype(np.float32)
    radius += np.float32(1)       # (0, 2^24]: log never sees 0
    np.log(radius, out=radius)
    radius *= np.float32(-2)
    radius += np.float32(48 * math.log(2))     # -2 ln(u), u = radius / 2^24
    np.sqrt(radius, out=radius)
    radius *= np.float32(p.noise.gaussian_sigma)
    angle = (words[half:] >> 8).astype(np.float32)
    angle *= np.float32(2 * math.pi / 2 ** 24)
    np.multiply(radius[:n - half], np.sin(angle[:n - half]), out=out[half:])
    np.cos(angle, out=angle)
    np.multiply(radius, angle, out=out[:half])
    if p.noise.poisson_scale:
        table, cdf = _poisson_table(p.noise.poisson_rate, p.noise.poisson_scale)
        low = (words.view(np.uint8)[::4] if np.little_endian else words & 0xFF)[:n]
        extra = np.take(table, low)
        at = np.flatnonzero(np.isnan(extra))
        if at.size:
            where = (low[at] + _uniforms(stream, at.size)) / 256
            extra[at] = p.noise.poisson_scale * np.searchsorted(cdf, where, side="right")
        out += extra


_LIMITS = {"a": "galaxies.a", "b": "galaxies.b", "peak": "galaxies.peak",
           "bar_length": "bar.length", "bar_width": "bar.width", "turns": "spiral.turns"}


def _draw(p: DataParams, stream: np.random.Philox) -> tuple[int, dict[str, np.ndarray]]:
    """The galaxies of one image: a count, then max-count values of every field, always drawn
    so that switching a feature on or off never shifts what follows in the stream."""
    g, n_max = p.galaxies, p.galaxies.count[1]
    u = _uniforms(stream, 1 + len(_FIELDS) * n_max)
    n = g.count[0] + min(int(u[0] * (g.count[1] - g.count[0] + 1)), g.count[1] - g.count[0])
    lo, hi = _ranges(p)
    v = (lo + (hi - lo) * u[1:].reshape(len(_FIELDS), n_max)).tolist()
    d = dict(zip(_FIELDS, v))
    d["bar"] = [x < p.bar.probability for x in d["bar"]]
    d["spiral"] = [x < p.spiral.probability for x in d["spiral"]]
    return n, d


@functools.lru_cache(maxsize=8)
def _ranges(p: DataParams) -> tuple[np.ndarray, np.ndarray]:
    """Low and high end of each field's uniform draw, as (fields, 1) columns."""
    ranges = {"cx": (p.galaxies.margin, p.width - p.galaxies.margin),
              "cy": (p.galaxies.margin, p.height - p.galaxies.margin),
              "theta": (0.0, math.pi), "bar": (0.0, 1.0), "spiral": (0.0, 1.0)}
    for key, dotted in _LIMITS.items():
        section, name = dotted.split(".")
        ranges[key] = getattr(getattr(p, section), name)
    lo, hi = np.array([ranges[k] for k in _FIELDS], dtype=np.float64).T
    return lo[:, None], hi[:, None]


def _box(cx: float, cy: float, hx: float, hy: float, shape: tuple[int, int]
         ) -> tuple[slice, slice]:
    """Pixel rows and columns within (hx, hy) of (cx, cy), clipped to the image."""
    h, w = shape
    ys = slice(max(0, math.ceil(cy - hy)), min(h, math.floor(cy + hy) + 1))
    xs = slice(max(0, math.ceil(cx - hx)), min(w, math.floor(cx + hx) + 1))
    return ys, xs


def _floor(p: DataParams) -> float:
    """Flux below which a profile's tail is not rendered: 1e-3 of the noise sigma, or float32
    resolution of a unit peak on a noiseless image."""
    return 1e-3 * p.noise.gaussian_sigma if p.noise.gaussian_sigma > 0 else 1e-9


def _add(image: np.ndarray, ys: slice, xs: slice, light: np.ndarray, colours: tuple[float, ...]
         ) -> None:
    # One band: the light as it is. Several, (C, H, W): the light times each band's colour.
    if image.ndim == 2:
        image[ys, xs] += light
    else:
        for band, colour in zip(image, colours):
            band[ys, xs] += np.float32(colour) * light


def _add_galaxy(image: np.ndarray, mask: np.ndarray, grid: tuple[np.ndarray, np.ndarray],
                d: dict[str, float], p: DataParams) -> None:
    """Add one galaxy's profile (and bar) to `image` ((H, W), or (C, H, W) for C bands) and its
    ellipse to `mask`, in place."""
    yy, xx = grid
    c, s = math.cos(d["theta"]), math.sin(d["theta"])
    a, b, peak = d["a"], d["b"], d["peak"]
    mask_q = -math.log(p.galaxies.mask_level)
    # q = ((xr/a)^2 + (yr/b)^2) / 2, rendered where peak exp(-q) >= the floor (and the mask is).
    r = math.sqrt(2 * max(math.log(peak / _floor(p)), mask_q + 1.0))
    ys, xs = _box(d["cx"], d["cy"], r * math.hypot(a * c, b * s), r * math.hypot(a * s, b * c),
                  mask.shape)
    dx, dy = xx[:, xs] - np.float32(d["cx"]), yy[ys] - np.float32(d["cy"])
    # -q + ln(peak) = -A dx^2 - B dx dy - C dy^2 + ln(peak): a row term, a column term and one
    # outer product, three passes over the box instead of five.
    qa = 0.5 * ((c / a) ** 2 + (s / b) ** 2)
    qb = s * c * (1 / a ** 2 - 1 / b ** 2)
    qc = 0.5 * ((s / a) ** 2 + (c / b) ** 2)
    t = dy * (np.float32(-qb) * dx)
    t += np.float32(-qa) * dx * dx
    t += np.float32(math.log(peak)) - np.float32(qc) * dy * dy
    mask[ys, xs] |= t > np.float32(math.log(peak) - mask_q)
    _add(image, ys, xs, np.exp(t, out=t), p.bands.galaxy)
    if d["bar"]:
        half, width, amp = d["bar_length"], d["bar_width"], p.bar.amplitude
        sig = math.sqrt(2 * max(math.log(max(amp, 1e-30) / _floor(p)), 0.0)) * width
        ys, xs = _box(d["cx"], d["cy"], half * abs(c) + sig * abs(s),
                      half * abs(s) + sig * abs(c), mask.shape)
        dx, dy = xx[:, xs] - np.float32(d["cx"]), yy[ys] - np.float32(d["cy"])
        along = np.abs(np.float32(c) * dx + np.float32(s) * dy) < np.float32(half)
        across = np.float32(c / width) * dy - np.float32(s / width) * dx
        across *= across
        np.subtract(np.float32(math.log(max(amp, 1e-30))), np.float32(0.5) * across, out=across)
        bar = np.exp(across, out=across)
        bar *= along
        _add(image, ys, xs, bar, p.bands.bar)


def _add_spiral(image: np.ndarray, grid: tuple[np.ndarray, np.ndarray],
                d: dict[str, float], p: DataParams) -> None:
    """Add log-spiral ridges centred on a galaxy, over the whole image (as the seed does)."""
    yy, xx = grid
    dx, dy = xx - np.float32(d["cx"]), yy - np.float32(d["cy"])
    r = dx * dx + dy * dy
    np.sqrt(r, out=r)
    r += np.float32(1 + 1e-6)
    phase = np.log(r, out=r)              # numpy's log1p is not vectorised, its log is
    phase *= np.float32(0.5 * d["turns"] / (2 * math.pi))
    # torch's atan2 is vectorised on the CPU, numpy's is 8x slower.
    angle = torch.atan2(torch.from_numpy(dy), torch.from_numpy(dx)).numpy()
    phase += np.float32(p.spiral.arms / (2 * math.pi)) * angle
    # sin(phase) > level where the phase, in turns, lies between asin(level) and pi - asin(level)
    # (mod 2 pi): two comparisons instead of a sine.
    start = math.asin(p.spiral.ridge_level) / (2 * math.pi)
    phase -= np.float32(start)
    phase -= np.floor(phase)
    ridge = phase < np.float32(0.5 - 2 * start)
    if image.ndim == 2:
        np.add(image, np.float32(p.spiral.amplitude), out=image, where=ridge)
    else:
        for band, colour in zip(image, p.bands.spiral):
            np.add(band, np.float32(p.spiral.amplitude * colour), out=band, where=ridge)


def _add_sources(image: np.ndarray, mask: np.ndarray, n: int, d: dict[str, list],
                 p: DataParams) -> None:
    """Add the first `n` drawn galaxies (profiles, bars, spirals) and their masks, in place."""
    grid = _grid(p.height, p.width)
    for i in range(n):
        one = {k: d[k][i] for k in _FIELDS}
        _add_galaxy(image, mask, grid, one, p)
        if one["spiral"]:
            _add_spiral(image, grid, one, p)


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row (H, 1) and column (1, W) coordinates, float32."""
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def render(p: DataParams, split: str, indices: range) -> Chunk:
    """Render images `indices` of `split`; identical output for an index whatever the chunking."""
    with _one_torch_thread():
        return _render(p, split, indices)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    # The spiral's torch atan2 is small; with more than one intra-op thread it ran 30x slower
    # here (the pool's threads wake and wait on every op), so render on one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _render(p: DataParams, split: str, indices: range) -> Chunk:
    streams = [image_stream(p.seed, split, i) for i in indices]
    draws = [_draw(p, stream) for stream in streams]       # first in each stream, then noise
    bands = len(p.bands.names)
    images = np.empty((len(indices), *((bands,) if bands else ()), p.height, p.width), np.float32)
    for image, stream in zip(images, streams):
        for band in (image[None] if image.ndim == 2 else image):   # band 0's noise first
            _noise(stream, p, band.reshape(-1))
    masks = np.zeros((len(indices), p.height, p.width), bool)
    for image, mask, (n, d) in zip(images, masks, draws):
        _add_sources(image, mask, n, d, p)
    if p.normalize == "minmax":   # astroseg.data.normalize's minmax, over the chunk at once
        images -= images.min(axis=(-2, -1), keepdims=True)
        images /= images.max(axis=(-2, -1), keepdims=True) + np.float32(1e-6)
    else:   # each band of each image on its own
        valid = np.ones(images.shape[-2:], dtype=bool)
        for i in np.ndindex(images.shape[:-2]):
            images[i] = normalize_array(images[i], valid, p.normalize, "synthetic image")[0]
    meta = {"n_sources": np.array([n for n, _ in draws], np.uint8),
            "has_bar": np.array([any(d["bar"][:n]) for n, d in draws]),
            "has_spiral": np.array([any(d["spiral"][:n]) for n, d in draws])}
    return Chunk(start=indices.start, images=images, masks=masks.view(np.uint8), meta=meta,
                 objects=truth_table(p, draws))


OBJECT_FIELDS = ("gal_cx", "gal_cy", "gal_a", "gal_b", "gal_theta", "gal_peak", "gal_flux",
                 "gal_snr")


def noise_sigma(p: DataParams) -> float:
    """Standard deviation of the noise before normalisation: Gaussian plus scaled Poisson."""
    return math.sqrt(p.noise.gaussian_sigma ** 2 + p.noise.poisson_scale ** 2 * p.noise.poisson_rate)


def truth_table(p: DataParams, draws: list[tuple[int, dict[str, list]]]) -> dict[str, np.ndarray]:
    """gal_* -> (B, K) float32 per drawn galaxy, NaN past each image's count, in the units of
    the image before normalisation: centre (pixels, pixel centres at integers), sigmas a and b
    (pixels), angle theta (radians, from +x towards +y), peak, flux (the Gaussian profile's
    integral 2 pi a b peak; bar and spiral light not included) and peak S/N (peak over the
    noise's standard deviation)."""
    k = p.galaxies.count[1]
    out = {name: np.full((len(draws), k), np.nan, np.float32) for name in OBJECT_FIELDS}
    sigma = noise_sigma(p)
    for row, (n, d) in enumerate(draws):
        for name in ("cx", "cy", "a", "b", "theta", "peak"):
            out["gal_" + name][row, :n] = d[name][:n]
        peak, a, b = (np.array(d[name][:n]) for name in ("peak", "a", "b"))
        out["gal_flux"][row, :n] = 2 * math.pi * a * b * peak
        out["gal_snr"][row, :n] = peak / sigma if sigma > 0 else np.inf
    return out


def generate(p: DataParams, sizes: dict[str, int], workers: int = 1,
             renderer: Callable[[DataParams, str, range], Chunk] | None = None
             ) -> Iterator[tuple[str, Chunk]]:
    """Yield (split, chunk) for the first `sizes[split]` images of each split, in order, in
    chunks of `p.chunk` rendered by `workers` processes (with `renderer`, default this seed
    sky's `render`); memory holds a few chunks per worker, whatever the sizes are."""
    jobs = [(p, split, range(start, min(n, start + p.chunk)))
            for split, n in sizes.items() for start in range(0, n, p.chunk)]
    chunks = ordered_map(renderer or render, jobs, min(workers, len(jobs)))
    for (_, split, _), chunk in zip(jobs, chunks):
        yield split, chunk
