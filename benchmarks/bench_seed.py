"""Seed notebook vs astroseg, side by side in one process: data generation and a train step.

    .venv/bin/python benchmarks/bench_seed.py [--images 512] [--repeats 5]

Prints medians over repeats and the ratio seed / astroseg (above 1: astroseg is faster).
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

from astroseg.models import build_model
from astroseg.params import DataParams, TinySegFormerParams
from astroseg.data.synthetic import generate
from seed_reference import SeedTinySegFormer, make_sample
from timing import interleaved_medians, median_seconds, train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}")

    np.random.seed(0)
    seed_gen = median_seconds(lambda: [make_sample() for _ in range(args.images)], args.repeats)
    params = DataParams()
    ours_gen = median_seconds(lambda: list(generate(params, {"train": args.images})), args.repeats)
    print(f"generate {args.images} images 128x128: seed {seed_gen:.3f} s, astroseg "
          f"{ours_gen:.3f} s, ratio {seed_gen / ours_gen:.2f}x")

    torch.manual_seed(0)
    batch = torch.rand(args.batch, 1, 128, 128)
    cfg = {"name": "tiny_segformer", "image_size": [128, 128],
           **TinySegFormerParams().__dict__}  # the seed's exact architecture
    med = interleaved_medians({"seed": train_step(SeedTinySegFormer(), batch),
                               "astroseg": train_step(build_model(cfg), batch)}, args.repeats)
    print(f"train step, batch {args.batch}, TinySegFormer embed_dim 128: seed {med['seed']:.3f} s, "
          f"astroseg {med['astroseg']:.3f} s, ratio {med['seed'] / med['astroseg']:.2f}x")


if __name__ == "__main__":
    main()
