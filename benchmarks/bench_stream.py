"""A training step fed from a streamed split against one fed from memory, on the CPU.

    .venv/bin/python benchmarks/bench_stream.py [--images 1024] [--steps 24] [--repeats 3]

Writes `--images` synthetic 128x128 images to a dataset file in a temp dir, then times
`--steps` training steps (forward, Dice + BCE, backward, fused AdamW) of the default model
(params.yaml) at the default batch size, the batches drawn from the split in memory (InMemory)
or streamed from the file (Streamed: max_memory_gb 0.25, with 0, 1 and 2 loader worker
processes, a fresh loader per repeat as at every epoch's start). Interleaved repeats; medians
per step.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import tempfile
from pathlib import Path

import torch

from astroseg.data.dataset import Split, write_splits
from astroseg.data.stream import streamed
from astroseg.data.synthetic import render
from astroseg.models import build_model
from astroseg.params import load_params
from astroseg.scoring.losses import segmentation_loss
from astroseg.train.batches import InMemory, Streamed
from astroseg.train.distributed import Dist
from timing import interleaved_medians


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = params.train
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}; model {params.model.name}, batch "
          f"{cfg.batch_size}")
    chunk = render(params.data, "train", range(args.images))
    split = Split(chunk.images, chunk.masks)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.h5"
        write_splits(path, [("train", split)], {})
        sources = {"in memory": InMemory(split)}
        for w in args.loader_workers:
            s = streamed(path, "train", 0.25, w)
            sources[f"streamed, {w} loader workers"] = Streamed(s, cfg.seed, pin=False)
        torch.manual_seed(0)
        model = build_model({**params.model.config(), "image_size": list(split.shape)})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        order = Streamed(s, cfg.seed, pin=False).order(1, torch.Generator())

        def steps(source) -> None:
            batches = source.batches(1, order, 0, cfg.batch_size, Dist())
            for x, y in itertools.islice(batches, args.steps):
                loss = segmentation_loss(model(x), y, params.loss).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

        med = interleaved_medians({k: (lambda src=v: steps(src)) for k, v in sources.items()},
                                  args.repeats)
        print(f"buffers of {s.buffer_rows} images in blocks of {s.block_rows}")
    mem = med["in memory"] / args.steps
    print(f"training step, median of {args.repeats}: in memory {mem:.3f} s")
    for name in list(sources)[1:]:
        step = med[name] / args.steps
        print(f"  {name}: {step:.3f} s, streamed/in-memory {step / mem:.3f}")


if __name__ == "__main__":
    main()
