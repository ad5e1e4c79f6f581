"""Are the probabilities probabilities? Reliability, ECE, a PR curve, and temperature scaling.

`ProbabilityHistogram` counts pixels in 1500 equal bins of the predicted source probability,
split by truth, so one pass over a split gives:
  - the reliability diagram and the expected calibration error on 15 equal bins (each the
    union of 100 fine ones): ECE = sum over bins of (pixels in bin / pixels) x |observed
    source fraction - mean predicted probability|, on the source class's probability (a binary
    model) or on the top class's confidence against accuracy (several classes);
  - the pixel precision-recall curve at every threshold k / 1500 (0.5 among them exactly).
Temperature scaling divides the logits by one scalar T fitted on the validation split by
minimising the (binary) cross-entropy; it changes no argmax and no 0.5-threshold decision, only
how confident the probabilities are. The fitted T is stored beside the model file as
calibration.json, with the model file's SHA-256, so a retrained model never inherits it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from astroseg.atomic import write_json
from astroseg.data.dataset import IGNORE
from astroseg.errors import DataError

FINE_BINS = 1500
ECE_BINS = 15
CALIBRATION_FILE = "calibration.json"


class ProbabilityHistogram:
    """Pixels per fine bin of predicted probability, true sources and the rest apart."""

    def __init__(self) -> None:
        self.positive = np.zeros(FINE_BINS, np.int64)
        self.negative = np.zeros(FINE_BINS, np.int64)
        self.prob_sum = np.zeros(FINE_BINS, np.float64)

    def add(self, prob: torch.Tensor, correct: torch.Tensor) -> None:
        """Count pixels: `prob` the probability being calibrated (any shape), `correct` whether
        the event it predicts happened (source pixel, or top class right), same shape."""
        p = prob.detach().float().flatten()
        hit = correct.flatten().bool()
        idx = (p * FINE_BINS).long().clamp_(0, FINE_BINS - 1)
        pos = torch.bincount(idx[hit], minlength=FINE_BINS)
        total = torch.bincount(idx, minlength=FINE_BINS)
        sums = torch.bincount(idx, weights=p.double(), minlength=FINE_BINS)
        self.positive += pos.cpu().numpy()
        self.negative += (total - pos).cpu().numpy()
        self.prob_sum += sums.cpu().numpy()

    def reliability_rows(self, bins: int = ECE_BINS) -> list[dict[str, float | int]]:
        """Per non-empty coarse bin: bin_lo, bin_hi, confidence, frequency, count."""
        step = FINE_BINS // bins
        pos = self.positive.reshape(bins, step).sum(1)
        count = pos + self.negative.reshape(bins, step).sum(1)
        sums = self.prob_sum.reshape(bins, step).sum(1)
        return [{"bin_lo": i / bins, "bin_hi": (i + 1) / bins,
                 "confidence": sums[i] / count[i], "frequency": pos[i] / count[i],
                 "count": int(count[i])} for i in range(bins) if count[i]]

    def ece(self, bins: int = ECE_BINS) -> float:
        """Expected calibration error over `bins` equal-width bins (0 with no pixels)."""
        rows = self.reliability_rows(bins)
        total = sum(r["count"] for r in rows)
        if not total:
            return 0.0
        return float(sum(r["count"] * abs(r["frequency"] - r["confidence"]) for r in rows) / total)

    def pr_rows(self, every: int = 15) -> list[dict[str, float]]:
        """Pixel precision and recall with threshold k / FINE_BINS, every `every`-th k."""
        tp = np.cumsum(self.positive[::-1])[::-1]        # pixels with p >= k / FINE_BINS
        fp = np.cumsum(self.negative[::-1])[::-1]
        n_pos = int(self.positive.sum())
        rows = []
        for k in range(0, FINE_BINS, every):
            rows.append({"threshold": k / FINE_BINS,
                         "precision": tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 1.0,
                         "recall": tp[k] / n_pos if n_pos else 1.0})
        return rows


def calibrated_event(logits: torch.Tensor, target: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability, whether it happened) per pixel: the source probability against the mask
    (one channel), or the top class's probability against being right (several)."""
    scaled = logits.float() / temperature
    if scaled.shape[1] == 1:
        return torch.sigmoid(scaled[:, 0]), target[:, 0] > 0
    prob = torch.softmax(scaled, 1)
    top, label = prob.max(1)
    return top, label == target[:, 0].long()


def nll(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> float:
    """Mean per-pixel negative log-likelihood of the truth under logits / temperature, over the
    pixels whose target is not IGNORE."""
    scaled = logits.float() / temperature
    valid = target != IGNORE
    if scaled.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(scaled, torch.where(valid, target, 0).float(),
                                                reduction="none") * valid
    else:
        ce = F.cross_entropy(scaled, target[:, 0].long(), ignore_index=IGNORE, reduction="none")
    return float(ce.sum() / valid.sum().clamp(min=1))


def fit_temperature(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The T in [0.05, 20] minimising the NLL of logits / T (golden-section search on log T:
    the NLL is convex in 1/T, so unimodal, and the search is deterministic)."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, target, math.exp(a)), nll(logits, target, math.exp(b))
    for _ in range(40):                      # bracket shrinks to 0.618^40 of ~6: 1e-8 in log T
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, target, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, target, math.exp(b))
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class Calibration:
    """What calibration.json holds: the temperature and the model file it was fitted for."""
    temperature: float
    calibrated: bool           # False: evaluate.calibrate was off; temperature is 1
    model_sha256: str
    val_nll_before: float | None = None
    val_nll_after: float | None = None


def calibration_path(model_path: str | os.PathLike) -> Path:
    """Where the calibration of a model file lives: calibration.json beside it."""
    return Path(model_path).with_name(CALIBRATION_FILE)


def save_calibration(model_path: str | os.PathLike, calibration: Calibration) -> Path:
    """Atomically write calibration.json beside the model file."""
    path = calibration_path(model_path)
    write_json(path, calibration.__dict__)
    return path


def load_temperature(model_path: str | os.PathLike, model_sha256: str) -> float | None:
    """The temperature fitted for this model file, or None when there is no calibration.json
    beside it, it was not fitted (evaluate.calibrate false), or it was fitted for another model
    file (SHA-256 differs)."""
    path = calibration_path(model_path)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        cal = Calibration(**raw)
        temperature = float(cal.temperature)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a calibration file written by the evaluate stage "
                        f"({exc}); delete it or rerun `dvc repro evaluate`") from None
    if not cal.calibrated or cal.model_sha256 != model_sha256:
        return None
    if not (math.isfinite(temperature) and temperature > 0):
        raise DataError(f"{path}: temperature = {temperature!r}: expected a positive number")
    return temperature
