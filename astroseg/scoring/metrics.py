"""Per-image, per-class segmentation scores from confusion counts.

Scores are computed for the foreground classes (1..K-1; class 1 alone for a binary mask). A
ratio with a zero denominator counts as 1 only where truth and prediction are both empty (there
was nothing to find and nothing was wrongly found), and as 0 otherwise: an empty prediction on
an image with sources scores precision 0 (not a free 1), and a prediction on an empty image
scores recall 0. `pooled_scores` sums the counts over images first (pixel-pooled, "micro"). Target pixels of
IGNORE (not measured) are neither found nor missed.
"""

from __future__ import annotations

import torch

from astroseg.data.dataset import IGNORE

SCORES = ("iou", "dice", "precision", "recall")


def predict_labels(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) class indices: threshold if C == 1, else argmax."""
    if prob.shape[1] == 1:
        return (prob[:, 0] >= threshold).to(torch.uint8)
    return prob.argmax(1).to(torch.uint8)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_labels: int = 2) -> torch.Tensor:
    """(B, H, W) predicted and true class indices -> (B, num_labels - 1, 3) TP, FP, FN per class;
    pixels whose target is IGNORE are left out."""
    pred, target = pred.flatten(1), target.flatten(1)
    known = target != IGNORE
    counts = []
    for c in range(1, num_labels):
        p, t = (pred == c) & known, target == c
        counts.append(torch.stack([(p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)], 1))
    return torch.stack(counts, 1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(K, K) int64 pixel counts, rows the true class and columns the predicted one; pixels
    whose target is IGNORE are left out."""
    known = target != IGNORE
    pairs = target[known].long() * num_labels + pred[known].long()
    return torch.bincount(pairs, minlength=num_labels ** 2).reshape(num_labels, num_labels)


def _ratio(num: torch.Tensor, den: torch.Tensor, both_empty: torch.Tensor) -> torch.Tensor:
    undefined = both_empty.to(torch.float64)   # 0/0: 1 if nothing was there and nothing found
    return torch.where(den > 0, num / den.clamp(min=1), undefined)


def scores_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., 3) TP/FP/FN counts -> IoU, Dice, precision and recall of the same leading shape."""
    tp, fp, fn = counts.double().unbind(-1)
    empty = (tp + fp + fn) == 0
    return {
        "iou": _ratio(tp, tp + fp + fn, empty),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
    }


def pooled_scores(counts: torch.Tensor) -> dict[str, float]:
    """(N, classes, 3) per-image counts -> scores of the pixel-pooled counts, averaged over classes."""
    pooled = scores_from_counts(counts.sum(0))
    return {name: float(value.mean()) for name, value in pooled.items()}
