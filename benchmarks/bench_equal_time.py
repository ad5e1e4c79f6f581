"""Test IoU of the seed's model and the default segformer after the same training wall time.

    .venv/bin/python benchmarks/bench_equal_time.py [--budget 180] [--n-train 800]

Both models train on the same synthetic data (params.yaml's data section, with the seed's 800
training images unless --n-train says otherwise: one seed epoch must fit the budget) with their own
recipes: the seed preset (tiny_segformer, constant LR 3e-4, fp32, no augmentation) and the
default params.yaml recipe. Each first times one calibration epoch, then trains from scratch for
as many whole epochs as fit in `--budget` seconds (its LR schedule fitted to that many epochs),
keeps its best-validation epoch, and is scored on the test split (no test-time averaging).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time

import numpy as np
import torch

from astroseg.data.dataset import Split
from astroseg.scoring.evaluation import evaluate
from astroseg.models import build_model
from astroseg.params import load_params
from astroseg.data.synthetic import generate
from astroseg.train.loop import train_model

SEED_RECIPE = {"lr": 3e-4, "weight_decay": 1e-4, "schedule": "constant", "warmup_epochs": 0.0,
               "augment": False, "precision": "fp32"}


def _split(p, name: str, n: int) -> Split:
    chunks = [c for _, c in generate(p, {name: n})]
    return Split(np.concatenate([c.images for c in chunks]), np.concatenate([c.masks for c in chunks]))


def run(name: str, params, train_cfg, data, budget: float) -> dict:
    """Calibrate, then train for the epochs that fit `budget`; return epochs, seconds, test IoU."""
    train, val, test = data
    config = {"name": name, "num_classes": 1, "image_size": [128, 128],
              **dataclasses.asdict(getattr(params.model, name))}
    quiet = dataclasses.replace(train_cfg, progress=False)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    train_model(build_model(config), train, val, dataclasses.replace(quiet, epochs=1),
                params.loss, torch.device("cpu"))
    per_epoch = time.perf_counter() - t0
    epochs = max(1, math.floor(budget / per_epoch))
    torch.manual_seed(0)
    model = build_model(config)
    t0 = time.perf_counter()
    result = train_model(model, train, val, dataclasses.replace(quiet, epochs=epochs),
                         params.loss, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    model.load_state_dict(result.best_state)
    scores = evaluate(model, test, params.loss, torch.device("cpu"), 32).summary()
    return {"epochs": epochs, "seconds": seconds, "iou": scores["iou"], "dice": scores["dice"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per model")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n-train", type=int, default=800, help="training images (seed: 800)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; budget {args.budget:.0f} s of training per model")
    params = load_params(args.params)
    d = params.data
    data = (_split(d, "train", args.n_train), _split(d, "val", d.n_val), _split(d, "test", d.n_test))
    seed_cfg = dataclasses.replace(params.train, **SEED_RECIPE)
    rows = {"tiny_segformer (seed recipe)": run("tiny_segformer", params, seed_cfg, data, args.budget),
            "segformer (default recipe)": run("segformer", params, params.train, data, args.budget)}
    print(f"{'model':<30} {'epochs':>6} {'train s':>8} {'test IoU':>9} {'test Dice':>10}")
    for label, r in rows.items():
        print(f"{label:<30} {r['epochs']:6d} {r['seconds']:8.1f} {r['iou']:9.4f} {r['dice']:10.4f}")


if __name__ == "__main__":
    main()
