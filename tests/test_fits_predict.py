"""`astroseg predict` on FITS: bad pixels read as in training, output headers, CLI behaviour."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from astroseg.models.checkpoint import save_checkpoint
from astroseg.cli import build_parser
from astroseg.cli import main as cli_main
from astroseg.data.dataset import load_split, read_attrs
from astroseg.errors import DataError, ParamsError
from astroseg.models import build_model
from astroseg.data.normalize import Normalization
from astroseg.infer.predict import file_sha256, load_model, predict
from astroseg.infer.predict_fits import normalized_input, predict_fits
from astroseg.data.sky import write_sky
from conftest import ROOT, TINY_MODEL as CONFIG, run_stage, tiny_params, write_params

SIZE, TILE = 96, 48
COSMIC = (30, 40)      # a cosmic ray, flagged in DQ
FLAGGED = (70, 10)     # a hot pixel, flagged in DQ

def _field(path: Path, mask_path: Path, seed: int, dq: bool = True) -> None:
    """A 96x96 float field in SCI (sky ~200, sources up to ~505) with a flagged cosmic ray."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.uniform(20, 76, 2)
    source = 300 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / 6 ** 2)
    sci = (200 + 2 * rng.standard_normal((SIZE, SIZE)) + source).astype(np.float32)
    sci[COSMIC], sci[FLAGGED] = 60000, 900
    flags = np.zeros((SIZE, SIZE), np.int16)
    flags[COSMIC], flags[FLAGGED] = 8, 1
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI")]
    fits.HDUList(hdus + ([fits.ImageHDU(flags, name="DQ")] if dq else [])).writeto(path)
    fits.PrimaryHDU((source > 30).astype(np.uint8)).writeto(mask_path)


@pytest.fixture(scope="module")
def dq_project(tmp_path_factory) -> Path:
    """Four fields with DQ extensions, prepared and trained with data.fits.bad_pixel_hdu: DQ."""
    root = tmp_path_factory.mktemp("dq")
    for sub in ("images", "masks"):
        (root / "raw" / sub).mkdir(parents=True)
    for i in range(4):
        _field(root / f"raw/images/f{i}.fits", root / f"raw/masks/f{i}.fits", seed=i)
    write_params(root, tiny_params(data={"source": "fits", "normalize": "minmax", "fits": {
        "hdu": "SCI", "bad_pixel_hdu": "DQ", "tile": TILE, "stride": TILE,
        "val_fraction": 0.25, "test_fraction": 0.25}}))
    for stage in ("prepare", "train"):
        result = run_stage(stage, root)
        assert result.returncode == 0, result.stderr
    return root


def test_checkpoint_records_the_hdus_read_in_training(dq_project):
    meta = torch.load(dq_project / "models/model.pt", weights_only=True)["meta"]
    assert meta["fits"] == {"hdu": "SCI", "bad_pixel_hdu": "DQ", "bad_pixels": ""}


def test_prepare_and_predict_read_a_field_identically(dq_project):
    dataset = dq_project / "data/dataset.h5"
    meta = torch.load(dq_project / "models/model.pt", weights_only=True)["meta"]
    fields = read_attrs(dataset)["fields"]
    compared = 0
    for split in ("train", "val", "test"):
        tiles = load_split(dataset, split)
        for i, index in enumerate(tiles.meta["field"]):
            field = fields[index]
            image, valid, norm = normalized_input(dq_project / field["image"], meta)
            assert norm == Normalization(**field["normalization"])
            assert norm.hi < 1000     # the flagged cosmic ray (60000) is not the top of the range
            assert not valid[COSMIC] and not valid[FLAGGED] and valid.sum() == SIZE * SIZE - 2
            y, x = tiles.meta["y"][i], tiles.meta["x"][i]
            np.testing.assert_array_equal(tiles.images[i], image[y:y + TILE, x:x + TILE])
            np.testing.assert_array_equal(tiles.valid[i], valid[y:y + TILE, x:x + TILE])
            compared += 1
    assert compared == 16


def _predict_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli_main(["predict", *args, "--device", "cpu", "--window", "48", "--overlap", "8"])
    return code, capsys.readouterr().err


def test_predict_applies_the_trained_bad_pixel_hdu_unless_told_otherwise(dq_project, tmp_path,
                                                                          capsys):
    image, model = dq_project / "raw/images/f0.fits", str(dq_project / "models/model.pt")
    out = tmp_path / "seg.fits"
    assert _predict_cli([str(image), "-o", str(out), "--model", model], capsys)[0] == 0
    with fits.open(out) as hdul:
        prob, mask = hdul[0].data, hdul["MASK"].data
        assert np.isnan(prob[COSMIC]) and np.isnan(prob[FLAGGED]) and np.isnan(prob).sum() == 2
        assert mask[COSMIC] == 0 and mask[FLAGGED] == 0
        # The normalisation prepare fitted to this field, not one stretched to the cosmic ray.
        record = next(f for f in read_attrs(dq_project / "data/dataset.h5")["fields"]
                      if f["name"] == "f0")
        norm = Normalization(**record["normalization"])
        assert (hdul[0].header["ASNLO"], hdul[0].header["ASNHI"]) == (norm.lo, norm.hi)
        assert norm.hi < 1000
    # An explicit '' turns the bad-pixel HDU off: the cosmic ray is an ordinary pixel again.
    off = tmp_path / "off.fits"
    assert _predict_cli([str(image), "-o", str(off), "--model", model, "--bad-pixel-hdu", ""],
                        capsys)[0] == 0
    assert not np.isnan(fits.getdata(off)).any() and fits.getheader(off)["ASNHI"] == 60000
    # A bad-pixel map file flags pixels as well.
    bad_map = tmp_path / "map.fits"
    flags = np.zeros((SIZE, SIZE), np.uint8)
    flags[5, 6] = 1
    fits.PrimaryHDU(flags).writeto(bad_map)
    both = tmp_path / "both.fits"
    assert _predict_cli([str(image), "-o", str(both), "--model", model, "--bad-pixels",
                         str(bad_map)], capsys)[0] == 0
    assert np.argwhere(np.isnan(fits.getdata(both))).tolist() == sorted([[5, 6], list(COSMIC),
                                                                          list(FLAGGED)])


@pytest.mark.fault("fits")
def test_a_trained_hdu_missing_from_the_image_is_a_clear_error(dq_project, tmp_path, capsys):
    image = tmp_path / "nodq.fits"
    _field(image, tmp_path / "nodq_mask.fits", seed=9, dq=False)
    model = dq_project / "models/model.pt"
    code, err = _predict_cli([str(image), "-o", str(tmp_path / "o.fits"), "--model", str(model)],
                             capsys)
    assert code == 2 and err.startswith(f"error: {image}: no HDU 'DQ'")
    assert "data.fits.bad_pixel_hdu = 'DQ'" in err and "--bad-pixel-hdu" in err
    with pytest.raises(DataError, match="no HDU 'DQ'"):
        predict_fits(image, tmp_path / "o.fits", model, "cpu", window=48, overlap=8)
    predict_fits(image, tmp_path / "o.fits", model, "cpu", window=48, overlap=8, bad_pixel_hdu="")
    assert fits.getdata(tmp_path / "o.fits").shape == (SIZE, SIZE)


def test_output_drops_cards_about_input_values_and_keeps_inherited_wcs(untrained, tmp_path):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval = ["RA---TAN", "DEC--TAN"], [150.0, 2.0]
    wcs.wcs.crpix, wcs.wcs.cdelt = [32, 32], [-5e-5, 5e-5]
    primary = fits.PrimaryHDU(header=wcs.to_header())
    primary.header.update(TELESCOP="astroseg test", MAGZP=25.1, GAIN=2.5)
    sci = fits.ImageHDU(np.random.default_rng(0).random((64, 64), np.float32), name="SCI")
    sci.header.update(INHERIT=True, BUNIT="count", DATAMIN=0.0, DATAMAX=1.0, SATURATE=0.9,
                      SATURLEV=0.95, RDNOISE=3.1, READNOIS=3.1, PHOTZPT=24.0, OBJECT="m31")
    fits.HDUList([primary, sci]).writeto(tmp_path / "in.fits")
    predict_fits(tmp_path / "in.fits", tmp_path / "out.fits", untrained, "cpu", window=64)
    with fits.open(tmp_path / "out.fits") as hdul:
        for h in hdul:
            dropped = {"DATAMIN", "DATAMAX", "SATURATE", "SATURLEV", "GAIN", "RDNOISE",
                       "READNOIS", "INHERIT"} & set(h.header)
            assert not dropped, f"{h.name} keeps {dropped}"
            assert h.header["OBJECT"] == "m31" and h.header["TELESCOP"] == "astroseg test"
            assert h.header["MAGZP"] == 25.1 and h.header["PHOTZPT"] == 24.0  # zero points kept
            assert WCS(h.header).wcs.compare(wcs.wcs)   # the primary's WCS, inherited
        assert hdul[0].header["BUNIT"] == "" and "BUNIT" not in hdul["MASK"].header


def test_output_drops_hierarch_value_cards_and_a_cubes_alternate_third_axis(untrained, tmp_path):
    cube = np.random.default_rng(2).random((1, 64, 64), np.float32)
    header = fits.Header()
    for key in ("", "A"):   # the primary WCS and an alternate one, both 3-D like the cube
        header.update({f"WCSAXES{key}": 3, f"CTYPE1{key}": "RA---TAN", f"CTYPE2{key}": "DEC--TAN",
                       f"CTYPE3{key}": "FREQ", f"CRVAL1{key}": 150.0, f"CRVAL2{key}": 2.0,
                       f"CRVAL3{key}": 1.4e9, f"CRPIX1{key}": 32.0, f"CRPIX2{key}": 32.0,
                       f"CRPIX3{key}": 1.0, f"CDELT1{key}": -5e-5, f"CDELT2{key}": 5e-5,
                       f"CDELT3{key}": 1e6})
    header["HIERARCH ESO DET OUT1 GAIN"] = 2.5
    header["HIERARCH ESO DET SATURATION"] = 60000.0
    header["HIERARCH ESO OBS NAME"] = "deep field"
    fits.PrimaryHDU(cube, header).writeto(tmp_path / "cube.fits")
    predict_fits(tmp_path / "cube.fits", tmp_path / "out.fits", untrained, "cpu", window=64)
    with fits.open(tmp_path / "out.fits") as hdul:
        for h in hdul:
            keys = set(h.header)
            assert "ESO DET OUT1 GAIN" not in keys and "ESO DET SATURATION" not in keys
            assert h.header["ESO OBS NAME"] == "deep field"
            for key in ("", "A"):
                w = WCS(h.header, key=key or " ")
                assert w.naxis == 2 and w.has_celestial
                ra, dec = w.wcs_pix2world([[31.0, 31.0]], 0)[0]
                assert (ra, dec) == pytest.approx((150.0, 2.0))


def test_window_rounded_up_to_the_stride_says_so(untrained, tmp_path, capsys):
    image = tmp_path / "img.fits"
    fits.PrimaryHDU(np.random.default_rng(1).random((60, 70), np.float32)).writeto(image)
    args = [str(image), "-o", str(tmp_path / "o.fits"), "--model", str(untrained),
            "--device", "cpu", "--overlap", "8"]
    assert cli_main(["predict", *args, "--window", "44"]) == 0
    captured = capsys.readouterr()
    assert "note: window 44 rounded up to 48, a multiple of the model's stride 8" in captured.err
    assert fits.getheader(tmp_path / "o.fits")["ASWINDOW"] == 48
    assert captured.out.startswith(f"{tmp_path / 'o.fits'}: probability and mask")
    assert cli_main(["predict", *args, "--window", "48"]) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.fault("fits")
def test_predict_names_a_missing_hdu_of_a_scaled_file_without_traceback(untrained, tmp_path):
    write_sky(tmp_path / "sky", n_fields=2, size=64, seed=0)   # BSCALE/BZERO/BLANK, SCI in 01
    image = tmp_path / "sky/images/field_01.fits"
    result = subprocess.run([sys.executable, "-m", "astroseg.cli", "predict", str(image), "-o",
                             str(tmp_path / "o.fits"), "--hdu", "DQ", "--model", str(untrained),
                             "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {image}: no HDU 'DQ'"), result.stderr
    assert "1:SCI ImageHDU (64x64)" in result.stderr


def test_info_says_what_a_non_dataset_file_holds(tmp_path, capsys):
    path = tmp_path / "seg.h5"
    with h5py.File(path, "w") as f:
        f["probabilities"] = np.zeros((2, 8, 8), np.float32)
        f["masks"] = np.zeros((2, 8, 8), np.uint8)
        f.attrs["model_sha256"] = "0" * 64
    assert cli_main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: an `astroseg predict` output, not an astroseg dataset")
    assert "probabilities 2x8x8 float32" in err and "regenerate" not in err
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tmp_path / "x.fits")
    assert cli_main(["info", str(tmp_path / "x.fits")]) == 2
    assert "a FITS image, not an astroseg dataset" in capsys.readouterr().err
    (tmp_path / "notes.md").write_text("# not data\n")
    assert cli_main(["info", str(tmp_path / "notes.md")]) == 2
    err = capsys.readouterr().err
    assert "notes.md: not an HDF5 file, so not an astroseg dataset" in err and "corrupt" not in err


def test_hdf5_input_normalizes_on_request_and_refuses_fits_only_options(untrained, tmp_path,
                                                                        capsys):
    raw = (200 + 5000 * np.random.default_rng(2).random((3, 16, 16))).astype(np.float32)
    raw[0, 2, 3] = np.nan
    path, out = tmp_path / "in.h5", tmp_path / "o.h5"
    with h5py.File(path, "w") as f:
        f["images"] = raw
    args = ["predict", str(path), "-o", str(out), "--model", str(untrained), "--device", "cpu"]
    assert cli_main([*args, "--normalize"]) == 0
    prob, _ = predict(load_model(untrained, "cpu"), raw, normalize=True)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["probabilities"][:], prob, rtol=1e-5, atol=1e-6)
        assert np.isnan(f["probabilities"][0, 2, 3])
    assert cli_main([*args, "--bad-pixel-hdu", "DQ"]) == 2
    assert "--bad-pixel-hdu applies to FITS input" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.dest} has no help"
            if action.default not in (None, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, (name, action.dest)


# ------------------------------------------------- LABELS, MC dropout (STD), calibration

def _image(path: Path, size: int = 64, hole: bool = True) -> Path:
    data = np.random.default_rng(3).random((size, size), np.float32)
    if hole:
        data[10:13, 20:23] = np.nan
    fits.PrimaryHDU(data).writeto(path)
    return path


def _checkpoint(path: Path, **config) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(path, build_model({**CONFIG, **config}), {**CONFIG, **config},
                    {"normalization": "minmax"})
    return path


def test_labels_hdu_numbers_each_8_connected_component_of_mask(untrained, tmp_path):
    from scipy import ndimage

    image = _image(tmp_path / "in.fits", size=96)
    r = predict_fits(image, tmp_path / "out.fits", untrained, "cpu", window=48, overlap=8,
                     threshold=0.55)
    with fits.open(tmp_path / "out.fits") as hdul:
        mask, labels = hdul["MASK"].data, hdul["LABELS"].data
        assert labels.dtype == np.dtype(">i4") and hdul["LABELS"].header["BITPIX"] == 32
        expected, n = ndimage.label(mask > 0, np.ones((3, 3)))
        np.testing.assert_array_equal(labels, expected)
        assert n > 1 and r.sources == n == hdul[0].header["ASNSRC"]
        assert WCS(hdul["LABELS"].header).wcs.compare(WCS(hdul[0].header).wcs)
        assert "STD" not in hdul and hdul[0].header["ASMCSAMP"] == 0


def test_mc_samples_write_std_zero_without_dropout_and_positive_with_it(untrained, tmp_path):
    image = _image(tmp_path / "in.fits")
    plain = _checkpoint(tmp_path / "plain/model.pt", drop_path=0.0, dropout=0.0,
                        attn_dropout=0.0)
    kw = {"device": "cpu", "window": 32, "overlap": 8, "precision": "fp32"}
    predict_fits(image, tmp_path / "det.fits", plain, **kw)
    predict_fits(image, tmp_path / "mc0.fits", plain, mc_samples=4, **kw)
    with fits.open(tmp_path / "mc0.fits") as mc, fits.open(tmp_path / "det.fits") as det:
        std = mc["STD"].data
        assert std.dtype == np.dtype(">f4") and mc[0].header["ASMCSAMP"] == 4
        assert np.isnan(std[10:13, 20:23]).all() and np.isnan(std).sum() == 9
        assert (std[~np.isnan(std)] == 0).all()       # no dropout: every pass agrees exactly
        np.testing.assert_array_equal(mc[0].data, det[0].data)
    predict_fits(image, tmp_path / "mc.fits", untrained, mc_samples=4, **kw)  # dropout 0.1
    predict_fits(image, tmp_path / "mc_again.fits", untrained, mc_samples=4, **kw)
    with fits.open(tmp_path / "mc.fits") as mc, fits.open(tmp_path / "mc_again.fits") as again:
        std = mc["STD"].data
        assert np.nanmax(std) > 0 and np.isnan(std).sum() == 9
        assert mc["STD"].header["BUNIT"] == ""
        np.testing.assert_array_equal(std, again["STD"].data)   # seeded: reruns agree
    with pytest.raises(ParamsError, match="with --tta"):
        predict_fits(image, tmp_path / "x.fits", untrained, mc_samples=4, tta=True, **kw)


def _calibrate(model: Path, temperature: float, sha256: str) -> None:
    (model.parent / "calibration.json").write_text(json.dumps(
        {"temperature": temperature, "calibrated": True, "model_sha256": sha256}))


def test_calibration_divides_the_logits_by_the_fitted_temperature(tmp_path, capsys):
    image = _image(tmp_path / "in.fits")
    model = _checkpoint(tmp_path / "m/model.pt")
    # One window, no overlap: the probability is the sigmoid itself, not a blend of them.
    args = ["predict", str(image), "--model", str(model), "--device", "cpu", "--window", "64",
            "--overlap", "0", "--precision", "fp32"]

    def run(name: str, *extra: str) -> tuple[np.ndarray, fits.Header, str]:
        assert cli_main([*args, "-o", str(tmp_path / name), *extra]) == 0
        with fits.open(tmp_path / name) as hdul:
            return hdul[0].data.astype(np.float64), hdul[0].header, capsys.readouterr().err

    raw, header, err = run("raw.fits")
    assert header["ASCALIB"] is False and header["ASTEMP"] == 1.0
    assert "note:" not in err   # no calibration.json: nothing applied, nothing to say
    _calibrate(model, 2.0, file_sha256(model))
    cal, header, err = run("cal.fits")
    assert header["ASCALIB"] is True and header["ASTEMP"] == 2.0
    assert "logits divided by the temperature 2" in err
    ok = ~np.isnan(raw)
    expected = torch.sigmoid(torch.logit(torch.from_numpy(raw[ok])) / 2).numpy()
    np.testing.assert_allclose(cal[ok], expected, rtol=0, atol=2e-6)
    assert np.abs(cal[ok] - raw[ok]).max() > 1e-3
    off, header, err = run("off.fits", "--no-calibration")
    np.testing.assert_array_equal(off, raw)
    assert header["ASCALIB"] is False and "--no-calibration" in err
    _calibrate(model, 2.0, "0" * 64)   # fitted for another model file: not applied
    other, header, err = run("other.fits")
    np.testing.assert_array_equal(other, raw)
    assert "belongs to another model file" in err
    assert header["ASCALIB"] is False and header["ASTEMP"] == 1.0
