"""An exponential moving average (EMA) of a model's weights, the copy that is validated and kept.

The average of the last few hundred steps' weights sits nearer the middle of the loss valley
than any one step's, so it scores better on held-out data for the same training. Early steps
are averaged with a smaller decay, (1 + t) / (10 + t), so the average does not remember the
random initialisation for thousands of steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """The EMA of `model`'s floating-point parameters and buffers; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        live = model.state_dict()
        floats = [k for k, v in self.state.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.state[k] for k in floats], [live[k].detach() for k in floats],
                             1 - decay)
        for k, v in self.state.items():
            if not v.is_floating_point():
                v.copy_(live[k])

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Within the block, `model` holds the averaged weights; its own come back after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        """What a training-state checkpoint saves to resume the average."""
        return {"steps": self.steps, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        """Resume the average from `state_dict()`'s output."""
        self.steps = int(saved["steps"])
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
