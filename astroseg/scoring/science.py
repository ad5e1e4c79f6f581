"""Scores beyond pixels, accumulated batch by batch in the evaluate stage's pass over a split:
objects against the truth, the reliability of the probabilities, MC-dropout uncertainty."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from astroseg.data.dataset import IGNORE
from astroseg.scoring.calibration import ProbabilityHistogram, calibrated_event
from astroseg.scoring.losses import probabilities
from astroseg.scoring.objects import ObjectScorer, truth_objects
from astroseg.scoring.uncertainty import mc_probabilities


@dataclass
class Science:
    """What one pass over a split accumulates beyond pixel scores: objects matched against the
    truth (per galaxy from `meta` when the generator recorded it), the reliability of the
    (temperature-scaled and raw) probabilities, and with `mc_samples` >= 2 the MC-dropout
    standard deviation on wrong and right pixels."""
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    mc_samples: int = 0
    objects: ObjectScorer = field(default_factory=ObjectScorer)
    calibrated: ProbabilityHistogram = field(default_factory=ProbabilityHistogram)
    raw: ProbabilityHistogram = field(default_factory=ProbabilityHistogram)
    foreground: ProbabilityHistogram = field(default_factory=ProbabilityHistogram)  # PR curve
    std_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))    # wrong, right pixels
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))

    def uncertainty(self) -> dict[str, float | int]:
        """Mean MC std on wrong and on right pixels, and their ratio (empty without MC)."""
        if not self.mc_samples:
            return {}
        wrong, right = (self.std_sum / np.maximum(self.pixels, 1)).tolist()
        return {"mc_samples": self.mc_samples, "std_wrong": wrong, "std_right": right,
                "ratio": wrong / right if right > 0 else None,   # None: JSON has no inf
                "n_wrong": int(self.pixels[0]), "n_right": int(self.pixels[1])}

    def add(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
            pred: torch.Tensor, first: int, temperature: float) -> tuple[torch.Tensor, ...]:
        """Score one batch (images `first`...); returns the MC mean and std of the foreground
        probability when sampling, else nothing. Pixels whose target is IGNORE count nowhere:
        objects are matched on the valid pixels only."""
        known = y[:, 0] != IGNORE
        y = torch.where(known[:, None], y, 0)
        for histogram, t in ((self.calibrated, temperature), (self.raw, 1.0)):
            histogram.add(*(v[known] for v in calibrated_event(logits, y, t)))
        prob = probabilities(logits / temperature)
        fg = prob[:, 0] if prob.shape[1] == 1 else 1 - prob[:, 0]
        self.foreground.add(fg[known], y[:, 0][known] > 0)
        found, truth = ((pred > 0) & known).cpu().numpy(), (y[:, 0] > 0).cpu().numpy()
        for i in range(len(found)):
            centres, snr = truth_objects(self.meta, first + i)
            self.objects.add(found[i], truth[i], centres, snr)
        if self.mc_samples < 2:
            return ()
        mean, std = mc_probabilities(model, x, self.mc_samples, temperature)
        # Channel 0 is P(source) for one channel and P(background) = 1 - P(foreground) for
        # several: either way its spread is the foreground probability's.
        mean = mean[:, 0] if mean.shape[1] == 1 else 1 - mean[:, 0]
        std = std[:, 0]
        wrong = ((pred > 0) != (y[:, 0] > 0)) & known
        right = ~wrong & known
        self.std_sum += [float(std[wrong].double().sum()), float(std[right].double().sum())]
        self.pixels += [int(wrong.sum()), int(right.sum())]
        return mean, std
