"""The training loop against its previous version (benchmarks/loop_before_ddp.py), on the CPU.

    .venv/bin/python benchmarks/bench_train_loop.py [--repeats 5] [--images 96]

Both train the default model (params.yaml) for one epoch of `--images` 128x128 images at the
default batch size, with augmentation and a validation pass, from the same data and seed; they
run in turn and the medians are compared. The new loop must stay within 5% of the old one on the
CPU: the GPU path (no host sync, device-side augmentation) must cost nothing here.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform

import torch

import loop_before_ddp
from astroseg.data.dataset import Split
from astroseg.data.synthetic import render
from astroseg.models import build_model
from astroseg.params import load_params
from astroseg.train import loop
from timing import interleaved_medians


def _split(data, name: str, n: int) -> Split:
    chunk = render(data, name, range(n))
    return Split(chunk.images, chunk.masks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = dataclasses.replace(params.train, epochs=1, progress=False, device="cpu")
    data = dataclasses.replace(params.data, n_train=args.images)
    train, val = _split(data, "train", args.images), _split(data, "val", 16)
    config = {**params.model.config(), "image_size": [data.height, data.width]}
    results = {}

    def run(module) -> None:
        torch.manual_seed(cfg.seed)
        model = build_model(config)
        results[module.__name__] = module.train_model(model, train, val, cfg, params.loss,
                                                      torch.device("cpu")).history

    med = interleaved_medians({"before": lambda: run(loop_before_ddp), "now": lambda: run(loop)},
                              args.repeats)
    steps = -(-args.images // cfg.batch_size)
    print(f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}; {config['name']}, batch {cfg.batch_size}, "
          f"{steps} steps + validation per run, median of {args.repeats}")
    print(f"before: {med['before']:.3f} s ({med['before'] / steps:.3f} s/step)  now: "
          f"{med['now']:.3f} s ({med['now'] / steps:.3f} s/step)  now/before: "
          f"{med['now'] / med['before']:.3f}")
    same = results["loop_before_ddp"] == results["astroseg.train.loop"]
    print(f"identical history: {same}")


if __name__ == "__main__":
    main()
