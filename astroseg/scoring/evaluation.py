"""Score a model on a split: per-image loss and per-class IoU/Dice/precision/recall, and on
request (`Science`) objects, calibration and MC-dropout uncertainty in the same pass."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from astroseg.data.dataset import Split, as_channels
from astroseg.scoring.losses import probabilities, segmentation_loss
from astroseg.scoring.metrics import (SCORES, confusion_counts, confusion_matrix, pooled_scores,
                                     predict_labels, scores_from_counts)
from astroseg.params import LossParams
from astroseg.models.symmetry import averaged_logits

if TYPE_CHECKING:   # not imported at run time: training validates without these modules
    from astroseg.scoring.science import Science


@dataclass
class Evaluation:
    """Per-image results on one split; the maps hold the first `keep` images' predictions."""
    loss: np.ndarray                 # (N,) float64
    scores: dict[str, np.ndarray]    # name -> (N, foreground classes) float64
    counts: np.ndarray               # (N, foreground classes, 3) int64 TP, FP, FN
    foreground: np.ndarray           # (keep, H, W) float32 probability of not being background
    labels: np.ndarray               # (keep, H, W) uint8 predicted class
    mc_mean: np.ndarray | None = None  # (keep, H, W) float32 MC-dropout mean and standard
    mc_std: np.ndarray | None = None   # deviation of that probability (Science.mc_samples)
    confusion: np.ndarray | None = None  # (K, K) int64 pixels, rows true, columns predicted

    def summary(self, where: np.ndarray | None = None) -> dict[str, float]:
        """Mean loss and scores over images (or the boolean subset `where`), then over classes."""
        sel = slice(None) if where is None else where
        out = {"loss": float(self.loss[sel].mean())}
        out.update({name: float(self.scores[name][sel].mean()) for name in SCORES})
        return out

    def pooled(self, where: np.ndarray | None = None) -> dict[str, float]:
        """Scores of the pixel counts pooled over images (or the subset `where`)."""
        sel = slice(None) if where is None else where
        return pooled_scores(torch.from_numpy(self.counts[sel]))

    def per_class(self, class_names: list[str]) -> dict[str, dict[str, float]]:
        """Scores of each foreground class, averaged over images (an image where the class is
        neither true nor predicted scores 1) and of its pixels pooled over images (pooled_*:
        the fair score of a rare class), and its true pixel count."""
        pooled = scores_from_counts(torch.from_numpy(self.counts.sum(0)))
        return {name: {**{s: float(self.scores[s][:, i].mean()) for s in SCORES},
                       **{f"pooled_{s}": float(pooled[s][i]) for s in SCORES},
                       "pixels": int(self.counts[:, i, [0, 2]].sum())}
                for i, name in enumerate(class_names[1:])}


def as_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) float32 images and (N, 1, H, W) uint8 targets (masks, IGNORE outside the
    valid map) as tensors; without a valid map, both share the split's memory."""
    return as_channels(torch.from_numpy(split.images)), \
        torch.from_numpy(split.targets()).unsqueeze(1)


def evaluate(model: nn.Module, split: Split, loss: LossParams, device: torch.device,
             batch_size: int, threshold: float = 0.5, keep: int = 0,
             tta: bool = False, temperature: float = 1.0,
             science: Science | None = None) -> Evaluation:
    """Run `model` over `split` in batches (fp32) and score every image; `tta`: average the
    logits over the 8 flips/rotations (see evaluate_tensors for the rest)."""
    images, masks = as_tensors(split)
    return evaluate_tensors(model, images, masks, loss, device, batch_size, threshold, keep, tta,
                            temperature, science)


@torch.no_grad()
def evaluate_tensors(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                     loss: LossParams, device: torch.device, batch_size: int,
                     threshold: float = 0.5, keep: int = 0, tta: bool = False,
                     temperature: float = 1.0, science: Science | None = None,
                     offset: int = 0) -> Evaluation:
    """`evaluate` on (N, C, H, W) image and (N, 1, H, W) mask tensors, on any device (a GPU keeps them).

    Probabilities (and so `threshold`) are of logits / `temperature`; the loss is of the raw
    logits, as in training. `science` accumulates more scores; `offset` is the index of
    images[0] in the split (for its per-object truth)."""
    model.eval()
    losses, counts, fg, labels, mc = [], [], [], [], []
    k = None
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = masks[start:start + batch_size].to(device)
        logits = averaged_logits(model, x) if tta else model(x).float()
        prob = probabilities(logits / temperature)
        pred = predict_labels(prob, threshold)
        # Results stay on the device until the end: one wait for a GPU, not one per batch.
        losses.append(segmentation_loss(logits, y, loss))
        counts.append(confusion_counts(pred, y[:, 0], max(2, logits.shape[1])))
        matrix = confusion_matrix(pred, y[:, 0], max(2, logits.shape[1]))
        k = matrix if k is None else k + matrix
        extra = science.add(model, x, y, logits, pred, offset + start, temperature) \
            if science is not None else ()
        if start < keep:
            n = keep - start
            fg.append(1 - prob[:n, 0] if prob.shape[1] > 1 else prob[:n, 0])
            labels.append(pred[:n])
            if extra:
                mc.append([m[:n] for m in extra])
    counts = torch.cat(counts).cpu()
    scores = scores_from_counts(counts)
    empty = np.zeros((0, *images.shape[2:]))
    return Evaluation(
        loss=torch.cat(losses).cpu().double().numpy(),
        scores={k: v.numpy() for k, v in scores.items()},
        counts=counts.numpy(),
        foreground=torch.cat(fg).cpu().numpy() if fg else empty.astype(np.float32),
        labels=torch.cat(labels).cpu().numpy() if labels else empty.astype(np.uint8),
        mc_mean=torch.cat([m for m, _ in mc]).cpu().numpy() if mc else None,
        mc_std=torch.cat([s for _, s in mc]).cpu().numpy() if mc else None,
        confusion=k.cpu().numpy() if k is not None else None,
    )


@torch.no_grad()
def split_logits(model: nn.Module, images: torch.Tensor, device: torch.device,
                 batch_size: int, tta: bool = False) -> torch.Tensor:
    """The model's (N, K, H, W) float32 logits for (N, C, H, W) images, on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        out.append((averaged_logits(model, x) if tta else model(x).float()).cpu())
    return torch.cat(out)


def evaluate_stream(model: nn.Module, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    loss: LossParams, device: torch.device, batch_size: int,
                    threshold: float = 0.5, keep: int = 0, tta: bool = False,
                    temperature: float = 1.0, science: Science | None = None) -> Evaluation:
    """`evaluate_tensors` over consecutive (images, masks) blocks of a split streamed from disk."""
    parts, seen = [], 0
    for images, masks in blocks:
        parts.append(evaluate_tensors(model, images, masks, loss, device, batch_size, threshold,
                                      max(0, keep - seen), tta, temperature, science, seen))
        seen += len(images)
    return concat(parts)


def concat(parts: list[Evaluation]) -> Evaluation:
    """The evaluations of consecutive parts of a split as one (DDP ranks' shards, in order)."""
    counts = np.concatenate([p.counts for p in parts])
    scores = scores_from_counts(torch.from_numpy(counts))
    mc = [p for p in parts if p.mc_mean is not None]
    matrices = [p.confusion for p in parts if p.confusion is not None]
    return Evaluation(loss=np.concatenate([p.loss for p in parts]),
                      scores={k: v.numpy() for k, v in scores.items()}, counts=counts,
                      foreground=np.concatenate([p.foreground for p in parts]),
                      labels=np.concatenate([p.labels for p in parts]),
                      mc_mean=np.concatenate([p.mc_mean for p in mc]) if mc else None,
                      mc_std=np.concatenate([p.mc_std for p in mc]) if mc else None,
                      confusion=sum(matrices) if matrices else None)
