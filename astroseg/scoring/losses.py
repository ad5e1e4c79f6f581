"""Segmentation losses on logits, per image: Dice + cross-entropy, binary or multi-class.

One output channel means binary (sigmoid; target is the mask); K > 1 channels mean K classes
(softmax; target holds class indices), with Dice averaged over the classes. Target pixels of
IGNORE (outside a FITS tile's `valid` map: NaN, BLANK, bad pixels, padding) count in neither
term, so what is under them changes neither the loss nor its gradients; with none, the sums
are the plain means' (bit for bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from astroseg.data.dataset import IGNORE
from astroseg.params import LossParams


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one channel, softmax over channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def soft_dice_loss(prob: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1e-6) -> torch.Tensor:
    """1 - soft Dice per image, averaged over channels: (B, C, H, W) each -> (B,); only the
    pixels where `valid` (B, 1, H, W) is set count."""
    if valid is not None:
        prob, onehot = prob * valid, onehot * valid
    overlap = 2 * (prob * onehot).flatten(2).sum(2)
    total = prob.flatten(2).sum(2) + onehot.flatten(2).sum(2)
    return (1 - (overlap + eps) / (total + eps)).mean(1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean (binary) cross-entropy per image over its valid pixels -> (B,); target (B, 1, H, W)
    mask or class index, IGNORE where unknown."""
    valid = target != IGNORE
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits, torch.where(valid, target, 0).float(),
                                                reduction="none") * valid
    else:
        ce = F.cross_entropy(logits, target[:, 0].long(), ignore_index=IGNORE, reduction="none")
    return ce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weights: LossParams) -> torch.Tensor:
    """Weighted Dice + cross-entropy per image -> (B,); Dice counters the background's dominance."""
    logits = logits.float()
    prob = probabilities(logits)
    valid = target != IGNORE
    known = torch.where(valid, target, 0)
    if logits.shape[1] == 1:
        onehot = known.float()
    else:
        onehot = F.one_hot(known[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    return (weights.dice_weight * soft_dice_loss(prob, onehot, valid)
            + weights.bce_weight * cross_entropy(logits, target))
