"""Refuse a malformed FITS file before astropy reads it, and name what astropy raises on one.

astropy trusts a file's header: it loops over NAXIS axes (2^31 of them: a hang), maps or
allocates the data a header declares whether or not the file holds them, and decodes damaged
compressed tiles into wrong pixels or a segfault. `walk_hdus` checks every HDU's sizing cards
against the file before astropy opens it; `check_values` and `check_compressed` check the HDU
that is read (BITPIX, BSCALE/BZERO, tile counts, Rice parameters, DATASUM). Nothing here
allocates for a declared size.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import lzma
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from astroseg.errors import DataError

try:   # raised by the RICE, HCOMPRESS and PLIO decoders of tile-compressed images
    from astropy.io.fits.hdu.compressed._compression import CfitsioException
except ImportError:   # a private module: if astropy moves it, the other types still apply
    class CfitsioException(Exception):
        """Placeholder for astropy's private decompression error."""

# What reading pixels can raise on a truncated file or corrupt compressed tiles: OSError
# (truncated memmap, gzip.BadGzipFile), zlib.error and EOFError (GZIP_1/2 tiles),
# CfitsioException (RICE_1, HCOMPRESS_1, PLIO_1), ValueError/IndexError (a tile that
# decompresses to the wrong size), TypeError, OverflowError (absurd tile lengths), and what
# astropy raises on a damaged binary-table header of a compressed HDU: KeyError (no
# COMPRESSED_DATA column), VerifyError (a TFORM it cannot parse), AssertionError (a TTYPE that
# is no string).
READ_ERRORS = (OSError, ValueError, TypeError, EOFError, IndexError, OverflowError, zlib.error,
                CfitsioException, KeyError, VerifyError, AssertionError, ZeroDivisionError)
# What astropy raises on a header it parsed but cannot make sense of (NAXIS3 missing under
# NAXIS = 3, a keyword of the wrong type, ...), when the HDU is sized or selected.
HEADER_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError, AssertionError,
                  OverflowError, ZeroDivisionError, VerifyError, CfitsioException)
BITPIX = (8, 16, 32, 64, -32, -64)
_BLOCK = 2880                # FITS files are made of blocks of this many bytes
_MAX_NAXIS = 999             # the FITS standard's limit
# A header without END in this many blocks (288 MB; real ones are kilobytes) is not walked on.
_MAX_HEADER_BLOCKS = 100_000



@contextmanager
def header_errors(path: Path) -> Iterator[None]:
    """Turn what astropy raises on a header it cannot make sense of into a DataError."""
    try:
        yield
    except HEADER_ERRORS as exc:
        raise DataError(f"{path}: not a readable FITS file, corrupt header? "
                        f"({_detail(exc)})") from None


def _detail(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]




def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_values(path: Path, h) -> None:
    """Refuse a BITPIX astropy has no dtype for, and a BSCALE/BZERO that is not a number."""
    bitpix = h.header.get("BITPIX")   # of the image, also for a compressed one (its ZBITPIX)
    if not _is_int(bitpix) or bitpix not in BITPIX:
        raise DataError(f"{path}: HDU {h.name} has BITPIX = {bitpix!r}; expected one of "
                        f"{', '.join(map(str, BITPIX))}")
    for key in ("BSCALE", "BZERO"):
        value = h.header[key] if key in h.header else 1   # a card without value reads as None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise DataError(f"{path}: HDU {h.name} has {key} = {value!r}; expected a finite "
                            "number")


def check_compressed(path: Path, index: int, h: fits.CompImageHDU) -> None:
    """Refuse a tile-compressed HDU whose table does not hold the tiles its header declares,
    whose Rice parameters are out of range, or whose data do not match its DATASUM."""
    # The binary table as stored: its own header (NAXIS2 = tiles, ZNAMEi/ZVALi, DATASUM).
    with fits.open(path, memmap=True, disable_image_compression=True,
                   do_not_scale_image_data=True) as raw:
        table, info = raw[index].header, raw.fileinfo(index)
    what = f"HDU {h.name} ({table.get('ZCMPTYPE', 'tile-compressed')})"
    naxis = table.get("ZNAXIS")
    if not _is_int(naxis) or not 1 <= naxis <= _MAX_NAXIS:
        raise DataError(f"{path}: {what} has ZNAXIS = {naxis!r}; expected 1 to {_MAX_NAXIS}")
    axes = [table.get(f"ZNAXIS{i}") for i in range(1, naxis + 1)]
    tiles = [table.get(f"ZTILE{i}", axes[0] if i == 1 else 1) for i in range(1, naxis + 1)]
    for key, values in (("ZNAXIS", axes), ("ZTILE", tiles)):
        bad = next((i for i, v in enumerate(values, 1) if not _is_int(v) or v < 1), None)
        if bad is not None:
            raise DataError(f"{path}: {what} has {key}{bad} = {values[bad - 1]!r}; expected an "
                            "integer >= 1")
    # Checked before any tile is read: a header claiming 100000 x 100000 pixels over a table of
    # a few tiles would otherwise have the whole image allocated first.
    count = math.prod(-(-a // t) for a, t in zip(axes, tiles))
    if table.get("NAXIS2") != count:
        raise DataError(f"{path}: {what} declares a {'x'.join(map(str, reversed(axes)))} image "
                        f"in {count} tiles of {'x'.join(map(str, reversed(tiles)))}, but its "
                        f"table holds {table.get('NAXIS2')!r}: corrupt or truncated header")
    params = {str(table.get(f"ZNAME{i}", "")).upper(): table.get(f"ZVAL{i}")
              for i in itertools.takewhile(lambda i: f"ZNAME{i}" in table, itertools.count(1))}
    if str(table.get("ZCMPTYPE", "")).upper() in ("RICE_1", "RICE_ONE"):
        # A BYTEPIX of -32 had the decoder allocate without bound.
        for key, allowed in (("BYTEPIX", (1, 2, 4, 8)), ("BLOCKSIZE", (16, 32))):
            value = params.get(key, allowed[-1])
            if not _is_int(value) or value not in allowed:
                raise DataError(f"{path}: {what} has {key} = {value!r}; expected one of "
                                f"{', '.join(map(str, allowed))}")
    datasum = table.get("DATASUM")
    if isinstance(datasum, str) and datasum.strip().isdigit():
        found = _datasum(path, info["datLoc"], info["datSpan"])
        if found is not None and found != int(datasum):
            raise DataError(f"{path}: {what}: its data do not match DATASUM = {datasum.strip()} "
                            f"(found {found}): corrupt compressed data, e.g. a damaged copy or "
                            "download")


def _datasum(path: Path, start: int, length: int) -> int | None:
    """The FITS checksum (32-bit ones' complement sum) of `length` bytes from `start`, read in
    blocks; None for a zip archive."""
    total = 0
    stream = _stream(path)
    if stream is None:
        return None
    with stream as f, _stream_errors(path):
        f.seek(start)
        while length > 0:
            chunk = f.read(min(length, 1 << 24))   # a multiple of 4 bytes, as FITS blocks are
            if not chunk:
                break
            length -= len(chunk)
            chunk += bytes(-len(chunk) % 4)
            # Each word < 2^32 and at most 2^22 per chunk: the sum fits in 64 bits.
            total += int(np.frombuffer(chunk, ">u4").sum(dtype=np.uint64))
    while total >> 32:    # the end-around carry of ones' complement addition
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _stream(path: Path):
    """The file as a byte stream, through gzip/bzip2/xz where astropy would decompress it;
    None for a zip archive (astropy reads its first member; not walked here)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    if magic.startswith(b"PK\x03\x04"):
        return None
    return open(path, "rb")


@contextmanager
def _stream_errors(path: Path) -> Iterator[None]:
    """A gzip/bzip2/xz stream that ends early or is damaged, as a DataError naming the file."""
    try:
        yield
    except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise DataError(f"{path}: not a readable FITS file: its compressed stream is "
                        f"truncated or corrupt ({_detail(exc)})") from None


def _card_int(value: bytes | None) -> int | None:
    """An integer card value (the bytes after '= '), or None if it is not one."""
    if value is None:
        return None
    try:
        return int(value.split(b"/")[0].strip())
    except ValueError:
        return None


def _read_header(f, start: int) -> tuple[dict[str, bytes], int] | None:
    """The values of the cards that size an HDU (BITPIX, NAXIS*, PCOUNT, GCOUNT, GROUPS) of the
    header at `start`, and where it ends; None if no header starts there or it has no END."""
    f.seek(start)
    found: dict[str, bytes] = {}
    for n in range(_MAX_HEADER_BLOCKS):
        block = f.read(_BLOCK)
        if len(block) < _BLOCK:
            return None
        for i in range(0, _BLOCK, 80):
            card = block[i:i + 80]
            # As leniently as astropy reads them: '=' anywhere in the first 10 columns
            # (`NAXIS1= 30`), keywords in any case.
            eq = card.find(b"=", 0, 10)
            key = (card[:eq] if eq > 0 else card[:8]).strip().decode("ascii", "replace").upper()
            if n == 0 and i == 0 and key not in ("SIMPLE", "XTENSION"):
                return None
            if key == "END" and eq < 0:
                return found, start + (n + 1) * _BLOCK
            if eq > 0 and (key.startswith("NAXIS") or key in
                           ("BITPIX", "PCOUNT", "GCOUNT", "GROUPS")):
                found.setdefault(key, card[eq + 1:])
    return None


def walk_hdus(path: Path) -> None:
    """Check the sizing cards of every HDU and that its data fit in the file, before astropy
    opens it: astropy loops over NAXIS axes (2^31 of them: a hang) and would map or allocate
    data the file does not hold. What is not walked here (no header, no END) astropy reports."""
    stream = _stream(path)
    if stream is None:
        return
    with stream as f, _stream_errors(path):
        plain = not isinstance(f, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile))
        size = os.fstat(f.fileno()).st_size if plain else None
        start = 0
        for index in itertools.count():
            header = _read_header(f, start)
            if header is None:
                return
            cards, data_start = header
            where = f"{path}: HDU {index}"
            naxis = _card_int(cards.get("NAXIS"))
            if naxis is None or not 0 <= naxis <= _MAX_NAXIS:
                raise DataError(f"{where} has NAXIS = {_shown(cards.get('NAXIS'))}; expected 0 "
                                f"to {_MAX_NAXIS} (the FITS standard's limit)")
            axes = [_card_int(cards.get(f"NAXIS{i}")) for i in range(1, naxis + 1)]
            bad = next((i for i, n in enumerate(axes, 1) if n is None or n < 0), None)
            if bad is not None:
                raise DataError(f"{where} has NAXIS = {naxis} and NAXIS{bad} = "
                                f"{_shown(cards.get(f'NAXIS{bad}'))}; expected an integer >= 0")
            bitpix = _card_int(cards.get("BITPIX"))
            if bitpix not in BITPIX:
                raise DataError(f"{where} has BITPIX = {_shown(cards.get('BITPIX'))}; expected "
                                f"one of {', '.join(map(str, BITPIX))}")
            pcount = _card_int(cards.get("PCOUNT", b"0"))
            gcount = _card_int(cards.get("GCOUNT", b"1"))
            if pcount is None or gcount is None or pcount < 0 or gcount < 0:
                raise DataError(f"{where} has PCOUNT = {_shown(cards.get('PCOUNT'))} and GCOUNT "
                                f"= {_shown(cards.get('GCOUNT'))}; expected integers >= 0")
            # Random groups (NAXIS1 = 0, GROUPS = T) leave NAXIS1 out of the size.
            groups = naxis > 0 and axes[0] == 0 and cards.get("GROUPS", b"").strip()[:1] == b"T"
            nbytes = 0 if naxis == 0 else \
                abs(bitpix) // 8 * gcount * (pcount + math.prod(axes[1:] if groups else axes))
            end = data_start + nbytes
            if nbytes and (size < end if plain else _short(f, end)):
                held = f"holds only {size - data_start} bytes of them" if plain else \
                    "ends before them"
                raise DataError(f"{where} declares {'x'.join(map(str, reversed(axes)))} values "
                                f"of BITPIX {bitpix} ({nbytes} bytes of data) but the file "
                                f"{held}: truncated or corrupt (an interrupted copy or "
                                "download, or a wrong NAXISn/BITPIX?)")
            start = data_start + -(-nbytes // _BLOCK) * _BLOCK


def _shown(value: bytes | None) -> str:
    return "missing" if value is None else \
        value.split(b"/")[0].strip().decode("ascii", "replace") or "empty"


def _short(f, end: int) -> bool:
    """Whether a decompressing stream ends before byte `end` (it is read through to there)."""
    f.seek(end - 1)
    return not f.read(1)
