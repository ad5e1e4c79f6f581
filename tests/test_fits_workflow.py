"""`data.source: fits` end to end through the stages, bad inputs, and `astroseg predict` on FITS."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astroseg.cli import main as cli_main
from astroseg.data.dataset import load_split, read_attrs
from astroseg.data.fits_io import read_image
from astroseg.data.normalize import Normalization
from astroseg.infer.predict_fits import predict_fits
from astroseg.data.sky import render_field, write_sky
from conftest import STAGES, run_stage, tiny_params, write_params

FITS_PARAMS = {"data": {"source": "fits", "normalize": "asinh",
                        "fits": {"tile": 48, "stride": 40, "val_fraction": 0.2,
                                 "test_fraction": 0.2}}}


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Path:
    """Five example fields of 160x160 under raw/ (shared, read-only)."""
    root = tmp_path_factory.mktemp("sky")
    write_sky(root / "raw", n_fields=5, size=160, seed=3)
    return root


@pytest.fixture
def fits_project(sky, tmp_path) -> Path:
    shutil.copytree(sky / "raw", tmp_path / "raw")
    write_params(tmp_path, tiny_params(**FITS_PARAMS))
    return tmp_path


def test_make_sky_writes_real_world_fits(sky):
    with fits.open(sky / "raw/images/field_01.fits") as hdul:
        assert hdul[0].data is None and hdul["SCI"].header["BSCALE"] == 0.25
        assert hdul["SCI"].data.dtype == np.float32 and np.isnan(hdul["SCI"].data).any()
        assert WCS(hdul["SCI"].header).has_celestial
    mask = fits.getdata(sky / "raw/masks/field_01.fits")
    assert mask.dtype == np.uint8 and 0 < mask.mean() < 0.5


def test_make_sky_renders_sources_across_block_edges():
    _, mask, _ = render_field(0, 1024, seed=0)
    m = mask.astype(bool)
    for axis, mm in (("columns", m), ("rows", m.T)):
        # Overlap of neighbouring lines' masks (x, x + 1): the block edge 511/512 like the rest.
        union = (mm[:, 1:] | mm[:, :-1]).sum(axis=0)
        overlap = (mm[:, 1:] & mm[:, :-1]).sum(axis=0) / np.maximum(union, 1)
        assert (mm[:, 511] & mm[:, 512]).sum() > 10, f"no source crosses {axis} 511/512"
        assert overlap[511] > 0.8 * np.median(np.delete(overlap, 511)), axis


@pytest.mark.fault("errors")
def test_make_sky_refuses_a_directory_with_fields_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "raw"
    assert cli_main(["make-sky", str(out), "--fields", "3", "--size", "32"]) == 0
    capsys.readouterr()
    assert cli_main(["make-sky", str(out), "--fields", "2", "--size", "32", "--seed", "1"]) == 2
    assert f"error: {out}: already holds 6 make-sky files" in capsys.readouterr().err
    assert len(list(out.glob("*/*.fits"))) == 6
    assert cli_main(["make-sky", str(out), "--fields", "2", "--size", "32", "--seed", "1",
                     "--overwrite"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/*.fits")) == [
        "images/field_00.fits", "images/field_01.fits", "masks/field_00.fits",
        "masks/field_01.fits"]
    # Files make-sky did not write are never deleted, not even with --overwrite.
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(out / "images/mine.fits")
    assert cli_main(["make-sky", str(out), "--fields", "1", "--size", "32", "--overwrite"]) == 2
    assert "holds images make-sky did not write" in capsys.readouterr().err
    assert len(list(out.glob("*/*.fits"))) == 5


def test_prepare_from_fits_splits_by_field_and_keeps_provenance(fits_project):
    result = run_stage("prepare", fits_project)
    assert result.returncode == 0, result.stderr
    attrs = read_attrs(fits_project / "data/dataset.h5")
    assert attrs["source"] == "fits" and attrs["normalization"] == "asinh"
    fields = attrs["fields"]
    assert sorted(f["name"] for f in fields) == [f"field_{i:02d}" for i in range(5)]
    splits = {f["name"]: f["split"] for f in fields}
    seen = {}
    for split in ("train", "val", "test"):
        s = load_split(fits_project / "data/dataset.h5", split)
        assert s.images.shape[1:] == (48, 48) and s.valid is not None
        assert np.isfinite(s.images).all() and s.images.min() >= 0 and s.images.max() <= 1
        names = {fields[i]["name"] for i in s.meta["field"]}
        assert all(splits[n] == split for n in names)   # no field straddles two splits
        seen[split] = names
        # Provenance: a tile is the normalised field cut at its (y, x).
        i = int(np.argmax(s.valid.mean(axis=(1, 2)) < 1))  # a tile touching missing pixels
        field = fields[s.meta["field"][i]]
        raw, valid, _ = read_image(fits_project / field["image"])
        norm = Normalization(**field["normalization"])
        y, x = s.meta["y"][i], s.meta["x"][i]
        expected = norm.apply(raw, valid)[y:y + 48, x:x + 48]
        np.testing.assert_array_equal(s.images[i], expected)
        assert np.array_equal(s.valid[i].astype(bool), valid[y:y + 48, x:x + 48])
        assert (s.masks[i][~valid[y:y + 48, x:x + 48]] == 0).all()
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert len(seen["val"]) == len(seen["test"]) == 1


def test_fits_dataset_trains_and_evaluates_with_unchanged_stages(fits_project):
    for stage in STAGES:
        result = run_stage(stage, fits_project)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    metrics = json.loads((fits_project / "metrics/metrics.json").read_text())
    assert 0 <= metrics["iou"] <= 1 and "spiral" not in metrics


def _break(project: Path, case: str) -> str:
    """Make one input bad; return the text the error must contain."""
    img, msk = project / "raw/images", project / "raw/masks"
    if case == "missing_mask":
        (msk / "field_02.fits").unlink()
        return "field_02.fits: no mask file"
    if case == "shape_mismatch":
        fits.PrimaryHDU(np.zeros((100, 160), np.uint8)).writeto(msk / "field_03.fits", overwrite=True)
        return "field_03.fits: image is 160x160 but .*field_03.fits is 100x160"
    if case == "no_image_hdu":
        table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(2))])
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(img / "field_04.fits", overwrite=True)
        return "field_04.fits: no image HDU"
    if case == "mask_glob_empty":
        params = tiny_params(**FITS_PARAMS)
        params["data"]["fits"]["masks"] = "raw/nothing/*.fits"
        write_params(project, params)
        return "data.fits.masks = 'raw/nothing/\\*.fits' matches no file"
    if case in ("hdu_missing", "bad_pixel_hdu_missing"):   # files with BSCALE/BZERO/BLANK
        params = tiny_params(**FITS_PARAMS)
        params["data"]["fits"][case.removesuffix("_missing")] = "DQ"
        write_params(project, params)
        role = " \\(bad-pixel flags\\)" if case == "bad_pixel_hdu_missing" else ""
        return f"field_0\\d.fits: no HDU 'DQ'{role} \\(HDUs: 0:PRIMARY"
    if case == "all_nan":
        fits.PrimaryHDU(np.full((160, 160), np.nan, np.float32)).writeto(img / "field_00.fits",
                                                                          overwrite=True)
        return "field_00.fits: no valid pixels"
    (img / "field_01.fits").write_bytes((img / "field_01.fits").read_bytes()[:4000])
    return "field_01.fits: .*(truncated|not a readable)"


@pytest.mark.fault("fits")
@pytest.mark.parametrize("case", ["missing_mask", "shape_mismatch", "no_image_hdu",
                                  "mask_glob_empty", "all_nan", "truncated", "hdu_missing",
                                  "bad_pixel_hdu_missing"])
def test_bad_fits_input_fails_clearly_and_keeps_the_old_dataset(fits_project, case):
    out = fits_project / "data/dataset.h5"
    out.parent.mkdir()
    out.write_bytes(b"previous dataset")
    expected = _break(fits_project, case)
    result = run_stage("prepare", fits_project)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert out.read_bytes() == b"previous dataset"
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset.h5"]  # no temp left


# ---------------------------------------------------------------- astroseg predict on FITS

@pytest.fixture(scope="module")
def big_image(tmp_path_factory) -> Path:
    """A 320x256 field with WCS and a NaN patch: bigger than the windows used below."""
    path = tmp_path_factory.mktemp("big") / "big.fits"
    write_sky(path.parent / "sky", n_fields=1, size=320, seed=5)
    data, _, header = read_image(path.parent / "sky/images/field_00.fits")
    data = data[:, :256].copy()
    data[100:110, 40:60] = np.nan
    for key in ("BSCALE", "BZERO", "BLANK"):   # now float data
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def test_predict_fits_keeps_wcs_and_marks_nan_pixels(pipeline_outputs, big_image, tmp_path):
    out = tmp_path / "seg.fits"
    assert cli_main(["predict", str(big_image), "-o", str(out), "--model",
                     str(pipeline_outputs / "models/model.pt"), "--window", "96",
                     "--overlap", "24", "--device", "cpu"]) == 0
    with fits.open(out) as hdul, fits.open(big_image) as src:
        prob, mask = hdul[0].data, hdul["MASK"].data
        assert prob.shape == mask.shape == (320, 256) and mask.dtype == np.uint8
        for h in hdul:
            assert WCS(h.header).wcs.compare(WCS(src[0].header).wcs)
        nan = np.isnan(src[0].data)
        assert np.array_equal(np.isnan(prob), nan) and (mask[nan] == 0).all()
        assert np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1
        assert np.array_equal(mask[~nan], (prob[~nan] >= 0.5).astype(np.uint8))
        h = hdul[0].header
        assert h["ASNORM"] == "minmax" and h["ASTHRESH"] == 0.5 and len(h["ASMHASH"]) == 64


def _predict(model: Path, image: np.ndarray, tmp: Path, name: str, window: int,
             overlap: int) -> np.ndarray:
    src, out = tmp / f"{name}.fits", tmp / f"{name}_seg.fits"
    fits.PrimaryHDU(image).writeto(src)
    # Uncalibrated: the tiny model's temperature (~0.07) would magnify float noise 15 times.
    predict_fits(src, out, model, "cpu", window=window, overlap=overlap, calibration=False)
    return fits.getdata(out)


def test_windows_blend_without_seams_and_shifts_commute(pipeline_outputs, big_image, tmp_path):
    model = pipeline_outputs / "models/model.pt"
    image = np.nan_to_num(read_image(big_image)[0], nan=float(np.nanmedian(read_image(big_image)[0])))
    whole = _predict(model, image, tmp_path, "whole", window=320, overlap=0)
    tiled = _predict(model, image, tmp_path, "tiled", window=64, overlap=24)
    inner = (slice(16, -16), slice(16, -16))
    # Seams: blended windows agree with one window over the whole image.
    diff = np.abs(tiled - whole)[inner]
    assert diff.mean() < 0.01 and diff.max() < 0.2
    # A shift by a multiple of the model stride (not of the window step) shifts the output.
    # The shifted image keeps the same pixel range, so its min-max normalisation is identical.
    shifted = np.roll(image, (40, 24), axis=(0, 1))
    out = _predict(model, shifted, tmp_path, "shifted", window=64, overlap=24)
    back = np.roll(out, (-40, -24), axis=(0, 1))
    core = (slice(56, -16), slice(40, -16))    # away from edges and the wrapped band
    assert np.mean(np.abs(back - tiled)[core]) < 0.01
    # The tiny model is barely trained (a quarter of these pixels lie within 0.02 of 0.5), so
    # masks are compared where the probability is not a coin flip.
    sure = np.abs(tiled[core] - 0.5) > 0.05
    assert sure.mean() > 0.5
    assert np.mean((back[core] >= 0.5)[sure] == (tiled[core] >= 0.5)[sure]) > 0.99


def test_multi_class_model_writes_a_map_per_class(big_image, tmp_path):
    import torch

    from astroseg.models.checkpoint import save_checkpoint
    from astroseg.models import build_model

    config = {"name": "segformer", "num_classes": 3, "dims": [8, 16], "depths": [1, 1],
              "heads": [1, 2], "sr_ratios": [2, 1], "decoder_dim": 16, "refine_dim": 4}
    torch.manual_seed(0)
    model_path = tmp_path / "mc.pt"
    save_checkpoint(model_path, build_model(config), config,
                    {"normalization": "zscale", "class_names": ["background", "disk", "bulge"]})
    out = tmp_path / "mc.fits"
    predict_fits(big_image, out, model_path, "cpu", window=96, overlap=16)
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "PROB_BACKGROUND", "PROB_DISK",
                                          "PROB_BULGE", "LABELS"]
        per_class = np.stack([hdul[i].data for i in (2, 3, 4)])
        good = ~np.isnan(hdul[0].data)
        np.testing.assert_allclose(per_class.sum(axis=0)[good], 1, atol=1e-4)
        np.testing.assert_allclose(hdul[0].data[good], 1 - per_class[0][good], atol=1e-6)
        assert np.array_equal(hdul["MASK"].data[good], per_class.argmax(axis=0)[good])
        assert hdul[0].header["ASNORM"] == "zscale"
