"""`astroseg predict` over a survey: --workers 2 against 1, side by side.

    .venv/bin/python benchmarks/bench_survey.py [--files 200] [--size 256] [--repeats 3]
                                                [--workers 2] [--model M.pt]

Writes FILES float32 fields of SIZE x SIZE (noise and a few Gaussian sources) to a temp dir and a
checkpoint of the default segformer as params.yaml shapes it (random weights: throughput does not
depend on them) unless --model is given. Then runs the command a user would, each time in a fresh
subprocess into an empty OUTDIR (process start, imports, model load and worker start-up included):

    astroseg predict 'DIR/*.fits' -o OUTDIR --device cpu --workers N

for N = 1 and N = --workers in turn, --repeats times, and prints files/s (median) and the ratio.
Each run's line also gives, from its summary.csv, the time each worker spent inside files (the
rest of the wall is start-up and idling) and the median and longest file (with cores / N
threads), to tell thread scaling, start-up and contention apart.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]


def write_fields(directory: Path, n: int, size: int) -> None:
    """`n` fields: sky 100, noise 3, three Gaussian sources each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        image = 100 + 3 * rng.standard_normal((size, size))
        for cy, cx, r in zip(*rng.uniform(0, size, (2, 3)), rng.uniform(3, size / 16, 3)):
            image += 300 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
        fits.PrimaryHDU(image.astype(np.float32)).writeto(directory / f"field_{i:04d}.fits")


def default_checkpoint(path: Path) -> None:
    """The default segformer of params.yaml, random weights, minmax normalisation."""
    from astroseg.models import build_model
    from astroseg.models.checkpoint import save_checkpoint
    from astroseg.params import load_params

    # As the train stage stores it (stages/train.py), for 128x128 training fields.
    config = {**load_params(ROOT / "params.yaml").model.config(), "image_size": [128, 128]}
    torch.manual_seed(0)
    save_checkpoint(path, build_model(config), config, {"normalization": "minmax"})


def run(fields: Path, outdir: Path, model: Path, workers: int) -> tuple[float, list[float]]:
    """Wall seconds of one survey run, and the per-file seconds its summary records."""
    cmd = [sys.executable, "-m", "astroseg.cli", "predict", str(fields / "*.fits"), "-o",
           str(outdir), "--model", str(model), "--device", "cpu", "--workers", str(workers)]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    with open(outdir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["status"] == "ok" for r in rows), "a file was skipped or failed"
    return wall, [float(r["seconds"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None, help="checkpoint (default: the default segformer "
                    "with random weights)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"machine: {cpu}, {cores} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-survey-") as tmp:
        tmp = Path(tmp)
        (tmp / "fields").mkdir()
        write_fields(tmp / "fields", args.files, args.size)
        model = Path(args.model) if args.model else tmp / "model.pt"
        if not args.model:
            default_checkpoint(model)
        state = torch.load(model, weights_only=True)["state_dict"]
        print(f"{args.files} fields of {args.size}x{args.size} float32; model {model.name} "
              f"({sum(v.numel() for v in state.values()) / 1e6:.2f} M params)")
        counts = (1, args.workers)
        walls: dict[int, list[float]] = {n: [] for n in counts}
        for k in range(args.repeats):
            for n in counts:   # interleaved, so machine noise hits both alike
                wall, seconds = run(tmp / "fields", tmp / f"out_{n}_{k}", model, n)
                walls[n].append(wall)
                # Time inside files per worker; the rest of the wall is start-up and idling.
                print(f"  repeat {k + 1}: --workers {n}: {wall:6.2f} s, "
                      f"{args.files / wall:6.2f} files/s; per worker {sum(seconds) / n:6.2f} s "
                      f"in files, per file median {statistics.median(seconds):.3f} s, "
                      f"max {max(seconds):.3f} s ({max(1, cores // n)} threads)")
    rate = {n: args.files / statistics.median(walls[n]) for n in counts}
    for n in counts:
        print(f"--workers {n}: {rate[n]:6.2f} files/s (median of {args.repeats})")
    print(f"ratio --workers {args.workers} / --workers 1: "
          f"{rate[args.workers] / rate[1]:.2f}x")


if __name__ == "__main__":
    main()
