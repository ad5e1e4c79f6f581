"""Where a CPU training step spends its time, per op type, and its fraction of the matmul rate.

    .venv/bin/python benchmarks/profile_train_step.py [--steps 10] [--batch 16] [--before]
                                                      [--params params.yaml]

Builds the model of `--params` (or, with `--before`, the model of a1d8118), runs the training
loop's step (bf16 autocast where `auto` picks it, the loss, fused AdamW) on a batch of
synthetic 128x128 images, profiles `--steps` steps with torch.profiler and sums self CPU time
into op types (matmul, convolution, attention, norms, elementwise, layout copies, optimizer). Also measures the 2048x2048 matmul rate in bf16 and
fp32 and prints the step's achieved GFLOP/s as a fraction of it.
"""

from __future__ import annotations

import argparse
import collections
import platform
import re
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from astroseg.device import resolve_precision
from astroseg.models import build_model
from astroseg.params import load_params
from roofline import matmul_rate, train_flops
from timing import loop_step

ROOT = Path(__file__).resolve().parents[1]

# First match wins: op name pattern -> type.
TYPES = [
    ("attention", r"scaled_dot_product|_softmax|softmax"),
    ("matmul", r"aten::(mm|addmm|bmm|matmul|linear|baddbmm|_addmm_activation)$|mkldnn_matmul"),
    ("convolution", r"conv|mkldnn_convolution"),
    ("norms", r"layer_norm|batch_norm|group_norm|rms_norm"),
    ("optimizer", r"adam|_foreach"),
    ("layout copies", r"aten::(copy_|clone|contiguous|_to_copy|to|cat|stack|rot90|flip|"
                      r"transpose|permute|reshape|view|_unsafe_view|t|expand|as_strided|"
                      r"unfold|pixel_(un)?shuffle|flatten|slice|select|empty_like|empty|"
                      r"zeros|zero_|fill_|index|where|narrow|split|chunk)$"),
    ("resampling", r"upsample|interpolate|grid_sampler"),
    ("elementwise", r"aten::(add|mul|sub|div|gelu|relu|sigmoid|silu|exp|log|neg|sum|mean|"
                    r"pow|sqrt|rsqrt|clamp|threshold|binary_cross|dropout|native_dropout|"
                    r"bernoulli|abs|where|lerp|addcmul|addcdiv|ne|eq|ge|gt|lt|le|"
                    r"_local_scalar|tanh|erf)(_)?(_backward)?$|Backward|backward"),
]


def op_type(name: str) -> str:
    """The op type of an aten op name (TYPES), or 'other'."""
    for kind, pattern in TYPES:
        if re.search(pattern, name):
            return kind
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--rows", type=int, default=25, help="ops listed by self time")
    ap.add_argument("--before", action="store_true",
                    help="profile the model of a1d8118 (segformer_before.py) instead")
    args = ap.parse_args()
    params = load_params(args.params)
    torch.manual_seed(0)
    size = [params.data.height, params.data.width]
    if args.before:
        import segformer_before
        from bench_train_step import BEFORE
        model = segformer_before.SegFormer(image_size=tuple(size), **BEFORE)
    else:
        model = build_model({**params.model.config(), "image_size": size})
    model.train()
    precision = resolve_precision(params.train.precision, torch.device("cpu"))
    x = torch.rand(args.batch, model.in_channels, *size)
    y = (torch.rand(args.batch, 1, *size) > 0.8).to(torch.uint8)
    step = loop_step(model, x, y, params.loss, precision)
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - t0) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    by_type: dict[str, float] = collections.Counter()
    rows = []
    for e in prof.key_averages():
        by_type[op_type(e.key)] += e.self_cpu_time_total
        rows.append((e.self_cpu_time_total, e.count, e.key))
    total = sum(by_type.values())
    flops = train_flops(model, size) * args.batch
    rate = {p: matmul_rate(p) for p in ("bf16", "fp32")}
    print(f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}; {params.model.name}, batch {args.batch}, "
          f"{precision}; matmul 2048^2: bf16 {rate['bf16']:.0f} GFLOP/s, fp32 "
          f"{rate['fp32']:.0f} GFLOP/s")
    achieved = flops / seconds / 1e9
    print(f"step {seconds * 1e3:.1f} ms (unprofiled mean of {args.steps}), "
          f"{args.batch / seconds:.0f} images/s, {flops / 1e9:.2f} GFLOP/step, "
          f"{achieved:.0f} GFLOP/s = {achieved / rate['bf16']:.1%} of bf16 matmul, "
          f"{achieved / rate['fp32']:.1%} of fp32")
    print(f"\n{'op type':<16} {'ms/step':>8} {'share':>6}")
    for kind, us in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<16} {us / 1e3 / args.steps:8.2f} {us / total:6.1%}")
    print(f"\n{'op':<48} {'type':<14} {'calls/step':>10} {'ms/step':>8}")
    for us, count, key in sorted(rows, reverse=True)[:args.rows]:
        print(f"{key[:48]:<48} {op_type(key):<14} {count / args.steps:10.0f} "
              f"{us / 1e3 / args.steps:8.2f}")


if __name__ == "__main__":
    main()
