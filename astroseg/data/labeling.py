"""Masks for images without any: photutils segmentation maps, SExtractor-style.

Per image, from its valid pixels only (NaN, BLANK and flagged pixels never count, and are never
labelled):
  - background and noise: `photutils.background.Background2D` in `box` x `box` boxes
    (SExtractorBackground, sigma-clipped std), median-filtered over 3 x 3 boxes, so a sky that
    varies across a frame is followed; an image under two boxes on a side falls back to global
    3-sigma-clipped statistics;
  - the background-subtracted image is smoothed with a Gaussian of `fwhm` pixels;
  - `photutils.segmentation.detect_sources` keeps the 8-connected regions of at least `npixels`
    pixels above `nsigma` x the local background RMS (SExtractor's DETECT_THRESH 1.5 and
    DETECT_MINAREA 5 are the defaults), optionally deblended.
The result is an int32 segmentation map (0 = sky, 1..N = sources) written as OUTDIR/<stem>.fits,
so `data.fits.masks: OUTDIR/*.fits` pairs it with its image by name. These are photutils'
labels, not the true extent of the sources: a model trained on them learns photutils.
`astroseg label` (astroseg/cli.py) runs `label_file` on each of its inputs.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from photutils.background import Background2D
from photutils.segmentation import deblend_sources, detect_sources, make_2dgaussian_kernel
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage

from astroseg.atomic import atomic_output
from astroseg.data.fits_io import open_image, stem
from astroseg.errors import DataError, ParamsError

# A box may have this much of its area masked (invalid pixels, clipped sources, edge padding)
# and still give a background value. photutils' default, 10, drops every box a chip gap or a
# bright galaxy crosses: on an example field with a sky sloping by 28 sigma, the labels then
# agreed with the flat field's at IoU 0.70, against 0.85 with 50.
EXCLUDE_PERCENTILE = 50.0


@dataclass(frozen=True)
class LabelSettings:
    """How `astroseg label` detects sources; the defaults are SExtractor's."""
    nsigma: float = 1.5      # DETECT_THRESH: x the background RMS, on the smoothed image
    npixels: int = 5         # DETECT_MINAREA
    fwhm: float = 3.0        # Gaussian smoothing kernel (pixels), SExtractor's gauss_3.0 filters
                             # (its default.conv is a 3x3 kernel of FWHM 2)
    box: int = 64            # BACK_SIZE (pixels)
    deblend: bool = False
    hdu: int | str | tuple[str, int] | None = None            # image HDU; None: the first image
    bad_pixel_hdu: int | str | tuple[str, int] | None = None  # nonzero = bad, e.g. DQ

    def check(self) -> None:
        """Raise ParamsError naming the first option out of range."""
        # `not x > 0` also refuses NaN, which every comparison fails.
        if not self.nsigma > 0 or math.isinf(self.nsigma):
            raise ParamsError(f"--nsigma = {self.nsigma}: expected a number > 0")
        if not self.npixels >= 1:
            raise ParamsError(f"--npixels = {self.npixels}: expected >= 1")
        if not self.fwhm > 0 or math.isinf(self.fwhm):
            raise ParamsError(f"--fwhm = {self.fwhm}: expected a number > 0 (pixels)")
        if not self.box >= 4:
            raise ParamsError(f"--box = {self.box}: expected >= 4 (pixels)")


@dataclass(frozen=True)
class Labels:
    """One image's segmentation map and what it holds."""
    labels: np.ndarray        # (H, W) int32, 0 = sky, 1..n_sources
    n_sources: int
    source_fraction: float    # of the valid pixels, those labelled
    background: str           # "2d" (Background2D) or "global" (one level and RMS)


def background(image: np.ndarray, valid: np.ndarray, box: int
               ) -> tuple[np.ndarray | float, np.ndarray | float, str]:
    """(background, RMS, "2d" | "global") of the valid pixels: maps, or scalars for a small
    image or one Background2D cannot grid."""
    if min(image.shape) >= 2 * box:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                # NaN is masked anyway; zeros keep photutils from warning about it.
                bkg = Background2D(np.where(valid, image, 0), box, mask=~valid, filter_size=3,
                                   exclude_percentile=EXCLUDE_PERCENTILE)
            return bkg.background, bkg.background_rms, "2d"
        except ValueError:   # too few usable pixels in every box: one level will have to do
            pass
    _, median, std = sigma_clipped_stats(image, mask=~valid, sigma=3.0)
    return float(median), float(std), "global"


def smooth(data: np.ndarray, valid: np.ndarray, fwhm: float) -> np.ndarray:
    """Gaussian-smoothed background-subtracted image; invalid pixels count as sky."""
    # The kernel of astroseg.scoring.baseline.smoothed; that function also subtracts a global
    # clipped median, which would undo the local background here.
    data = np.where(valid, data, 0).astype(np.float32, copy=False)
    size = 2 * math.ceil(fwhm) + 1
    kernel = make_2dgaussian_kernel(fwhm, size=size).array.astype(np.float32)
    return ndimage.convolve(data, kernel, mode="nearest")


def detect(data: np.ndarray, threshold: float | np.ndarray, npixels: int, deblend: bool,
           usable: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int32 labels (0 = sky) of the 8-connected regions of at least `npixels` pixels of
    `data` above `threshold` (a number, or a map per pixel), on `usable` pixels only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)   # an empty sky is an answer
        segm = detect_sources(data, threshold, npixels,
                              mask=None if usable is None else ~np.asarray(usable, dtype=bool))
    if segm is None:
        return np.zeros(data.shape, dtype=np.int32)
    if deblend:
        segm = deblend_sources(data, segm, npixels, progress_bar=False)
    return segm.data.astype(np.int32, copy=False)


def label_image(image: np.ndarray, valid: np.ndarray, settings: LabelSettings,
                what: str = "image") -> Labels:
    """Segment one image (float, `valid` bool) with photutils; `what` names it in errors."""
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise DataError(f"{what}: no valid pixel (all NaN, BLANK or flagged bad): nothing to "
                        "label")
    lo, hi = np.min(image, where=valid, initial=np.inf), np.max(image, where=valid,
                                                                initial=-np.inf)
    if lo == hi:
        raise DataError(f"{what}: constant image (every valid pixel is {lo:g}): no noise to "
                        "set a detection threshold by")
    bkg, rms, how = background(image, valid, settings.box)
    data = smooth(image - bkg, valid, settings.fwhm)
    rms = np.broadcast_to(np.asarray(rms, dtype=np.float32), image.shape)
    usable = valid & (rms > 0) & np.isfinite(rms)
    if not usable.any():
        raise DataError(f"{what}: the background RMS is 0 everywhere (a nearly constant "
                        "image): no noise to set a detection threshold by")
    # nsigma x the RMS map, pixel by pixel, as SExtractor's DETECT_THRESH; deblended on flux.
    labels = detect(data, settings.nsigma * rms, settings.npixels, settings.deblend, usable)
    n = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    fraction = float(np.count_nonzero(labels[valid])) / n_valid
    return Labels(labels, n, fraction, how)


def wcs_header(header: fits.Header | None) -> fits.Header:
    """The celestial WCS cards of an image header (empty if it has none astropy can read)."""
    if header is None:
        return fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)   # astropy's fixes of old WCS dialects
        try:
            wcs = WCS(header)
        # An unreadable WCS: the labels are still pixel for pixel. astropy raises many types on
        # a broken one: ValueError, KeyError, AttributeError (a CTYPE that is a number),
        # MemoryError (an absurd SIP order), ...
        except Exception:
            return fits.Header()
        if not wcs.has_celestial:
            return fits.Header()
        # relax: SIP distortion cards go along, so sky positions match the image's exactly.
        return wcs.celestial.to_header(relax=True)


def mask_header(image_header: fits.Header | None, settings: LabelSettings, result: Labels,
                image_path: str | os.PathLike) -> fits.Header:
    """The mask's header: the image's celestial WCS and the settings it was made with."""
    from photutils import __version__ as photutils_version

    from astroseg import __version__

    header = wcs_header(image_header)
    header["LBNSIGMA"] = (settings.nsigma, "threshold, x background RMS (smoothed image)")
    header["LBNPIX"] = (settings.npixels, "minimum source area (pixels)")
    header["LBFWHM"] = (settings.fwhm, "Gaussian smoothing FWHM (pixels)")
    header["LBBOX"] = (settings.box, "background box (pixels)")
    header["LBBKG"] = (result.background.upper(), "background: 2D map or GLOBAL level")
    header["LBDEBL"] = (settings.deblend, "sources deblended")
    header["LBNSRC"] = (result.n_sources, "number of sources (labels 1..N)")
    header["LBIMAGE"] = (Path(image_path).name, "image labelled")
    header["HISTORY"] = (f"Segmentation map made by astroseg {__version__} label with "
                         f"photutils {photutils_version}: 0 = sky, 1..N = sources")
    return header


def _file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following links: equal for every path to it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def plan(inputs: list[Path], outdir: Path) -> list[tuple[Path, Path]]:
    """(image, OUTDIR/<stem>.fits) pairs; refuse two images of one name and a mask path that
    is one of the inputs (by any path or link)."""
    if outdir.exists() and not outdir.is_dir():
        raise ParamsError(f"-o {outdir}: a file; -o names the directory the masks go to")
    pairs, taken = [], {}
    for path in inputs:
        out = outdir / f"{stem(path)}.fits"
        if out.name in taken:
            raise ParamsError(f"{taken[out.name]} and {path} would both be labelled to {out}; "
                              "rename one, or label them into different directories")
        taken[out.name] = path
        pairs.append((path, out))
    protected = {_file_id(p): p for p in inputs if _file_id(p)}
    for path, out in pairs:
        victim = protected.get(_file_id(out)) if _file_id(out) else None
        if victim:
            raise ParamsError(f"{out}: the mask of {path} would replace the input {victim} "
                              "(the same file); astroseg never writes over an input: choose "
                              "another -o directory")
    return pairs


def label_file(path: str | os.PathLike, out: str | os.PathLike, settings: LabelSettings,
               overwrite: bool = False) -> Labels:
    """Label one image file into the FITS segmentation map `out`, written atomically."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (the mask of {path}); give --overwrite to "
                        "replace it")
    with open_image(path, settings.hdu, settings.bad_pixel_hdu) as src:
        image, valid = src.read()
        header = src.header
    result = label_image(image, valid, settings, str(path))
    hdu = fits.PrimaryHDU(result.labels, mask_header(header, settings, result, path))
    with atomic_output(out) as tmp:
        hdu.writeto(tmp)
    return result
