"""Segmentation losses on logits, per image: Dice + cross-entropy, binary or multi-class.

One output channel means binary (sigmoid; target is the mask); K > 1 channels mean K classes
(softmax; target holds class indices), with Dice averaged over the classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from astroseg.params import LossParams


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one channel, softmax over channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def soft_dice_loss(prob: torch.Tensor, onehot: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - soft Dice per image, averaged over channels: (B, C, H, W) each -> (B,)."""
    overlap = 2 * (prob * onehot).flatten(2).sum(2)
    total = prob.flatten(2).sum(2) + onehot.flatten(2).sum(2)
    return (1 - (overlap + eps) / (total + eps)).mean(1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean (binary) cross-entropy per image -> (B,); target (B, 1, H, W) mask or class index."""
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    else:
        ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    return ce.flatten(1).mean(1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weights: LossParams) -> torch.Tensor:
    """Weighted Dice + cross-entropy per image -> (B,); Dice counters the background's dominance."""
    logits = logits.float()
    prob = probabilities(logits)
    if logits.shape[1] == 1:
        onehot = target.float()
    else:
        onehot = F.one_hot(target[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    return (weights.dice_weight * soft_dice_loss(prob, onehot)
            + weights.bce_weight * cross_entropy(logits, target))
