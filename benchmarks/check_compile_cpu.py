"""torch.compile of the default training step on the CPU: are its gradients right, and is it faster?

    .venv/bin/python benchmarks/check_compile_cpu.py [--mode max-autotune-no-cudagraphs]
                                                     [--precision bf16|fp32] [--repeats 8]

Builds the default model (dropout off, so both runs draw nothing at random), takes one step's
gradients in eager mode and through torch.compile(mode) on the same batch, and counts the
parameters whose gradients differ by more than 5% (bf16) or 0.1% (fp32) in relative norm. Then
times interleaved training steps, eager against compiled. `train.compile` stays CUDA-only while
this finds wrong gradients or no gain (benchmarks/README.md has the runs).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from astroseg.models import build_model
from astroseg.params import load_params
from astroseg.scoring.losses import segmentation_loss
from timing import interleaved_medians

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="max-autotune-no-cudagraphs",
                    help="torch.compile mode; 'default' for none")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    params = load_params(args.params)
    torch.manual_seed(0)
    eager = build_model({**params.model.config(), "image_size": [128, 128], "dropout": 0.0})
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, mode=None if args.mode == "default" else args.mode,
                             dynamic=False)
    batch = params.train.batch_size
    x = torch.rand(batch, 1, 128, 128)
    y = (torch.rand(batch, 1, 128, 128) > 0.8).to(torch.uint8)

    def loss_of(net: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = net(x)
        return segmentation_loss(logits, y, params.loss).mean()

    def grads(net: torch.nn.Module, owner: torch.nn.Module) -> dict[str, torch.Tensor]:
        owner.zero_grad(set_to_none=True)
        loss_of(net).backward()
        return {k: p.grad.clone() for k, p in owner.named_parameters() if p.grad is not None}

    t0 = time.perf_counter()
    got = grads(compiled, model)
    compile_s = time.perf_counter() - t0
    want = grads(eager, eager)
    tolerance = 0.05 if args.precision == "bf16" else 1e-3
    wrong = [k for k in want if k not in got or
             float((got[k] - want[k]).norm() / want[k].norm().clamp(min=1e-12)) > tolerance]

    def stepper(net: torch.nn.Module, owner: torch.nn.Module):
        opt = torch.optim.AdamW(owner.parameters(), lr=1e-3, fused=True)

        def step() -> None:
            loss = loss_of(net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    times = interleaved_medians({"eager": stepper(eager, eager),
                                 "compiled": stepper(compiled, model)}, args.repeats)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; mode {args.mode}, {args.precision}, batch {batch}")
    print(f"compile + first step {compile_s:.0f} s; gradients differing by > {tolerance:.1%}: "
          f"{len(wrong)} of {len(want)} parameters {wrong[:3]}")
    print(f"step eager {times['eager'] * 1e3:.1f} ms, compiled {times['compiled'] * 1e3:.1f} "
          f"ms: compiled/eager {times['compiled'] / times['eager']:.2f}")


if __name__ == "__main__":
    main()
