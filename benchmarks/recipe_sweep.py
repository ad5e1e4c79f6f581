"""Train recipe variants on the CPU and score each on 1000 validation images (docs/tuning.md).

    .venv/bin/python benchmarks/recipe_sweep.py --out sweep.tsv 'default|' \
        'a1d8118 default|loss.boundary_weight=0,train.epochs=11' 'ema|train.ema=0.995'

Each run is `name|key=value,...` over params.yaml (dotted keys, YAML values). It trains as the
train stage does (the pipeline's 120 validation images choose the kept epoch), then scores the
kept weights, without test-time averaging, on the first `--val` images of the validation split:
the same generator and seed, so the pipeline's 120 are among them. The test split is never
touched. One TSV row per run is appended to `--out` as it finishes: name, overrides, optimizer
steps, training seconds, kept epoch, val IoU (120), val IoU and Dice (`--val`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import yaml

from astroseg.data.dataset import Split
from astroseg.data.synthetic import render
from astroseg.models import build_model
from astroseg.params import load_params
from astroseg.scoring.evaluation import as_tensors, evaluate_tensors
from astroseg.train.loop import train_model

ROOT = Path(__file__).resolve().parents[1]


def _set(tree: dict, dotted: str, value: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = yaml.safe_load(value)


def variant_params(overrides: str, base: Path):
    """params.yaml with `key=value,...` applied, validated as the stages would."""
    tree = yaml.safe_load(base.read_text())
    for item in filter(None, overrides.split(",")):
        key, value = item.split("=", 1)
        _set(tree, key.strip(), value.strip())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(tree))
        return load_params(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="name|key=value,key=value")
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default="sweep.tsv")
    args = ap.parse_args()
    for run in args.runs:
        name, _, overrides = run.partition("|")
        params = variant_params(overrides, Path(args.params))
        data = dataclasses.replace(params.data, n_val=max(args.val, params.data.n_val))
        train = render(data, "train", range(data.n_train))
        val = render(data, "val", range(data.n_val))
        val_all = Split(val.images, val.masks)
        pipeline_val = Split(val.images[:params.data.n_val], val.masks[:params.data.n_val])
        cfg = dataclasses.replace(params.train, progress=False, device="cpu")
        torch.manual_seed(cfg.seed)
        model = build_model({**params.model.config(),
                             "image_size": [data.height, data.width],
                             "in_channels": 1})
        t0 = time.perf_counter()
        result = train_model(model, Split(train.images, train.masks), pipeline_val, cfg,
                             params.loss, torch.device("cpu"))
        seconds = time.perf_counter() - t0
        model.load_state_dict(result.best_state)
        scores = evaluate_tensors(model, *as_tensors(val_all), params.loss, torch.device("cpu"),
                                  64).summary()
        steps = cfg.epochs * -(-data.n_train // cfg.batch_size)
        row = [name, overrides or "-", steps, f"{seconds:.0f}", result.best_epoch,
               f"{result.history[result.best_epoch - 1].val_iou:.4f}", f"{scores['iou']:.4f}",
               f"{scores['dice']:.4f}"]
        print("\t".join(map(str, row)), flush=True)
        with open(args.out, "a") as f:
            f.write("\t".join(map(str, row)) + "\n")


if __name__ == "__main__":
    main()
