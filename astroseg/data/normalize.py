"""Per-field intensity normalisation to [0, 1], shared by dataset preparation and prediction.

A field (one FITS image, or one synthetic cut-out) is normalised as a whole, from statistics of
its valid pixels, so neighbouring tiles of a field are scaled alike and a big image predicted
window by window gets the same input as the tiles the model was trained on.

  minmax  (x - min) / (max - min): the seed's choice; fine for clean, simulated data.
  zscale  IRAF's zscale limits (astropy ZScaleInterval), clipped to [0, 1]: the display
          range an astronomer looks at; saturates bright cores, keeps faint outskirts.
  asinh   sigma-clipped background and noise (astropy sigma_clipped_stats): the range from
          median - 3 sigma to the 99.9th percentile, clipped, then an asinh stretch
          (astropy AsinhStretch) that is linear near the noise and logarithmic for bright
          sources: real dynamic range without losing the faint edges that define a mask.
  noise   background-subtracted and in units of the background noise, then asinh-stretched:
          asinh((x - sky) / sigma) / asinh(1e6). sky and sigma are medians over 128-pixel runs
          of the field (median and MAD of each run), so a gentle sky gradient or a few sources
          do not inflate sigma (a frame mostly covered by sources, or a steep gradient along
          its rows, does). Unlike the others it does not depend on the brightest pixels
          or on the field's size: a 1.5-sigma isophote maps to the same value in a 128-pixel
          training image and in a 10k-pixel survey frame, which is what lets a model trained
          on a simulated sky find sources in real frames (data.sky: realistic). Not clipped:
          the noise goes below 0 and a saturated star above 1.
Invalid pixels (NaN, inf, bad-pixel mask) are excluded from the statistics and set to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from astroseg.errors import DataError

METHODS = ("minmax", "zscale", "asinh", "noise")
ASINH_A = 0.1            # AsinhStretch's `a`: where the stretch turns from linear to logarithmic
MAX_SAMPLE = 2_000_000   # pixels used for robust statistics of a big field
_EPS = 1e-6              # keeps a constant field finite; the seed's min-max used the same
NOISE_TOP = 1e6          # noise: the S/N per pixel mapped to 1
NOISE_RUN = 128          # noise: pixels per run whose median and MAD give the local sky and sigma


@dataclass(frozen=True)
class Normalization:
    """A fitted normalisation: `apply` maps raw pixels of its field to [0, 1] (`noise`: to
    asinh of their S/N, unclipped; `lo` is the sky and `hi - lo` the noise sigma)."""
    method: str
    lo: float
    hi: float

    def apply(self, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 copy of `x`; pixels where `valid` is false (or non-finite) are 0."""
        span = self.hi - self.lo
        # noise: sigma itself, whatever the units (1e-19 in erg/s/cm2/A would drown in _EPS).
        span = (span if span > 0 else 1.0) if self.method == "noise" else span + _EPS
        y = (np.asarray(x, dtype=np.float32) - np.float32(self.lo)) / np.float32(span)
        if self.method == "noise":
            np.arcsinh(y, out=y)
            y *= np.float32(1 / np.arcsinh(NOISE_TOP))
        elif self.method != "minmax":
            np.clip(y, 0.0, 1.0, out=y)
        if self.method == "asinh":
            from astropy.visualization import AsinhStretch
            y = AsinhStretch(a=ASINH_A)(y, clip=True, out=y).astype(np.float32, copy=False)
        bad = ~np.isfinite(y) if valid is None else ~(valid.astype(bool) & np.isfinite(y))
        y[bad] = 0.0
        return y

    def as_dict(self) -> dict[str, float | str]:
        """JSON-able form, stored in dataset files, checkpoints and FITS headers."""
        return asdict(self)


def check_method(method: str, where: str) -> str:
    """Return `method` if known, else raise naming `where` it came from."""
    if method not in METHODS:
        raise DataError(f"{where}: normalisation '{method}' is not one of {', '.join(METHODS)}")
    return method


def fit(method: str, lo: float, hi: float, sample: np.ndarray) -> Normalization:
    """Fit `method` from a field's exact valid min/max and a sample of its valid pixels."""
    check_method(method, "normalize")
    if method == "minmax":
        return Normalization(method, float(lo), float(hi))
    if method == "zscale":
        from astropy.visualization import ZScaleInterval
        zlo, zhi = ZScaleInterval().get_limits(sample)
        return Normalization(method, float(zlo), float(zhi))
    if method == "noise":
        sky, sigma = sky_and_noise(sample)
        return Normalization(method, sky, sky + sigma)
    from astropy.stats import sigma_clipped_stats
    _, median, std = sigma_clipped_stats(sample, sigma=3.0, maxiters=5)
    top = float(np.percentile(sample, 99.9))
    return Normalization(method, float(median - 3 * std), max(top, float(median + 3 * std)))


def sky_and_noise(sample: np.ndarray) -> tuple[float, float]:
    """Sky level and per-pixel noise sigma of valid pixels in raster order: the medians of the
    median and of 1.4826 x MAD over runs of NOISE_RUN pixels (sources and gradients are local,
    so most runs are sky). Exact zeros in continuous data (padding: over 1% of the pixels) and
    runs without any spread (a saturated row) are left out; the clipped std is used if no run
    has spread."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    if not x.size:
        return math.nan, math.nan     # fit_field names the field in its error
    step = _quantum(x)
    if not step:
        # Continuous values repeat by chance almost never: many exact zeros are the padding
        # of a mosaic or of a drizzled frame's uncovered area, not sky.
        zero = x == 0
        if 100 * zero.sum() > x.size and not zero.all():
            x = x[~zero]
    flat = np.ptp(_runs(x), axis=1) == 0     # constant before any dither: padding, saturation
    if step:
        # Quantised values (integer counts, or BSCALE steps): the median of a run is a
        # multiple of the step, up to half a step off the sky, which is several sigma of a
        # low-noise frame. A fixed dither of +-step/2 undoes that.
        x = x + step * (np.random.default_rng(0).random(x.size) - 0.5)
    runs = _runs(x)
    med = np.median(runs, axis=1)
    mad = 1.4826 * np.median(np.abs(runs - med[:, None]), axis=1)
    spread = (mad > 0) & ~flat
    if spread.any():
        return float(np.median(med[spread])), float(np.median(mad[spread]))
    from astropy.stats import sigma_clipped_stats
    _, sky, sigma = sigma_clipped_stats(x, sigma=3.0, maxiters=5)
    return float(sky), float(sigma)


def _runs(x: np.ndarray) -> np.ndarray:
    """`x` as rows of NOISE_RUN consecutive pixels (the tail dropped), or one row if shorter."""
    return x[:len(x) // NOISE_RUN * NOISE_RUN].reshape(-1, NOISE_RUN) if len(x) >= NOISE_RUN \
        else x[None]


def _quantum(x: np.ndarray) -> float:
    """The step of values that are all multiples of one (integers: 1; BSCALE = 2: 2), when it
    is coarse next to their spread; 0 for finely sampled floats."""
    values = np.unique(x)
    if values.size < 2:
        return 0.0
    step = float(np.diff(values).min())
    units = (values - values[0]) / step
    if not np.allclose(units, np.round(units), rtol=0, atol=1e-6):
        return 0.0
    q25, q75 = np.percentile(x, [25, 75])
    # float32 data within one binade are multiples of its ulp: too fine to matter.
    return step if step >= 1e-4 * (q75 - q25) else 0.0


def fit_field(method: str, read_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
              height: int, width: int, where: str, block: int = 256) -> Normalization:
    """Fit a normalisation by streaming a field's rows: exact min/max, a row-strided sample.

    `read_rows(y0, y1)` returns float32 pixels and a valid mask for rows [y0, y1), so a big
    FITS image is scanned without holding it in memory.
    """
    step = max(1, int(np.ceil(height * width / MAX_SAMPLE)))
    lo, hi, parts, spare = np.inf, -np.inf, [], []
    for y0 in range(0, height, block):
        rows, valid = read_rows(y0, min(height, y0 + block))
        good = rows[valid]
        if good.size:
            lo, hi = min(lo, float(good.min())), max(hi, float(good.max()))
        keep = (np.arange(y0, y0 + len(rows)) % step) == 0
        parts.append(rows[keep][valid[keep]])
        spare.append(good[::step])   # for a field whose valid pixels miss every sampled row
    if not np.isfinite(lo):
        raise DataError(f"{where}: no valid pixels (all NaN, infinite or flagged bad)")
    sample = np.concatenate(parts)
    norm = fit(method, lo, hi, sample if sample.size else np.concatenate(spare))
    if not (np.isfinite(norm.lo) and np.isfinite(norm.hi)):
        raise DataError(f"{where}: the {method} normalisation of its valid pixels is not finite "
                        f"({norm.lo}, {norm.hi})")
    return norm


def normalize_array(image: np.ndarray, valid: np.ndarray, method: str, where: str
                    ) -> tuple[np.ndarray, Normalization]:
    """Fit on an in-memory field and apply: the normalised image and the fitted parameters."""
    norm = fit_field(method, lambda a, b: (image[a:b], valid[a:b]), *image.shape, where)
    return norm.apply(image, valid), norm
