"""Monte Carlo dropout: how much a model's probabilities move when its dropout stays on.

Only the stochastic parts are switched to training mode (dropout, drop-path, attention
dropout); BatchNorm keeps its running statistics, so the passes differ by the dropped units
alone. The spread is accumulated with Welford's update, which leaves the standard deviation
exactly 0 when every pass agrees (a model without dropout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from astroseg.models.segformer import DropPath
from astroseg.scoring.losses import probabilities


def _rate(module: nn.Module) -> float:
    """The module's own dropout or drop-path rate (attention dropout included), else 0."""
    if isinstance(module, (nn.modules.dropout._DropoutNd, DropPath)):
        return module.p
    return getattr(module, "attn_dropout", 0.0)


@contextlib.contextmanager
def stochastic(model: nn.Module) -> Iterator[nn.Module]:
    """Switch on the model's dropout and drop-path (only) for MC sampling; BatchNorm stays in eval."""
    switched = [m for m in model.modules() if _rate(m) > 0 and not m.training]
    for m in switched:
        m.training = True      # this module only: its children (e.g. a norm) keep their mode
    try:
        yield model
    finally:
        for m in switched:
            m.training = False


def has_dropout(model: nn.Module) -> bool:
    """Whether any dropout or drop-path rate of the model is above 0 (else MC std is 0)."""
    return any(_rate(m) > 0 for m in model.modules())


@torch.no_grad()
def mc_probabilities(model: nn.Module, x: torch.Tensor, samples: int, temperature: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over `samples` stochastic passes of the class probabilities
    (B, C, H, W), C = 1 for a binary model (sigmoid) else softmax; std is exactly 0 when the
    passes agree."""
    if samples < 1:
        raise ValueError(f"samples = {samples}: expected >= 1")
    mean = m2 = None
    with stochastic(model):
        for k in range(1, samples + 1):
            prob = probabilities(model(x).float() / temperature)
            if mean is None:
                mean, m2 = prob, torch.zeros_like(prob)
                continue
            delta = prob - mean
            mean = mean + delta / k
            m2 += delta * (prob - mean)
    return mean, (m2 / samples).clamp_(min=0).sqrt_()
