"""Several bands: the synthetic sky in colour, FITS fields with one file per band, and predict."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits

from astroseg.cli import main as cli_main
from astroseg.data.band_files import field_name
from astroseg.data.dataset import load_split, read_attrs
from astroseg.data.fits_io import STRUCTURAL, read_image
from astroseg.data.fits_source import write_fits_dataset
from astroseg.data.sky import write_sky
from astroseg.errors import DataError
from astroseg.figures.plotting import plot_samples
from astroseg.data.synthetic import render
from astroseg.params import BandParams, DataParams, load_params, parse_section
from astroseg.scoring.baseline import split_blocks
from conftest import run_stage, tiny_params, write_params

COLOURS = {"names": ["g", "r", "i"], "galaxy": [0.6, 1.0, 1.3], "bar": [0.4, 1.0, 1.5],
           "spiral": [1.4, 1.0, 0.6]}


def test_synthetic_bands_train_evaluate_and_predict(tmp_path, capsys):
    write_params(tmp_path, tiny_params(data={"bands": COLOURS}, train={"epochs": 1}))
    for stage in ("prepare", "train", "evaluate"):
        result = run_stage(stage, tmp_path)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    data = tmp_path / "data/dataset.h5"
    test = load_split(data, "test")
    # The baseline detects on the bands' mean; the figures show it.
    images, *_ = next(split_blocks(data, "test", 1.0))
    np.testing.assert_allclose(images, test.images.mean(1), rtol=1e-6)
    plot_samples(test.images[:2], test.masks[:2], tmp_path / "samples.png", "magma", 40)
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert test.images.shape == (8, 3, 48, 48) and test.masks.shape == (8, 48, 48)
    assert read_attrs(data)["bands"] == ["g", "r", "i"]
    # Colour: the galaxies are brighter in i than in g relative to the noise, the mask the same.
    checkpoint = torch.load(tmp_path / "models/model.pt", weights_only=True)
    assert checkpoint["model_config"]["in_channels"] == 3
    assert checkpoint["meta"]["bands"] == ["g", "r", "i"]
    # HDF5 predict takes (N, 3, H, W) and refuses one band, naming the bands.
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["images"] = test.images
    model = str(tmp_path / "models/model.pt")
    assert cli_main(["predict", str(tmp_path / "in.h5"), "-o", str(tmp_path / "out.h5"),
                     "--model", model, "--device", "cpu"]) == 0
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["probabilities"].shape == (8, 48, 48)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["images"] = test.images[:, 0]
    assert cli_main(["predict", str(tmp_path / "one.h5"), "-o", str(tmp_path / "x.h5"),
                     "--model", model, "--device", "cpu"]) == 2
    assert "(N, 3, H, W), one plane per band" in capsys.readouterr().err


def test_synthetic_band_zero_of_unit_colours_is_the_one_band_image(tmp_path):
    one = parse_section(DataParams, tiny_params()["data"], "data")
    two = replace(one, bands=BandParams(("a", "b"), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)))
    a, b = render(one, "val", range(6)), render(two, "val", range(6))
    assert b.images.shape == (6, 2, 48, 48)
    assert np.array_equal(a.images, b.images[:, 0]) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(b.images[:, 0], b.images[:, 1])    # each band its own noise


@pytest.mark.parametrize("name,band,field", [("goods_F606W.fits", "F606W", "goods"),
                                             ("F814W-goods.fits.gz", "F814W", "goods"),
                                             ("goods.fits", "F606W", "goods"),
                                             ("hdf_n_v.fits", "v", "hdf_n"),
                                             ("hlsp_candels_hst_acs_goods-s_f606w_v1_drz.fits",
                                              "F606W", "hlsp_candels_hst_acs_goods-s_v1_drz"),
                                             ("m13.fits.fz", "F606W", "m13")])
def test_band_files_pair_by_the_name_without_the_band(name, band, field):
    assert field_name(name, band) == field


@pytest.fixture(scope="module")
def band_sky(tmp_path_factory) -> Path:
    """Three fields in two bands (raw/F1, raw/F2; F2 = 0.6 x F1 + 5), masks in raw/masks."""
    root = tmp_path_factory.mktemp("bands")
    write_sky(root / "src", n_fields=3, size=160, seed=4)
    for band, scale in (("F1", 1.0), ("F2", 0.6)):
        (root / "raw" / band).mkdir(parents=True)
        for path in sorted((root / "src/images").glob("*.fits")):
            data, valid, header = read_image(path)
            data = np.where(valid, data * scale + (5 if scale != 1 else 0), np.nan)
            cards = fits.Header([c for c in header.cards if not STRUCTURAL.match(c.keyword)])
            fits.PrimaryHDU(data.astype(np.float32), cards).writeto(root / "raw" / band / path.name)
    shutil.copytree(root / "src/masks", root / "raw/masks")
    return root


def _band_project(band_sky: Path, tmp: Path, **fits_params) -> Path:
    shutil.copytree(band_sky / "raw", tmp / "raw")
    write_params(tmp, tiny_params(data={"source": "fits", "normalize": "asinh", "fits": {
        "images": "raw/{band}/*.fits", "bands": ["F1", "F2"], "tile": 48, "stride": 40,
        "val_fraction": 0.3, "test_fraction": 0.3, **fits_params}}, train={"epochs": 1}))
    return tmp


def test_fits_bands_are_stacked_normalised_apart_and_predicted(band_sky, tmp_path, capsys):
    project = _band_project(band_sky, tmp_path)
    for stage in ("prepare", "train", "evaluate"):
        result = run_stage(stage, project)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    data = project / "data/dataset.h5"
    attrs = read_attrs(data)
    assert attrs["bands"] == ["F1", "F2"]
    record = attrs["fields"][0]
    lo = [n["lo"] for n in record["normalization"]]
    assert lo[1] != lo[0]       # each band normalised on its own: F2 is offset and scaled
    train = load_split(data, "train")
    assert train.images.shape[1:] == (2, 48, 48)
    # Both bands of the same sky normalise to nearly the same picture.
    assert np.corrcoef(train.images[:, 0].ravel(), train.images[:, 1].ravel())[0, 1] > 0.95
    model = str(project / "models/model.pt")
    f1, f2 = (str(project / f"raw/{b}/field_00.fits") for b in ("F1", "F2"))
    out = tmp_path / "seg.fits"
    base = ["predict", "-o", str(out), "--model", model, "--device", "cpu", "--window", "48",
            "--overlap", "8"]
    assert cli_main([*base, "--band", f"F1={f1}", "--band", f"F2={f2}"]) == 0
    with fits.open(out) as hdul:
        assert hdul[0].header["ASBAND0"] == "F1" and hdul[0].header["ASBAND1"] == "F2"
        assert hdul["MASK"].data.shape == (160, 160)
    capsys.readouterr()
    for args, message in (
            (["--band", f"F2={f2}", "--band", f"F1={f1}"], "bands in the order ['F2', 'F1']"),
            (["--band", f"F1={f1}"], "missing band(s) ['F2']"),
            (["--band", f"F1={f1}", "--band", f"F3={f2}"], "missing band(s) ['F2']"),
            ([f1], "trained on bands ['F1', 'F2']: give one file per band")):
        assert cli_main([*base, *args]) == 2, args
        assert message in capsys.readouterr().err
    # One file per band named on the command line pairs by position, whatever the file names.
    shutil.copy(f1, tmp_path / "v.fits")
    shutil.copy(f2, tmp_path / "i.fits")
    assert cli_main([*base, "--band", f"F1={tmp_path / 'v.fits'}", "--band",
                     f"F2={tmp_path / 'i.fits'}"]) == 0
    # Globs: every field's bands paired by name, one output per field.
    outdir = tmp_path / "survey"
    assert cli_main([*base[:1], "-o", str(outdir), *base[3:], "--band",
                     f"F1={project}/raw/F1/*.fits", "--band", f"F2={project}/raw/F2/*.fits"]) == 0
    assert sorted(p.name for p in outdir.glob("*.fits")) == [f"field_0{i}.fits" for i in range(3)]


@pytest.mark.parametrize("case,message", [
    ("missing", "field 'field_02' (.*) has no file of band F2"),
    ("shape", "band file .* is 150x160"),
    ("wcs", "its WCS puts the sky of .* up to 5 pixels away"),
])
@pytest.mark.fault("fits")
def test_fits_bands_that_do_not_line_up_are_refused(band_sky, tmp_path, case, message):
    project = _band_project(band_sky, tmp_path)
    victim = project / "raw/F2/field_02.fits"
    if case == "missing":
        victim.unlink()
    else:
        with fits.open(victim) as hdul:
            data, header = hdul[0].data, hdul[0].header.copy()
        if case == "shape":
            data = data[:150]
        else:
            header["CRPIX1"] += 5
        fits.PrimaryHDU(data, header).writeto(victim, overwrite=True)
    params = load_params(project / "params.yaml").data
    with pytest.raises(DataError, match=message):
        write_fits_dataset(project / "data/dataset.h5", params, project)
    assert not (project / "data/dataset.h5").exists()
