"""Reading real-world FITS/PNG files, per-field normalisation and tiling helpers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from astroseg.errors import DataError
from astroseg.data.fits_io import open_image, parse_hdu, read_image, read_mask, stem
from astroseg.data.normalize import METHODS, fit_field, normalize_array
from astroseg.data.tiling import cut_tiles, ramp, starts, window_weight


def test_scaled_integers_with_blank_become_native_float_with_invalid_pixels(tmp_path):
    raw = np.arange(20, dtype=np.int16).reshape(4, 5)
    raw[1, 2] = -32768
    hdu = fits.PrimaryHDU(raw)
    hdu.header.update(BSCALE=0.5, BZERO=100.0, BLANK=-32768)
    hdu.writeto(tmp_path / "a.fits")
    data, valid, header = read_image(tmp_path / "a.fits")
    assert data.dtype == np.float32 and data.dtype.byteorder in "=|"
    assert not valid[1, 2] and valid.sum() == 19
    assert data[0, 1] == 100.5 and header["BSCALE"] == 0.5


# (stored dtype, BSCALE, BZERO, BLANK): BLANK is a stored value in every layout.
LAYOUTS = {"int16": (np.int16, 1, 0, -32768), "int16_scaled": (np.int16, 0.5, 100.0, -32768),
           "uint16": (np.int16, 1, 32768, -32768), "uint32": (np.int32, 1, 2147483648, -2**31),
           "int32_scaled": (np.int32, 2.0, -10.0, 999)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_blank_is_compared_in_stored_units_for_every_integer_layout(tmp_path, layout):
    dtype, bscale, bzero, blank = LAYOUTS[layout]
    stored = (np.arange(30).reshape(6, 5) * 7 + np.iinfo(dtype).min + 1).astype(dtype)
    stored[1, 2] = stored[4, 0] = blank
    hdu = fits.PrimaryHDU(stored)
    hdu.header.update(BSCALE=bscale, BZERO=bzero, BLANK=blank)
    hdu.writeto(tmp_path / "a.fits")
    expected = stored.astype(np.float64) * bscale + bzero
    with open_image(tmp_path / "a.fits") as src:
        for y0, y1 in ((0, 6), (3, 6)):   # whole image and a section read of a row strip
            data, valid = src.rows(y0, y1)
            assert data.dtype == np.float32 and data.dtype.isnative
            assert np.array_equal(valid, stored[y0:y1] != blank)
            assert np.isnan(data[~valid]).all()
            np.testing.assert_array_equal(data[valid], expected[y0:y1][valid].astype(np.float32))
    if bzero == 2 ** (8 * stored.itemsize - 1):   # astropy's unsigned values agree off BLANK
        data, valid, _ = read_image(tmp_path / "a.fits")
        unsigned = fits.getdata(tmp_path / "a.fits")
        assert unsigned.dtype.kind == "u"
        np.testing.assert_array_equal(data[valid], unsigned[valid].astype(np.float32))


@pytest.mark.fault("fits")
def test_missing_hdu_of_a_scaled_file_is_described_from_headers(tmp_path):
    sci = fits.ImageHDU(np.zeros((6, 5), np.int16), name="SCI")
    sci.header.update(BSCALE=0.25, BZERO=4000.0, BLANK=-32768)
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))], name="CAT")
    fits.HDUList([fits.PrimaryHDU(), sci, table]).writeto(tmp_path / "s.fits")
    listing = "0:PRIMARY PrimaryHDU (no data); 1:SCI ImageHDU (6x5); 2:CAT BinTableHDU (3 rows)"
    with pytest.raises(DataError, match=re.escape(f"s.fits: no HDU 'DQ' (HDUs: {listing})")):
        open_image(tmp_path / "s.fits", "DQ")
    with pytest.raises(DataError, match=re.escape("no HDU 'DQ' (bad-pixel flags)")):
        open_image(tmp_path / "s.fits", None, "DQ")


def test_a_chip_of_a_multi_chip_file_is_chosen_by_name_and_version(tmp_path):
    chips = [fits.ImageHDU(np.full((4, 6), float(v), np.float32), name="SCI", ver=v)
             for v in (1, 2)]
    fits.HDUList([fits.PrimaryHDU(), *chips]).writeto(tmp_path / "mef.fits")
    assert parse_hdu("SCI,2") == ("SCI", 2) and parse_hdu("SCI") == "SCI" and parse_hdu("3") == 3
    data, _, _ = read_image(tmp_path / "mef.fits", parse_hdu("SCI,2"))
    assert (data == 2).all()
    with pytest.raises(DataError, match=re.escape("1:SCI,1 ImageHDU (4x6); 2:SCI,2 ImageHDU")):
        open_image(tmp_path / "mef.fits", parse_hdu("SCI,3"))


@pytest.mark.fault("fits")
def test_bad_pixel_hdu_and_map_flag_pixels_and_must_match_the_image(tmp_path):
    flags = np.zeros((6, 5), np.int16)
    flags[2, 3] = 4
    hdus = [fits.PrimaryHDU(np.ones((6, 5), np.float32)), fits.ImageHDU(flags, name="DQ"),
            fits.ImageHDU(np.zeros((3, 5), np.int16), name="SMALL")]
    fits.HDUList(hdus).writeto(tmp_path / "f.fits")
    bad_map = np.zeros((6, 5), np.uint8)
    bad_map[0, 0] = 1
    Image.fromarray(bad_map).save(tmp_path / "map.png")
    with open_image(tmp_path / "f.fits", None, "DQ", tmp_path / "map.png") as src:
        _, valid = src.read()
        assert np.argwhere(~valid).tolist() == [[0, 0], [2, 3]]
        assert src.rows(1, 4)[1].sum() == 14
    with pytest.raises(DataError, match="f.fits: image is 6x5 but HDU SMALL is 3x5"):
        open_image(tmp_path / "f.fits", None, "SMALL")
    with pytest.raises(DataError, match="map.png: a PNG image has no HDUs"):
        open_image(tmp_path / "map.png", None, "DQ")


def test_inherit_extension_gets_the_primary_cards_it_does_not_set(tmp_path):
    primary = fits.PrimaryHDU()
    primary.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", OBJECT="primary", TELESCOP="T")
    sci = fits.ImageHDU(np.ones((4, 4), np.float32), name="SCI")
    sci.header.update(INHERIT=True, OBJECT="extension")
    plain = fits.ImageHDU(np.ones((4, 4), np.float32), name="PLAIN")
    fits.HDUList([primary, sci, plain]).writeto(tmp_path / "i.fits")
    header = read_image(tmp_path / "i.fits", "SCI")[2]
    assert header["CTYPE1"] == "RA---TAN" and header["TELESCOP"] == "T"
    assert header["OBJECT"] == "extension" and header["NAXIS1"] == 4
    assert "CTYPE1" not in read_image(tmp_path / "i.fits", "PLAIN")[2]


@pytest.mark.fault("fits")
def test_big_endian_float_nan_and_inf_are_invalid(tmp_path):
    raw = np.linspace(0, 1, 12, dtype=">f4").reshape(3, 4)
    raw[0, 0], raw[2, 3] = np.nan, np.inf
    fits.PrimaryHDU(raw).writeto(tmp_path / "b.fits")
    data, valid, _ = read_image(tmp_path / "b.fits")
    assert data.dtype == np.dtype("float32") and data.dtype.isnative
    assert valid.sum() == 10 and not valid[0, 0] and not valid[2, 3]


def test_first_image_extension_is_found_and_named_hdu_is_used(tmp_path):
    sci = fits.ImageHDU(np.ones((6, 7), np.float32), name="SCI")
    dq = fits.ImageHDU(np.zeros((6, 7), np.int16), name="DQ")
    fits.HDUList([fits.PrimaryHDU(), sci, dq]).writeto(tmp_path / "c.fits")
    assert read_image(tmp_path / "c.fits")[0].shape == (6, 7)
    assert (read_image(tmp_path / "c.fits", "DQ")[0] == 0).all()
    assert read_image(tmp_path / "c.fits", 1)[0].sum() == 42


@pytest.mark.fault("fits")
def test_single_plane_cube_reads_as_2d_and_multi_plane_is_refused(tmp_path):
    fits.PrimaryHDU(np.ones((1, 5, 6), np.float32)).writeto(tmp_path / "one.fits")
    assert read_image(tmp_path / "one.fits")[0].shape == (5, 6)
    fits.PrimaryHDU(np.ones((3, 5, 6), np.float32)).writeto(tmp_path / "three.fits")
    with pytest.raises(DataError, match=r"three.fits.*cube of shape \(3, 5, 6\)"):
        open_image(tmp_path / "three.fits")


@pytest.mark.fault("fits")
@pytest.mark.parametrize("case", ["table_only", "not_fits", "missing", "bad_hdu"])
def test_unreadable_inputs_name_the_file(tmp_path, case):
    path = tmp_path / f"{case}.fits"
    if case == "table_only":
        table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))])
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
        match = "no image HDU"
    elif case == "not_fits":
        path.write_bytes(b"this is not a FITS file" * 200)
        match = "not a readable FITS file"
    elif case == "missing":
        match = "not found"
    else:
        fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(path)
        match = "no HDU 'SCI'"
    with pytest.raises(DataError, match=f"{case}.fits.*{match}"):
        read_image(path, "SCI" if case == "bad_hdu" else None)


def test_png_images_and_segmentation_map_masks(tmp_path):
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(tmp_path / "f.png")
    data, valid, header = read_image(tmp_path / "f.png")
    assert data.shape == (6, 8) and data[5, 7] == 47 and valid.all() and header is None
    labels = np.array([[0, 3, 0], [7, 0, np.nan]], np.float32)
    fits.PrimaryHDU(labels).writeto(tmp_path / "seg.fits")
    assert read_mask(tmp_path / "seg.fits").tolist() == [[False, True, False], [True, False, False]]
    assert stem(tmp_path / "x.fits.gz") == "x" and stem("a/b.PNG") == "b"


@pytest.mark.parametrize("method", METHODS)
def test_every_normalisation_maps_valid_pixels_into_unit_range(method):
    # noise is asinh of the S/N, unclipped by design: the sky's noise goes below 0.
    rng = np.random.default_rng(0)
    image = (1000 + 20 * rng.standard_normal((64, 64))).astype(np.float32)
    image[20:30, 20:30] += 5000  # a bright source
    valid = np.ones_like(image, bool)
    valid[0, :5] = False
    image[0, :5] = np.nan
    out, norm = normalize_array(image, valid, method, "test")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    low = -np.arcsinh(10) / np.arcsinh(1e6) if method == "noise" else 0   # 10 sigma below
    assert out.min() >= low and out.max() <= 1 + 1e-6 and (out[0, :5] == 0).all()
    assert out[25, 25] > out[50, 50]  # the source stays brighter than the sky
    assert norm.method == method and norm.lo < norm.hi


def test_minmax_is_the_synthetic_sources_formula_and_streaming_matches_in_memory():
    rng = np.random.default_rng(1)
    image = rng.random((300, 200)).astype(np.float32)
    valid = np.ones_like(image, bool)
    out, norm = normalize_array(image, valid, "minmax", "test")
    expected = (image - image.min()) / (image.max() + np.float32(1e-6) - image.min())
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    streamed = fit_field("asinh", lambda a, b: (image[a:b], valid[a:b]), 300, 200, "t", block=7)
    assert streamed == normalize_array(image, valid, "asinh", "t")[1]


@pytest.mark.fault("fits")
def test_all_invalid_field_is_an_error_naming_it():
    with pytest.raises(DataError, match="field.fits: no valid pixels"):
        normalize_array(np.full((8, 8), np.nan, np.float32), np.zeros((8, 8), bool), "zscale",
                        "field.fits")


def test_window_starts_cover_the_image_and_weights_are_positive():
    assert starts(100, 40, 30) == [0, 30, 60]
    assert starts(30, 40, 30) == [0]
    for size, tile, stride in ((1000, 128, 96), (129, 128, 1), (256, 64, 64)):
        covered = np.zeros(size, bool)
        for s in starts(size, tile, stride):
            covered[s:s + min(tile, size)] = True
        assert covered.all()
    w = ramp(64, 16)
    assert w.min() > 0 and w[16:48].min() == 1 and np.allclose(w, w[::-1])
    assert window_weight(32, 48, 8).shape == (32, 48)
    (tiles,), pos = cut_tiles([np.arange(100 * 90).reshape(100, 90)], 40, 30)
    assert tiles.shape == (len(pos), 40, 40)
    y, x = pos[-1]
    assert tiles[-1][0, 0] == y * 90 + x and (y, x) == (60, 50)


def test_a_weight_map_hdu_written_name_eq_0_flags_its_zero_pixels(tmp_path):
    # A drizzled HST file: SCI is 0 where no exposure covered the sky, and WHT is 0 there.
    rng = np.random.default_rng(0)
    sci = rng.normal(1.0, 0.1, (40, 50)).astype(np.float32)
    wht = np.full(sci.shape, 900.0, np.float32)
    sci[:, :12] = wht[:, :12] = 0
    path = tmp_path / "drz.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"),
                  fits.ImageHDU(wht, name="WHT")]).writeto(path)
    with open_image(path, "SCI", "WHT=0") as src:
        _, valid = src.read()
    assert not valid[:, :12].any() and valid[:, 12:].all()
    with open_image(path, "SCI", "WHT") as src:     # as flags, nonzero = bad: the reverse
        assert not src.read()[1][:, 12:].any()
    with pytest.raises(DataError, match=r"WHTX.*\(weight map\)"):
        open_image(path, "SCI", "WHTX=0")
