"""`astroseg predict` on a big FITS image: today's FITS predict against the one before issue 15.

    .venv/bin/python benchmarks/bench_predict_fits.py [--size 4096] [--windows 256,384,512]
        [--batch-size 8 | 8,4,2] [--repeats 3] [--precision auto] [--model models/model.pt]
        [--device cpu|cuda] [--profile] [--naive]

Writes a SIZE x SIZE float32 example field (astroseg.data.sky) with NaNs (a blank rectangle,
as a chip gap leaves, and 0.1% scattered pixels) to a temp dir, then for each window size runs
  before  benchmarks/predict_fits_before.py: the NumPy strip blender as it was (frozen copy)
  after   astroseg.infer.predict_fits: torch on the model's device, reader and writer threads
each in a fresh subprocess (peak RSS, ru_maxrss, its own), old and new interleaved, the order
alternating between repeats, and prints the medians: seconds, megapixels per second, peak
memory and the speed ratio after / before. It checks that the two wrote the same result.
`--batch-size` is windows per forward pass: one number for every window size, or one per
window size (8,4,2: about the same pixels per pass at 256, 384 and 512).
`--profile` runs each once more under cProfile and prints where the time goes (the reader and
writer threads' busy time measured by wrapping their calls). `--naive` adds the seed's way
(whole image, non-overlapping 128-pixel tiles, no blending) at the first window size.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))   # predict_fits_before


def naive(image_path: str, model_path: str, out_path: str, device: str) -> None:
    """Whole image in memory, non-overlapping tiles, no blending."""
    from astroseg.data.fits_io import read_image
    from astroseg.data.normalize import normalize_array
    from astroseg.infer.predict import predict
    from astroseg.models.checkpoint import load_checkpoint

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


def _module(mode: str):
    if mode == "before":
        import predict_fits_before
        return predict_fits_before
    from astroseg.infer import predict_fits
    return predict_fits


def child(mode: str, image: str, model: str, out: str, device: str, window: str,
          batch_size: str, precision: str) -> None:
    """Run one mode and print its wall time and peak RSS as JSON."""
    t0 = time.perf_counter()
    if mode == "naive":
        naive(image, model, out, device)
    else:
        _module(mode).predict_fits(image, out, model, device, batch_size=int(batch_size),
                                   window=int(window), precision=precision)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "peak_gb": rss_gb}))


# Where the time goes: (row, [(file, function, caller or None)]): the row sums the cumulative
# main-thread time of those functions (called from `caller` only, where given; "self": the
# function's own time, without what it calls). Functions of one row do not call each other.
_STACK = "<built-in method torch.stack>"
_PROFILE_ROWS = {
    "before": [
        ("load model", [("predict_fits_before.py", "load_fits_model", None)]),
        ("fit normalisation (a pass over the image)", [("normalize.py", "fit_field", None)]),
        ("read strips", [("predict_fits_before.py", "rows", None)]),
        ("normalise (NumPy)", [("normalize.py", "apply", None)]),
        ("model (incl. NumPy round trips)", [("predict.py", "predict_probabilities", None)]),
        ("cut windows + blend (NumPy)", [("predict_fits_before.py", "segment_fits", "self"),
                                         ("shape_base.py", "stack", "segment_fits")]),
        ("flush rows (divide, NaN, slide) to memmap", [("predict_fits_before.py", "flush",
                                                        None)]),
        ("mask, fraction, labels (passes over memmap)", [
            ("predict_fits_before.py", "_source_fraction", None),
            ("predict_fits_before.py", "_label_sources", None)]),
        ("write FITS (memmap re-read, mask again)", [("predict_fits_before.py",
                                                      "_write_output", None)]),
    ],
    "after": [
        ("load model", [("predict_fits.py", "load_fits_model", None)]),
        ("fit normalisation (a pass over the image)", [("normalize.py", "fit_field", None)]),
        ("read strips: waits for the reader thread", [("workers.py", "__iter__", None)]),
        ("normalise (torch)", [("blend.py", "normalize_tensor", None)]),
        ("model", [("blend.py", "window_probabilities", None)]),
        ("cut windows + blend (torch)", [("blend.py", "add", None), ("~", _STACK, "blend")]),
        ("flush rows, mask, counts (torch), to host", [("blend.py", "flush", None),
                                                       ("blend.py", "finish_rows", None),
                                                       ("blend.py", "to_host", None)]),
        ("waits for the writer thread", [("workers.py", "put", None),
                                         ("workers.py", "close", None)]),
        ("labels (scipy) + LABELS written", [("_measurements.py", "label", None),
                                             ("fits_output.py", "write_rows", None)]),
        ("headers", [("fits_output.py", "finish", None)]),
    ],
}


def _seconds(stats: dict, file: str, func: str, caller: str | None) -> float:
    total = 0.0
    for (path, _, name), (_, _, tottime, cumtime, callers) in stats.items():
        if name != func or not path.endswith(file):
            continue
        if caller == "self":
            total += tottime
        elif caller is None:
            total += cumtime
        else:
            total += sum(c[3] for k, c in callers.items() if k[2] == caller)
    return total


def profile_child(mode: str, image: str, model: str, out: str, device: str, window: str,
                  batch_size: str, precision: str) -> None:
    """Run one mode under cProfile; print main-thread seconds per row of _PROFILE_ROWS, and
    the helper threads' busy seconds (their calls wrapped with timers), as JSON."""
    import cProfile
    import pstats
    import threading

    from astroseg.data import fits_io

    busy: dict[str, float] = {}
    main = threading.main_thread()

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if threading.current_thread() is not main:
                    busy[name] = busy.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    module = _module(mode)
    fits_io.ImageSource.rows = timed(fits_io.ImageSource.rows, "reader thread: read strips")
    if mode == "after":
        module._write_rows = timed(module._write_rows, "writer thread: write rows")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    module.predict_fits(image, out, model, device, batch_size=int(batch_size),
                        window=int(window), precision=precision)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    rows = {row: sum(_seconds(stats, *spec) for spec in specs)
            for row, specs in _PROFILE_ROWS[mode]}
    rows["other (Python, glue)"] = total - sum(rows.values())
    print(json.dumps({"total": total, "rows": rows, "busy": busy}))


def _frame(size: int, path: Path) -> None:
    from astroseg.data.sky import render_field

    counts, _, _ = render_field(0, size, seed=0)
    data = counts.astype(np.float32)
    del counts
    data[size // 8:size // 8 + size // 16, size // 4:size // 2] = np.nan   # a blank block
    rng = np.random.default_rng(0)
    data.flat[rng.choice(data.size, data.size // 1000, replace=False)] = np.nan   # 0.1% hot
    fits.PrimaryHDU(data).writeto(path)


def _run(args: argparse.Namespace, how: str, mode: str, image: Path, out: Path,
         window: int) -> dict:
    cmd = [sys.executable, __file__, how, mode, str(image), args.model, str(out), args.device,
           str(window), str(args.batches[window]), args.precision]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{mode} (window {window}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _agreement(before: Path, after: Path) -> str:
    with fits.open(before) as a, fits.open(after) as b:
        pa, pb = a[0].data.astype(np.float64), b[0].data.astype(np.float64)
        same_nan = np.array_equal(np.isnan(pa), np.isnan(pb))
        diff = float(np.nanmax(np.abs(pa - pb)))
        mask = float((a["MASK"].data == b["MASK"].data).mean())
        names = [h.name for h in a] == [h.name for h in b]
        src = (a[0].header["ASNSRC"], b[0].header["ASNSRC"])
    return (f"same HDUs {names}, NaN pixels equal {same_nan}, max |dP| {diff:.2g}, MASK "
            f"agrees on {mask:.6f} of pixels, sources {src[0]} / {src[1]}")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--windows", default="256,384,512")
    ap.add_argument("--model", default=str(ROOT / "models/model.pt"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--naive", action="store_true")
    ap.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    ap.add_argument("--profile-child", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.profile_child:
        return profile_child(*args.profile_child)
    windows = [int(w) for w in args.windows.split(",")]
    batches = [int(b) for b in args.batch_size.split(",")]
    if len(batches) not in (1, len(windows)):
        sys.exit(f"--batch-size {args.batch_size}: one number, or one per window {windows}")
    args.batches = dict(zip(windows, batches * len(windows) if len(batches) == 1 else batches))
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.machine())
    print(f"machine: {cpu}, {torch.get_num_threads()} torch threads{gpu}, torch "
          f"{torch.__version__}; image {args.size}x{args.size} float32 with NaNs; windows per "
          f"batch {args.batches}, precision {args.precision}, {args.repeats} repeats", flush=True)
    print(f"load average before: {_load()}", flush=True)
    mp = args.size * args.size / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "big.fits"
        _frame(args.size, image)
        seconds: dict[tuple[str, int], list[float]] = {}
        peaks: dict[tuple[str, int], float] = {}
        for rep in range(args.repeats):
            for window in windows:
                modes = ("before", "after") if rep % 2 == 0 else ("after", "before")
                if args.naive and window == windows[0]:
                    modes = ("naive", *modes)
                for mode in modes:
                    r = _run(args, "--child", mode, image, Path(tmp) / f"{mode}{window}.fits",
                             window)
                    seconds.setdefault((mode, window), []).append(r["seconds"])
                    peaks[mode, window] = max(peaks.get((mode, window), 0.0), r["peak_gb"])
                    print(f"  repeat {rep + 1}, window {window}, {mode}: {r['seconds']:.2f} s",
                          flush=True)
        print(f"load average after: {_load()}")
        print(f"\n{'window':>6} {'mode':<7} {'seconds':>8} {'MP/s':>6} {'peak GB':>8} "
              f"{'after/before':>13}")
        for window in windows:
            base = float(np.median(seconds["before", window]))
            for mode in ("naive", "before", "after"):
                if (mode, window) not in seconds:
                    continue
                s = float(np.median(seconds[mode, window]))
                ratio = f"{base / s:12.2f}x" if mode == "after" else ""
                print(f"{window:>6} {mode:<7} {s:8.2f} {mp / s:6.2f} {peaks[mode, window]:8.2f} "
                      f"{ratio:>13}")
            check = _agreement(Path(tmp) / f"before{window}.fits",
                               Path(tmp) / f"after{window}.fits")
            print(f"{'':>6} check: {check}")
        if args.profile:
            for window in windows:
                print(f"\nprofile, window {window} (seconds; cProfile adds overhead):")
                for mode in ("before", "after"):
                    r = _run(args, "--profile-child", mode, image, Path(tmp) / "p.fits", window)
                    print(f"  {mode}: total {r['total']:.2f} s")
                    for row, s in r["rows"].items():
                        print(f"    {row:<52} {s:6.2f}")
                    for row, s in r["busy"].items():
                        print(f"    {row + ' (overlapped)':<52} {s:6.2f}")


if __name__ == "__main__":
    main()
