"""Segmentation losses on logits, per image: Dice + cross-entropy (+ a boundary term), binary or
multi-class.

One output channel means binary (sigmoid; target is the mask); K > 1 channels mean K classes
(softmax; target holds class indices), with Dice averaged over the classes. Target pixels of
IGNORE (outside a FITS tile's `valid` map: NaN, BLANK, bad pixels, padding) count in neither
term, so what is under them changes neither the loss nor its gradients; with none, the sums
are the plain means' (bit for bit).

The boundary term is the cross-entropy averaged over a band `boundary_width` pixels either side
of the true mask's edges only. The whole-image mean hides edges among the many easy pixels, yet
edges are where IoU is lost on sources of a few hundred pixels.
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


def _pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
                         ) -> torch.Tensor:
    """(Binary) cross-entropy per pixel, (B, 1, H, W), 0 where not `valid`."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, torch.where(valid, target, 0).float(),
                                                  reduction="none") * valid
    return F.cross_entropy(logits, target[:, 0].long(), ignore_index=IGNORE,
                           reduction="none").unsqueeze(1)


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image mean of `values` over the pixels where `weight` is set -> (B,)."""
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean (binary) cross-entropy per image over its valid pixels -> (B,); target (B, 1, H, W)
    mask or class index, IGNORE where unknown."""
    valid = target != IGNORE
    return _pixel_cross_entropy(logits, target, valid).flatten(1).sum(1) / \
        valid.flatten(1).sum(1).clamp(min=1)


def boundary_band(onehot: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 1, H, W) float: valid pixels within `width` pixels (Chebyshev) of a class edge of
    `onehot` (B, C, H, W), on either side. Invalid pixels are no class: where a source meets
    NaN, a bad pixel or padding there is no edge."""
    k = 2 * width + 1
    grown = F.max_pool2d(onehot.masked_fill(~valid, -1.0), k, stride=1, padding=width)
    shrunk = -F.max_pool2d(-onehot.masked_fill(~valid, 2.0), k, stride=1, padding=width)
    # A valid pixel sees itself, so both pools see at least one class value (0 or 1).
    return ((grown != shrunk).any(1, keepdim=True) & valid).float()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weights: LossParams) -> torch.Tensor:
    """Weighted Dice + cross-entropy (+ boundary cross-entropy) per image -> (B,); Dice counters
    the background's dominance."""
    logits = logits.float()
    prob = probabilities(logits)
    valid = target != IGNORE
    known = torch.where(valid, target, 0)
    if logits.shape[1] == 1:
        onehot = known.float()
    else:
        onehot = F.one_hot(known[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    ce = _pixel_cross_entropy(logits, target, valid)
    loss = (weights.dice_weight * soft_dice_loss(prob, onehot, valid)
            + weights.bce_weight * _masked_mean(ce, valid))
    if weights.boundary_weight:
        band = boundary_band(onehot, valid, weights.boundary_width)
        loss = loss + weights.boundary_weight * _masked_mean(ce, band)
    return loss
