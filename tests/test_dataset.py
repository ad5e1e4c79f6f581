"""The HDF5 dataset file: round trip, byte-identical regeneration, clear errors on bad files."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest

from astroseg.data.dataset import (SCHEMA_VERSION, Split, load_split, read_attrs, read_meta,
                                   split_sizes, write_splits)
from astroseg.errors import DataError
from conftest import run_stage, tiny_params, write_params


def _split(n=3, h=8, w=10, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.random((n, h, w), dtype=np.float32), (rng.random((n, h, w)) > 0.5).astype(np.uint8),
                 {"n_sources": np.arange(n, dtype=np.uint8)})


def test_round_trip_keeps_arrays_meta_and_attrs(tmp_path):
    path = tmp_path / "d.h5"
    s = _split()
    write_splits(path, [("train", s), ("val", _split(2, seed=1))], {"source": "test", "params": {"a": 1}})
    back = load_split(path, "train")
    assert np.array_equal(back.images, s.images) and np.array_equal(back.masks, s.masks)
    assert np.array_equal(back.meta["n_sources"], s.meta["n_sources"])
    assert load_split(path, "train", limit=2).images.shape == (2, 8, 10)
    attrs = read_attrs(path)
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["params"] == {"a": 1}
    assert split_sizes(path) == {"train": (3, 8, 10), "val": (2, 8, 10)}


def test_prepare_stage_is_byte_identical_across_runs_and_pixel_neutral_params(workdir):
    # data.chunk and data.workers (how many images are rendered at once, by how many processes)
    # and the unused FITS section change no pixel, so they must not change the file either (or
    # DVC would retrain everything). Chunks of 5 and 7 cross the file's HDF5 chunks of 16 rows.
    digests = []
    for override in ({"data": {"workers": 1}},
                     {"data": {"chunk": 5, "workers": 2, "fits": {"tile": 256, "images": "x/*.fits"}}},
                     {"data": {"chunk": 7, "workers": 3}}):
        write_params(workdir, tiny_params(**override))
        result = run_stage("prepare", workdir)
        assert result.returncode == 0, result.stderr
        digests.append(hashlib.sha256((workdir / "data" / "dataset.h5").read_bytes()).hexdigest())
    assert digests[0] == digests[1] == digests[2]
    assert split_sizes(workdir / "data" / "dataset.h5") == {
        "train": (32, 48, 48), "val": (8, 48, 48), "test": (8, 48, 48)}
    stored = read_attrs(workdir / "data" / "dataset.h5")["params"]
    assert not {"chunk", "workers", "fits"} & set(stored) and stored["n_train"] == 32


@pytest.mark.fault("hdf5")
def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "d.h5"
    write_splits(path, [("train", _split(20, 64, 64))], {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{path}: not a readable HDF5 file"):
        load_split(path, "train")


@pytest.mark.fault("hdf5")
def test_missing_file_split_and_wrong_schema(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_split(tmp_path / "none.h5", "train")
    path = tmp_path / "d.h5"
    write_splits(path, [("train", _split())], {})
    with pytest.raises(DataError, match="no split 'test' \\(found: train\\)"):
        load_split(path, "test")
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DataError, match="schema_version is 99"):
        load_split(path, "train")


@pytest.mark.fault("hdf5")
def test_nan_pixels_are_refused(tmp_path):
    path = tmp_path / "d.h5"
    s = _split()
    s.images[1, 2, 3] = np.nan
    write_splits(path, [("train", s)], {})
    with pytest.raises(DataError, match="train/images holds NaN"):
        load_split(path, "train")


def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "d.h5"
    write_splits(path, [("train", _split())], {})
    before = path.read_bytes()
    bad = Split(np.zeros((2, 4, 4), np.float32), np.zeros((3, 4, 4), np.uint8))  # masks too many
    with pytest.raises(Exception):
        write_splits(path, [("train", bad)], {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temp file left behind


def test_prepare_writes_the_truth_per_galaxy_as_rows_of_meta(workdir):
    result = run_stage("prepare", workdir)
    assert result.returncode == 0, result.stderr
    meta = read_meta(workdir / "data/dataset.h5", "test")
    n, k = len(meta["n_sources"]), tiny_params()["data"]["galaxies"]["count"][1]
    for name in ("gal_cx", "gal_cy", "gal_a", "gal_b", "gal_theta", "gal_peak", "gal_flux",
                 "gal_snr"):
        assert meta[name].shape == (n, k), name
    assert ((~np.isnan(meta["gal_snr"])).sum(1) == meta["n_sources"]).all()
