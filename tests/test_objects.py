"""Object matching on hand-made masks with known answers: a split, a merge, a miss, a false one."""

from __future__ import annotations

import time

import numpy as np
import pytest

from astroseg.errors import DataError
from astroseg.scoring.objects import (SNR_EDGES, ObjectScorer, component_centres, components,
                                      truth_objects)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Truth A split in two, B1 + B2 merged by one prediction, C missed, D false."""
    truth = np.zeros((40, 40), dtype=bool)
    pred = np.zeros_like(truth)
    truth[2:9, 2:9] = True                 # A: 7x7, centre (5, 5)
    pred[2:9, 2:6] = True                  # ... seen as cols 2-5 (holds A's centre)
    pred[2:9, 7:9] = True                  # ... and cols 7-8: a split
    truth[12:17, 2:7] = True               # B1: 5x5, centre (14, 4)
    truth[12:17, 8:10] = True              # B2: 5x2, centre (14, 8) (nearest of a tie)
    pred[12:17, 2:10] = True               # one prediction over both (and the gap): a merge
    truth[20:23, 20:23] = True             # C: no prediction: a miss
    pred[25:28, 30:33] = True              # D: no truth: a false detection
    return pred, truth


def test_components_are_8_connected_and_centres_lie_inside():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1, 1] = mask[2, 2] = True         # diagonal neighbours: one component
    ring = np.zeros((10, 10), dtype=bool)
    ring[4:9, 4:9] = True
    ring[5:8, 5:8] = False                 # centroid (6, 6) is a hole
    labels, n = components(mask | ring)
    assert n == 2
    centres = component_centres(labels, n)
    assert (labels[centres[:, 0], centres[:, 1]] == [1, 2]).all()
    assert tuple(centres[1]) != (6, 6)


def test_split_merge_miss_and_false_positive_counts():
    pred, truth = _scene()
    scorer = ObjectScorer()
    found = scorer.add(pred, truth)
    # Truth components in raster order of their first pixel: A, B1, B2, C.
    assert found.tolist() == [True, True, True, False]
    assert scorer.summary() == {"n_true": 4, "n_pred": 4, "found": 3, "completeness": 0.75,
                                "purity": 0.75, "splits": 1, "merges": 1,
                                "merges_in_truth": 0}


def test_given_centres_are_rounded_and_clipped_and_counts_sum_over_images():
    pred, truth = _scene()
    scorer = ObjectScorer()
    # A's centre a fraction off, B1 and B2, C; then a centre outside the image, clipped to
    # the corner (0, 39), where there is nothing.
    centres = np.array([[4.6, 5.4], [14.0, 4.0], [14.0, 8.0], [21.0, 21.0], [-3.0, 100.0]])
    assert scorer.add(pred, truth, centres).tolist() == [True, True, True, False, False]
    scorer.add(pred, truth)
    s = scorer.summary()
    assert (s["n_true"], s["found"], s["n_pred"], s["splits"], s["merges"]) == (9, 6, 8, 2, 2)
    assert s["completeness"] == pytest.approx(6 / 9) and s["purity"] == 0.75


def test_a_label_image_counts_touching_sources_apart():
    truth = np.zeros((20, 20), dtype=bool)
    truth[5:10, 2:8] = truth[5:10, 10:16] = True
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[5:10, 2:9] = 7                  # deblended: two labels that touch
    labels[5:10, 9:16] = 3
    as_mask, as_labels = ObjectScorer(), ObjectScorer()
    as_mask.add(labels > 0, truth)
    as_labels.add(labels, truth)
    assert (as_mask.summary()["n_pred"], as_mask.summary()["merges"]) == (1, 1)
    assert (as_labels.summary()["n_pred"], as_labels.summary()["merges"]) == (2, 0)
    assert as_labels.summary()["completeness"] == 1.0
    # A uint8 0/1 array, as predict returns, is a mask, not one label.
    as_uint8 = ObjectScorer()
    as_uint8.add((labels > 0).astype(np.uint8), truth)
    assert as_uint8.summary()["n_pred"] == 1


def test_touching_true_galaxies_set_the_floor_of_merges():
    truth = np.zeros((20, 30), dtype=bool)
    truth[5:10, 2:16] = True                       # two galaxies whose masks touch
    truth[5:10, 20:25] = True                      # and one alone
    centres = np.array([[7.0, 5.0], [7.0, 12.0], [7.0, 22.0]])
    perfect = ObjectScorer()
    perfect.add(truth, truth, centres)
    s = perfect.summary()
    assert (s["merges"], s["merges_in_truth"], s["completeness"]) == (1, 1, 1.0)


def test_empty_sets_follow_the_pixel_metrics_convention():
    empty = np.zeros((8, 8), dtype=bool)
    spot = empty.copy()
    spot[3:5, 3:5] = True
    nothing = ObjectScorer()
    nothing.add(empty, empty)
    assert nothing.summary()["completeness"] == 1.0 and nothing.summary()["purity"] == 1.0
    false_only = ObjectScorer()
    false_only.add(spot, empty)
    assert false_only.summary()["completeness"] == 0.0 and false_only.summary()["purity"] == 0.0
    missed = ObjectScorer()
    assert missed.add(empty, spot).tolist() == [False]
    assert missed.summary()["completeness"] == 0.0 and missed.summary()["purity"] == 0.0
    assert ObjectScorer().summary()["completeness"] == 1.0


def test_completeness_rows_bin_by_snr():
    pred, truth = _scene()
    scorer = ObjectScorer()
    assert scorer.completeness_rows() == []
    scorer.add(pred, truth)                 # no S/N: not binned
    assert scorer.completeness_rows() == []
    centres = np.array([[5.0, 5.0], [14.0, 4.0], [14.0, 8.0], [21.0, 21.0], [30.0, 5.0]])
    scorer.add(pred, truth, centres, snr=np.array([2.0, 4.0, 4.5, 100.0, np.nan]))
    rows = scorer.completeness_rows()
    assert rows == [
        {"snr_lo": 0.0, "snr_hi": 3.0, "snr": 2.0, "n": 1, "found": 1, "completeness": 1.0},
        {"snr_lo": 3.0, "snr_hi": 5.0, "snr": 4.25, "n": 2, "found": 2, "completeness": 1.0},
        {"snr_lo": 80.0, "snr_hi": 120.0, "snr": 100.0, "n": 1, "found": 0, "completeness": 0.0},
    ]
    top = scorer.completeness_rows(edges=(0, 10, float("inf")))
    assert [(r["n"], r["found"], r["snr_hi"]) for r in top] == [(3, 3, 10.0), (1, 0, float("inf"))]
    noiseless = ObjectScorer()
    noiseless.add(pred, truth, centres[:1], snr=np.array([np.inf]))
    assert [(r["snr_lo"], r["n"]) for r in noiseless.completeness_rows()] == [(120.0, 1)]
    assert SNR_EDGES[0] == 0 and SNR_EDGES[-1] == float("inf")


def test_bad_input_is_a_data_error():
    pred, truth = _scene()
    with pytest.raises(DataError, match="shape"):
        ObjectScorer().add(pred[:10], truth)
    with pytest.raises(DataError, match="3 S/N values for 2"):
        ObjectScorer().add(pred, truth, np.zeros((2, 2)), np.ones(3))
    with pytest.raises(DataError, match="NaN"):
        ObjectScorer().add(pred, truth, np.array([[np.nan, 1.0]]))
    with pytest.raises(DataError, match="label image"):
        ObjectScorer().add(pred.astype(np.float32), truth)


def test_truth_objects_drop_the_nan_padding():
    nan = np.nan
    meta = {"n_sources": np.array([2, 1]),
            "gal_cx": np.array([[10.0, 20.5, nan], [3.0, nan, nan]], dtype=np.float32),
            "gal_cy": np.array([[11.0, 21.0, nan], [4.0, nan, nan]], dtype=np.float32),
            "gal_snr": np.array([[5.0, 50.0, nan], [7.0, nan, nan]], dtype=np.float32)}
    centres, snr = truth_objects(meta, 0)
    assert centres.tolist() == [[11.0, 10.0], [21.0, 20.5]] and snr.tolist() == [5.0, 50.0]
    centres, snr = truth_objects(meta, 1)
    assert centres.tolist() == [[4.0, 3.0]] and snr.tolist() == [7.0]
    assert truth_objects({"n_sources": np.array([2])}, 0) == (None, None)
    no_snr = {k: v for k, v in meta.items() if k != "gal_snr"}
    assert truth_objects(no_snr, 1)[1] is None


def test_hundreds_of_images_score_quickly():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    truth = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 < 100
                      for cy, cx in rng.uniform(20, 108, (300, 2))])
    pred = truth | (rng.random(truth.shape) < 0.002)      # a few stray pixels each
    scorer = ObjectScorer()
    start = time.perf_counter()
    for p, t in zip(pred, truth):
        scorer.add(p, t)
    assert time.perf_counter() - start < 3.0   # about 0.1 s; loose for a busy machine
    assert scorer.summary()["completeness"] == 1.0
