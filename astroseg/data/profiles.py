"""Light profiles of the realistic sky on pixel grids: PSFs, Sérsic galaxies, streaks.

Every profile is sampled at pixel centres (a galaxy much smaller than a pixel is sampled finer
and binned) and normalised to unit sum over its stamp, so a source's flux is exactly the sum of
its pixels before the frame's edge cuts it. A stamp is an array with the row and column of its
first pixel in the frame; `add_stamp` clips it to the frame.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import signal, special

MAX_HALF = 160        # stamp half-size cap (pixels): a galaxy's far wings are not rendered


@dataclass(frozen=True)
class PSF:
    """A circular Moffat (beta > 0) or Gaussian (beta = 0) point-spread function."""
    fwhm: float          # pixels
    beta: float = 0.0

    def profile(self, r2: np.ndarray) -> np.ndarray:
        """Unnormalised intensity at squared radius `r2` (pixels^2); 1 at the centre."""
        if self.beta > 0:
            alpha2 = (self.fwhm / (2 * math.sqrt(2 ** (1 / self.beta) - 1))) ** 2
            return (1 + r2 / alpha2) ** -self.beta
        return np.exp(-r2 * (4 * math.log(2) / self.fwhm ** 2))

    @property
    def half(self) -> int:
        """Half-size of the kernel: out to where a Moffat's wings hold about 2% of the light."""
        return min(MAX_HALF, math.ceil((5.0 if self.beta > 0 else 2.5) * self.fwhm) + 1)

    def kernel(self) -> np.ndarray:
        """The PSF centred on the middle pixel of a (2 half + 1)^2 stamp, summing to 1."""
        return _kernel(self.fwhm, self.beta)

    def star(self, cx: float, cy: float) -> tuple[np.ndarray, int, int]:
        """A unit-flux point source at (cx, cy): stamp, first row, first column."""
        y0, x0 = round(cy) - self.half, round(cx) - self.half
        n = 2 * self.half + 1
        dy = np.arange(y0, y0 + n)[:, None] - cy
        dx = np.arange(x0, x0 + n)[None, :] - cx
        stamp = self.profile(dy * dy + dx * dx)
        return stamp / stamp.sum(), y0, x0


@functools.lru_cache(maxsize=16)
def _kernel(fwhm: float, beta: float) -> np.ndarray:
    psf = PSF(fwhm, beta)
    r = np.arange(-psf.half, psf.half + 1, dtype=np.float64)
    k = psf.profile(r[:, None] ** 2 + r[None, :] ** 2)
    k /= k.sum()
    k.flags.writeable = False
    return k


@functools.lru_cache(maxsize=256)
def sersic_b(n: float) -> float:
    """b_n of the Sérsic profile: half the light lies within the half-light radius."""
    return float(special.gammaincinv(2 * n, 0.5))


def sersic(cx: float, cy: float, r_e: float, n: float, q: float, theta: float
           ) -> tuple[np.ndarray, int, int]:
    """A unit-flux elliptical Sérsic profile (half-light radius `r_e` along the major axis,
    axis ratio `q`, major axis at `theta` from x): stamp, first row, first column. Rendered out
    to (3 + 2n) r_e, where even an n = 4 profile has given up nearly all its light."""
    half = min(MAX_HALF, math.ceil((3 + 2 * n) * r_e) + 1)
    sub = 1 if r_e >= 1.5 else min(5, math.ceil(3 / r_e)) | 1    # odd: a sample at each centre
    y0, x0 = round(cy) - half, round(cx) - half
    n_pix = 2 * half + 1
    offsets = (np.arange(sub) - sub // 2) / sub
    ys = (np.arange(y0, y0 + n_pix)[:, None] + offsets[None, :]).ravel() - cy
    xs = (np.arange(x0, x0 + n_pix)[:, None] + offsets[None, :]).ravel() - cx
    c, s = math.cos(theta), math.sin(theta)
    major = c * xs[None, :] + s * ys[:, None]
    minor = (c * ys[:, None] - s * xs[None, :]) / q
    r = np.sqrt(major * major + minor * minor) / r_e
    light = np.exp(-sersic_b(n) * (r ** (1 / n) - 1))
    light[r > 3 + 2 * n] = 0.0
    if sub > 1:
        light = light.reshape(n_pix, sub, n_pix, sub).sum(axis=(1, 3))
    return light / light.sum(), y0, x0


def convolve(stamp: np.ndarray, y0: int, x0: int, psf: PSF) -> tuple[np.ndarray, int, int]:
    """`stamp` convolved with the PSF (the full result, which keeps every photon)."""
    out = signal.convolve(stamp, psf.kernel(), mode="full", method="auto")
    np.maximum(out, 0.0, out=out)      # FFT round-off leaves -1e-17 where there is no light
    out *= stamp.sum() / out.sum()
    return out, y0 - psf.half, x0 - psf.half


def streak(shape: tuple[int, int], x0: float, y0: float, angle: float, fwhm: float
           ) -> np.ndarray:
    """A straight trail through (x0, y0) at `angle`, across the whole frame, with a Gaussian
    cross-section of `fwhm`; peak 1 on its centre line."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    d = (xx - x0) * math.sin(angle) - (yy - y0) * math.cos(angle)
    return np.exp(-d * d * (4 * math.log(2) / fwhm ** 2))


def add_stamp(frame: np.ndarray, stamp: np.ndarray, y0: int, x0: int) -> tuple[slice, slice]:
    """Add `stamp` to `frame` where they overlap; return the frame's slices it covered."""
    h, w = frame.shape
    ys = slice(max(0, y0), min(h, y0 + stamp.shape[0]))
    xs = slice(max(0, x0), min(w, x0 + stamp.shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        frame[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return ys, xs
