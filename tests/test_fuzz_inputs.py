"""Fuzzing FITS, HDF5 and PNG inputs: damaged, odd and hostile files (issue 14).

Each input ends in one of two ways, and each test says which and why:
  - refused: an AstrosegError (a DataError) whose message is one line naming the file, and the
    HDU, key or value at fault with what was expected; through the CLI `error: ...` on stderr,
    exit status 2, no traceback; never another exception, a hang or an unbounded allocation;
  - used: where an astronomer could use the file as it is (a constant image, NaN pixels masked
    as invalid, a broken WCS, a colour PNG), it works and gives a sane output.
Nothing is half-written: a failed run leaves no output, and an earlier output as it was.
Hypothesis draws a fixed set of examples (the conftest profile), bounded per test.
"""

from __future__ import annotations

import gzip
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from astroseg.cli import main as cli_main
from astroseg.data.band_files import check_aligned
from astroseg.data.dataset import (Split, load_split, read_attrs, read_meta, split_nbytes,
                                   split_sizes, write_splits)
from astroseg.data.fits_io import open_image
from astroseg.data.fits_source import write_fits_dataset
from astroseg.data.labeling import LabelSettings, label_file
from astroseg.data.stream import sequential_blocks, streamed
from astroseg.errors import AstrosegError
from astroseg.infer.predict import load_model, segment_h5
from astroseg.infer.predict_fits import load_fits_model, segment_fits
from astroseg.models import build_model
from astroseg.models.checkpoint import save_checkpoint
from astroseg.params import DataParams, parse_section
from conftest import TINY_MODEL, _env, assert_no_traceback, merge, time_limit, tiny_params

SECONDS = 20.0    # per call: a damaged file is refused in far less, even on two busy cores


def attempt(call: Callable[[], Any], path: Path) -> tuple[Any, str | None]:
    """(result, None) if `call` works, (None, message) if it raises an AstrosegError, whose
    message must be one line naming `path`; any other exception fails the test."""
    try:
        with time_limit(SECONDS):
            return call(), None
    except AstrosegError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message, message
        return None, message


def refused(call: Callable[[], Any], path: Path, *expected: str) -> str:
    """The message of the AstrosegError `call` must raise: one line, naming `path` and holding
    each of `expected`."""
    result, message = attempt(call, path)
    assert message is not None, f"{path} was accepted: {result!r}"[:300]
    for text in expected:
        assert text in message, message
    return message


def read(path: Path, hdu: Any = None) -> np.ndarray:
    """Open an image and read every pixel, as dataset preparation and `label` do."""
    with open_image(path, hdu) as src:
        data, valid = src.read()
    assert data.dtype == np.float32 and data.shape == src.shape
    assert np.array_equal(valid, np.isfinite(data))
    return data


def set_cards(path: Path, cards: dict[str, str]) -> None:
    """Overwrite the value of each named card, wherever it is, with raw text (any junk)."""
    raw = bytearray(path.read_bytes())
    for key, value in cards.items():
        for start in range(0, len(raw), 80):
            if raw[start:start + 8].rstrip() == key.encode() and raw[start + 8:start + 10] == b"= ":
                raw[start:start + 80] = f"{key:<8}= {value:>20}".ljust(80).encode()
    path.write_bytes(bytes(raw))


def one_error_line(err: str, path: Path) -> str:
    """The single `error: ...` line on stderr, checked to name `path`."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# FITS

SKY = np.random.default_rng(0).normal(100, 5, (24, 30)).astype(np.float32)
KINDS = ("primary", "scaled", "extension", "rice", "gzip")


def write_fits(directory: Path, kind: str, data: np.ndarray = SKY, checksum: bool = False
               ) -> Path:
    """A 2-D image as archives store them: float primary, scaled int16 with BLANK, a SCI
    extension behind an empty primary (with DQ), Rice tile-compressed, or gzipped."""
    path = directory / (f"{kind}.fits.gz" if kind == "gzip" else f"{kind}.fits")
    if kind == "scaled":
        hdu = fits.PrimaryHDU(np.round((data - 100) * 4).astype(np.int16))
        hdu.header.update(BSCALE=0.25, BZERO=100.0, BLANK=-32768)
        hdus = [hdu]
    elif kind == "extension":
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"),
                fits.ImageHDU(np.zeros(data.shape, np.int16), name="DQ")]
    elif kind == "rice":
        hdus = [fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]
    else:
        hdus = [fits.PrimaryHDU(data)]
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=checksum)
    return path


@pytest.mark.fault("fits")
@settings(max_examples=40)
@given(kind=st.sampled_from(KINDS), cut=st.floats(0, 1, exclude_max=True))
def test_a_fits_file_cut_anywhere_is_refused_or_read_whole(tmp_path, kind, cut):
    # Refused: a cut in a header or the data (an interrupted download). Read: only a cut in
    # the last block's padding, which holds no pixel; then every pixel is there.
    path = write_fits(tmp_path, kind)
    whole = read(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:int(cut * len(raw))])
    data, message = attempt(lambda: read(path), path)
    if message is None:
        np.testing.assert_array_equal(data, whole)


CARDS = ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BSCALE", "BZERO", "BLANK", "PCOUNT", "GCOUNT",
         "EXTEND", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "ZVAL1",
         "ZVAL2", "ZCMPTYPE", "TFORM1", "TTYPE1", "NAXIS3")
JUNK = ("0", "-1", "1", "3", "7", "12", "-16", "64", "128", "100000", "2147483648",
        "99999999999999999999", "1.5", "1E300", "NaN", "T", "'abc'", "'RICE_1'",
        "'1PB(99999999)'", "")


@pytest.mark.fault("fits")
@settings(max_examples=60)
@given(kind=st.sampled_from(("primary", "scaled", "extension", "rice")),
       edits=st.dictionaries(st.sampled_from(CARDS), st.sampled_from(JUNK), min_size=1,
                             max_size=3))
def test_junk_in_the_sizing_and_scaling_cards_is_refused_or_read(tmp_path, kind, edits):
    # Read only where the junk leaves a well-formed image (e.g. a BLANK of 'abc', ignored
    # as the standard ignores a non-integer BLANK); then its pixels are float32 of its shape.
    path = write_fits(tmp_path, kind)
    set_cards(path, edits)
    attempt(lambda: read(path), path)


def _huge_header(path: Path) -> Path:
    """A header declaring 100000 x 100000 float32 pixels (40 GB) over one block of data."""
    fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(path)
    set_cards(path, {"NAXIS1": "100000", "NAXIS2": "100000"})
    return path


def _huge_tiles(path: Path) -> Path:
    """A Rice-compressed HDU whose header declares 100000 x 100000 pixels over 24 tiles."""
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(SKY, compression_type="RICE_1")]
                 ).writeto(path)
    set_cards(path, {"ZNAXIS1": "100000", "ZNAXIS2": "100000"})
    return path


def _png(width: int, height: int, depth: int, colour: int, rows: bytes, extra: bytes = b""
         ) -> bytes:
    """A PNG file written chunk by chunk: any header, any pixel bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + \
        chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


HOSTILE = {   # name: (writer, what the message says)
    "huge.fits": (_huge_header, "declares 100000x100000 values of BITPIX -32"),
    "huge.fits.gz": (lambda p: p.write_bytes(gzip.compress(_huge_header(p.parent / "plain.fits")
                                                             .read_bytes())),
                     "declares 100000x100000 values of BITPIX -32"),
    "tiles.fits": (_huge_tiles, "declares a 100000x100000 image in 333400000 tiles"),
    "huge.png": (lambda p: p.write_bytes(_png(100000, 100000, 8, 0, bytes(101))),
                 "not a readable PNG image"),
}


@pytest.mark.fault("fits")
def test_headers_declaring_huge_images_are_refused_before_allocating(tmp_path):
    # In a process whose address space is capped at 1.5 GB: allocating the 40 GB the headers
    # declare (astropy decompressing the gzip stream, or the tiles, into one array; Pillow
    # its pixel buffer) would be a MemoryError, and the child would exit with a traceback.
    paths = []
    for name, (write, _) in HOSTILE.items():
        paths.append(tmp_path / name)
        write(paths[-1])
    probe = ("import resource, sys\n"
             "limit = 1536 * 2**20\n"
             "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
             "from astroseg.data.fits_io import read_image\n"
             "from astroseg.errors import AstrosegError\n"
             "for path in sys.argv[1:]:\n"
             "    try:\n"
             "        read_image(path)\n"
             "    except AstrosegError as exc:\n"
             "        print(exc)\n")
    result = subprocess.run([sys.executable, "-c", probe, *map(str, paths)], cwd=tmp_path,
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(HOSTILE)
    for line, path, (_, expected) in zip(lines, paths, HOSTILE.values()):
        assert line.startswith(f"{path}: ") and expected in line, line


EXPLICIT = {   # the cases by name: (cards to set, what the message says)
    "bitpix_128": ({"BITPIX": "128"}, "HDU 0 has BITPIX = 128; expected one of 8, 16, 32, 64"),
    "bitpix_text": ({"BITPIX": "'abc'"}, "HDU 0 has BITPIX = 'abc'; expected one of"),
    "naxis_2e31": ({"NAXIS": "2147483648"}, "NAXIS = 2147483648; expected 0 to 999"),
    "naxis3_missing": ({"NAXIS": "3"}, "NAXIS = 3 and NAXIS3 = missing; expected an integer"),
    "naxis_0": ({"NAXIS": "0"}, "not a readable FITS file"),   # its data read as a header
    "naxis_1": ({"NAXIS": "1", "NAXIS2": "0"}, "no image HDU"),
    "bscale_text": ({"BSCALE": "'abc'"}, "HDU PRIMARY has BSCALE = 'abc'; expected a finite"),
    "bscale_empty": ({"BSCALE": ""}, "HDU PRIMARY has BSCALE = None; expected a finite number"),
    "bytepix": ({"ZVAL2": "-32"}, "(RICE_1) has BYTEPIX = -32; expected one of 1, 2, 4, 8"),
    "ztile_zero": ({"ZTILE1": "0"}, "(RICE_1) has ZTILE1 = 0; expected an integer >= 1"),
}


@pytest.mark.fault("fits")
@pytest.mark.parametrize("case", EXPLICIT)
def test_wrong_bitpix_naxis_and_scaling_are_named_in_the_error(tmp_path, case):
    cards, expected = EXPLICIT[case]
    kind = "rice" if "ZVAL2" in cards or "ZTILE1" in cards else \
        "scaled" if "BSCALE" in cards else "primary"
    path = write_fits(tmp_path, kind)
    set_cards(path, cards)
    refused(lambda: read(path), path, expected)


@pytest.mark.fault("fits")
def test_a_multi_plane_cube_is_refused_and_a_single_plane_one_read(tmp_path):
    # No option picks a plane: a cube of 3 planes is refused with how to proceed; degenerate
    # axes (1 x 1 x H x W, as radio data carry STOKES and FREQ) are the image itself.
    fits.PrimaryHDU(np.stack([SKY] * 3)).writeto(tmp_path / "cube.fits")
    refused(lambda: read(tmp_path / "cube.fits"), tmp_path / "cube.fits",
            "cube of shape (3, 24, 30); expected a 2-D image or a single plane (write the plane")
    fits.PrimaryHDU(SKY[None, None]).writeto(tmp_path / "stokes.fits")
    np.testing.assert_array_equal(read(tmp_path / "stokes.fits"), SKY)


@pytest.fixture(scope="module")
def fits_model(untrained):
    """The untrained tiny model, loaded once, with 256-pixel windows that do not overlap."""
    return load_fits_model(untrained, "cpu", "fp32", window=256, overlap=0)


def check_prediction(out: Path, image: np.ndarray) -> None:
    """A sane probability map of `image`: its shape, NaN exactly where the input was invalid,
    in [0, 1] elsewhere; MASK 0 where invalid."""
    with fits.open(out) as hdul:
        prob, mask = hdul[0].data, hdul["MASK"].data
    invalid = ~np.isfinite(image)
    assert prob.shape == image.shape and np.array_equal(np.isnan(prob), invalid)
    assert ((prob[~invalid] >= 0) & (prob[~invalid] <= 1)).all()
    assert not mask[invalid].any()


@pytest.mark.fault("fits")
@pytest.mark.parametrize("shape", [(1, 1), (1, 10**6), (10**6, 1)])
def test_one_pixel_and_one_pixel_wide_images(tmp_path, fits_model, shape):
    # Used: read exactly; predicted (windows shrink to the image's stride-rounded side);
    # labelled where there is noise to threshold on: a single pixel is a constant image, which
    # `label` refuses. Predicted on its first 10^5 pixels: the same windows, a tenth of the
    # model time (a 1-pixel row is padded to 8 rows, 30 s for 10^6 on two busy cores).
    image = np.random.default_rng(1).normal(100, 5, shape).astype(np.float32)
    path = tmp_path / "thin.fits"
    fits.PrimaryHDU(image).writeto(path)
    np.testing.assert_array_equal(read(path), image)
    if shape[0] == 1:
        part = image[:, :10**5]
        fits.PrimaryHDU(part).writeto(tmp_path / "part.fits")
        segment_fits(fits_model, tmp_path / "part.fits", tmp_path / "seg.fits", batch_size=64)
        check_prediction(tmp_path / "seg.fits", part)
    mask = tmp_path / "mask.fits"
    result, message = attempt(lambda: label_file(path, mask, LabelSettings()), path)
    if shape == (1, 1):
        assert "constant image" in message and not mask.exists()
    else:
        assert result.background == "global" and fits.getdata(mask).shape == shape


FLOATS = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))


@pytest.mark.fault("fits")
@settings(max_examples=25)
@given(image=arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=FLOATS))
def test_nan_inf_and_constant_images_are_masked_or_refused(tmp_path, fits_model, image):
    # NaN and inf are pixels without data: invalid (NaN probability, MASK 0), the rest is
    # segmented. No valid pixel at all: refused, nothing written. A constant image is
    # predicted (a flat field is an answer: the model sees zeros) but not labelled: with no
    # noise, `label` has no threshold to detect at.
    path, out, mask = tmp_path / "f.fits", tmp_path / "seg.fits", tmp_path / "mask.fits"
    fits.PrimaryHDU(image).writeto(path, overwrite=True)
    out.unlink(missing_ok=True)
    mask.unlink(missing_ok=True)
    valid = np.isfinite(image)
    _, message = attempt(lambda: segment_fits(fits_model, path, out), path)
    if valid.any():
        assert message is None
        check_prediction(out, image)
    else:
        assert "no valid pixels" in message and not out.exists()
    labels, message = attempt(lambda: label_file(path, mask, LabelSettings(box=16)), path)
    if not valid.any():
        assert "no valid pixel" in message
    elif image[valid].min() == image[valid].max():
        assert "constant image" in message
    if labels is not None:
        assert not labels.labels[~valid].any()
    assert mask.exists() == (labels is not None)


WCS_JUNK = {
    "CTYPE1": ["'RA---TAN'", "'RA---XXX'", "'DEC--TAN'", "'RA---TAN-SIP'", "''", "3"],
    "CTYPE2": ["'DEC--TAN'", "'DEC--ZPN'", "'RA---TAN'", "'FREQ'", "T"],
    "CRPIX1": ["'abc'", "1E300", "NaN", "-1E300"],
    "CRVAL2": ["91.0", "'x'", "NaN"],
    "CD1_1": ["0.0", "'x'", "1E300"],
    "CD2_2": ["0.0", "-1E-300"],
    "PV2_1": ["1E300", "'x'"],
    "A_ORDER": ["100000", "-3", "'x'"],
    "WCSAXES": ["5", "0", "-1", "'x'"],
    "RADESYS": ["'FOO'", "3"],
    "EQUINOX": ["'abc'", "-1E300"],
    "LONPOLE": ["'x'"],
    "CUNIT1": ["'furlong'"],
    "DATE-OBS": ["'not a date'"],
    "MJD-OBS": ["'x'"],
}


def _wcs_image(path: Path) -> Path:
    """A source on sky noise with a TAN WCS, SIP, CD matrix and every key of WCS_JUNK."""
    header = fits.Header()
    for key, value in (("WCSAXES", 2), ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"),
                       ("CRPIX1", 15.0), ("CRPIX2", 12.0), ("CRVAL1", 150.0), ("CRVAL2", 2.0),
                       ("CD1_1", -5e-5), ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", 5e-5),
                       ("PV2_1", 0.0), ("A_ORDER", 2), ("B_ORDER", 2), ("RADESYS", "ICRS"),
                       ("EQUINOX", 2000.0), ("LONPOLE", 180.0), ("CUNIT1", "deg"),
                       ("DATE-OBS", "2020-01-01"), ("MJD-OBS", 58849.0)):
        header[key] = value
    image = SKY.copy()
    image[8:14, 10:18] += 80
    fits.PrimaryHDU(image, header).writeto(path, overwrite=True)
    return path


@pytest.mark.fault("fits")
@settings(max_examples=20)
@given(edits=st.dictionaries(st.sampled_from(sorted(WCS_JUNK)), st.integers(0, 5), min_size=1,
                             max_size=4))
def test_a_broken_wcs_does_not_stop_segmentation(tmp_path, fits_model, edits):
    # Used: a WCS maps pixels to the sky, and segmentation is pixel for pixel, so the image is
    # segmented as it is. The output carries the input's WCS cards on (the catalogue, not
    # this, reads positions from them); `label` writes its mask without a WCS if astropy
    # cannot read the image's. Bands whose WCS cannot be compared are not refused for it
    # (tests/test_bands.py: a readable WCS that puts the bands apart is).
    path = _wcs_image(tmp_path / "wcs.fits")
    cards = {key: WCS_JUNK[key][i % len(WCS_JUNK[key])] for key, i in edits.items()}
    set_cards(path, cards)
    out = tmp_path / "seg.fits"
    _, message = attempt(lambda: segment_fits(fits_model, path, out), path)
    assert message is None
    with fits.open(path) as a, fits.open(out) as b:
        assert all(key in b[0].header for key in cards if key in a[0].header)
    labels, message = attempt(lambda: label_file(path, tmp_path / "mask.fits",
                                                 LabelSettings(box=8), overwrite=True), path)
    assert message is None
    clean = _wcs_image(tmp_path / "clean.fits")
    header, clean_header = fits.getheader(path), fits.getheader(clean)
    attempt(lambda: check_aligned(clean, clean_header, path, header, SKY.shape), path)


CTYPES = ("RICE_1", "GZIP_1", "HCOMPRESS_1", "PLIO_1")


def _compressed(path: Path, ctype: str, checksum: bool) -> tuple[Path, dict[str, int]]:
    data = SKY if ctype != "PLIO_1" else np.round(SKY).astype(np.int32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type=ctype)]
                 ).writeto(path, overwrite=True, checksum=checksum)
    with fits.open(path, disable_image_compression=True) as hdul:
        return path, hdul.fileinfo(1)


@pytest.mark.fault("fits")
@settings(max_examples=30)
@given(ctype=st.sampled_from(CTYPES), where=st.floats(0, 1, exclude_max=True),
       junk=st.binary(min_size=1, max_size=8), checksum=st.booleans())
def test_corrupt_tiles_are_refused_by_their_datasum(tmp_path, ctype, where, junk, checksum):
    # Damaged tiles often decompress without any error, to wrong pixels: with a DATASUM the
    # damage is refused before reading, naming the HDU; without one it is refused when the
    # decoder notices, else read (nothing could tell), always as an image of its shape.
    path, info = _compressed(tmp_path / "c.fits", ctype, checksum)
    raw = bytearray(path.read_bytes())
    start = info["datLoc"] + int(where * info["datSpan"])
    assume(bytes(raw[start:start + len(junk)]) != junk)
    raw[start:start + len(junk)] = junk
    path.write_bytes(bytes(raw))
    data, message = attempt(lambda: read(path), path)
    if checksum:
        assert message is not None and "HDU COMPRESSED_IMAGE" in message and "DATASUM" in message
    else:
        assert message is not None or data.shape == SKY.shape


@pytest.mark.fault("fits")
def test_a_stale_checksum_of_an_edited_header_is_no_damage(tmp_path):
    # CHECKSUM covers the header, DATASUM the data: a header edited since (a keyword added by
    # hand) leaves the pixels as they were, so the image is read; only DATASUM is checked.
    path, _ = _compressed(tmp_path / "c.fits", "RICE_1", checksum=True)
    set_cards(path, {"ZVAL3": "16.0"})   # the same value, its comment gone: CHECKSUM now wrong
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fits.open(path, checksum=True, disable_image_compression=True).close()
    assert any("Checksum verification failed" in str(w.message) for w in caught)
    np.testing.assert_allclose(read(path), SKY, atol=0.5)


# ---------------------------------------------------------------------------------------------
# PNG


def _l_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path)
    return path


GREY8 = np.random.default_rng(2).integers(0, 256, (12, 20)).astype(np.uint8)
GREY16 = np.random.default_rng(3).integers(0, 65536, (12, 20)).astype(np.uint16)


@pytest.mark.fault("png")
@pytest.mark.parametrize("mode", ["L", "I;16", "1", "P", "RGB", "RGBA", "LA"])
def test_png_modes_are_read_as_grey_levels_or_luminance(tmp_path, mode):
    # Used: greyscale as it is (16 bits kept); 1-bit as 0/255; palette and colour images as
    # their luminance (documented); a fully transparent pixel (alpha 0, as HiPS tiles mark
    # blank sky) is invalid.
    pixels = GREY16 if mode == "I;16" else GREY8
    path = _l_png(tmp_path / "m.png", pixels, None if mode in ("L", "I;16") else mode)
    if mode in ("RGBA", "LA"):
        image = Image.open(path).convert(mode)
        alpha = np.full(GREY8.shape, 255, np.uint8)
        alpha[3, 4:9] = 0
        image.putalpha(Image.fromarray(alpha))
        image.save(path)
    data = read(path)
    expected = np.asarray(Image.open(path).convert("F" if mode in ("L", "I;16") else "L"),
                          np.float32)
    if mode in ("RGBA", "LA"):
        expected[3, 4:9] = np.nan
    np.testing.assert_array_equal(data, expected)
    if mode == "I;16":
        np.testing.assert_array_equal(data, GREY16)


@pytest.mark.fault("png")
def test_a_palette_png_with_a_transparent_entry_makes_those_pixels_invalid(tmp_path):
    image = Image.fromarray(GREY8).convert("P")
    path = tmp_path / "t.png"
    image.save(path, transparency=int(np.asarray(image)[0, 0]))
    data = read(path)
    assert np.isnan(data[0, 0]) and np.isfinite(data).sum() < data.size


BAD_PNG = {   # name: (file bytes, what the message says)
    "rgb16": (_png(20, 12, 16, 2, b"".join(b"\0" + bytes(20 * 6) for _ in range(12))),
              "a 16-bit colour PNG (RGB;16B), which Pillow reads at 8 bits per channel"),
    "la16": (_png(20, 12, 16, 4, b"".join(b"\0" + bytes(20 * 4) for _ in range(12))),
             "a 16-bit colour PNG (LA;16B)"),
    "palette_without_plte": (_png(20, 12, 8, 3, b"".join(b"\0" + bytes(20) for _ in range(12))),
                             "a palette PNG without its palette (no PLTE chunk)"),
    "bit_depth_3": (_png(20, 12, 3, 0, bytes(100)), "not a readable PNG image"),
    "colour_type_5": (_png(20, 12, 8, 5, bytes(100)), "not a readable PNG image"),
    "zero_size": (_png(0, 0, 8, 0, b""), "not a readable PNG image"),
    "short_idat": (_png(20, 12, 8, 0, bytes(10)), "not a readable PNG image"),
    "text": (b"not an image at all\n" * 10, "not a readable PNG image"),
}


@pytest.mark.fault("png")
@pytest.mark.parametrize("case", BAD_PNG)
def test_png_bit_depths_modes_and_damage_pillow_mishandles_are_refused(tmp_path, case):
    content, expected = BAD_PNG[case]
    path = tmp_path / f"{case}.png"
    path.write_bytes(content)
    refused(lambda: read(path), path, expected)


@pytest.mark.fault("png")
def test_a_file_named_png_that_holds_another_format_is_refused(tmp_path):
    # Pillow opens JPEG, and FITS (without BSCALE/BLANK) too: refused, naming the format.
    Image.fromarray(GREY8).save(tmp_path / "photo.png", format="JPEG")
    refused(lambda: read(tmp_path / "photo.png"), tmp_path / "photo.png", "holds JPEG data")
    fits.PrimaryHDU(SKY).writeto(tmp_path / "image.png", output_verify="ignore")
    refused(lambda: read(tmp_path / "image.png"), tmp_path / "image.png", "holds FITS data",
            ".fits for FITS")


@pytest.mark.fault("png")
@settings(max_examples=40)
@given(mode=st.sampled_from(["L", "I;16", "P"]), cut=st.floats(0, 1, exclude_max=True),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      max_size=3))
def test_a_damaged_png_is_refused_or_read_whole(tmp_path, mode, cut, flips):
    # Read only if the damage missed every pixel (the IEND chunk, ancillary bytes Pillow skips).
    path = _l_png(tmp_path / "d.png", GREY16 if mode == "I;16" else GREY8,
                  "P" if mode == "P" else None)
    whole = read(path)
    raw = bytearray(path.read_bytes())
    for where, value in flips:
        raw[8 + int(where * (len(raw) - 8))] = value   # the signature is checked already
    path.write_bytes(bytes(raw[:max(8, int(cut * len(raw)))] if cut > 0.05 else raw))
    data, message = attempt(lambda: read(path), path)
    if message is None:
        assert data.shape == whole.shape


@pytest.mark.fault("png")
def test_pngs_of_two_bands_are_segmented_without_a_header(tmp_path):
    # Used: a PNG has no header, so the output of a two-band model fed PNGs carries none of
    # the input's cards (the first band's header was dereferenced as if there were one).
    config = {**TINY_MODEL, "in_channels": 2}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "two.pt", build_model(config), config,
                    {"normalization": "minmax", "bands": ["g", "r"]})
    model = load_fits_model(tmp_path / "two.pt", "cpu", "fp32", window=64, overlap=0)
    paths = [_l_png(tmp_path / f"{b}.png", np.roll(GREY8, i)) for i, b in enumerate("gr")]
    segment_fits(model, paths, tmp_path / "seg.fits", bands=["g", "r"])
    check_prediction(tmp_path / "seg.fits", GREY8.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Dataset preparation (data.source: fits) and `astroseg label` over several files


def _field_files(root: Path, n: int = 3) -> None:
    for i in range(n):
        image = np.random.default_rng(i).normal(100, 5, (64, 64)).astype(np.float32)
        image[20:30, 20:30] += 50
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        fits.PrimaryHDU(image).writeto(root / "images" / f"f{i}.fits")
        _l_png(root / "masks" / f"f{i}.png", (image > 120).astype(np.uint8))


def _prepare_params(masks: str) -> DataParams:
    return parse_section(DataParams, merge(tiny_params()["data"], {
        "source": "fits", "fits": {"images": "images/*.fits", "masks": masks, "tile": 32,
                                   "stride": 32}}), "data")


@pytest.mark.fault("fits")
@pytest.mark.parametrize("damage", ["truncated_image", "rgb16_mask", "bitpix_mask"])
def test_a_bad_file_among_the_fields_stops_prepare_and_keeps_the_old_dataset(tmp_path, damage):
    _field_files(tmp_path)
    data = _prepare_params("masks/*.png")
    out = tmp_path / "dataset.h5"
    write_fits_dataset(out, data, tmp_path)
    before = out.read_bytes()
    victim = tmp_path / ("images/f1.fits" if damage == "truncated_image" else "masks/f2.png")
    if damage == "truncated_image":
        victim.write_bytes(victim.read_bytes()[:6000])
        expected = "holds only 3120 bytes of them: truncated"
    elif damage == "rgb16_mask":
        victim.write_bytes(BAD_PNG["rgb16"][0])
        expected = "a 16-bit colour PNG"
    else:
        victim.unlink()
        victim = victim.with_suffix(".fits")
        fits.PrimaryHDU(np.zeros((64, 64), np.uint8)).writeto(victim)
        set_cards(victim, {"BITPIX": "12"})
        data = _prepare_params("masks/*")
        expected = "BITPIX = 12; expected one of"
    refused(lambda: write_fits_dataset(out, data, tmp_path), victim, expected)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == \
        ["dataset.h5", "images", "masks"]


@pytest.mark.fault("fits")
def test_label_reports_each_bad_file_in_one_line_and_labels_the_rest(tmp_path, capsys):
    # `astroseg label` goes on past a bad file (exit status 1 for the batch): one line each.
    good = _wcs_image(tmp_path / "good.fits")
    bad = {"huge.fits": _huge_header(tmp_path / "huge.fits"),
           "rgb16.png": tmp_path / "rgb16.png", "cube.fits": tmp_path / "cube.fits",
           "bitpix.fits": write_fits(tmp_path, "primary")}
    bad["rgb16.png"].write_bytes(BAD_PNG["rgb16"][0])
    fits.PrimaryHDU(np.stack([SKY] * 2)).writeto(bad["cube.fits"])
    set_cards(bad["bitpix.fits"], {"BITPIX": "-16"})
    out = tmp_path / "masks"
    assert cli_main(["label", str(good), *map(str, bad.values()), "-o", str(out),
                     "--box", "8"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == len(bad)
    for line, path in zip(errors, bad.values()):
        assert line.startswith(f"error: {path}: ") and "Error:" not in line, line
    assert [p.name for p in out.iterdir()] == ["good.fits"]


# ---------------------------------------------------------------------------------------------
# `astroseg predict X.fits`: exit status 2, one line, nothing written


def _corrupt_rice(path: Path) -> Path:
    path, info = _compressed(path, "RICE_1", checksum=True)
    raw = bytearray(path.read_bytes())
    raw[info["datLoc"] + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


PREDICT_FITS = {   # input name: (writer, what the message says)
    "huge.fits": (_huge_header, "declares 100000x100000 values"),
    "cut.fits": (lambda p: p.write_bytes(write_fits(p.parent, "scaled").read_bytes()[:4000]),
                 "holds only 1120 bytes of them: truncated"),
    "cube.fits": (lambda p: fits.PrimaryHDU(np.stack([SKY] * 3)).writeto(p),
                  "is a cube of shape (3, 24, 30)"),
    "bitpix.fits": (lambda p: (fits.PrimaryHDU(SKY).writeto(p), set_cards(p, {"BITPIX": "128"})),
                    "HDU 0 has BITPIX = 128"),
    "rice.fits": (_corrupt_rice, "do not match DATASUM"),
    "allnan.fits": (lambda p: fits.PrimaryHDU(np.full((8, 8), np.nan, np.float32)).writeto(p),
                    "no valid pixels"),
}


@pytest.mark.fault("fits")
@pytest.mark.parametrize("name", PREDICT_FITS)
def test_predict_refuses_a_bad_fits_in_one_line_and_keeps_the_old_output(tmp_path, untrained,
                                                                         capsys, name):
    write, expected = PREDICT_FITS[name]
    path = tmp_path / name
    write(path)
    out = tmp_path / "seg.fits"
    out.write_bytes(b"the output of an earlier run")
    status = cli_main(["predict", str(path), "-o", str(out), "--model", str(untrained),
                       "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert expected in one_error_line(captured.err, path)
    assert out.read_bytes() == b"the output of an earlier run"
    assert {p.name for p in tmp_path.iterdir()} <= {name, "seg.fits", "scaled.fits"}  # no temp


@pytest.mark.fault("fits")
def test_the_real_command_refuses_a_huge_header_under_a_memory_cap(tmp_path, untrained):
    # The installed entry point, in a process capped at 3 GB of address space (torch needs
    # about 2): exit status 2, one line, no traceback, no output.
    path = _huge_header(tmp_path / "huge.fits")
    cap = 3 * 2**30
    result = subprocess.run(
        [sys.executable, "-m", "astroseg.cli", "predict", str(path), "-o",
         str(tmp_path / "seg.fits"), "--model", str(untrained), "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    assert_no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert "declares 100000x100000 values" in one_error_line(result.stderr, path)
    assert not (tmp_path / "seg.fits").exists()


# ---------------------------------------------------------------------------------------------
# HDF5 dataset files


def write_dataset(path: Path, n: int = 20, size: int = 8) -> Path:
    """A valid dataset file: float32 images, binary uint8 masks, valid maps, one meta field."""
    rng = np.random.default_rng(4)
    split = Split(rng.random((n, size, size), dtype=np.float32),
                  rng.integers(0, 2, (n, size, size)).astype(np.uint8),
                  {"field": np.arange(n, dtype=np.int32)}, np.ones((n, size, size), np.uint8))
    write_splits(path, [("train", split)], {"class_names": ["background", "source"],
                                            "params": {"seed": 0}})
    return path


def stream_all(path: Path, split: str = "train") -> list[tuple]:
    s = streamed(path, split, 0.001, 0)
    return [(x.shape, y.shape) for x, y in sequential_blocks(s, 0, s.n)]


READERS = {   # every reader of a dataset file, as the stages, `info` and evaluation use them
    "load_split": lambda p: load_split(p, "train"),
    "streamed": stream_all,
    "read_attrs": read_attrs,
    "split_sizes": split_sizes,
    "split_nbytes": lambda p: split_nbytes(p, "train"),
    "read_meta": lambda p: read_meta(p, "train"),
}


def check_split(s: Split) -> None:
    """What load_split promises of whatever it returns."""
    assert s.images.dtype == np.float32 and np.isfinite(s.images).all()
    assert s.masks.dtype == np.uint8 and s.masks.shape == (len(s.images), *s.images.shape[-2:])
    assert (s.masks <= 1).all()
    assert s.valid is None or s.valid.shape == s.masks.shape


def _replace(key: str, value: Any) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[key]
        f[key] = value
    return edit


def _set_attr(key: str, value: Any) -> Callable[[h5py.File], None]:
    return lambda f: f.attrs.__setitem__(key, value)


N, S = 20, 8
MUTATIONS = {   # name: (edit, what load_split's message says)
    "no_train_group": (lambda f: f.__delitem__("train"), "no split 'train' (found: none)"),
    "train_is_a_dataset": (_replace("train", np.ones((N, S))), "train is a dataset of shape "
                           "(20, 8) and dtype float64; expected a group"),
    "no_masks": (lambda f: f["train"].__delitem__("masks"), "train/masks is missing"),
    "images_a_group": (lambda f: (f["train"].__delitem__("images"),
                                  f["train"].create_group("images")), "train/images is a group"),
    "meta_a_dataset": (_replace("train/meta", np.ones(N)), "train/meta is a dataset"),
    "images_text": (_replace("train/images", np.full((N, S, S), b"ab")),
                    "train/images has dtype |S2; expected float32 pixels"),
    "images_int": (_replace("train/images", np.ones((N, S, S), np.int16)),
                   "train/images has dtype int16; expected float32"),
    "images_complex": (_replace("train/images", np.ones((N, S, S), np.complex64)),
                       "has dtype complex64"),
    "images_compound": (_replace("train/images", np.zeros((N, S, S), [("a", "f4"), ("b", "i4")])),
                        "train/images has dtype"),
    "images_beyond_float32": (_replace("train/images", np.full((N, S, S), 1e300)),
                              "train/images holds NaN or infinite values"),
    "masks_float": (_replace("train/masks", np.full((N, S, S), 0.5, np.float32)),
                    "train/masks has dtype float32; expected integer class indices"),
    "masks_negative": (_replace("train/masks", np.full((N, S, S), -1, np.int16)),
                       "train/masks holds the value -1; expected class indices 0 to 1"),
    "masks_300": (_replace("train/masks", np.full((N, S, S), 300, np.int16)),
                  "train/masks holds the value 300"),
    "masks_class_7": (_replace("train/masks", np.full((N, S, S), 7, np.uint8)),
                      "holds the value 7; expected class indices 0 to 1"),
    "images_2d": (_replace("train/images", np.ones((S, S), np.float32)),
                  "train/images has shape (8, 8) and train/masks (20, 8, 8); expected"),
    "images_5d": (_replace("train/images", np.ones((N, 1, 1, S, S), np.float32)),
                  "has shape (20, 1, 1, 8, 8)"),
    "images_scalar": (_replace("train/images", np.float32(1)), "has shape ()"),
    "images_fewer": (_replace("train/images", np.ones((N - 1, S, S), np.float32)),
                     "has shape (19, 8, 8)"),
    "images_wider": (_replace("train/images", np.ones((N, S, S + 1), np.float32)),
                     "has shape (20, 8, 9)"),
    "images_empty": (_replace("train/images", np.ones((N, 0, 0), np.float32)),
                     "H and W >= 1"),
    "valid_other_shape": (_replace("train/valid", np.ones((N, S, S + 1), np.uint8)),
                          "train/valid has shape (20, 8, 9); expected that of train/masks"),
    "valid_float": (_replace("train/valid", np.full((N, S, S), 0.5)), "train/valid has dtype"),
    "meta_too_long": (_replace("train/meta/field", np.arange(N + 3)),
                      "train/meta/field is a dataset of shape (23,)"),
    "meta_text": (_replace("train/meta/field", np.array([b"x"] * N)), "train/meta/field is"),
    "schema_2": (_set_attr("schema_version", 2), "schema_version is 2, this astroseg reads"),
    "schema_text": (_set_attr("schema_version", "1"), "schema_version is '1' (str, not an"),
    "schema_float": (_set_attr("schema_version", 1.5), "schema_version is 1.5 (float"),
    "schema_array": (_set_attr("schema_version", np.array([1, 1])), "schema_version is array("),
    "no_schema": (lambda f: f.attrs.__delitem__("schema_version"), "schema_version is missing"),
    "class_names_not_json": (_set_attr("class_names", "not json"),
                             "root attribute class_names is 'not json'; expected a JSON list"),
    "class_names_array": (_set_attr("class_names", np.array([b"a", b"b"])),
                          "root attribute class_names is array("),
    "fields_not_objects": (_set_attr("fields", "[1, 2]"),
                           "root attribute fields is '[1, 2]'; expected a JSON list of objects"),
    "params_cut": (_set_attr("params", '{"seed": 0'), "root attribute params is"),
}


@pytest.mark.fault("hdf5")
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_dataset_file_off_the_schema_is_refused_by_every_reader(tmp_path, mutation):
    # Every reader refuses it or, where it does not look at the part at fault (read_attrs at
    # a split, split_sizes at mask values), answers; load_split's message is checked.
    edit, expected = MUTATIONS[mutation]
    path = write_dataset(tmp_path / "d.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    refused(lambda: load_split(path, "train"), path, expected)
    for name, reader in READERS.items():
        _, message = attempt(lambda: reader(path), path)
        assert message is not None or name != "streamed"   # it checks what load_split does


@pytest.mark.fault("hdf5")
@settings(max_examples=30)
@given(cut=st.floats(0, 1, exclude_max=True))
def test_a_dataset_file_cut_anywhere_is_refused_by_every_reader(tmp_path, cut):
    path = write_dataset(tmp_path / "d.h5")
    raw = path.read_bytes()
    path.write_bytes(raw[:int(cut * len(raw))])
    for reader in READERS.values():
        refused(lambda: reader(path), path)


@pytest.mark.fault("hdf5")
@settings(max_examples=40)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1,
                                                                            max_size=4)),
                      min_size=1, max_size=3), metadata=st.booleans())
def test_a_dataset_file_with_damaged_bytes_is_refused_or_read_sanely(tmp_path, flips, metadata):
    # HDF5 checksums its metadata, not the pixels: damaged metadata is refused, damaged pixels
    # are read as they are (or refused if they became NaN or the masks left 0..1).
    path = write_dataset(tmp_path / "d.h5")
    raw = bytearray(path.read_bytes())
    span = 4096 if metadata else len(raw)    # the superblock and object headers come first
    for where, junk in flips:
        start = int(where * min(span, len(raw)))
        raw[start:start + len(junk)] = junk
    path.write_bytes(bytes(raw))
    for name, reader in READERS.items():
        result, _ = attempt(lambda: reader(path), path)
        if name == "load_split" and result is not None:
            check_split(result)


# ---------------------------------------------------------------------------------------------
# `astroseg predict X.h5` and `astroseg info`


@pytest.fixture(scope="module")
def h5_model(untrained):
    return load_model(untrained, "cpu", calibration=False)


H5_INPUTS = {   # images dataset (or a writer), and what the message says
    "text": (np.full((2, 8, 8), b"ab"), "images has dtype |S2; expected real numbers"),
    "complex": (np.ones((2, 8, 8), np.complex64), "images has dtype complex64"),
    "compound": (np.zeros((2, 8, 8), [("a", "f4")]), "images has dtype"),
    "bool": (np.ones((2, 8, 8), bool), "images has dtype bool"),
    "no_images": (None, "expected a dataset 'images' of shape (N, H, W); found other (2,)"),
    "group": ("group", "expected a dataset 'images' of shape (N, H, W); found images (group)"),
    "2d": (np.ones((8, 8), np.float32), "expected a dataset 'images' of shape (N, H, W)"),
    "empty": (np.ones((0, 8, 8), np.float32), "images has shape (0, 8, 8): no pixel"),
    "zero_width": (np.ones((2, 8, 0), np.float32), "images has shape (2, 8, 0): no pixel"),
    "nan": (np.full((2, 8, 8), np.nan, np.float32), "images[0:16]: images hold NaN"),
    "stride": (np.ones((2, 9, 9), np.float32), "images are 9x9; this model needs sides that"),
}


@pytest.mark.fault("hdf5")
@pytest.mark.parametrize("case", H5_INPUTS)
def test_predict_h5_refuses_inputs_of_the_wrong_kind_and_writes_nothing(tmp_path, h5_model,
                                                                        untrained, case):
    value, expected = H5_INPUTS[case]
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        if value is None:
            f["other"] = np.ones(2)
        elif isinstance(value, str):
            f.create_group("images")
        else:
            f["images"] = value
    out = tmp_path / "out.h5"
    refused(lambda: segment_h5(h5_model, untrained, "0" * 64, path, out), path, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


@pytest.mark.fault("hdf5")
def test_predict_h5_takes_integer_counts_with_normalize(tmp_path, h5_model, untrained):
    # Used: raw counts (uint16) are pixels; --normalize maps them as training did.
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(5).integers(0, 60000, (3, 16, 16)).astype(np.uint16)
    result = segment_h5(h5_model, untrained, "0" * 64, path, tmp_path / "out.h5", normalize=True)
    with h5py.File(tmp_path / "out.h5") as f:
        prob = f["probabilities"][:]
    assert result.images == 3 and prob.shape == (3, 16, 16) and np.isfinite(prob).all()


@pytest.mark.fault("hdf5")
@settings(max_examples=20)
@given(cut=st.floats(0.05, 1, exclude_max=True), flip=st.booleans())
def test_predict_h5_refuses_a_damaged_input(tmp_path, h5_model, untrained, cut, flip):
    # Cut anywhere, or a chunk's compressed bytes damaged: refused naming the file (an OSError
    # of h5py used to leave it unnamed, with exit status 1); nothing written.
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.random.default_rng(6).random((4, 16, 16), np.float32),
                         chunks=(1, 16, 16), compression="gzip")
    raw = bytearray(path.read_bytes())
    if flip:
        start = len(raw) - int(cut * 2000)   # the gzip chunks lie at the end of the file
        raw[start:start + 16] = bytes(16)
    else:
        raw = raw[:int(cut * len(raw))]
    path.write_bytes(bytes(raw))
    out = tmp_path / "out.h5"
    out.unlink(missing_ok=True)
    _, message = attempt(lambda: segment_h5(h5_model, untrained, "0" * 64, path, out), path)
    assert (message is None) == out.exists()


@pytest.mark.fault("hdf5")
def test_the_real_command_names_a_bad_dataset_in_one_line(tmp_path):
    path = write_dataset(tmp_path / "d.h5")
    with h5py.File(path, "a") as f:
        f.attrs["fields"] = "[1, 2]"
    result = subprocess.run([sys.executable, "-m", "astroseg.cli", "info", str(path)],
                            cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    assert_no_traceback(result)
    assert result.returncode == 2 and result.stdout == ""
    assert "root attribute fields is '[1, 2]'" in one_error_line(result.stderr, path)


@pytest.mark.fault("hdf5")
@pytest.mark.parametrize("case", ["cut", "train_is_a_dataset", "masks_class_7"])
def test_info_refuses_a_damaged_dataset_in_one_line(tmp_path, capsys, case):
    path = write_dataset(tmp_path / "d.h5")
    if case == "cut":
        path.write_bytes(path.read_bytes()[:5000])
    else:
        with h5py.File(path, "a") as f:
            MUTATIONS[case][0](f)
    status = cli_main(["info", str(path)])
    captured = capsys.readouterr()
    if case == "masks_class_7":   # info reads shapes, not pixels: the file looks whole to it
        assert status == 0 and "train: 20 images of 8 x 8" in captured.out
        return
    assert status == 2, captured.err
    one_error_line(captured.err, path)


@pytest.mark.fault("hdf5")
def test_predict_command_refuses_a_bad_h5_in_one_line_and_keeps_the_old_output(tmp_path,
                                                                              untrained, capsys):
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.full((2, 8, 8), b"ab")
    out = tmp_path / "out.h5"
    out.write_bytes(b"the output of an earlier run")
    status = cli_main(["predict", str(path), "-o", str(out), "--model", str(untrained),
                       "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 2 and "images has dtype |S2" in one_error_line(captured.err, path)
    assert out.read_bytes() == b"the output of an earlier run"
