"""Example survey fields as FITS files: what `data.source: fits` is tested and demonstrated on.

Each field is a wide synthetic sky (the synthetic source's galaxy model and density, scaled up)
written the way real archives write images, so the reader's handling of them is exercised:
  - a TAN (gnomonic) WCS around a field centre, 0.2"/pixel;
  - 16-bit integers with BSCALE/BZERO and BLANK for missing pixels (a chip gap and a masked
    bright star become NaN on reading);
  - every other field keeps its image in a 'SCI' extension behind an empty primary HDU;
  - a sky background and gain, so raw values are counts, not [0, 1].
Masks are 0/1 uint8 FITS images of the same name with the same WCS.

`--sky realistic` writes fields of the realistic sky instead (astroseg.data.realistic): float32
counts with the instrument (gain, read noise, sky, PSF) in the header, and class masks.

Galaxies are drawn per BLOCK x BLOCK block (so the draws of a big field stay bounded) but each
is rendered whole on the field, in a box around its centre, so sources cross block edges
without a seam. A spiral's ridges fade out by SPIRAL_RADIUS pixels from its centre (in the
synthetic source they fill the 128-pixel image; on a wide field they must end somewhere).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from astroseg.atomic import atomic_output
from astroseg.errors import DataError
from astroseg.data.fits_io import PNG_SUFFIXES, is_fits
from astroseg.data.realistic import render_scene
from astroseg.params import DataParams, RealisticParams

SKY_LEVEL = 200.0      # counts
GAIN = 1000.0          # counts per unit of the synthetic flux
BSCALE, BZERO, BLANK = 0.25, 4000.0, -32768
PIXEL_SCALE = 0.2 / 3600  # degrees
BLOCK = 512
SPIRAL_RADIUS = 64     # pixels: half the synthetic source's image side
FIELD_NAME = re.compile(r"field_\d+\.fits")


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


def _draw_block(rng: np.random.Generator, y0: int, x0: int, h: int, w: int,
                p: DataParams) -> dict[str, np.ndarray]:
    """Galaxies of one block: centres anywhere in it, the synthetic source's density."""
    g, per_area = p.galaxies, h * w / (128 * 128)
    n = int(rng.integers(round(g.count[0] * per_area), round(g.count[1] * per_area),
                         endpoint=True))
    return {"cx": x0 + rng.uniform(0, w, n), "cy": y0 + rng.uniform(0, h, n),
            "a": rng.uniform(*g.a, n), "b": rng.uniform(*g.b, n),
            "theta": rng.uniform(0.0, np.pi, n), "peak": rng.uniform(*g.peak, n),
            "bar": rng.random(n) < p.bar.probability, "bar_length": rng.uniform(*p.bar.length, n),
            "bar_width": rng.uniform(*p.bar.width, n),
            "spiral": rng.random(n) < p.spiral.probability,
            "turns": rng.uniform(*p.spiral.turns, n)}


def _add_galaxy(flux: np.ndarray, mask: np.ndarray, d: dict[str, float], p: DataParams) -> None:
    """Add one galaxy (profile, bar, spiral) to `flux` and its mask, in a box around it."""
    f32 = np.float32
    extent = max(5 * max(d["a"], d["b"]), d["bar_length"] + 4 * d["bar_width"])
    half = int(np.ceil(max(extent, SPIRAL_RADIUS if d["spiral"] else 0)))
    cy, cx = int(d["cy"]), int(d["cx"])
    ys = slice(max(0, cy - half), min(flux.shape[0], cy + half + 1))
    xs = slice(max(0, cx - half), min(flux.shape[1], cx + half + 1))
    yy, xx = np.mgrid[ys, xs].astype(f32)
    x0, y0 = xx - f32(d["cx"]), yy - f32(d["cy"])
    ct, st = f32(np.cos(d["theta"])), f32(np.sin(d["theta"]))
    xr, yr = ct * x0 + st * y0, ct * y0 - st * x0
    profile = f32(d["peak"]) * np.exp(-0.5 * ((xr / f32(d["a"])) ** 2 + (yr / f32(d["b"])) ** 2))
    box = profile
    mask[ys, xs] |= profile > p.galaxies.mask_level * d["peak"]
    if d["bar"]:
        bar = np.exp(-0.5 * (yr / f32(d["bar_width"])) ** 2) * (np.abs(xr) < d["bar_length"])
        box = box + f32(p.bar.amplitude) * bar
    if d["spiral"]:
        r = np.hypot(x0, y0) + f32(1e-6)
        ridge = np.sin(f32(0.5 * d["turns"]) * np.log1p(r) + p.spiral.arms * np.arctan2(y0, x0))
        fade = np.clip((SPIRAL_RADIUS - r) / (SPIRAL_RADIUS / 4), 0, 1)   # 1 inside 3/4 radius
        box = box + f32(p.spiral.amplitude) * (ridge > p.spiral.ridge_level) * fade
    flux[ys, xs] += box


def render_field(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw flux (counts, NaN where missing), 0/1 mask and the missing-pixel map of one field."""
    p = DataParams()
    flux = np.empty((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    galaxies = []
    for y0 in range(0, size, BLOCK):
        for x0 in range(0, size, BLOCK):
            rng = np.random.default_rng([seed, index, 3, y0, x0])
            h, w = min(BLOCK, size - y0), min(BLOCK, size - x0)
            noise = p.noise.gaussian_sigma * rng.standard_normal((h, w), dtype=np.float32)
            noise += p.noise.poisson_scale * rng.poisson(p.noise.poisson_rate, (h, w))
            flux[y0:y0 + h, x0:x0 + w] = noise
            galaxies.append(_draw_block(rng, y0, x0, h, w, p))
    for block in galaxies:
        for i in range(len(block["cx"])):
            _add_galaxy(flux, mask, {k: v[i] for k, v in block.items()}, p)
    counts = SKY_LEVEL + GAIN * flux
    missing = _missing(size, np.random.default_rng([seed, index, 1]))
    counts[missing] = np.nan
    return counts, (mask & ~missing).astype(np.uint8), missing


def _hdus(data: np.ndarray, header: fits.Header, in_extension: bool) -> fits.HDUList:
    if in_extension:
        return fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header, name="SCI")])
    return fits.HDUList([fits.PrimaryHDU(data, header)])


def _clear_earlier_fields(outdir: Path, overwrite: bool) -> None:
    """Refuse to add fields beside earlier ones (stale fields would be trained on), or, with
    `overwrite`, delete those make-sky wrote; never delete images it did not write."""
    found = sorted(f for sub in ("images", "masks") for f in (outdir / sub).glob("*")
                   if is_fits(f) or f.name.lower().endswith(PNG_SUFFIXES))
    if not found:
        return
    foreign = [f for f in found if not FIELD_NAME.fullmatch(f.name)]
    if foreign:
        raise DataError(f"{outdir}: holds images make-sky did not write ({foreign[0]}); write the "
                        "example fields to another directory")
    if not overwrite:
        raise DataError(f"{outdir}: already holds {len(found)} make-sky files in images/ and "
                        "masks/; give --overwrite to replace them, or choose another directory")
    for f in found:
        f.unlink()


def _write_realistic(outdir: Path, i: int, size: int, seed: int, r: RealisticParams) -> Path:
    """One field of the realistic sky (astroseg.data.realistic): float32 counts with a WCS and
    the instrument in the header; its mask holds the morphology classes (0 sky, 1 galaxy,
    2 star, 3 artifact), so `> 0` is the binary truth."""
    scene = render_scene(r, (size, size), np.random.default_rng([seed, i, 4]))
    header = field_wcs(i, size, np.random.default_rng([seed, i, 2])).to_header()
    header["BUNIT"] = ("count", "detector counts (ADU)")
    header["OBJECT"] = f"astroseg realistic field {i}"
    header["ORIGIN"] = "astroseg make-sky --sky realistic"
    header["GAIN"] = (round(scene.gain, 4), "electrons per count")
    header["RDNOISE"] = (round(scene.read_noise, 3), "read noise (electrons)")
    header["SKYLEVEL"] = (round(scene.sky, 3), "sky (electrons per pixel)")
    header["PSFFWHM"] = (round(scene.psf.fwhm, 4), "PSF FWHM (pixels)")
    header["PSFBETA"] = (round(scene.psf.beta, 4), "Moffat beta (0 = Gaussian PSF)")
    header["SATURATE"] = (round(scene.saturation, 3), "saturation level (counts)")
    name = f"field_{i:02d}.fits"
    mask_header = header.copy()
    for key in ("BUNIT", "GAIN", "RDNOISE", "SKYLEVEL", "SATURATE"):   # counts, not classes
        del mask_header[key]
    mask_header["CLASSES"] = ("0 sky, 1 galaxy, 2 star, 3 artifact", "mask values")
    for sub, hdul in (("images", _hdus(scene.counts, header, False)),
                      ("masks", _hdus(scene.classes, mask_header, False))):
        with atomic_output(outdir / sub / name) as tmp:
            hdul.writeto(tmp)
    return outdir / "images" / name


def write_sky(outdir: str | os.PathLike, n_fields: int = 6, size: int = 512,
              seed: int = 0, overwrite: bool = False,
              realistic: RealisticParams | None = None) -> list[Path]:
    """Write `n_fields` example fields to OUTDIR/images and OUTDIR/masks; return image paths.

    `realistic`: fields of the realistic sky with those params, else of the seed's sky.
    Refuses a directory with earlier fields unless `overwrite` (which deletes them first).
    """
    outdir = Path(outdir)
    _clear_earlier_fields(outdir, overwrite)
    if realistic is not None:
        return [_write_realistic(outdir, i, size, seed, realistic) for i in range(n_fields)]
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
        mask_hdus = _hdus(mask, header, False)
        for sub, hdul in (("images", image_hdus), ("masks", mask_hdus)):
            path = outdir / sub / name
            with atomic_output(path) as tmp:
                hdul.writeto(tmp)
        paths.append(outdir / "images" / name)
    return paths
