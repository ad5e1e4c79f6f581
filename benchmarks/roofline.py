"""FLOPs and achieved rates of the paths users wait on, against the measured matmul rate.

    .venv/bin/python benchmarks/roofline.py [--params params.yaml] [--device cpu|cuda]
                                            [--fits-size 2048] [--model models/model.pt]

For train (a training step, batch `train.batch_size`, in the precision `train.precision`
resolves to), evaluate (forward passes at `evaluate.batch_size` in fp32, as the evaluate stage
runs them, times 8 with TTA) and FITS predict (`predict_fits` on a generated frame with NaNs,
windows of 256 and overlap 32, `--precision auto`): FLOPs per item, achieved GFLOP/s and the
fraction of the measured 2048x2048 (8192 on CUDA) matmul rate in the precision the path runs in. FLOPs come from
torch.utils.flop_counter, with depthwise convolutions' backward counted right (see
`_conv_backward_flops`). The functions here are shared by bench_gpu.py and profile_train_step.py.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from timing import loop_step, median_seconds

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(precision: str, device: torch.device = torch.device("cpu")) -> float:
    """GFLOP/s of a large square matmul in `precision` (median of 5): what the hardware's matrix
    units reach in practice."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                         transposed, _output_padding, _groups, output_mask, out_shape=None,
                         **_) -> int:
    # torch's own formula ignores `groups` (65x too much for a 64-channel depthwise conv): each
    # of the input and weight gradients costs what the forward convolution costs.
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


def flops_per_image(model: torch.nn.Module, size: list[int] | tuple[int, int]
                    ) -> tuple[float, float]:
    """Forward, and forward + backward, FLOPs of one (C, *size) image through `model`."""
    x = torch.rand(2, getattr(model, "in_channels", 1), *size)
    with FlopCounterMode(display=False) as forward:
        out = model(x).float().mean()
    with FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten.convolution_backward: _conv_backward_flops}) as backward:
        out.backward()
    model.zero_grad(set_to_none=True)
    return forward.get_total_flops() / 2, (forward.get_total_flops()
                                           + backward.get_total_flops()) / 2


def train_flops(model: torch.nn.Module, size: list[int] | tuple[int, int]) -> float:
    """Forward + backward FLOPs of one training image."""
    return flops_per_image(model, size)[1]


def _warm_median(fn, repeats: int) -> float:
    fn()   # first call: allocations, oneDNN kernels built for the shapes
    return median_seconds(fn, repeats)


def _fits_frame(path: Path, size: int) -> None:
    """A `size`^2 example field in counts, with a NaN stripe and scattered NaNs (as real frames
    have: a dead column block, cosmic-ray rejects)."""
    from astropy.io import fits
    from astroseg.data.sky import render_field
    counts = render_field(0, size, seed=0)[0].astype(np.float32)
    counts[:, size // 3:size // 3 + 40] = np.nan
    counts.ravel()[np.random.default_rng(0).choice(counts.size, counts.size // 1000)] = np.nan
    fits.PrimaryHDU(counts).writeto(path)


def main() -> None:
    from astroseg.device import resolve_precision
    from astroseg.models import build_model
    from astroseg.params import load_params

    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--fits-size", type=int, default=2048)
    ap.add_argument("--model", default=str(ROOT / "models/model.pt"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    params = load_params(args.params)
    size = [params.data.height, params.data.width]
    torch.manual_seed(0)
    model = build_model({**params.model.config(), "image_size": size})
    fwd, fwd_bwd = flops_per_image(model, size)
    model.to(device)
    precision = resolve_precision(params.train.precision, device)
    rates = {p: matmul_rate(p, device) for p in ("bf16", "fp32")}
    rows = []

    batch = params.train.batch_size
    x = torch.rand(batch, model.in_channels, *size, device=device)
    y = (torch.rand(batch, 1, *size, device=device) > 0.8).to(torch.uint8)
    model.train()
    step = loop_step(model, x, y, params.loss, precision)
    sec = _warm_median(lambda: (step(), sync(device)), args.repeats)
    rows.append(("train step", f"image {size[0]}x{size[1]}", fwd_bwd, batch / sec, precision))

    model.eval()
    tta = 8 if params.evaluate.tta else 1
    xe = torch.rand(params.evaluate.batch_size, model.in_channels, *size, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(xe)
        sync(device)
    sec = _warm_median(forward, args.repeats)
    rows.append((f"evaluate (x{tta} TTA)", f"image {size[0]}x{size[1]}", fwd * tta,
                 params.evaluate.batch_size / sec / tta, "fp32"))

    if Path(args.model).exists():
        from astroseg.data.tiling import starts
        from astroseg.infer.predict_fits import predict_fits
        n, win, overlap = args.fits_size, 256, 32
        windows = len(starts(n, win, win - overlap)) ** 2
        flops_window = flops_per_image(build_model({**params.model.config(),
                                                    "image_size": [win, win]}), [win, win])[0]
        with tempfile.TemporaryDirectory() as tmp:
            frame = Path(tmp) / "frame.fits"
            _fits_frame(frame, n)
            sec = _warm_median(lambda: predict_fits(frame, Path(tmp) / "out.fits",
                                                       args.model, args.device),
                                  max(1, args.repeats // 2))
        rows.append((f"FITS predict {n}^2", "megapixel", flops_window * windows / (n * n / 1e6),
                     n * n / 1e6 / sec, resolve_precision("auto", device)))

    print(f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}, device {args.device}; {precision}; matmul "
          f"rate bf16 {rates['bf16']:.0f} GFLOP/s, fp32 {rates['fp32']:.0f} GFLOP/s")
    print(f"{'path':<24} {'item':<16} {'GFLOP/item':>10} {'items/s':>9} {'precision':>9} "
          f"{'GFLOP/s':>8} {'of matmul':>9}")
    for path, item, flops, per_second, prec in rows:
        achieved = flops * per_second / 1e9
        print(f"{path:<24} {item:<16} {flops / 1e9:10.3f} {per_second:9.1f} {prec:>9} "
              f"{achieved:8.0f} {achieved / rates[prec]:9.1%}")


if __name__ == "__main__":
    main()
