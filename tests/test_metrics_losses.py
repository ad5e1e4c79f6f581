"""Per-image metrics and losses on hand-checked examples."""

from __future__ import annotations

import pytest
import torch

from astroseg.losses import bce_loss, combo_loss, soft_dice_loss
from astroseg.metrics import confusion_counts, scores_from_counts
from astroseg.params import LossParams


def test_counts_and_scores_on_a_known_pair():
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2, :2] = True               # 4 true pixels
    pred = torch.zeros_like(target)
    pred[0, :2, :3] = True                 # 6 predicted: 4 TP, 2 FP
    pred[0, 1, 0] = False                  # now 3 TP, 2 FP, 1 FN
    counts = confusion_counts(pred, target)
    assert counts.tolist() == [[3, 2, 1]]
    s = scores_from_counts(counts)
    assert s["iou"].item() == pytest.approx(3 / 6)
    assert s["dice"].item() == pytest.approx(6 / 9)
    assert s["precision"].item() == pytest.approx(3 / 5)
    assert s["recall"].item() == pytest.approx(3 / 4)


def test_scores_are_per_image_and_empty_on_empty_is_perfect():
    target = torch.zeros(3, 2, 2, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[1] = True                       # image 1: all missed
    pred[2, 0, 0] = True                   # image 2: one false positive
    s = scores_from_counts(confusion_counts(pred, target))
    assert s["iou"].tolist() == [1.0, 0.0, 0.0]
    assert s["precision"].tolist() == [1.0, 1.0, 0.0]
    assert s["recall"].tolist() == [1.0, 0.0, 1.0]


def test_losses_reward_better_predictions_per_image():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 6            # confident and right
    bad = -good                            # confident and wrong
    logits = torch.cat([good[:1], bad[:1]])
    dice = soft_dice_loss(logits, target)
    assert dice.shape == (2,) and dice[0] < 0.01 < 0.99 < dice[1]
    bce = bce_loss(logits, target)
    assert bce[0] < 0.01 and bce[1] > 5
    combo = combo_loss(logits, target, LossParams(dice_weight=0.6, bce_weight=0.4))
    assert torch.allclose(combo, 0.6 * dice + 0.4 * bce)
