"""Per-image, per-class segmentation scores from confusion counts.

Scores are computed for the foreground classes (1..K-1; class 1 alone for a binary mask). A
ratio whose numerator and denominator are both 0 (say IoU of an empty prediction on an empty
truth) counts as 1: there was nothing to find and nothing was wrongly found.
"""

from __future__ import annotations

import torch

SCORES = ("iou", "dice", "precision", "recall")


def predict_labels(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) class indices: threshold if C == 1, else argmax."""
    if prob.shape[1] == 1:
        return (prob[:, 0] >= threshold).to(torch.uint8)
    return prob.argmax(1).to(torch.uint8)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_labels: int = 2) -> torch.Tensor:
    """(B, H, W) predicted and true class indices -> (B, num_labels - 1, 3) TP, FP, FN per class."""
    pred, target = pred.flatten(1), target.flatten(1)
    counts = []
    for c in range(1, num_labels):
        p, t = pred == c, target == c
        counts.append(torch.stack([(p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)], 1))
    return torch.stack(counts, 1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num, dtype=torch.float64))


def scores_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., 3) TP/FP/FN counts -> IoU, Dice, precision and recall of the same leading shape."""
    tp, fp, fn = counts.double().unbind(-1)
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }
