"""HDF5 chunk layout and compression for a training split streamed from disk (issue 10).

    .venv/bin/python benchmarks/bench_h5_layout.py [--images 4096] [--repeats 3]

Writes one realistic split (N synthetic 128x128 images from the project's generator, float32 in
[0, 1], with their uint8 masks) in a temp dir, once per layout: images per chunk in
{1, 8, 16, 32, 64} x compression in {none, lzf, gzip-1, shuffle+lzf, shuffle+gzip-1} (the masks
get the same chunking and filter). For each file it reports the size, the write speed, and the
read speed in images/s (image + mask each) for

  block   chunk-aligned blocks of B contiguous rows [k*B, (k+1)*B) in a shuffled order of k:
          what the streaming reader does, one h5py handle per DataLoader worker
  whole   one read of the whole split (the in-memory path, `load_split`)
  random  single images at random indices (a map-style Dataset's __getitem__): --random of
          them, or as many as fit in --random-seconds (the run is stopped early on layouts
          that decompress a whole multi-image chunk per read; the table says how many)

Every file is read once in full before timing (which also checks its contents), so the figures
are warm-cache: the file is in the OS page cache and the reads are bound by HDF5 and the
decompression, which is what matters once a split sits in the page cache or on a fast disk.
Each read figure is the median of --repeats runs, each with a fresh handle (default chunk
cache, 1 MiB) and a new shuffle. Files are written with no chunk cache, as the project's
writer does, but chunk-aligned (a chunk's images, then its masks): the project's writer goes
image by image, which with multi-image chunks would rewrite (and recompress) each chunk once
per row.

The defaults take about 6 minutes on a 2-core EPYC; --images 2048 halves that.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

FILTERS = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip-1": {"compression": "gzip", "compression_opts": 1},
    "shuffle+lzf": {"shuffle": True, "compression": "lzf"},
    "shuffle+gzip-1": {"shuffle": True, "compression": "gzip", "compression_opts": 1},
}
SHAPE = (128, 128)


def make_split(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """n images and masks: the project's generator, or noise + Gaussian blobs if it is missing."""
    try:
        from astroseg.data.synthetic import render
        from astroseg.params import DataParams
    except ImportError as exc:
        print(f"astroseg generator unavailable ({exc}); using noise + Gaussian blobs",
              file=sys.stderr)
        return _blobs(n) + ("noise + Gaussian blobs (fallback)",)
    p = DataParams()
    images = np.empty((n, *SHAPE), np.float32)
    masks = np.empty((n, *SHAPE), np.uint8)
    for start in range(0, n, 256):
        chunk = render(p, "train", range(start, min(start + 256, n)))
        images[start:start + len(chunk.images)] = chunk.images
        masks[start:start + len(chunk.masks)] = chunk.masks
    return images, masks, "astroseg.data.synthetic.render(DataParams(), 'train', ...)"


def _blobs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float32)
    images = 0.02 * rng.standard_normal((n, *SHAPE), dtype=np.float32)
    masks = np.zeros((n, *SHAPE), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(20, 108, 2)
            s = rng.uniform(3, 10)
            blob = rng.uniform(0.7, 1.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
            images[i] += blob
            masks[i] |= blob > 0.1 * blob.max()
    images -= images.min(axis=(1, 2), keepdims=True)
    images /= images.max(axis=(1, 2), keepdims=True)
    return images, masks


def write(path: Path, images: np.ndarray, masks: np.ndarray, rows: int, filt: dict) -> float:
    """Write the split chunk-aligned with no chunk cache; seconds taken, close (flush) included."""
    t0 = time.perf_counter()
    with h5py.File(path, "w", rdcc_nbytes=0) as f:
        g = f.create_group("train")
        dsets = [g.create_dataset(key, shape=a.shape, dtype=a.dtype, chunks=(rows, *SHAPE),
                                  track_times=False, **filt)
                 for key, a in (("images", images), ("masks", masks))]
        for start in range(0, len(images), rows):
            for ds, a in zip(dsets, (images, masks)):
                ds[start:start + rows] = a[start:start + rows]
    return time.perf_counter() - t0


def read_blocks(path: Path, block: int, rng: np.random.Generator) -> None:
    with h5py.File(path, "r") as f:
        images, masks = f["train/images"], f["train/masks"]
        n = len(images)
        for k in rng.permutation(-(-n // block)):
            images[k * block:(k + 1) * block]
            masks[k * block:(k + 1) * block]


def read_whole(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["train/images"][:], f["train/masks"][:]


def read_random(path: Path, indices: np.ndarray, budget_s: float) -> tuple[int, float]:
    """Read single images (and masks) at `indices`, stopping after `budget_s`: (reads, seconds)."""
    with h5py.File(path, "r") as f:
        images, masks = f["train/images"], f["train/masks"]
        t0 = time.perf_counter()
        for done, i in enumerate(indices, 1):
            images[i]
            masks[i]
            if time.perf_counter() - t0 > budget_s:
                break
        return done, time.perf_counter() - t0


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4096, help="images in the split (N)")
    ap.add_argument("--block", type=int, default=256, help="rows per block read (B)")
    ap.add_argument("--random", type=int, default=1000, help="random single-image reads")
    ap.add_argument("--random-seconds", type=float, default=1.5,
                    help="stop a run of random reads after this many seconds (keeps the slow "
                         "layouts, ~100 reads/s, from taking most of the run)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per read figure (median)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 16, 32, 64],
                    help="images per chunk")
    ap.add_argument("--filters", nargs="+", default=list(FILTERS), choices=list(FILTERS))
    args = ap.parse_args()
    if any(args.block % c for c in args.chunks):
        ap.error(f"--block {args.block} must be a multiple of every --chunks value")

    t_start = time.perf_counter()
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() \
        else "unknown"
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, AVX-512: {avx512}; "
          f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}, "
          f"Python {platform.python_version()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    t0 = time.perf_counter()
    images, masks, source = make_split(args.images)
    n = len(images)
    raw_mb = (images.nbytes + masks.nbytes) / 1e6
    print(f"split: {n} images {SHAPE[0]}x{SHAPE[1]} float32 + uint8 masks ({raw_mb:.1f} MB raw), "
          f"from {source}, generated in {time.perf_counter() - t0:.1f} s")
    print(f"reads: block = {args.block} contiguous rows per read, shuffled block order; "
          f"whole = one read of the split; random = {args.random} single images at random "
          f"indices (or as many as fit in {args.random_seconds} s); images + masks each; median of "
          f"{args.repeats}, fresh h5py handle each")
    print("WARM CACHE: every file is read once before timing, so the figures are "
          "decompression/HDF5-bound, not disk-bound.", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_h5_layout_") as tmp:
        for chunk in args.chunks:
            for name in args.filters:
                path = Path(tmp) / f"c{chunk}_{name}.h5"
                t_layout = time.perf_counter()
                w = write(path, images, masks, chunk, FILTERS[name])
                with h5py.File(path, "r") as f:
                    img = f["train/images"].id
                    img_mb = img.get_storage_size() / 1e6
                    msk_mb = f["train/masks"].id.get_storage_size() / 1e6
                    # A filter that cannot shrink a chunk is skipped for it (optional filter):
                    # the chunk is stored raw and its filter-mask bit set.
                    raw_chunks = sum(img.get_chunk_info(k).filter_mask != 0
                                     for k in range(img.get_num_chunks())) if FILTERS[name] else 0
                    n_chunks = img.get_num_chunks()
                size = path.stat().st_size
                # Warm-up: the whole file once, into the page cache; also checks the contents.
                got_images, got_masks = read_whole(path)
                if not (np.array_equal(got_images, images) and np.array_equal(got_masks, masks)):
                    raise SystemExit(f"{path.name}: read back differs from what was written")
                del got_images, got_masks
                block_t, whole_t, random_rate, random_n = [], [], [], []
                for r in range(args.repeats):
                    rng = np.random.default_rng([r, chunk])
                    block_t.append(timed(read_blocks, path, args.block, rng))
                    whole_t.append(timed(read_whole, path))
                    done, secs = read_random(path, rng.integers(0, n, args.random),
                                             args.random_seconds)
                    random_rate.append(done / secs)
                    random_n.append(done)
                rows.append({
                    "chunk": chunk, "filter": name, "chunk_kb": chunk * SHAPE[0] * SHAPE[1] * 4 / 1024,
                    "file_mb": size / 1e6, "img_mb": img_mb, "msk_mb": msk_mb,
                    "bytes_per_image": size / n, "write": n / w,
                    "block": n / statistics.median(block_t), "whole": n / statistics.median(whole_t),
                    "random": statistics.median(random_rate), "random_n": min(random_n),
                    "raw_chunks": raw_chunks, "n_chunks": n_chunks,
                })
                path.unlink()
                row = rows[-1]
                print(f"  chunk {chunk:>2} {name:<15} {row['file_mb']:7.1f} MB  write "
                      f"{row['write']:6.0f}  block {row['block']:6.0f}  whole {row['whole']:6.0f}  "
                      f"random {row['random']:6.0f} img/s  ({time.perf_counter() - t_layout:.1f} s)",
                      file=sys.stderr, flush=True)

    raw_images_mb = images.nbytes / 1e6
    raw_masks_mb = masks.nbytes / 1e6
    print()
    print(f"images per second (image + mask), warm cache; raw sizes: images {raw_images_mb:.1f} MB, "
          f"masks {raw_masks_mb:.1f} MB; (current) = the layout written by astroseg today")
    print()
    print("| images/chunk | chunk KB (images) | compression | file MB | images MB (of raw) "
          "| image chunks stored raw | masks MB (of raw) | bytes/image | write img/s "
          f"| block-{args.block} img/s | whole img/s | random img/s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tag = " (current)" if (r["chunk"], r["filter"]) == (1, "lzf") else ""
        print(f"| {r['chunk']} | {r['chunk_kb']:.0f} | {r['filter']}{tag} | {r['file_mb']:.1f} "
              f"| {r['img_mb']:.1f} ({r['img_mb'] / raw_images_mb:.1%}) "
              f"| {r['raw_chunks'] / r['n_chunks']:.0%} "
              f"| {r['msk_mb']:.2f} ({r['msk_mb'] / raw_masks_mb:.1%}) "
              f"| {r['bytes_per_image']:,.0f} | {r['write']:,.0f} | {r['block']:,.0f} "
              f"| {r['whole']:,.0f} | {r['random']:,.0f}"
              f"{'' if r['random_n'] >= args.random else ' (' + str(r['random_n']) + ' reads)'} |")
    print()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
