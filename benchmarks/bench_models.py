"""The seed's model (tiny_segformer) against the default segformer, side by side in one process.

    .venv/bin/python benchmarks/bench_models.py [--repeats 5]

Prints, for each model as configured in params.yaml: parameters, forward GFLOP per 128x128 image
(torch.utils.flop_counter), and the median CPU training-step time (batch 16) in fp32 and with the
bf16 autocast the default recipe uses; then the ratios seed / segformer.
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch.utils.flop_counter import FlopCounterMode

from astroseg.models import build_model
from astroseg.params import load_params
from timing import interleaved_medians, train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--params", default="params.yaml")
    # On a CPU without native bf16 the seed's model takes about a minute per bf16 step.
    ap.add_argument("--models", nargs="+", default=["tiny_segformer", "segformer"],
                    choices=("tiny_segformer", "segformer"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, native bf16: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    model_params = load_params(args.params).model
    torch.manual_seed(0)
    batch = torch.rand(16, 1, 128, 128)
    rows = {}
    for name in args.models:
        config = {"name": name, "num_classes": 1, "image_size": [128, 128],
                  **getattr(model_params, name).__dict__}
        model = build_model(config)
        with FlopCounterMode(display=False) as counter:
            model.eval()(batch[:1])
        model.train()
        med = interleaved_medians({p: train_step(model, batch, p) for p in ("fp32", "bf16")},
                                  args.repeats)
        rows[name] = (sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9,
                      med["fp32"], med["bf16"])
        n, gflop, fp32, bf16 = rows[name]
        print(f"{name:15s} {n / 1e6:5.2f} M params  {gflop:5.2f} GFLOP/image  "
              f"step fp32 {fp32:.3f} s  bf16 {bf16:.3f} s  (bf16 / fp32 {bf16 / fp32:.2f}x)")
    if len(rows) < 2:
        return
    seed, ours = rows["tiny_segformer"], rows["segformer"]
    print(f"ratio seed/segformer: GFLOP {seed[1] / ours[1]:.1f}x, step fp32 {seed[2] / ours[2]:.1f}x, "
          f"bf16 {seed[3] / ours[3]:.1f}x")


if __name__ == "__main__":
    main()
