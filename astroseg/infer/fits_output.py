"""The FITS file FITS predict writes: its headers, and its planes written at their offsets.

Every HDU's size is known before the first pixel is computed (the headers' card counts do not
depend on the results; ASNSRC and ASSRCFRC change value, not length), so each finished block
of rows goes straight to its place in the output's temp file, in any order and from another
thread, and the headers are written last. The bytes are those a sequential writer (astropy's
StreamingHDU) would write: header, big-endian data, zeros to a whole 2880-byte block.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from astroseg.data.fits_io import STRUCTURAL

# Cards that state something about the input's pixel values, false of a probability or a mask:
# their unit, type and range, levels in those units, and the detector's conversion of them.
# Photometric zero points and flux conversions (MAGZP*, PHOTZPT, ZP*, PHOTFLAM, ...) are kept
# (f039f1d): they calibrate the input image that MASK serves as an aperture on, and nothing
# applies them to a map whose BUNIT says it is dimensionless.
_VALUE_CARDS = re.compile(r"^(BUNIT|BTYPE|DATAMIN|DATAMAX|SATUR\w*|SATLEV\w*|(CCD|ATOD)?GAIN\w*|"
                          r"RDNOIS\w*|READNOI\w*|READNS\w*|RON|SKYLEV\w*|SKYSIG\w*)$")
# WCS cards of a third (degenerate) axis of a single-plane cube, primary or alternate (A-Z).
_AXIS3 = re.compile(r"^(CTYPE|CRVAL|CDELT|CRPIX|CUNIT|CROTA|CNAME|CRDER|CSYER)[3-9][A-Z]?$|"
                    r"^(PC|CD)([3-9]_\d|\d_[3-9])[A-Z]?$")
_WCSAXES = re.compile(r"^WCSAXES[A-Z]?$")
# Lookup-table distortions (HST's NPOL and D2IM): their tables live in WCSDVARR/D2IMARR HDUs
# of the input that the output does not carry, and a header naming them without them is one
# astropy.wcs refuses to read. The output keeps the WCS and its SIP terms; the catalogue reads
# positions from the input file, with the tables.
_LOOKUP = re.compile(r"^(CPDIS|CPERR|D2IMDIS|D2IMERR|DP|DQ)\d|^(D2IMEXT|NPOLEXT)$")
BLOCK = 2880


def output_header(header: fits.Header | None, ndim: int) -> fits.Header:
    """The input's cards minus storage and pixel-value keywords, lookup-table distortions (see
    _LOOKUP) and a cube's third WCS axis."""
    out = fits.Header()
    for card in (header or fits.Header()).cards:
        key = card.keyword
        # A HIERARCH card's last word names it: "ESO DET OUT1 GAIN" is a gain.
        name = key.split()[-1] if key else key
        if STRUCTURAL.match(key) or _VALUE_CARDS.match(name) or _LOOKUP.match(key) or \
                (ndim > 2 and _AXIS3.match(key)):
            continue
        if ndim > 2 and _WCSAXES.match(key):
            out[key] = 2
            continue
        out.append(card)
    return out


def plane_header(name: str, dtype: type, height: int, width: int,
                 cards: fits.Header) -> fits.Header:
    """The header of one output HDU: its structure cards, then `cards`."""
    primary = name == "PRIMARY"
    hdr = fits.Header()
    if primary:
        hdr["SIMPLE"] = True
    else:
        hdr["XTENSION"] = "IMAGE"
    hdr["BITPIX"] = {np.float32: -32, np.int32: 32}.get(dtype, 8)
    hdr["NAXIS"], hdr["NAXIS1"], hdr["NAXIS2"] = 2, width, height
    if primary:
        hdr["EXTEND"] = True
    else:
        hdr["PCOUNT"], hdr["GCOUNT"], hdr["EXTNAME"] = 0, 1, name
    hdr.extend(cards)
    if dtype == np.float32:   # the input's BUNIT was dropped with the other value cards
        hdr["BUNIT"] = ("", "dimensionless: std of a probability" if name == "STD"
                        else "dimensionless: probability in [0, 1]")
    return hdr


def _header_bytes(hdr: fits.Header) -> bytes:
    with warnings.catch_warnings():
        # A long value leaves its comment less room: cut short, as intended.
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        return hdr.tostring().encode("ascii")


def pwrite_all(fd: int, data: bytes | memoryview | np.ndarray, offset: int) -> None:
    """Write all of `data` at `offset` of `fd` (a write may take only part; a full disk raises
    OSError with its errno, ENOSPC or EFBIG)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


@dataclass(frozen=True)
class Plane:
    """One HDU of the output: name, dtype, and where its header and data start."""
    name: str
    dtype: type
    header_at: int
    header_size: int
    data_at: int


class FitsLayout:
    """The HDUs of a predict output (PRIMARY, MASK, PROB_<CLASS>..., LABELS, STD) and their
    offsets, for writing blocks of rows of any plane in any order."""

    def __init__(self, cards: fits.Header, height: int, width: int, class_names: list[str],
                 classes: int, std: bool):
        self.height, self.width = height, width
        specs = [("PRIMARY", np.float32), ("MASK", np.uint8)]
        if classes > 1:
            specs += [(f"PROB_{name.upper()[:60]}", np.float32) for name in class_names]
        specs.append(("LABELS", np.int32))
        if std:
            specs.append(("STD", np.float32))
        self.planes: dict[str, Plane] = {}
        at = 0
        for name, dtype in specs:
            size = len(_header_bytes(plane_header(name, dtype, height, width, cards)))
            self.planes[name] = Plane(name, dtype, at, size, at + size)
            at += size + _round_block(height * width * np.dtype(dtype).itemsize)
        self.size = at
        self.prob_names = [name for name, _ in specs if name.startswith("PROB_")]

    def write_rows(self, fd: int, name: str, y0: int, rows: np.ndarray) -> None:
        """Write rows [y0, y0 + len(rows)) of plane `name` (native values; stored big-endian)."""
        plane = self.planes[name]
        big_endian = np.dtype(plane.dtype).newbyteorder(">")   # FITS data are big-endian
        block = np.ascontiguousarray(rows, dtype=big_endian)
        pwrite_all(fd, block, plane.data_at + y0 * self.width * block.itemsize)

    def finish(self, fd: int, cards: fits.Header) -> None:
        """Write every header (with the final `cards`) and the zeros that end each plane."""
        for plane in self.planes.values():
            data = _header_bytes(plane_header(plane.name, plane.dtype, self.height, self.width,
                                              cards))
            # Same cards, other values: a card is 80 characters whatever its value.
            if len(data) != plane.header_size:
                raise RuntimeError(f"{plane.name}: header of {len(data)} bytes, not the "
                                   f"{plane.header_size} laid out")
            pwrite_all(fd, data, plane.header_at)
            end = plane.data_at + self.height * self.width * np.dtype(plane.dtype).itemsize
            pwrite_all(fd, bytes(-end % BLOCK), end)


def _round_block(n: int) -> int:
    return -(-n // BLOCK) * BLOCK
