"""Per-image segmentation scores from confusion counts.

A ratio whose numerator and denominator are both 0 (say IoU of an empty prediction on an empty
truth) counts as 1: there was nothing to find and nothing was wrongly found.
"""

from __future__ import annotations

import torch

SCORES = ("iou", "dice", "precision", "recall")


def confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) boolean prediction and truth -> (B, 3) int64 counts of TP, FP, FN."""
    pred = pred.flatten(1).bool()
    target = target.flatten(1).bool()
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    return torch.stack([tp, fp, fn], 1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num, dtype=torch.float64))


def scores_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 3) TP/FP/FN counts -> per-image IoU, Dice, precision and recall, float64 (B,)."""
    tp, fp, fn = counts.double().unbind(1)
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }
