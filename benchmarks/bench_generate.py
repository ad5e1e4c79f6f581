"""The synthetic generator against the seed notebook's per-sample loop, and data.workers 2 vs 1.

    .venv/bin/python benchmarks/bench_generate.py [--images 1024] [--repeats 5] [--prepare 8192]

1. Per image on one core: the notebook's make_sample (benchmarks/seed_reference.py) against
   astroseg's render, 128x128, interleaved repeats in this process, medians and their ratio.
2. The prepare stage's work end to end (render, then write data/dataset.h5) for `--prepare`
   training images with data.workers = 1 and 2, in a temp dir: seconds, the ratio, and whether
   the two files are byte-identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from astroseg.data.synthetic import render
from astroseg.params import DataParams
from seed_reference import make_sample
from timing import interleaved_medians

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
import prepare  # noqa: E402  (the stage script: what `dvc repro` runs)


def _prepare_seconds(p: DataParams, workers: int, directory: Path) -> tuple[float, str]:
    here = Path.cwd()
    os.chdir(directory)
    try:
        t0 = time.perf_counter()
        prepare.prepare_synthetic(dataclasses.replace(p, workers=workers))
        seconds = time.perf_counter() - t0
        digest = hashlib.sha256(Path(prepare.OUT).read_bytes()).hexdigest()
        Path(prepare.OUT).unlink()
        return seconds, digest
    finally:
        os.chdir(here)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024, help="per repeat, astroseg's side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prepare", type=int, default=8192, help="training images for part 2")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}")
    p = DataParams()
    seed_images = max(1, args.images // 4)    # the notebook is ~5x slower: similar wall time
    np.random.seed(0)
    start = [0]

    def ours() -> None:
        render(p, "train", range(start[0], start[0] + args.images))
        start[0] += args.images     # new images every repeat, as prepare renders them

    med = interleaved_medians({"seed": lambda: [make_sample() for _ in range(seed_images)],
                               "astroseg": ours}, args.repeats)
    seed_us, ours_us = med["seed"] / seed_images * 1e6, med["astroseg"] / args.images * 1e6
    print(f"generate 128x128, one core: notebook {seed_us:.0f} us/image, astroseg "
          f"{ours_us:.0f} us/image, ratio {seed_us / ours_us:.2f}x")

    sized = dataclasses.replace(p, n_train=args.prepare, n_val=64, n_test=64)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {w: _prepare_seconds(sized, w, Path(tmp)) for w in (1, 2)}
    (t1, d1), (t2, d2) = runs[1], runs[2]
    n = args.prepare + 128
    print(f"prepare {n} images to HDF5: workers=1 {t1:.1f} s ({n / t1:.0f} images/s), "
          f"workers=2 {t2:.1f} s ({n / t2:.0f} images/s), ratio {t1 / t2:.2f}x, "
          f"byte-identical: {d1 == d2}")


if __name__ == "__main__":
    main()
