"""Segmentation losses on logits: soft Dice + binary cross-entropy, per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from astroseg.params import LossParams


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - soft Dice per image: (B, 1, H, W) logits and {0, 1} targets -> (B,)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = 2 * (prob * target).sum(1)
    return 1 - (overlap + eps) / (prob.sum(1) + target.sum(1) + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy per image -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


def combo_loss(logits: torch.Tensor, target: torch.Tensor, weights: LossParams) -> torch.Tensor:
    """Weighted Dice + BCE per image -> (B,); Dice counters the background's dominance."""
    return weights.dice_weight * soft_dice_loss(logits, target) + weights.bce_weight * bce_loss(logits, target)
