"""Per-image metrics and losses on hand-checked examples, binary and multi-class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astroseg.scoring.losses import cross_entropy, probabilities, segmentation_loss, soft_dice_loss
from astroseg.scoring.metrics import confusion_counts, pooled_scores, predict_labels, scores_from_counts
from astroseg.params import LossParams


def test_counts_and_scores_on_a_known_pair():
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, :2, :2] = 1                  # 4 true pixels
    pred = torch.zeros_like(target)
    pred[0, :2, :3] = 1                    # 6 predicted: 4 TP, 2 FP
    pred[0, 1, 0] = 0                      # now 3 TP, 2 FP, 1 FN
    counts = confusion_counts(pred, target)
    assert counts.tolist() == [[[3, 2, 1]]]
    s = scores_from_counts(counts)
    assert s["iou"].item() == pytest.approx(3 / 6)
    assert s["dice"].item() == pytest.approx(6 / 9)
    assert s["precision"].item() == pytest.approx(3 / 5)
    assert s["recall"].item() == pytest.approx(3 / 4)


def test_scores_are_per_image_and_only_empty_on_empty_is_perfect():
    target = torch.zeros(3, 2, 2, dtype=torch.uint8)
    pred = torch.zeros_like(target)
    target[1] = 1                          # image 1: sources, nothing predicted
    pred[2, 0, 0] = 1                      # image 2: no source, one false positive
    s = scores_from_counts(confusion_counts(pred, target))
    assert s["iou"][:, 0].tolist() == [1.0, 0.0, 0.0]
    # A model that misses an image entirely is not rewarded with precision 1.
    assert s["precision"][:, 0].tolist() == [1.0, 0.0, 0.0]
    assert s["recall"][:, 0].tolist() == [1.0, 0.0, 0.0]
    assert s["dice"][:, 0].tolist() == [1.0, 0.0, 0.0]


def test_pooled_scores_sum_pixels_over_images():
    target = torch.zeros(2, 4, 4, dtype=torch.uint8)
    pred = torch.zeros_like(target)
    target[0, :2, :2] = 1                  # image 0: 4 true, 2 found, 1 false positive
    pred[0, 0, :3] = 1
    target[1, :, :] = 1                    # image 1: 16 true, 16 found
    pred[1] = 1
    counts = confusion_counts(pred, target)
    pooled = pooled_scores(counts)
    assert pooled["precision"] == pytest.approx(18 / 19)
    assert pooled["recall"] == pytest.approx(18 / 20)
    assert pooled["iou"] == pytest.approx(18 / 21)
    per_image = scores_from_counts(counts)["recall"][:, 0]
    assert per_image.mean().item() == pytest.approx((2 / 4 + 1) / 2)   # the per-image mean differs


def test_multiclass_counts_per_foreground_class():
    target = torch.tensor([[[0, 1], [2, 2]]], dtype=torch.uint8)
    pred = torch.tensor([[[1, 1], [2, 0]]], dtype=torch.uint8)
    counts = confusion_counts(pred, target, num_labels=3)
    assert counts.tolist() == [[[1, 1, 0], [1, 0, 1]]]   # class 1: TP, FP; class 2: TP, FN


def test_labels_threshold_binary_and_argmax_multiclass():
    binary = torch.tensor([[[[0.2, 0.7]]]])
    assert predict_labels(binary, 0.5).tolist() == [[[0, 1]]]
    assert predict_labels(binary, 0.1).tolist() == [[[1, 1]]]
    multi = torch.tensor([[[[0.1, 0.6]], [[0.7, 0.1]], [[0.2, 0.3]]]])
    assert predict_labels(multi, 0.5).tolist() == [[[1, 0]]]


def test_losses_reward_better_predictions_per_image():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    target[:, :, 2:6, 2:6] = 1
    good = (target.float() * 2 - 1) * 6    # confident and right
    logits = torch.cat([good[:1], -good[:1]])
    dice = soft_dice_loss(probabilities(logits), target.float())
    assert dice.shape == (2,) and dice[0] < 0.01 < 0.99 < dice[1]
    ce = cross_entropy(logits, target)
    assert ce[0] < 0.01 and ce[1] > 5
    combo = segmentation_loss(logits, target, LossParams(dice_weight=0.6, bce_weight=0.4,
                                                         boundary_weight=0.0))
    assert torch.allclose(combo, 0.6 * dice + 0.4 * ce)


def test_two_class_softmax_loss_matches_its_binary_twin():
    # Softmax over logits (0, z) equals sigmoid(z): the two formulations must agree on CE.
    target = (torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8)
    z = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert torch.allclose(cross_entropy(two, target), cross_entropy(z, target), atol=1e-6)
    assert segmentation_loss(two, target, LossParams()).shape == (2,)


def test_boundary_band_is_the_pixels_within_width_of_an_edge():
    from scipy import ndimage
    from astroseg.scoring.losses import boundary_band
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 4:11, 5:9] = 1
    valid = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    valid[0, 0, 0] = False
    for width in (1, 2):
        m = mask[0, 0].numpy().astype(bool)
        box = np.ones((2 * width + 1,) * 2, bool)
        want = (ndimage.binary_dilation(m, box) & ~ndimage.binary_erosion(m, box, border_value=1))
        want &= valid[0, 0].numpy()
        band = boundary_band(mask, valid, width)
        assert np.array_equal(band[0, 0].numpy().astype(bool), want)


def test_boundary_term_adds_edge_cross_entropy_and_zero_weight_changes_nothing():
    from astroseg.scoring.losses import boundary_band
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 16, 16)
    target = (torch.rand(3, 1, 16, 16) > 0.7).to(torch.uint8)
    base = LossParams(boundary_weight=0.0)
    plain = segmentation_loss(logits, target, base)
    # boundary_weight 0 is the Dice + BCE of before, bit for bit.
    want = (base.dice_weight * soft_dice_loss(torch.sigmoid(logits), target.float(),
                                                torch.ones_like(target, dtype=torch.bool))
            + base.bce_weight * cross_entropy(logits, target))
    assert torch.equal(plain, want)
    edged = segmentation_loss(logits, target, LossParams(boundary_weight=0.5, boundary_width=1))
    band = boundary_band(target.float(), torch.ones_like(target, dtype=torch.bool), 1)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float(),
                                                              reduction="none")
    edge = (ce * band).flatten(1).sum(1) / band.flatten(1).sum(1)
    torch.testing.assert_close(edged, plain + 0.5 * edge)


def test_boundary_band_sees_no_edge_where_a_source_meets_invalid_pixels():
    from astroseg.scoring.losses import boundary_band
    # An all-source tile with a dead column block (binary), and an all-class-2 tile with
    # unknown rows (3 classes): no true edge in either.
    valid = torch.ones(1, 1, 12, 12, dtype=torch.bool)
    valid[..., 4:6] = False
    assert boundary_band(torch.ones(1, 1, 12, 12), valid, 2).sum() == 0
    onehot = torch.zeros(1, 3, 10, 10)
    onehot[:, 2] = 1
    valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    valid[..., 3:6, :] = False
    assert boundary_band(onehot, valid, 1).sum() == 0
    # A real edge next to the dead block is still found, on both sides.
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., :, 8:] = 1
    valid = torch.ones(1, 1, 12, 12, dtype=torch.bool)
    valid[..., 4:6] = False
    band = boundary_band(mask, valid, 1)[0, 0]
    assert band[:, 7:9].all() and band.sum() == 24
