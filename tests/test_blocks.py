"""`data.fits.split`: whole fields or blocks of one mosaic, with no pixel in two splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from astroseg.data.blocks import deal, deal_blocks, edges
from astroseg.data.dataset import load_split, read_attrs
from astroseg.data.sky import write_sky
from conftest import run_stage, tiny_params, write_params

TILE, STRIDE, BLOCK = 48, 40, 112


def _gap(a: np.ndarray, b: np.ndarray, tile: int) -> np.ndarray:
    """Chebyshev gap in pixels between tile squares starting at each row of a and of b."""
    d = np.abs(a[:, None, :] - b[None, :, :]) - tile    # per axis: < 0 where they overlap
    return np.maximum(d[..., 0], d[..., 1])


@pytest.mark.parametrize("shape,seed", [((480, 480), 0), ((300, 700), 1), ((1000, 250), 2),
                                        ((256, 256), 3)])
def test_tiles_of_different_splits_are_a_guard_band_apart(shape, seed):
    grid = deal_blocks([shape], BLOCK, 0.2, 0.2, seed)[0]
    assert sorted(set(grid.split.ravel())) == [0, 1, 2]
    tiles = grid.tiles(TILE, STRIDE, TILE)
    for s, pos in tiles.items():
        assert len(pos) > 0, f"split {s} got no tile"
        assert (pos >= 0).all() and (pos[:, 0] + TILE <= shape[0]).all() \
            and (pos[:, 1] + TILE <= shape[1]).all()
        # Every pixel of a tile lies in a block of its own split.
        for y, x in pos:
            i = np.searchsorted(grid.ys, [y, y + TILE - 1], side="right") - 1
            j = np.searchsorted(grid.xs, [x, x + TILE - 1], side="right") - 1
            assert (grid.split[i[0]:i[1] + 1, j[0]:j[1] + 1] == s).all()
    for s in range(3):
        for t in range(s + 1, 3):
            assert _gap(tiles[s], tiles[t], TILE).min() >= TILE, (s, t)


def test_blocks_cover_the_field_and_are_dealt_by_the_fractions():
    assert list(edges(1000, 256)) == [0, 333, 667, 1000]
    assert list(edges(900, 256)) == [0, 300, 600, 900]     # never under 256: 225 was possible
    assert list(edges(100, 256)) == [0, 100]
    split = deal(20, 0.15, 0.25, seed=7, what="blocks")
    assert np.bincount(split).tolist() == [12, 3, 5]
    assert np.array_equal(split, deal(20, 0.15, 0.25, seed=7, what="blocks"))
    with pytest.raises(Exception, match="2 blocks found; need at least 3"):
        deal(2, 0.15, 0.15, seed=0, what="blocks")


@pytest.fixture(scope="module")
def one_field(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mosaic")
    write_sky(root / "raw", n_fields=1, size=448, seed=5)
    return root


def _project(raw: Path, tmp: Path, **fits) -> Path:
    shutil.copytree(raw, tmp / "raw")
    write_params(tmp, tiny_params(data={"source": "fits", "normalize": "asinh", "fits": {
        "tile": TILE, "stride": STRIDE, "block": BLOCK, "val_fraction": 0.2,
        "test_fraction": 0.2, **fits}}))
    return tmp


def test_one_mosaic_trains_end_to_end_with_no_pixel_in_two_splits(one_field, tmp_path):
    project = _project(one_field / "raw", tmp_path)
    for stage in ("prepare", "train", "evaluate"):
        result = run_stage(stage, project)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    path = project / "data/dataset.h5"
    record, = read_attrs(path)["fields"]
    assert record["split"] == "block" and min(record["tiles"].values()) > 0
    assert record["first_block"] == 0
    covered = {}
    for split in ("train", "val", "test"):
        s = load_split(path, split)
        assert (s.meta["field"] == 0).all() and (s.meta["block"] >= 0).all()
        blocks = {tuple(record["blocks"][b][:4]) for b in s.meta["block"]}
        assert all(record["blocks"][b][4] == split for b in s.meta["block"])
        pixels = np.zeros((448, 448), bool)
        for y, x in zip(s.meta["y"], s.meta["x"]):
            pixels[y:y + TILE, x:x + TILE] = True
        covered[split] = pixels
        assert blocks
    assert not (covered["test"] & (covered["train"] | covered["val"])).any()
    assert not (covered["val"] & covered["train"]).any()


def test_two_fields_split_by_block_unless_told_by_field(one_field, tmp_path):
    raw = tmp_path / "src"
    write_sky(raw, n_fields=2, size=256, seed=6)
    project = _project(raw, tmp_path / "auto")
    assert run_stage("prepare", project).returncode == 0
    records = read_attrs(project / "data/dataset.h5")["fields"]
    assert [r["split"] for r in records] == ["block", "block"]
    assert records[1]["first_block"] == len(records[0]["blocks"])
    # Every tile's block, counted over both fields, is one of its own split.
    for split in ("train", "val", "test"):
        s = load_split(project / "data/dataset.h5", split)
        for field, block in zip(s.meta["field"], s.meta["block"]):
            r = records[field]
            assert r["blocks"][block - r["first_block"]][4] == split
    project = _project(raw, tmp_path / "field", split="field")
    result = run_stage("prepare", project)
    assert result.returncode != 0
    assert "2 field(s) found and data.fits.split = field" in result.stderr
    assert not (project / "data/dataset.h5").exists()


def test_fractions_must_leave_fields_for_training_in_either_split():
    from astroseg.errors import ParamsError
    from astroseg.params import FitsParams, parse_section
    for split in ("auto", "field", "block"):
        with pytest.raises(ParamsError, match="must be < 1 to leave fields"):
            parse_section(FitsParams, {"split": split, "val_fraction": 0.6,
                                       "test_fraction": 0.5}, "data.fits")


def test_blocks_without_valid_pixels_stay_out_of_val_and_test():
    coverage = np.array([0.0, 0.0, 0.1, 0.9, 1.0, 1.0, 0.0, 0.2, 1.0, 1.0])
    for seed in range(20):
        split = deal(10, 0.2, 0.2, seed, "blocks", coverage)
        assert (split[coverage == 0] == 0).all()          # nothing to cut: left to train
        assert (coverage[split > 0] >= 0.5).all()         # val and test get well-covered blocks
        assert np.bincount(split, minlength=3)[1:].tolist() == [1, 1]   # of 7 usable blocks


def test_a_mosaic_with_an_empty_corner_splits_whatever_the_seed(one_field, tmp_path):
    from astropy.io import fits
    from astroseg.data.fits_io import read_image
    raw = tmp_path / "raw"
    shutil.copytree(one_field / "raw", raw)
    image = raw / "images/field_00.fits"
    data, valid, _ = read_image(image)
    yy, xx = np.mgrid[:448, :448]
    data = np.where(valid & (xx + yy > 380), data, np.nan)    # a rotated footprint's corner
    fits.PrimaryHDU(data.astype(np.float32)).writeto(image, overwrite=True)
    for seed in (1, 2):
        project = tmp_path / f"s{seed}"
        shutil.copytree(raw, project / "raw")
        write_params(project, tiny_params(data={"source": "fits", "seed": seed, "fits": {
            "tile": TILE, "stride": STRIDE, "block": BLOCK, "val_fraction": 0.2,
            "test_fraction": 0.2}}))
        result = run_stage("prepare", project)
        assert result.returncode == 0, result.stderr
        record, = read_attrs(project / "data/dataset.h5")["fields"]
        assert min(record["tiles"].values()) > 0
