"""Training, evaluation and predict throughput of the default model on this machine's device.

    .venv/bin/python benchmarks/bench_gpu.py [--batches 64 128 256 512 1024] [--steps 30]

Prints the device's name, then training images/s of 128x128 images at each batch size, in fp32
and bf16, with torch.compile off and on; the FLOPs of a forward + backward pass (counted with
torch.utils.flop_counter) x images/s as a fraction of the device's bf16 peak (the data-sheet
figure where the name is known, and a measured large bf16 matmul); then evaluation and predict
images/s. The training step is the train stage's: data held on the device, a random flip or
rotation per image, Dice + BCE, fused AdamW, no host sync. On a CPU it is a smoke run at small
sizes (--batches 16 32), since CPU training speed is benchmarks/bench_models.py's subject.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from astroseg.infer.predict import predict
from astroseg.models import build_model
from astroseg.models.symmetry import apply_ops, draw_ops
from astroseg.params import LossParams, load_params
from astroseg.scoring.evaluation import evaluate_tensors
from astroseg.scoring.losses import segmentation_loss
from roofline import flops_per_image, matmul_rate, sync

# Dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by device-name substring.
BF16_PEAK_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "GH200": 989,
                    "A100": 312, "L40S": 362, "L4": 121, "A10G": 70, "A10": 125, "V100": 0}


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call of `fn`, after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def train_step(config: dict, device: torch.device, batch: int, precision: str, compile_mode: str):
    """The train stage's step on data already on the device, as a closure."""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    cuda = channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = model if compile_mode == "false" else torch.compile(
        model, mode=None if compile_mode == "true" else compile_mode, dynamic=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    size = config["image_size"][0]
    n = 4 * batch
    images = torch.rand(n, 1, size, size, device=device)
    masks = (images > 0.7).to(torch.uint8)
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    gen = torch.Generator(device=device).manual_seed(0)
    host_gen = torch.Generator().manual_seed(0)
    loss_params = LossParams()

    def step() -> None:
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        ops = draw_ops(batch, host_gen)     # on the host, as the loop draws them
        if cuda:
            ops = ops.pin_memory().to(device, non_blocking=True)
        x, y = apply_ops(images[idx], ops), apply_ops(masks[idx], ops)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with cast:
            logits = net(x)
        loss = segmentation_loss(logits, y, loss_params).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--compile", nargs="+", default=["false", "true"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    batches = args.batches or ([64, 128, 256, 512, 1024] if cuda else [16, 32])
    steps = args.steps if cuda else min(args.steps, 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    params = load_params(args.params)
    config = {**params.model.config(), "image_size": [128, 128]}
    forward, flops = flops_per_image(build_model(config), [128, 128])
    spec = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), 0) if cuda else 0
    # A CPU without native bf16 emulates it ~20x slower: its peak is the fp32 one.
    native = cuda or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    dtype = torch.bfloat16 if native else torch.float32
    measured = matmul_rate("bf16" if native else "fp32", device) / 1e3
    print(f"device: {name}; torch {torch.__version__}; {config['name']}: {forward / 1e9:.3f} "
          f"GFLOP forward, {flops / 1e9:.3f} forward + backward per 128x128 image; peak: data "
          f"sheet bf16 {spec or 'unknown'} TFLOP/s, measured {str(dtype)[6:]} matmul "
          f"{measured:.2f} TFLOP/s")
    print(f"{'batch':>6} {'precision':>9} {'compile':>8} {'images/s':>10} {'TFLOP/s':>8} "
          f"{'of sheet':>8} {'of matmul':>9}")
    for compile_mode in args.compile:
        for precision in args.precisions:
            for batch in batches:
                try:
                    step = train_step(config, device, batch, precision, compile_mode)
                    for _ in range(2):   # compile and autotune before timing
                        step()
                    rate = batch / timed(step, device, steps)
                except torch.cuda.OutOfMemoryError:
                    print(f"{batch:6d} {precision:>9} {compile_mode:>8}  out of memory")
                    continue
                tflops = rate * flops / 1e12
                sheet = f"{tflops / spec:8.1%}" if spec else f"{'-':>8}"
                print(f"{batch:6d} {precision:>9} {compile_mode:>8} {rate:10.0f} {tflops:8.2f} "
                      f"{sheet} {tflops / measured:9.1%}", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    model = build_model(config).to(device).eval()
    n, batch = (8192, 1024) if cuda else (128, 64)
    images = torch.rand(n, 1, 128, 128, device=device)
    masks = (images > 0.7).to(torch.uint8)
    for tta in (False, True):
        seconds = timed(lambda: evaluate_tensors(model, images, masks, LossParams(), device,
                                                 batch, tta=tta), device, 1 if tta else 3)
        print(f"evaluate (tta {tta}): {n / seconds:.0f} images/s at batch {batch}")
    host = np.random.default_rng(0).random((n, 128, 128), dtype=np.float32)
    seconds = timed(lambda: predict(model, host, batch_size=batch), device, 3)
    print(f"predict (numpy in, probabilities and labels out): {n / seconds:.0f} images/s")


if __name__ == "__main__":
    main()
