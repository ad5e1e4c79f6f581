"""Several bands per field: which file is which band of which field, and whether they line up.

A band's files come from a glob: `data.fits.images` with `{band}` filled by each name of
`data.fits.bands` (`raw/{band}/*.fits`, or `raw/*_{band}.fits`), or one glob per entry of
`data.fits.bands` (`F606W=raw/acs/*.fits`, or a glob whose folder names the band). Files are
paired into fields by name: the file name without its suffix and without the band's name (and
the `_`, `-` or `.` beside it), so `goods_F606W.fits` and `goods_F814W.fits` are field `goods`.
The bands of a field must have the same shape and, where both carry a celestial WCS, the same
one (within a tenth of a pixel): they are stacked as channels, pixel on pixel.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from astroseg.data.fits_io import stem
from astroseg.errors import DataError

WCS_TOLERANCE = 0.1    # pixels


def band_globs(images: str, bands: tuple[str, ...], key: str = "data.fits.bands"
               ) -> list[tuple[str, str]]:
    """(band name, glob) per band, in channel order."""
    if "{band}" in images:
        return [(b, images.replace("{band}", b)) for b in bands]
    out = []
    for entry in bands:
        name, sep, pattern = entry.partition("=")
        out.append((name, pattern) if sep else (Path(entry).parent.name, entry))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or not all(names):
        raise DataError(f"{key} = {list(bands)}: band names {names} are not unique; write each "
                        "entry as NAME=GLOB, or put {band} in data.fits.images")
    return out


def field_name(path: str | os.PathLike, band: str) -> str:
    """The field a band's file belongs to: its name without suffix and band."""
    name = stem(path)
    # The band as a whole token: after the start or a separator, before a separator or the end;
    # any case (HST names files ..._f606w_drz.fits, papers and params say F606W).
    m = re.search(rf"(^|[_.-]){re.escape(band)}($|[_.-])", name, flags=re.IGNORECASE)
    if m is None:
        return name
    # Drop the separator before it, or at the start of the name the one after it.
    cut = name[:m.start()] + (name[m.end() - len(m.group(2)):] if m.group(1) else name[m.end():])
    return cut or name


def find_band_files(images: str, bands: tuple[str, ...], root: str | os.PathLike = ".",
                    key: str = "data.fits.bands") -> tuple[list[str], dict[str, list[Path]]]:
    """Band names, and the files of each field (one per band, in band order), by field name."""
    root = Path(root)
    per_band: list[dict[str, Path]] = []
    names = []
    for band, pattern in band_globs(images, bands, key):
        paths = sorted(Path(p) for p in glob.glob(str(root / pattern)))
        if not paths:
            raise DataError(f"band {band}: {pattern!r} matches no file (relative to "
                            f"{root.resolve()})")
        files: dict[str, Path] = {}
        for path in paths:
            field = field_name(path, band)
            if field in files:
                raise DataError(f"band {band}: {files[field]} and {path} are both field "
                                f"'{field}'; a field has one file per band")
            files[field] = path
        per_band.append(files)
        names.append(band)
    fields = sorted(set().union(*per_band))
    for band, files in zip(names, per_band):
        missing = [f for f in fields if f not in files]
        if missing:
            have = next(b[missing[0]] for b in per_band if missing[0] in b)
            raise DataError(f"field '{missing[0]}' ({have}) has no file of band {band}; every "
                            f"field needs all bands {names}")
    return names, {f: [files[f] for files in per_band] for f in fields}


def _celestial(header: fits.Header | None) -> WCS | None:
    if header is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header).celestial
        except Exception:     # a broken WCS is no WCS to compare by; astropy raises many types
            return None
    return wcs if wcs.has_celestial else None


def check_aligned(first: Path, header: fits.Header | None, other: Path,
                  other_header: fits.Header | None, shape: tuple[int, int]) -> None:
    """Raise unless two bands' celestial WCSs (where both have one) agree on the field."""
    a, b = _celestial(header), _celestial(other_header)
    if a is None or b is None:
        return
    h, w = shape
    pix = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]],
                   dtype=np.float64)
    back = np.array(b.world_to_pixel(a.pixel_to_world(pix[:, 0], pix[:, 1]))).T
    off = float(np.nanmax(np.hypot(*(back - pix).T)))
    if not np.isfinite(off) or off > WCS_TOLERANCE:
        raise DataError(f"{other}: its WCS puts the sky of {first} up to {off:.3g} pixels away "
                        f"(tolerance {WCS_TOLERANCE}); the bands of a field must be registered "
                        "to the same pixel grid (resample them first)")
