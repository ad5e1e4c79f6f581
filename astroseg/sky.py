"""Example survey fields as FITS files: what `data.source: fits` is tested and demonstrated on.

Each field is a wide synthetic sky (the same galaxy model as the synthetic source, scaled up)
written the way real archives write images, so the reader's handling of them is exercised:
  - a TAN (gnomonic) WCS around a field centre, 0.2"/pixel;
  - 16-bit integers with BSCALE/BZERO and BLANK for missing pixels (a chip gap and a masked
    bright star become NaN on reading);
  - every other field keeps its image in a 'SCI' extension behind an empty primary HDU;
  - a sky background and gain, so raw values are counts, not [0, 1].
Masks are 0/1 uint8 FITS images of the same name with the same WCS.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from astroseg.atomic import atomic_output
from astroseg.params import DataParams, GalaxyParams
from astroseg.synthetic import render

SKY_LEVEL = 200.0      # counts
GAIN = 1000.0          # counts per unit of the synthetic flux
BSCALE, BZERO, BLANK = 0.25, 4000.0, -32768
PIXEL_SCALE = 0.2 / 3600  # degrees
BLOCK = 512


def field_wcs(index: int, size: int, rng: np.random.Generator) -> WCS:
    """A TAN WCS centred on a random sky position."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    w.wcs.crval = [float(rng.uniform(0, 360)), float(rng.uniform(-60, 60))]
    w.wcs.cdelt = [-PIXEL_SCALE, PIXEL_SCALE]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w


def _missing(size: int, rng: np.random.Generator) -> np.ndarray:
    """Pixels with no data: a chip gap (a full-height stripe) and a masked bright star."""
    yy, xx = np.ogrid[0:size, 0:size]
    gap_x = int(rng.integers(size // 4, 3 * size // 4))
    gap = (xx >= gap_x) & (xx < gap_x + max(2, size // 64))
    cy, cx = rng.uniform(0, size, 2)
    star = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 20) ** 2
    return gap | star


def render_field(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw flux (counts, NaN where missing), 0/1 mask and the missing-pixel map of one field.

    The sky is rendered in blocks of at most BLOCK pixels (the renderer holds one array per
    galaxy), with the synthetic source's galaxy density per 128x128 pixels.
    """
    side = min(size, BLOCK)
    per_area = side * side / (128 * 128)
    g = GalaxyParams()
    galaxies = dataclasses.replace(g, count=(round(g.count[0] * per_area), round(g.count[1] * per_area)))
    p = dataclasses.replace(DataParams(), seed=seed, height=side, width=side, galaxies=galaxies)
    n = -(-size // side)
    flux = np.empty((n * side, n * side), np.float32)
    masks = np.empty((n * side, n * side), np.uint8)
    for b in range(n * n):
        chunk = render(p, "train", range(index * 10_000 + b, index * 10_000 + b + 1), raw=True)
        y, x = divmod(b, n)
        flux[y * side:(y + 1) * side, x * side:(x + 1) * side] = chunk.images[0]
        masks[y * side:(y + 1) * side, x * side:(x + 1) * side] = chunk.masks[0]
    counts = SKY_LEVEL + GAIN * flux[:size, :size]
    missing = _missing(size, np.random.default_rng([seed, index, 1]))
    counts[missing] = np.nan
    return counts, masks[:size, :size] * ~missing, missing


def _hdus(data: np.ndarray, header: fits.Header, in_extension: bool) -> fits.HDUList:
    if in_extension:
        return fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header, name="SCI")])
    return fits.HDUList([fits.PrimaryHDU(data, header)])


def write_sky(outdir: str | os.PathLike, n_fields: int = 6, size: int = 512,
              seed: int = 0) -> list[Path]:
    """Write `n_fields` example fields to OUTDIR/images and OUTDIR/masks; return image paths."""
    outdir = Path(outdir)
    paths = []
    for i in range(n_fields):
        counts, mask, missing = render_field(i, size, seed)
        rng = np.random.default_rng([seed, i, 2])
        header = field_wcs(i, size, rng).to_header()
        header["BUNIT"] = ("count", "detector counts")
        header["OBJECT"] = f"astroseg example field {i}"
        header["ORIGIN"] = "astroseg make-sky"
        # Integer storage with scaling, as many archives do: NaN goes to BLANK.
        stored = np.where(missing, BLANK, np.round((np.nan_to_num(counts) - BZERO) / BSCALE))
        image_hdus = _hdus(stored.astype(np.int16), header, in_extension=i % 2 == 1)
        target = image_hdus[-1].header
        target["BSCALE"], target["BZERO"], target["BLANK"] = BSCALE, BZERO, BLANK
        name = f"field_{i:02d}.fits"
        for sub, hdul in (("images", image_hdus), ("masks", _hdus(mask.astype(np.uint8), header, False))):
            path = outdir / sub / name
            with atomic_output(path) as tmp:
                hdul.writeto(tmp)
        paths.append(outdir / "images" / name)
    return paths
