"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from astroseg.scoring.losses import segmentation_loss


def train_step(model: torch.nn.Module, batch: torch.Tensor, precision: str = "fp32") -> Callable[[], None]:
    """A closure doing one AdamW step of `model` on `batch` (fp32, or bf16 autocast on CPU).

    The optimizer is the fused AdamW that training uses, for every model compared."""
    model(batch)  # materialise lazily created parameters before the optimizer sees the list
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" \
            else contextlib.nullcontext()
        with cast:
            loss = model(batch).float().sigmoid().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn so machine noise hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def loop_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_params,
              precision: str) -> Callable[[], None]:
    """A closure doing one training step as astroseg.train.loop runs it: autocast (bf16 when
    `precision` says so), the project's loss on masks `y`, fused AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = segmentation_loss(logits, y, loss_params).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn` (no warm-up: call it first if it needs one)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
