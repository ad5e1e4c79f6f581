"""The tensor side of FITS predict: normalise a strip, run its windows, blend, finish rows.

Everything here works on torch tensors on the model's device, so on a GPU the pixels stay there
from the normalised strip to the finished rows; only those go to the host (`to_host`). The
arithmetic is the NumPy code's, operation for operation (float32, no fused multiply-adds), so
on the CPU a blended probability map is bit for bit what the NumPy version gave for the same
model outputs; normalisation agrees to float32 rounding (torch's asinh is not NumPy's).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from astroseg.data.normalize import _EPS, ASINH_A, NOISE_TOP, Normalization
from astroseg.models.symmetry import averaged_logits
from astroseg.scoring.losses import probabilities
from astroseg.scoring.uncertainty import mc_probabilities

_NOISE_SCALE = float(np.float32(1 / np.arcsinh(NOISE_TOP)))
_ASINH_TOP = float(np.arcsinh(1.0 / ASINH_A))   # astropy divides by this float64 scalar


def normalize_tensor(norm: Normalization, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`Normalization.apply` in torch: float32 `x` normalised, 0 where `valid` is false or the
    result is not finite."""
    span = norm.hi - norm.lo
    span = (span if span > 0 else 1.0) if norm.method == "noise" else span + _EPS
    # float32-exact scalars: the same roundings as NumPy's float32 array-scalar arithmetic.
    y = (x.float() - float(np.float32(norm.lo))) / float(np.float32(span))
    if norm.method == "noise":
        y = torch.asinh(y) * _NOISE_SCALE
    elif norm.method != "minmax":
        y = y.clamp(0.0, 1.0)
    if norm.method == "asinh":
        # astropy's AsinhStretch(a)(y, clip=True): clip, / a (float32), arcsinh, then / a
        # float64 scalar (NumPy computes that division in float64 and rounds to float32).
        y = torch.asinh(y.clamp(0.0, 1.0) / float(np.float32(ASINH_A)))
        y = (y.double() / _ASINH_TOP).float()
    return torch.where(valid & torch.isfinite(y), y, 0.0)


def window_probabilities(model: nn.Module, x: torch.Tensor, tta: bool, temperature: float,
                         mc_samples: int) -> torch.Tensor:
    """(N, P, H, W) float32 class probabilities of (N, C, H, W) windows; with `mc_samples`,
    P = classes + 1: the MC mean, then the standard deviation of channel 0."""
    # As astroseg.infer.predict.predict_probabilities computes them, minus the labels.
    if mc_samples:
        prob, std = mc_probabilities(model, x, mc_samples, temperature)
        return torch.cat([prob, std[:, :1]], dim=1)
    logits = averaged_logits(model, x) if tta else model(x).float()
    return probabilities(logits / temperature)   # / 1.0 is exact: uncalibrated bits unchanged


class Blender:
    """Window probabilities accumulated, raised-cosine weighted, in a strip one window high.

    The strip covers image rows [top, top + height); rows no later window reaches are
    finished by `flush`, which divides by the summed weights and slides the strip down.
    """

    def __init__(self, planes: int, height: int, width: int, padded_width: int,
                 weight: np.ndarray, device: torch.device):
        self.width, self.top = width, 0
        self.num = torch.zeros((planes, height, padded_width), dtype=torch.float32,
                               device=device)
        self.den = torch.zeros((height, padded_width), dtype=torch.float32, device=device)
        self.weight = torch.from_numpy(np.ascontiguousarray(weight, np.float32)).to(device)

    def add(self, prob: torch.Tensor, xs: list[int]) -> None:
        """Add (N, P, h, w) window probabilities at column starts `xs`, top row `top`."""
        w = self.weight.shape[1]
        for p, x0 in zip(prob, xs):
            # Product, then sum: two roundings, as NumPy's `num += p * weight` (no FMA).
            self.num[:, :, x0:x0 + w] += p * self.weight
            self.den[:, x0:x0 + w] += self.weight

    def flush(self, until: int, valid: torch.Tensor) -> torch.Tensor | None:
        """(P, rows, width) blended rows [top, until), NaN where `valid` (the strip's (height,
        padded width) mask, aligned with `top`) is false; None if there are none."""
        n = until - self.top
        if n <= 0:
            return None
        rows = self.num[:, :n, :self.width] / self.den[:n, :self.width]
        rows = rows.masked_fill(~valid[:n, :self.width], float("nan"))
        for buf in (self.num, self.den):   # slide the strip down by n rows
            live = buf.shape[-2] - n
            if live > 0:
                buf[..., :live, :] = buf[..., n:, :].clone()
            buf[..., max(live, 0):, :] = 0
        self.top = until
        return rows


def finish_rows(rows: torch.Tensor, classes: int, threshold: float
                ) -> tuple[dict[str, torch.Tensor], int, int]:
    """The output planes of blended rows (PRIMARY, MASK, per-class PROB, STD, on the rows'
    device), the pixels MASK marks and the valid (non-NaN) pixels."""
    first = rows[0]
    if classes == 1:
        primary = first
        mask = (first >= threshold).to(torch.uint8)   # NaN compares false: invalid -> 0
    else:
        primary = 1 - first
        mask = torch.nan_to_num(rows[:classes], nan=-1.0).argmax(0).to(torch.uint8)
        mask = mask.masked_fill(torch.isnan(first), 0)
    planes = {"PRIMARY": primary, "MASK": mask}
    if classes > 1:
        planes["PROB"] = rows[:classes]
    if rows.shape[0] > classes:
        planes["STD"] = rows[classes]
    counts = torch.stack([torch.count_nonzero(mask), torch.count_nonzero(~torch.isnan(first))])
    marked, valid = counts.tolist()
    return planes, int(marked), int(valid)


def to_host(planes: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The planes as NumPy arrays in host memory (a view, not a copy, on the CPU)."""
    return {name: p.cpu().numpy() for name, p in planes.items()}
