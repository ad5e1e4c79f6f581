"""Score a model on a split: per-image loss and IoU/Dice/precision/recall at a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from astroseg.dataset import Split
from astroseg.losses import combo_loss
from astroseg.metrics import SCORES, confusion_counts, scores_from_counts
from astroseg.params import LossParams


@dataclass
class Evaluation:
    """Per-image results on one split; `probabilities` holds the first `keep` images' maps."""
    loss: np.ndarray                 # (N,) float64
    scores: dict[str, np.ndarray]    # name -> (N,) float64
    probabilities: np.ndarray        # (keep, H, W) float32

    def summary(self, where: np.ndarray | None = None) -> dict[str, float]:
        """Mean loss and scores over all images (or the boolean subset `where`), per image."""
        sel = slice(None) if where is None else where
        out = {"loss": float(self.loss[sel].mean())}
        out.update({name: float(self.scores[name][sel].mean()) for name in SCORES})
        return out


def as_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) float32 images and masks as torch tensors sharing the split's memory."""
    images = torch.from_numpy(split.images).unsqueeze(1)
    masks = torch.from_numpy(split.masks).unsqueeze(1)
    return images, masks


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, loss: LossParams, device: torch.device,
             batch_size: int, threshold: float = 0.5, keep: int = 0) -> Evaluation:
    """Run `model` over `split` in batches and score every image."""
    model.eval()
    images, masks = as_tensors(split)
    losses, counts, kept = [], [], []
    for start in range(0, len(split), batch_size):
        x = images[start:start + batch_size].to(device)
        y = masks[start:start + batch_size].to(device).float()
        logits = model(x).float()
        prob = torch.sigmoid(logits)
        losses.append(combo_loss(logits, y, loss).cpu())
        counts.append(confusion_counts(prob >= threshold, y > 0).cpu())
        if start < keep:
            kept.append(prob[: keep - start, 0].cpu())
    scores = scores_from_counts(torch.cat(counts))
    return Evaluation(
        loss=torch.cat(losses).double().numpy(),
        scores={k: v.numpy() for k, v in scores.items()},
        probabilities=torch.cat(kept).numpy() if kept else np.zeros((0, *split.images.shape[1:]), np.float32),
    )

