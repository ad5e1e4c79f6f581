"""The default training step on the CPU, before and after issue 15, side by side in one process.

    .venv/bin/python benchmarks/bench_train_step.py [--repeats 10] [--params params.yaml]

before: the model of a1d8118 (benchmarks/segformer_before.py) with that commit's default shape,
        batch 16, bf16 autocast, Dice + BCE, fused AdamW;
now:    the model of `--params` (astroseg.models), its batch size and loss, the same step.
Steps alternate (interleaved medians, so machine noise hits both alike). Prints ms per step,
images/s, the FLOP rate (forward + backward FLOPs of each model, counted by roofline.py) and its
fraction of the bf16 2048^2 matmul rate measured in the same run, and now/before ratios.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import segformer_before
from astroseg.device import resolve_precision
from astroseg.models import build_model
from astroseg.params import LossParams, load_params
from roofline import flops_per_image, matmul_rate
from timing import interleaved_medians, loop_step

# The default model section of params.yaml at a1d8118.
BEFORE = dict(dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8),
              sr_ratios=(8, 4, 2, 1), first_stride=4, mlp_ratio=4.0, decoder_dim=128,
              refine_dim=32, drop_path=0.0, attn_dropout=0.0, dropout=0.1)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    params = load_params(args.params)
    size = [params.data.height, params.data.width]
    precision = resolve_precision(params.train.precision, torch.device("cpu"))
    torch.manual_seed(0)
    models = {"before": (segformer_before.SegFormer(image_size=tuple(size), **BEFORE), 16,
                         LossParams()),
              "now": (build_model({**params.model.config(), "image_size": size}),
                      params.train.batch_size, params.loss)}
    steps, flops = {}, {}
    for name, (model, batch, loss) in models.items():
        flops[name] = flops_per_image(model, size)[1] * batch
        x = torch.rand(batch, model.in_channels, *size)
        y = (torch.rand(batch, 1, *size) > 0.8).to(torch.uint8)
        steps[name] = loop_step(model.train(), x, y, loss, precision)
    seconds = interleaved_medians(steps, args.repeats)
    peak = matmul_rate("bf16")
    print(f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}; {precision}; bf16 matmul 2048^2 "
          f"{peak:.0f} GFLOP/s; median of {args.repeats} interleaved steps")
    print(f"{'':8} {'ms/step':>8} {'images/s':>9} {'GFLOP/step':>10} {'GFLOP/s':>8} "
          f"{'of bf16 matmul':>14}")
    rates = {}
    for name, (_, batch, _) in models.items():
        rates[name] = flops[name] / seconds[name] / 1e9
        print(f"{name:8} {seconds[name] * 1e3:8.1f} {batch / seconds[name]:9.1f} "
              f"{flops[name] / 1e9:10.2f} {rates[name]:8.0f} {rates[name] / peak:14.1%}")
    per_image = {n: seconds[n] / models[n][1] for n in models}
    print(f"now/before: images/s {per_image['before'] / per_image['now']:.2f}x, FLOP rate "
          f"{rates['now'] / rates['before']:.2f}x")


if __name__ == "__main__":
    main()
