"""Reading survey images and masks: FITS (via astropy) and PNG, as native float32 + valid mask.

What real files bring and how it is handled:
  - BSCALE/BZERO: pixels are read as stored and scaled here, so BLANK is compared with the
    stored integers, as the FITS standard defines it, for every layout: signed, unsigned
    (BZERO = 2^(n-1), where astropy would hand back unsigned values that no longer match
    BLANK), scaled, and row strips of big files. BLANK pixels become NaN and invalid.
  - Big-endian on disk (all FITS): converted to native float32, never handed on as '>f4'.
  - NaN/inf pixels: valid = False, so nothing non-finite reaches a model.
  - Primary vs extension HDUs: `hdu` picks one by index or EXTNAME; by default the first HDU
    with a 2-D image (so a file with an empty primary and a SCI extension just works). An
    extension with INHERIT = T gets the primary header's cards it does not set itself.
  - 3-D cubes with a single plane (NAXIS3 = 1) are read as that plane.
  - Bad pixels: `open_image` also takes a bad-pixel HDU of the same file (e.g. DQ) and/or a
    bad-pixel map file, nonzero = bad; flagged pixels are invalid in every row block. Dataset
    preparation and prediction both read through it, so they cannot disagree on validity.
  - Tile-compressed images (RICE_1, GZIP_1/2, HCOMPRESS_1, PLIO_1) are read through the same
    section access; corrupt tile data, like a truncated file, is a DataError naming the file.
    Where the compressed HDU has a DATASUM, its data are checked against it on opening: damaged
    tiles often decompress without any error, to wrong pixels.
  - Damaged or hostile headers are refused before any pixel is read (astroseg.data.fits_checks).
    `walk_hdus` reads the sizing cards of every HDU before astropy parses the file: data
    declared past the end of the file (a truncated copy, or NAXISn of 100000 over a few
    blocks: nothing is allocated for them), NAXIS beyond the standard's 999 (astropy would list that many axes), BITPIX other
    than 8/16/32/64/-32/-64. Then the chosen HDU's BSCALE/BZERO must be numbers, and a
    compressed HDU's table must hold the tiles its ZNAXISn/ZTILEn declare.
Big images are read in row blocks through `ImageSource.rows`, which uses astropy's section
access on a memory-mapped file, so a survey image need not fit in memory.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from astroseg.data.fits_checks import (HEADER_ERRORS, READ_ERRORS, check_compressed,
                                       check_values, header_errors, walk_hdus)
from astroseg.data.png_io import png_pixels
from astroseg.errors import DataError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fit.fz", ".fz")
PNG_SUFFIXES = (".png",)
# Cards that describe how an HDU is stored, not what it shows: never inherited or copied.
STRUCTURAL = re.compile(r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|BSCALE|BZERO|"
                        r"BLANK|CHECKSUM|DATASUM|EXTNAME|EXTVER|EXTLEVEL|INHERIT)$")


class HDUNotFound(DataError):
    """A file has no HDU of the index or name asked for."""

    def __init__(self, message: str, hdu: int | str):
        super().__init__(message)
        self.hdu = hdu


def is_fits(path: str | os.PathLike) -> bool:
    """True if the file name has a FITS suffix."""
    return str(path).lower().endswith(FITS_SUFFIXES)


def parse_hdu(value: str | None) -> int | str | tuple[str, int] | None:
    """An HDU as written in params or on the command line: "" / None = auto, digits = index,
    NAME,VER = the VER-th extension of that name (SCI,2: the second chip of a multi-chip file)."""
    if not value:
        return None
    if _index(value):
        return int(value)
    name, _, ver = value.rpartition(",")
    return (name, int(ver)) if name and _index(ver.strip()) else value


def _index(text: str) -> bool:
    # ASCII digits only: str.isdigit() takes '²' and other digits int() refuses; an index of
    # more than 9 digits is no file's, and int() refuses over 4300 of them.
    return text.isascii() and text.isdigit() and len(text) <= 9


def stem(path: str | os.PathLike) -> str:
    """File name without its image suffix: how images, masks and bad-pixel maps are paired."""
    name = Path(path).name
    # Longest first: x.fits.fz is x, not x.fits.
    for suffix in sorted(FITS_SUFFIXES + PNG_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _describe(hdul: fits.HDUList) -> str:
    # From the headers only: touching `.data` of a scaled image opened memory-mapped raises.
    parts = []
    for i, h in enumerate(hdul):
        try:
            naxis = [h.header.get(f"NAXIS{n}", 0) for n in range(h.header.get("NAXIS", 0), 0, -1)]
            if isinstance(h, (fits.BinTableHDU, fits.TableHDU)):
                shape = f"{naxis[0]} rows"
            else:
                shape = "x".join(map(str, naxis)) if naxis and 0 not in naxis else "no data"
        except HEADER_ERRORS:   # a compressed HDU's damaged ZNAXISn: say so, list the others
            shape = "invalid header"
        ver = h.header.get("EXTVER")   # several chips of one name: SCI,1 SCI,2 ...
        name = f"{h.name or '?'},{ver}" if ver and h.name else h.name or "?"
        parts.append(f"{i}:{name} {type(h).__name__} ({shape})")
    return "; ".join(parts)


def _image_shape(hdu: fits.hdu.base.ExtensionHDU) -> tuple[int, ...] | None:
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return None
    try:
        shape = hdu.shape
    except HEADER_ERRORS:    # a shape astropy cannot work out is no image to read
        return None
    if len(shape) < 2 or 0 in shape:
        return None
    return shape


def _select_hdu(hdul: fits.HDUList, hdu: int | str | None, path: Path, role: str = ""):
    if hdu is None or hdu == "":
        for h in hdul:
            if _image_shape(h) is not None:
                return h
        raise DataError(f"{path}: no image HDU (HDUs: {_describe(hdul)})")
    try:
        h = hdul[hdu]
    except (KeyError, IndexError):
        raise HDUNotFound(f"{path}: no HDU {hdu!r}{role} (HDUs: {_describe(hdul)})", hdu) from None
    if _image_shape(h) is None:
        raise DataError(f"{path}: HDU {hdu!r}{role} holds no 2-D image (HDUs: {_describe(hdul)})")
    return h


def _inherited_header(hdul: fits.HDUList, h) -> fits.Header:
    """The header of `h`; with INHERIT = T, preceded by the primary's cards it does not set."""
    if h is hdul[0] or h.header.get("INHERIT") is not True:
        return h.header
    merged = fits.Header([c for c in hdul[0].header.cards if not STRUCTURAL.match(c.keyword)])
    for card in h.header.cards:
        if card.keyword in ("COMMENT", "HISTORY", ""):
            merged.append(card, end=True)
        else:
            merged[card.keyword] = (card.value, card.comment)
    return merged


def check_same_shape(image_path: str | os.PathLike, shape: tuple[int, ...],
                     other: tuple[int, ...], what: str) -> None:
    """Raise unless `other` (the shape of `what`) equals the image's `shape`."""
    if tuple(other) != tuple(shape):
        raise DataError(f"{image_path}: image is {shape[0]}x{shape[1]} but {what} is "
                        f"{other[0]}x{other[1]}; they must match pixel for pixel")


def _physical(stored: np.ndarray, header: fits.Header) -> np.ndarray:
    """Native float32 values of stored pixels: BSCALE/BZERO applied, BLANK pixels NaN."""
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    blank = header.get("BLANK")
    integer = np.issubdtype(stored.dtype, np.integer)
    # astropy's choice of working precision: float32 is exact for 8/16-bit integers.
    work = np.float64 if integer and stored.dtype.itemsize > 2 else np.float32
    data = stored.astype(work if integer else stored.dtype.newbyteorder("="))
    if bscale != 1:
        data *= bscale
    if bzero != 0:
        data += bzero
    data = data.astype(np.float32, copy=False)
    if integer and isinstance(blank, int) and not isinstance(blank, bool):
        data[stored == blank] = np.nan   # BLANK is a stored value, so compare before scaling
    return data


@dataclass
class ImageSource:
    """An open image: its 2-D shape, header and row-block reader. Close it (or use `with`)."""
    path: Path
    shape: tuple[int, int]
    header: fits.Header | None
    _hdul: fits.HDUList | None          # closed with this source (None: shared or PNG)
    _hdu: object | None
    _array: np.ndarray | None = None    # PNG pixels (already in memory)
    flags: list[ImageSource] = field(default_factory=list)   # bad-pixel maps, nonzero = bad
    zero_is_bad: bool = False    # as a flag source: a weight map, where 0 (not nonzero) is bad

    def rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Native float32 pixels of rows [y0, y1) and their valid mask (finite, not flagged)."""
        if self._array is not None:
            data = np.array(self._array[y0:y1], dtype=np.float32)
        else:
            lead = (0,) * (len(self._hdu.shape) - 2)   # single-plane cube: plane 0
            try:
                stored = self._hdu.section[lead + (slice(y0, y1), slice(None))]
            except READ_ERRORS as exc:
                detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                if isinstance(self._hdu, fits.CompImageHDU):
                    kind = getattr(self._hdu, "compression_type", None) or "tile-compressed"
                    raise DataError(f"{self.path}: cannot decompress rows {y0}-{y1} of HDU "
                                    f"{self._hdu.name} ({kind}): corrupt compressed data? "
                                    f"({detail})") from None
                raise DataError(f"{self.path}: cannot read rows {y0}-{y1} of HDU "
                                f"{self._hdu.name}: truncated or corrupt? ({exc})") from None
            data = _physical(np.asarray(stored), self._hdu.header)
        valid = np.isfinite(data)
        for flags in self.flags:
            values, known = flags.rows(y0, y1)
            # An unreadable (NaN) flag counts as bad; a weight of 0 is no coverage (drizzle).
            valid &= known & ((values > 0) if flags.zero_is_bad else (values == 0))
        return data, valid

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole image and its valid mask."""
        return self.rows(0, self.shape[0])

    def close(self) -> None:
        """Close the underlying FITS file(s)."""
        for flags in self.flags:
            flags.close()
        if self._hdul is not None:
            self._hdul.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_image(path: str | os.PathLike, hdu: int | str | None = None,
               bad_pixel_hdu: int | str | None = None,
               bad_pixels: str | os.PathLike | None = None) -> ImageSource:
    """Open a FITS (HDU `hdu`, default the first image) or PNG image for reading.

    `bad_pixel_hdu` (an HDU of the same file, e.g. 'DQ') and `bad_pixels` (a map file) flag
    pixels as invalid where nonzero; both must match the image pixel for pixel. A bad-pixel HDU
    written NAME=0 (`WHT=0`) is a weight or exposure map instead: invalid where it is 0 (or
    negative), as drizzled images mark the pixels no exposure covered.
    """
    path = Path(path)
    src = _open_one(path, hdu)
    weight = isinstance(bad_pixel_hdu, str) and bad_pixel_hdu.endswith("=0")
    if weight:
        bad_pixel_hdu = parse_hdu(bad_pixel_hdu[:-2])
    try:
        if bad_pixel_hdu is not None and bad_pixel_hdu != "":
            if src._hdul is None:
                raise DataError(f"{path}: a PNG image has no HDUs, so no bad-pixel HDU "
                                f"{bad_pixel_hdu!r}; give a bad-pixel map file instead")
            with header_errors(path):
                h = _select_hdu(src._hdul, bad_pixel_hdu, path,
                                " (weight map)" if weight else " (bad-pixel flags)")
                flags = _fits_source(path, src._hdul, h, owner=False)
            flags.zero_is_bad = weight
            check_same_shape(path, src.shape, flags.shape, f"HDU {h.name or bad_pixel_hdu}")
            src.flags.append(flags)
        if bad_pixels is not None and str(bad_pixels) != "":
            src.flags.append(_open_one(Path(bad_pixels), None))
            check_same_shape(path, src.shape, src.flags[-1].shape, str(bad_pixels))
    except Exception:
        src.close()
        raise
    return src


def _open_one(path: Path, hdu: int | str | None) -> ImageSource:
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if not is_fits(path):
        return _open_png(path)
    hdul = _open_fits(path)
    try:
        with header_errors(path):
            return _fits_source(path, hdul, _select_hdu(hdul, hdu, path), owner=True)
    except Exception:
        hdul.close()
        raise


def _fits_source(path: Path, hdul: fits.HDUList, h, owner: bool) -> ImageSource:
    shape = h.shape
    if any(n != 1 for n in shape[:-2]):
        raise DataError(f"{path}: HDU {h.name} is a cube of shape {shape}; expected a 2-D "
                        "image or a single plane (write the plane to segment to a file of "
                        "its own)")
    check_values(path, h)
    if isinstance(h, fits.CompImageHDU):
        check_compressed(path, hdul.index(h), h)
    return ImageSource(path, tuple(shape[-2:]), _inherited_header(hdul, h),
                       hdul if owner else None, h)


def _open_fits(path: Path) -> fits.HDUList:
    walk_hdus(path)
    # Stored values, unscaled: lets astropy memory-map scaled images too, and BLANK is compared
    # in stored units by _physical. astropy drops an HDU it cannot parse (a truncated file) with
    # only a warning: make it an error, since reading on would use the wrong HDU or none.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VerifyWarning)
        try:
            hdul = fits.open(path, memmap=True, lazy_load_hdus=False,
                             do_not_scale_image_data=True)
        except (OSError, EOFError, *HEADER_ERRORS) as exc:
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
            arr = png_pixels(path, img)
    # What Pillow raises on damaged files: OSError (truncated), SyntaxError (a broken chunk),
    # ValueError, EOFError, struct.error, zlib.error; DecompressionBombError for a header
    # declaring more pixels than Pillow will allocate (checked before allocating).
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
            zlib.error, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable PNG image ({' '.join(str(exc).split())})"
                        ) from None
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
