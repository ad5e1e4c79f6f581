"""The source catalogue of `astroseg predict --catalog`: photutils measurements, RA/Dec, meta."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage

from astroseg.cli import main as cli_main
from astroseg.infer.catalog import source_table, write_catalog
from astroseg.infer.predict import file_sha256

SKY, NOISE = 100.0, 2.0
SOURCES = [(20.3, 30.7, 400.0), (60.0, 15.2, 250.0), (45.5, 70.1, 300.0)]   # y, x, peak

def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval = ["RA---TAN", "DEC--TAN"], [150.1, 2.2]
    wcs.wcs.crpix, wcs.wcs.cdelt = [40.5, 45.0], [-1e-4, 1e-4]
    return wcs


def _field(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian sources on a sky of SKY with noise; and their true (noise-free) light."""
    yy, xx = np.mgrid[0:size, 0:size]
    light = sum(peak * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 3.0 ** 2)
                for y, x, peak in SOURCES)
    noise = NOISE * np.random.default_rng(0).standard_normal((size, size))
    return (SKY + light + noise).astype(np.float32), light


def test_source_table_measures_known_sources_and_places_them_on_the_sky():
    image, light = _field()
    labels, n = ndimage.label(light > 20, np.ones((3, 3)))
    assert n == 3
    valid = np.ones(image.shape, bool)
    valid[0:3, :] = False                       # an invalid strip, away from the sources
    image[0:3, :] = np.nan
    prob = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    prob[labels == 2] = np.linspace(0.6, 0.8, int((labels == 2).sum()))
    error = np.full(image.shape, NOISE, np.float32)
    table = source_table(labels, image, valid, prob, std=np.zeros_like(prob), error=error,
                         header=_wcs().to_header())
    assert list(table["label"]) == [1, 2, 3]
    assert table.colnames == ["label", "xcentroid", "ycentroid", "ra", "dec", "area",
                              "segment_flux", "segment_fluxerr", "semimajor_sigma",
                              "semiminor_sigma", "orientation", "prob_mean", "prob_max",
                              "std_mean"]
    assert table.meta["BKG"] == pytest.approx(SKY, abs=0.2)   # sky subtracted, noise-limited
    for row in table:
        y, x, peak = next(s for s in SOURCES if labels[round(s[0]), round(s[1])] == row["label"])
        assert (row["xcentroid"], row["ycentroid"]) == pytest.approx((x, y), abs=0.1)  # 0-based
        inside = labels == row["label"]
        assert row["area"] == inside.sum()
        assert row["segment_flux"] == pytest.approx(light[inside].sum(), rel=0.02)
        assert row["segment_fluxerr"] == pytest.approx(NOISE * np.sqrt(inside.sum()), rel=1e-6)
        assert row["semimajor_sigma"] == pytest.approx(row["semiminor_sigma"], rel=0.15)
        assert row["prob_mean"] == pytest.approx(prob[inside].mean(), rel=1e-6)
        assert row["prob_max"] == pytest.approx(prob[inside].max(), rel=1e-6)
        assert row["std_mean"] == 0
    sky = _wcs().pixel_to_world(table["xcentroid"], table["ycentroid"])
    np.testing.assert_array_equal(table["ra"], sky.ra.deg)
    np.testing.assert_array_equal(table["dec"], sky.dec.deg)
    assert table["ra"].unit == "deg" and table["area"].unit == "pix2"
    # Without a celestial WCS the columns stay, as NaN; without sources the table is empty.
    bare = source_table(labels, image, valid, prob)
    assert np.isnan(bare["ra"]).all() and bare.meta["SKYFRAME"] == "none"
    assert "segment_fluxerr" not in bare.colnames and "std_mean" not in bare.colnames
    empty = source_table(np.zeros_like(labels), image, valid, prob, header=_wcs().to_header())
    assert len(empty) == 0 and "ra" in empty.colnames


def _input(path: Path) -> Path:
    """The field as a SCI extension with a TAN WCS and counts, an ERR plane and a NaN hole."""
    image, _ = _field()
    image[5:8, 80:83] = np.nan
    sci = fits.ImageHDU(image, header=_wcs().to_header(), name="SCI")
    sci.header["BUNIT"] = "adu"
    err = fits.ImageHDU(np.full(image.shape, NOISE, np.float32), name="ERR")
    fits.HDUList([fits.PrimaryHDU(), sci, err]).writeto(path)
    return path


def test_cli_catalog_columns_meta_and_sky_positions(untrained, tmp_path, capsys):
    image = _input(tmp_path / "field.fits")
    seg, cat = tmp_path / "seg.fits", tmp_path / "cat.ecsv"
    args = ["predict", str(image), "-o", str(seg), "--model", str(untrained), "--device", "cpu",
            "--window", "48", "--overlap", "8", "--hdu", "SCI"]
    assert cli_main([*args, "--catalog", str(cat), "--error-hdu", "ERR",
                     "--mc-samples", "2"]) == 0
    out = capsys.readouterr().out
    table = Table.read(cat)
    assert f"{cat}: catalogue of {len(table)} sources" in out and len(table) > 0
    assert table.colnames == ["label", "xcentroid", "ycentroid", "ra", "dec", "area",
                              "segment_flux", "segment_fluxerr", "semimajor_sigma",
                              "semiminor_sigma", "orientation", "prob_mean", "prob_max",
                              "std_mean"]
    with fits.open(seg) as hdul:
        labels, prob = hdul["LABELS"].data, hdul[0].data
        assert list(table["label"]) == list(range(1, hdul[0].header["ASNSRC"] + 1))
        assert table["area"].sum() == (labels > 0).sum()
        first = labels == 1
        assert table["prob_mean"][0] == pytest.approx(prob[first].mean(), rel=1e-5)
    wcs = WCS(fits.getheader(image, "SCI"))
    sky = wcs.pixel_to_world(table["xcentroid"], table["ycentroid"])
    ok = np.isfinite(table["xcentroid"])
    np.testing.assert_allclose(table["ra"][ok], sky.ra.deg[ok], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["dec"][ok], sky.dec.deg[ok], rtol=0, atol=1e-12)
    assert table["segment_flux"].unit == "adu"
    meta = table.meta
    assert meta["INPUT"] == "field.fits" and meta["SEGMAP"] == "seg.fits"
    assert meta["MODELSHA"] == file_sha256(untrained) and meta["THRESH"] == 0.5
    assert meta["MCSAMP"] == 2 and meta["TEMP"] == 1.0 and meta["CALIB"] is False
    assert meta["FLUXUNIT"] == "adu" and meta["XYORIGIN"] == 0 and meta["ERRHDU"] == "ERR"
    assert meta["SKYFRAME"] == "ICRS" and meta["BKG"] == pytest.approx(SKY, abs=1.0)
    # The same as a FITS binary table; the catalogue function gives what the CLI gave.
    again = tmp_path / "cat.fits"
    assert cli_main([*args, "--catalog", str(again), "--error-hdu", "ERR",
                     "--mc-samples", "2"]) == 0
    fits_table = Table.read(again)
    assert fits_table.colnames == table.colnames and fits_table.meta["MODELSHA"] == meta["MODELSHA"]
    np.testing.assert_allclose(fits_table["ra"], table["ra"])
    third = tmp_path / "third.ecsv"
    n = write_catalog(image, seg, third, {}, "SCI", error_hdu="ERR")
    assert n == len(table)
    np.testing.assert_array_equal(Table.read(third)["segment_flux"], table["segment_flux"])


def test_catalog_options_are_checked_before_any_work(untrained, tmp_path, capsys):
    image = _input(tmp_path / "field.fits")
    seg = tmp_path / "seg.fits"
    base = ["predict", str(image), "-o", str(seg), "--model", str(untrained), "--device", "cpu"]
    cases = [(["--catalog", str(tmp_path / "cat.txt")], "expected a file name ending in .ecsv"),
             (["--catalog", str(seg)], "is the -o output"),
             (["--error-hdu", "ERR"], "give --catalog too"),
             (["--catalog", str(image)], f"--catalog {image}: is the input"),
             (["--mc-samples", "1"], "expected 0 (off) or >= 2"),
             (["--mc-samples", "2", "--tta"], "with --tta"),
             (["--catalog", str(tmp_path / "c.ecsv"), "--error-hdu", "WHT"], "no HDU 'WHT'")]
    for extra, message in cases:
        assert cli_main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not seg.exists()
    stack = tmp_path / "in.h5"
    with h5py.File(stack, "w") as f:
        f["images"] = np.zeros((1, 16, 16), np.float32)
    assert cli_main(["predict", str(stack), "-o", str(tmp_path / "o.h5"), "--model", str(untrained),
                     "--catalog", str(tmp_path / "c.ecsv")]) == 2
    assert "--catalog applies to FITS input" in capsys.readouterr().err


def test_survey_catalogues_resume_and_redo_only_what_is_missing(untrained, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for i in range(2):
        fits.PrimaryHDU(_field()[0] + i).writeto(tmp_path / f"in/f{i}.fits")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "in/*.fits"), "-o", str(out), "--model", str(untrained),
            "--device", "cpu", "--window", "48", "--overlap", "8"]
    assert cli_main([*args, "--catalog", "ecsv"]) == 0
    cats = [out / "f0.cat.ecsv", out / "f1.cat.ecsv"]
    assert all(c.is_file() for c in cats) and (out / "f0.fits").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("f*")}
    # Rerun: everything up to date, catalogues kept.
    assert cli_main([*args, "--catalog", "ecsv"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("f*")} == stamps
    assert "0 segmented, 2 up to date" in capsys.readouterr().out
    # A missing catalogue is made again; its segmentation is not redone.
    cats[1].unlink()
    assert cli_main([*args, "--catalog", "ecsv"]) == 0
    assert cats[1].is_file() and (out / "f1.fits").stat().st_mtime_ns == stamps["f1.fits"]
    assert cats[0].stat().st_mtime_ns == stamps["f0.cat.ecsv"]
    assert "1 segmented, 1 up to date" in capsys.readouterr().out
    # Another --error-hdu makes the catalogues again (here: an HDU that is not there -> failed).
    assert cli_main([*args, "--catalog", "ecsv", "--error-hdu", "ERR"]) == 1
    assert "no HDU 'ERR'" in capsys.readouterr().err
    # A path is not a format in OUTDIR mode.
    assert cli_main([*args, "--catalog", str(tmp_path / "x.ecsv")]) == 2
    assert "--catalog takes a format, ecsv or fits" in capsys.readouterr().err


def test_positions_of_an_old_fk4_plate_come_out_in_icrs():
    from astropy.coordinates import SkyCoord

    wcs = _wcs()
    wcs.wcs.radesys, wcs.wcs.equinox = "FK4", 1950.0
    image, light = _field()
    labels = ndimage.label(light > 20)[0].astype(np.int32)
    valid = np.ones(image.shape, bool)
    table = source_table(labels, image, valid, np.ones(image.shape, np.float32),
                         header=wcs.to_header())
    native = wcs.pixel_to_world(table["xcentroid"], table["ycentroid"])
    assert native.frame.name == "fk4"
    icrs = SkyCoord(native).icrs
    np.testing.assert_allclose(table["ra"], icrs.ra.deg, rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["dec"], icrs.dec.deg, rtol=0, atol=1e-9)
    # B1950 to ICRS moves these positions by about a third of a degree.
    assert abs(table["dec"][0] - native.dec.deg[0]) > 0.1
    assert table.meta["SKYFRAME"] == "ICRS" and table.meta["WCSFRAME"] == "FK4 B1950"


def test_a_degenerate_third_wcs_axis_and_a_galactic_wcs_still_give_icrs_positions():
    image, light = _field()
    labels = ndimage.label(light > 20)[0].astype(np.int32)
    valid, prob = np.ones(image.shape, bool), np.ones(image.shape, np.float32)
    radio = WCS(naxis=3)                      # a 2-D image whose header keeps a FREQ axis
    radio.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ"]
    radio.wcs.crval, radio.wcs.crpix = [150.1, 2.2, 1.4e9], [40.5, 45.0, 1.0]
    radio.wcs.cdelt = [-1e-4, 1e-4, 1e6]
    table = source_table(labels, image, valid, prob, header=radio.to_header())
    sky = radio.celestial.pixel_to_world(table["xcentroid"], table["ycentroid"]).icrs
    np.testing.assert_allclose(table["ra"], sky.ra.deg, rtol=0, atol=1e-12)
    galactic = WCS(naxis=2)
    galactic.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    galactic.wcs.crval, galactic.wcs.crpix, galactic.wcs.cdelt = [30, 1], [40, 45], [-1e-4, 1e-4]
    table = source_table(labels, image, valid, prob, header=galactic.to_header())
    sky = galactic.pixel_to_world(table["xcentroid"], table["ycentroid"]).icrs
    np.testing.assert_allclose(table["dec"], sky.dec.deg, rtol=0, atol=1e-12)
    assert table.meta["WCSFRAME"] == "GALACTIC" and table.meta["SKYFRAME"] == "ICRS"
