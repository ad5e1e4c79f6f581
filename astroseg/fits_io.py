"""Reading survey images and masks: FITS (via astropy) and PNG, as native float32 + valid mask.

What real files bring and how it is handled:
  - BSCALE/BZERO: astropy applies them when the data is read; integer BLANK pixels become NaN
    (scaled) or are compared against BLANK (unscaled), and either way are marked invalid.
  - Big-endian on disk (all FITS): converted to native float32, never handed on as '>f4'.
  - NaN/inf pixels: valid = False, so nothing non-finite reaches a model.
  - Primary vs extension HDUs: `hdu` picks one by index or EXTNAME; by default the first HDU
    with a 2-D image (so a file with an empty primary and a SCI extension just works).
  - 3-D cubes with a single plane (NAXIS3 = 1) are read as that plane.
Big images are read in row blocks through `ImageSource.rows`, which uses astropy's section
access on a memory-mapped file, so a survey image need not fit in memory.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from astroseg.errors import DataError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")
PNG_SUFFIXES = (".png",)


def is_fits(path: str | os.PathLike) -> bool:
    """True if the file name has a FITS suffix."""
    return str(path).lower().endswith(FITS_SUFFIXES)


def parse_hdu(value: str | None) -> int | str | None:
    """An HDU as written in params or on the command line: "" / None = auto, digits = index."""
    return None if not value else int(value) if value.isdigit() else value


def stem(path: str | os.PathLike) -> str:
    """File name without its image suffix: how images, masks and bad-pixel maps are paired."""
    name = Path(path).name
    for suffix in FITS_SUFFIXES + PNG_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _describe(hdul: fits.HDUList) -> str:
    parts = []
    for i, h in enumerate(hdul):
        shape = "no data" if h.data is None else "x".join(map(str, h.data.shape))
        parts.append(f"{i}:{h.name or '?'} {type(h).__name__} ({shape})")
    return "; ".join(parts)


def _image_shape(hdu: fits.hdu.base.ExtensionHDU) -> tuple[int, ...] | None:
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return None
    shape = hdu.shape
    if len(shape) < 2 or 0 in shape:
        return None
    return shape


def _select_hdu(hdul: fits.HDUList, hdu: int | str | None, path: Path):
    if hdu is None or hdu == "":
        for h in hdul:
            if _image_shape(h) is not None:
                return h
        raise DataError(f"{path}: no image HDU (HDUs: {_describe(hdul)})")
    try:
        h = hdul[hdu]
    except (KeyError, IndexError):
        raise DataError(f"{path}: no HDU {hdu!r} (HDUs: {_describe(hdul)})") from None
    if _image_shape(h) is None:
        raise DataError(f"{path}: HDU {hdu!r} holds no 2-D image (HDUs: {_describe(hdul)})")
    return h


@dataclass
class ImageSource:
    """An open image: its 2-D shape, header and row-block reader. Close it (or use `with`)."""
    path: Path
    shape: tuple[int, int]
    header: fits.Header | None
    _hdul: fits.HDUList | None
    _hdu: object | None
    _array: np.ndarray | None = None   # PNG pixels (already in memory)

    def rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Native float32 pixels of rows [y0, y1) and their valid mask (finite, not BLANK)."""
        if self._array is not None:
            data = self._array[y0:y1]
        else:
            lead = (0,) * (len(self._hdu.shape) - 2)   # single-plane cube: plane 0
            try:
                data = self._hdu.section[lead + (slice(y0, y1), slice(None))]
            except (OSError, ValueError, TypeError) as exc:
                raise DataError(f"{self.path}: cannot read rows {y0}-{y1} of HDU "
                                f"{self._hdu.name}: truncated or corrupt? ({exc})") from None
            blank = self._hdu.header.get("BLANK")
            if blank is not None and np.issubdtype(data.dtype, np.integer):
                data = np.where(data == blank, np.nan, data)
        data = np.asarray(data, dtype=np.float32)   # native byte order, a copy we own
        return data, np.isfinite(data)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole image and its valid mask."""
        return self.rows(0, self.shape[0])

    def close(self) -> None:
        """Close the underlying FITS file."""
        if self._hdul is not None:
            self._hdul.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_image(path: str | os.PathLike, hdu: int | str | None = None) -> ImageSource:
    """Open a FITS (HDU `hdu`, default the first image) or PNG image for reading."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if not is_fits(path):
        return _open_png(path)
    hdul = _open_fits(path, memmap=True)
    try:
        h = _select_hdu(hdul, hdu, path)
        if any(key in h.header for key in ("BSCALE", "BZERO", "BLANK")):
            # astropy cannot memory-map scaled data; section reads of the file still read only
            # the rows asked for.
            index = hdul.index(h)
            hdul.close()
            hdul = _open_fits(path, memmap=False)
            h = hdul[index]
        shape = h.shape
        if any(n != 1 for n in shape[:-2]):
            raise DataError(f"{path}: HDU {h.name} is a cube of shape {shape}; expected a 2-D "
                            "image or a single plane")
    except Exception:
        hdul.close()
        raise
    return ImageSource(path, tuple(shape[-2:]), h.header, hdul, h)


def _open_fits(path: Path, memmap: bool) -> fits.HDUList:
    # astropy drops an HDU it cannot parse (a truncated file) with only a warning: make it an
    # error, since reading on would silently use the wrong HDU or none.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VerifyWarning)
        try:
            hdul = fits.open(path, memmap=memmap, lazy_load_hdus=False)
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: not a readable FITS file ({exc})") from None
    problems = [w for w in caught if issubclass(w.category, VerifyWarning)
                and "Error validating header" in str(w.message)]
    if problems:
        hdul.close()
        detail = " ".join(str(problems[0].message).split())[:160]
        raise DataError(f"{path}: not a readable FITS file, truncated or corrupt? ({detail})")
    return hdul


def _open_png(path: Path) -> ImageSource:
    if not str(path).lower().endswith(PNG_SUFFIXES):
        raise DataError(f"{path}: unknown image type; expected FITS ({', '.join(FITS_SUFFIXES)}) "
                        "or PNG")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            mode = img.mode
            # 'F' keeps 16-bit grey levels; colour images become luminance.
            arr = np.asarray(img.convert("F") if mode in ("I", "I;16", "F", "L")
                             else img.convert("L").convert("F"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable PNG image ({exc})") from None
    return ImageSource(path, arr.shape, None, None, None, _array=arr)


def read_image(path: str | os.PathLike, hdu: int | str | None = None
               ) -> tuple[np.ndarray, np.ndarray, fits.Header | None]:
    """A whole image as native float32, its valid mask and (FITS) header."""
    with open_image(path, hdu) as src:
        data, valid = src.read()
        return data, valid, src.header


def read_mask(path: str | os.PathLike, hdu: int | str | None = None) -> np.ndarray:
    """A source mask as bool: a 0/1 image or a segmentation map (label > 0 is a source)."""
    data, valid, _ = read_image(path, hdu)
    return valid & (data > 0)
