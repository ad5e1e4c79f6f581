"""`astroseg label`: photutils segmentation maps for images without masks, on real FITS files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astroseg.cli import main as cli_main
from astroseg.data.fits_io import open_image, read_mask, stem
from astroseg.data.fits_source import find_fields
from astroseg.data.labeling import LabelSettings, label_image
from astroseg.data.sky import render_field, write_sky
from astroseg.params import FitsParams

# Pixel IoU of (labels > 0) with make-sky's true masks, per field of write_sky(_, 3, 256, 0),
# measured at the defaults: 0.622, 0.564, 0.495. The truth ends where a galaxy falls below a
# fraction of its peak, photutils where it falls below 1.5 sigma of the noise, so the labels
# are about twice the true area; the floors sit a little under the measured values.
IOU_FLOOR = {"field_00": 0.59, "field_01": 0.53, "field_02": 0.46}


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """Three 256x256 example fields (WCS, BLANK chip gap and star, one in a SCI extension)."""
    root = tmp_path_factory.mktemp("sky")
    write_sky(root, n_fields=3, size=256, seed=0)
    return root


def _write(path, data, header=None):
    fits.PrimaryHDU(np.asarray(data), header).writeto(path)
    return path


def _blobs(shape, centres, sigma=2.5, peak=20.0, seed=0):
    """Gaussian sources on unit-noise sky at level 100."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    image = 100 + np.random.default_rng(seed).standard_normal(shape)
    for cy, cx in centres:
        image += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return image.astype(np.float32)


def test_labels_sky_fields_pair_with_images_and_match_the_truth(sky, capsys):
    images = sorted((sky / "images").glob("*.fits"))
    out = sky / "labels"
    assert cli_main(["label", str(sky / "images" / "*.fits"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[-1].startswith(f"{out}: 3 labelled (")
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in images]   # no temp left
    for image, line in zip(images, printed):
        mask = out / image.name
        assert line.startswith(f"{image} -> {mask}: ") and "% of the valid pixels" in line
        with open_image(image) as src:
            data, valid = src.read()
            image_wcs = WCS(src.header).celestial
        with fits.open(mask) as hdul:
            labels, header = hdul[0].data, hdul[0].header
        assert labels.dtype == np.dtype(">i4") and labels.shape == data.shape
        assert header["LBNSIGMA"] == 1.5 and header["LBNPIX"] == 5 and header["LBFWHM"] == 3.0
        assert header["LBBOX"] == 64 and header["LBBKG"] == "2D" and header["LBDEBL"] is False
        assert "astroseg" in str(header["HISTORY"]) and "photutils" in str(header["HISTORY"])
        # Labels 1..N, N in the header and the printed line.
        n = header["LBNSRC"]
        assert n > 0 and set(np.unique(labels)) == set(range(n + 1))
        assert line.split(": ")[1].startswith(f"{n} sources")
        # The image's celestial WCS (field_01's sits in its SCI extension).
        mask_wcs = WCS(header)
        assert list(mask_wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
        np.testing.assert_allclose(mask_wcs.wcs.crval, image_wcs.wcs.crval)
        np.testing.assert_allclose(mask_wcs.pixel_scale_matrix, image_wcs.pixel_scale_matrix)
        assert (~valid).sum() > 0 and not labels[~valid].any()   # gap and star: never labelled
        truth = read_mask(sky / "masks" / image.name)
        source = labels > 0
        iou = (source & truth).sum() / (source | truth).sum()
        assert iou > IOU_FLOOR[stem(image)], f"{image.name}: IoU {iou:.3f}"
    # The masks pair with the images by name, as the prepare stage reads them.
    fields = find_fields(FitsParams(images="images/*.fits", masks="labels/*.fits"), sky)
    assert [(f.image.name, f.mask.name) for f in fields] == [(p.name, p.name) for p in images]


def test_varying_sky_is_followed_by_the_2d_background():
    counts, _, missing = render_field(0, 512, 0)
    valid = ~missing
    yy, xx = np.mgrid[0:512, 0:512]
    # A sky rising by 720 counts from corner to corner: 28 sigma of the noise (25.7 counts).
    sloped = (counts + 720.0 * (xx + yy) / 1024).astype(np.float32)
    flat = label_image(counts, valid, LabelSettings()).labels > 0
    local = label_image(sloped, valid, LabelSettings())
    # box 512: the image is under two boxes, so one global level and RMS.
    single = label_image(sloped, valid, LabelSettings(box=512))
    assert local.background == "2d" and single.background == "global"

    def iou(a):
        return (a & flat).sum() / (a | flat).sum()
    # Measured: 0.848 with the 2-D background, 0.339 with one level.
    assert iou(local.labels > 0) > 0.8 and iou(single.labels > 0) < 0.5


def test_a_tiny_image_falls_back_to_global_statistics(tmp_path, capsys):
    image = _write(tmp_path / "tiny.fits", _blobs((40, 40), [(20, 20)]))
    out = tmp_path / "masks"
    assert cli_main(["label", str(image), "-o", str(out)]) == 0
    assert "1 sources" in capsys.readouterr().out
    labels = fits.getdata(out / "tiny.fits")
    header = fits.getheader(out / "tiny.fits")
    assert header["LBBKG"] == "GLOBAL" and header["LBNSRC"] == 1
    assert labels[20, 20] == 1 and labels[0, 0] == 0 and "CTYPE1" not in header


def test_deblend_and_bad_pixel_hdu(tmp_path, capsys):
    # Two touching sources, and a third under a DQ flag.
    data = _blobs((64, 64), [(30, 24), (30, 35), (52, 52)], sigma=3.0, peak=40.0)
    dq = np.zeros((64, 64), np.int16)
    dq[44:61, 44:61] = 4
    path = tmp_path / "frame.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"),
                  fits.ImageHDU(dq, name="DQ")]).writeto(path)
    base = ["label", str(path), "--hdu", "SCI", "--bad-pixel-hdu", "DQ", "--box", "16"]
    assert cli_main(base + ["-o", str(tmp_path / "a")]) == 0
    assert cli_main(base + ["-o", str(tmp_path / "b"), "--deblend"]) == 0
    capsys.readouterr()
    plain, split = fits.getdata(tmp_path / "a/frame.fits"), fits.getdata(tmp_path / "b/frame.fits")
    assert plain.max() == 1 and split.max() == 2          # the flagged one is not detected
    assert not plain[dq > 0].any()
    np.testing.assert_array_equal(plain > 0, split > 0)   # deblending keeps the binary mask
    assert fits.getheader(tmp_path / "b/frame.fits")["LBDEBL"] is True


@pytest.mark.fault("fits")
def test_bad_files_are_reported_and_the_others_labelled(sky, tmp_path, capsys):
    good = sky / "images" / "field_00.fits"
    nan = _write(tmp_path / "nan.fits", np.full((64, 64), np.nan, np.float32))
    constant = _write(tmp_path / "flat.fits", np.full((64, 64), 7.0, np.float32))
    truncated = tmp_path / "cut.fits"
    truncated.write_bytes(good.read_bytes()[:8000])
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file\n")
    other = tmp_path / "readme.txt"
    other.write_text("not an image\n")
    out = tmp_path / "masks"
    bad = [nan, constant, truncated, text, other]
    assert cli_main(["label", str(nan), str(good), str(constant), str(truncated), str(text),
                     str(other), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == len(bad)
    for path, line in zip(bad, errors):
        assert line.startswith(f"error: {path}: ")
    assert "no valid pixel" in errors[0] and "constant image" in errors[1]
    assert "truncated or corrupt" in errors[2] and "not a readable FITS file" in errors[3]
    assert "unknown image type" in errors[4]
    assert f"{good} -> {out / 'field_00.fits'}" in captured.out
    assert f"{out}: 1 labelled" in captured.out and "5 failed, of 6 images" in captured.out
    assert [p.name for p in out.iterdir()] == ["field_00.fits"]


def test_existing_masks_and_inputs_are_not_replaced(sky, tmp_path, capsys):
    image = sky / "images" / "field_02.fits"
    out = tmp_path / "masks"
    assert cli_main(["label", str(image), "-o", str(out)]) == 0
    mask = out / "field_02.fits"
    before = mask.read_bytes()
    os.utime(mask, (0, 0))
    capsys.readouterr()
    assert cli_main(["label", str(image), "-o", str(out), "--nsigma", "3"]) == 1
    err = capsys.readouterr().err
    assert f"{mask}: already exists" in err and "--overwrite" in err
    assert mask.read_bytes() == before and mask.stat().st_mtime == 0
    assert cli_main(["label", str(image), "-o", str(out), "--nsigma", "3", "--overwrite"]) == 0
    assert fits.getheader(mask)["LBNSIGMA"] == 3.0
    # A mask path that is the input itself is refused before any work, --overwrite or not.
    before = image.read_bytes()
    assert cli_main(["label", str(image), "-o", str(sky / "images"), "--overwrite"]) == 2
    assert "never writes over an input" in capsys.readouterr().err
    assert image.read_bytes() == before
    # Two images of one name would share a mask.
    twin = _write(tmp_path / "field_02.fits", _blobs((40, 40), [(20, 20)]))
    assert cli_main(["label", str(image), str(twin), "-o", str(tmp_path / "twins")]) == 2
    assert "would both be labelled to" in capsys.readouterr().err


@pytest.mark.fault("params")
@pytest.mark.parametrize("option,value", [("--nsigma", "0"), ("--nsigma", "-1"),
                                          ("--nsigma", "nan"), ("--npixels", "0"),
                                          ("--fwhm", "0"), ("--fwhm", "inf"), ("--box", "3")])
def test_bad_option_values_are_refused_by_name(sky, tmp_path, capsys, option, value):
    out = tmp_path / "masks"
    assert cli_main(["label", str(sky / "images" / "field_00.fits"), "-o", str(out),
                     option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option} = ") and err.count("\n") == 1
    assert not out.exists()
