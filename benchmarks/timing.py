"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch


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
