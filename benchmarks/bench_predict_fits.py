"""`astroseg predict` on a big FITS image: throughput and peak memory, against a naive baseline.

    .venv/bin/python benchmarks/bench_predict_fits.py [--size 4096] [--model models/model.pt]
                                                      [--device cpu|cuda]

Writes a SIZE x SIZE float32 example field (astroseg.data.sky) to a temp dir, then runs in turn, each
in a fresh subprocess so peak RSS (ru_maxrss) is its own:
  naive     the seed's way scaled up: read the whole image, normalise it, cut non-overlapping
            128x128 tiles, predict them in batches, paste the tiles back (seams at every tile
            border; everything in memory)
  astroseg  predict_fits: streamed strips, overlapping windows blended, FITS written in blocks
            (fp32 and bf16 autocast)
and prints megapixels per second, peak memory and the ratio to naive.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]


def naive(image_path: str, model_path: str, out_path: str, device: str) -> None:
    """Whole image in memory, non-overlapping tiles, no blending."""
    from astroseg.models.checkpoint import load_checkpoint
    from astroseg.data.fits_io import read_image
    from astroseg.data.normalize import normalize_array
    from astroseg.infer.predict import predict

    model, payload = load_checkpoint(model_path, device)
    data, valid, header = read_image(image_path)
    x, _ = normalize_array(data, valid, payload["meta"]["normalization"], image_path)
    h, w = x.shape
    tiles = x.reshape(h // 128, 128, w // 128, 128).swapaxes(1, 2).reshape(-1, 128, 128)
    prob, mask = predict(model, tiles, batch_size=16)
    prob = prob.reshape(h // 128, w // 128, 128, 128).swapaxes(1, 2).reshape(h, w)
    prob[~valid] = np.nan
    fits.HDUList([fits.PrimaryHDU(prob, header), fits.ImageHDU((prob >= 0.5).astype(np.uint8))]
                 ).writeto(out_path, overwrite=True)


def child(mode: str, image: str, model: str, out: str, device: str) -> None:
    """Run one mode and print its wall time and peak RSS as JSON."""
    t0 = time.perf_counter()
    if mode == "naive":
        naive(image, model, out, device)
    else:
        from astroseg.infer.predict_fits import predict_fits
        predict_fits(image, out, model, device, precision="bf16" if mode.endswith("bf16") else "fp32")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "peak_gb": rss_gb}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--model", default=str(ROOT / "models/model.pt"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads{gpu}, "
          f"torch {torch.__version__}; image {args.size}x{args.size} float32")
    with tempfile.TemporaryDirectory() as tmp:
        from astroseg.data.sky import render_field
        counts, _, _ = render_field(0, args.size, seed=0)
        image = Path(tmp) / "big.fits"
        fits.PrimaryHDU(counts.astype(np.float32)).writeto(image)
        del counts
        results: dict[str, list[float]] = {}
        peaks: dict[str, float] = {}
        for _ in range(args.repeats):
            for mode in ("naive", "astroseg-fp32", "astroseg-bf16"):
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(image),
                                      args.model, str(Path(tmp) / f"{mode}.fits"),
                                      args.device],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(mode, []).append(r["seconds"])
                peaks[mode] = max(peaks.get(mode, 0.0), r["peak_gb"])
    mp = args.size * args.size / 1e6
    base = float(np.median(results["naive"]))
    print(f"{'mode':<15} {'seconds':>8} {'MP/s':>6} {'peak GB':>8} {'vs naive':>9}")
    for mode, secs in results.items():
        s = float(np.median(secs))
        print(f"{mode:<15} {s:8.2f} {mp / s:6.2f} {peaks[mode]:8.2f} {base / s:8.2f}x")


if __name__ == "__main__":
    main()
