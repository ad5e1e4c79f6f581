"""The photutils baseline: finds blobs on noise, tunes on val, scores like the model, as a stage."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from astroseg.data.dataset import Split, write_splits
from astroseg.errors import ParamsError
from astroseg.params import BaselineParams, Params, load_params, parse_section
from astroseg.atomic import write_csv
from astroseg.scoring.baseline import (BaselineScores, Tuning, detect, grid_iou, score, smoothed,
                                       tune)
from conftest import run_stage, tiny_params, write_params

SIZE = 64


def _blobs(n: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, dict]:
    """Two bright round Gaussians (sigma 3 px) per image on Gaussian noise; truth where > 10%."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    images = rng.normal(0.1, noise, (n, SIZE, SIZE))
    clean = np.zeros((n, SIZE, SIZE))
    cx = np.stack([rng.uniform(10, 24, n), rng.uniform(40, 54, n)], 1)
    cy = rng.uniform(10, 54, (n, 2))
    for i in range(n):
        for y, x in zip(cy[i], cx[i]):
            clean[i] += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0 ** 2))
    meta = {"gal_cx": cx.astype(np.float32), "gal_cy": cy.astype(np.float32),
            "gal_snr": np.full((n, 2), 20.0, dtype=np.float32)}
    return (images + clean).astype(np.float32), (clean > 0.1).astype(np.uint8), meta


def test_bright_blobs_on_noise_are_found():
    images, masks, meta = _blobs(6, seed=1)
    scores = BaselineScores()
    labels = scores.add(images, masks, meta, nsigma=3.0, npixels=5, cfg=BaselineParams())
    assert labels.shape == images.shape and labels.dtype == np.int32
    metrics = scores.metrics()
    assert metrics["iou"] > 0.7 and metrics["pooled"]["iou"] > 0.7
    assert metrics["objects"] == {"n_true": 12, "n_pred": 12, "found": 12, "completeness": 1.0,
                                  "purity": 1.0, "splits": 0, "merges": 0,
                                  "merges_in_truth": 0}
    assert set(metrics) == {"iou", "dice", "precision", "recall", "pooled", "objects", "n_images"}
    assert set(metrics["pooled"]) == {"iou", "dice", "precision", "recall"}
    assert metrics["n_images"] == 6
    rows = scores.objects.completeness_rows()
    assert [(r["snr_lo"], r["snr_hi"], r["n"], r["found"]) for r in rows] == [(20.0, 30.0, 12, 12)]


def test_nothing_detected_scores_zero_not_an_error():
    images, masks, _ = _blobs(2, seed=2)
    scores = BaselineScores()
    labels = scores.add(images, masks, {}, nsigma=1e6, npixels=1, cfg=BaselineParams())
    assert not labels.any()
    metrics = scores.metrics()
    assert metrics["iou"] == 0.0 and metrics["objects"]["found"] == 0
    assert metrics["objects"]["n_true"] == 4        # the truth mask's components stand in


def test_tuning_picks_the_best_val_iou_ties_to_the_first():
    images, masks, _ = _blobs(4, seed=3)
    # nsigma 0.01 takes the whole sky, 1e6 nothing, 2 the blobs; npixels 10000 exceeds the image
    # (nothing survives), and 2 and 1 keep the same blobs: a tie the first of them wins.
    cfg = BaselineParams(nsigma=(0.01, 2.0, 1e6), npixels=(10000, 2, 1))
    tuning = tune([(images[:2], masks[:2]), (images[2:], masks[2:])], cfg)   # two blocks
    assert (tuning.nsigma, tuning.npixels) == (2.0, 2)
    ious = {(g["nsigma"], g["npixels"]): g["iou"] for g in tuning.grid}
    assert len(ious) == 9 and tuning.val_iou == ious[(2.0, 2)] == ious[(2.0, 1)]
    assert tuning.val_iou == max(ious.values()) > 0.7
    assert ious[(1e6, 1)] == 0.0 and ious[(2.0, 10000)] == 0.0
    assert set(tuning.record()) == {"nsigma", "npixels", "val_iou", "grid"}


def test_the_sweep_agrees_with_detect_sources_at_each_setting():
    """Filtering by area after one detection equals photutils detecting with that npixels."""
    images, masks, meta = _blobs(3, seed=4, noise=0.15)     # noisy: small false sources
    cfg = BaselineParams(nsigma=(0.3, 0.6, 2.0), npixels=(1, 4, 30))
    sweep = grid_iou(images, masks, cfg)
    for s, nsigma in enumerate(cfg.nsigma):
        for p, npix in enumerate(cfg.npixels):
            direct = score([(images, masks, meta)], Tuning(nsigma, npix, 0.0, []), cfg).metrics()
            assert sweep[s, p].mean() == pytest.approx(direct["iou"], abs=1e-12)
    mean = sweep.mean(-1)
    assert mean[0, 0] < mean[0, 1] < mean[0, 2]      # npixels drops the noise's small sources


@pytest.mark.parametrize("section, message", [
    ({"nsigma": []}, "baseline.nsigma = [] (list): expected a non-empty list"),
    ({"nsigma": [2.0, -1.0]}, "baseline.nsigma = -1.0 is out of range"),
    ({"npixels": [0, 5]}, "baseline.npixels = 0 is out of range"),
    ({"npixels": [2.5]}, "baseline.npixels[0] = 2.5: expected an integer"),
    ({"fwhm": 0}, "baseline.fwhm = 0 is out of range"),
    ({"deblend": "yes"}, "baseline.deblend = 'yes' (str): expected true or false"),
])
def test_bad_params_name_the_key(tmp_path, section, message):
    params = tiny_params(baseline=section)
    with pytest.raises(ParamsError, match="params.yaml: " + message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        load_params(write_params(tmp_path, params))


def test_deblend_separates_touching_sources_and_keeps_the_mask():
    yy, xx = np.mgrid[:48, :48]
    image = (np.exp(-((xx - 20) ** 2 + (yy - 24) ** 2) / 18) +
             np.exp(-((xx - 29) ** 2 + (yy - 24) ** 2) / 18)).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 0.01, image.shape).astype(np.float32)
    data, std = smoothed(image[None], 2.0)
    plain = detect(data[0], std[0], 5.0, 5)
    split = detect(data[0], std[0], 5.0, 5, deblend=True)
    assert plain.max() == 1 and split.max() == 2
    np.testing.assert_array_equal(plain > 0, split > 0)


def test_csv_has_a_header_even_without_snr(tmp_path):
    columns = ["snr_lo", "snr_hi", "snr", "n", "found", "completeness"]
    write_csv(tmp_path / "c.csv", [], columns)
    assert (tmp_path / "c.csv").read_text() == "snr_lo,snr_hi,snr,n,found,completeness\n"
    row = {"snr_lo": 120.0, "snr_hi": float("inf"), "snr": 150.5, "n": 3, "found": 2,
           "completeness": 2 / 3}
    write_csv(tmp_path / "c.csv", [row], columns)
    assert (tmp_path / "c.csv").read_text().splitlines()[1] == "120,inf,150.5,3,2,0.666667"


def test_stage_writes_metrics_and_csv(tmp_path):
    write_params(tmp_path, tiny_params(baseline={"nsigma": [2.0, 4.0], "npixels": [3, 10]}))
    splits = []
    for name, seed in (("train", 5), ("val", 6), ("test", 7)):
        images, masks, _ = _blobs(4, seed)
        splits.append((name, Split(images, masks, {"n_sources": np.full(4, 2, np.uint8)})))
    (tmp_path / "data").mkdir()
    write_splits(tmp_path / "data/dataset.h5", splits,
                 {"source": "synthetic", "class_names": ["background", "source"],
                  "normalization": "minmax", "params": {}})
    result = run_stage("baseline", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("baseline: nsigma ") and "test IoU" in result.stdout
    metrics = json.loads((tmp_path / "metrics/baseline.json").read_text())
    assert {"iou", "dice", "precision", "recall", "pooled", "objects", "n_images",
            "tuned"} <= metrics.keys()
    assert metrics["n_images"] == 4 and metrics["objects"]["n_true"] == 8
    assert len(metrics["tuned"]["grid"]) == 4
    with open(tmp_path / "metrics/baseline_completeness.csv", newline="") as f:
        assert list(csv.reader(f)) == [["snr_lo", "snr_hi", "snr", "n", "found", "completeness"]]


def test_zero_filled_invalid_pixels_neither_set_the_noise_nor_get_detected():
    rng = np.random.default_rng(4)
    image = (100 + rng.normal(0, 2.0, (1, 64, 64))).astype(np.float32)
    valid = np.ones(image.shape, bool)
    valid[0, :, :40] = False             # a mosaic's edge: 60% of the tile was never observed
    image[~valid] = 0
    _, std_blind = smoothed(image, 2.0)
    data, std = smoothed(image, 2.0, valid)
    assert std[0] == pytest.approx(2.0, rel=0.1)        # the image's noise, before smoothing
    assert abs(std_blind[0] - 2.0) > 1.0                 # the zeros drag it far off
    labels = detect(data[0], std[0], 3.0, 5, valid=valid[0])
    assert not (labels[~valid[0]] > 0).any()
    assert (labels > 0).sum() < 20                      # noise only: nothing much found
