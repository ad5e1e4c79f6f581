"""The training loop: AdamW, warmup + cosine LR, D4 augmentation, best-on-validation weights.

One loop for every setting: the CPU, one GPU, or N DDP ranks. Shuffling and augmentation draw
from one generator seeded from `train.seed`, the same on every rank, and each rank trains on its
slice of the global batch. Nothing in a step waits for the device: the loss is summed on it and
read every `train.log_every` steps and once per epoch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from astroseg.data.dataset import Split
from astroseg.data.stream import StreamedSplit, sequential_blocks
from astroseg.device import resolve_precision
from astroseg.errors import DataError
from astroseg.models.symmetry import apply_ops, draw_ops
from astroseg.params import LossParams, TrainParams
from astroseg.scoring.evaluation import as_tensors, concat, evaluate_stream, evaluate_tensors
from astroseg.scoring.losses import segmentation_loss
from astroseg.train.batches import InMemory, Streamed
from astroseg.train.ema import WeightAverage
from astroseg.train.distributed import (SINGLE, Dist, all_sum, any_rank, barrier, gather_objects,
                                        shard, wrap)
from astroseg.train.history import EpochRecord
from astroseg.train.resume import (Checkpointer, Interrupted, Progress, progress_from_dict,
                                   progress_to_dict)


@dataclass
class TrainResult:
    """The history, and the weights of the epoch with the best validation IoU."""
    history: list[EpochRecord]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    precision: str = "fp32"   # what the training steps ran in ('auto' resolved)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at `step`: linear warmup, then constant or cosine to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def data_on_device(setting: str, device: torch.device, nbytes: int) -> bool:
    """Whether to hold the splits in GPU memory: 'auto' if they take under half of what is free.

    On the CPU the splits are in memory already, so the answer is always no copy.
    """
    if device.type != "cuda" or setting == "false":
        return False
    if setting == "true":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free // 2


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; from host memory to a GPU through pinned memory, so the host does not
    wait for the copy."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _compiled(net: nn.Module, mode: str, device: torch.device) -> nn.Module:
    # On the CPU, torch 2.13's inductor computes wrong gradients for the segformer under bf16
    # autocast (zero for every encoder stage after the first; right in fp32), in every mode,
    # max-autotune-no-cudagraphs included, and trains slower than eager there anyway
    # (benchmarks/check_compile_cpu.py).
    if mode == "false" or device.type != "cuda":
        return net
    # Static shapes: one graph for the full batches (and one for a last, smaller one), so CUDA
    # graphs can apply in 'reduce-overhead' mode.
    return torch.compile(net, mode=None if mode == "true" else mode, dynamic=False)


def _validate(model: nn.Module, val: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
              loss: LossParams, device: torch.device, batch_size: int, d: Dist) -> dict[str, float]:
    """Scores on the validation split, each rank scoring its shard, gathered in order."""
    if isinstance(val, StreamedSplit):
        first, stop = (int(t[0]), int(t[-1]) + 1) if len(t := shard(torch.arange(val.n), d)) else (0, 0)
        blocks = sequential_blocks(val, first, stop, pin=device.type == "cuda")
        part = evaluate_stream(model, blocks, loss, device, batch_size)
    else:
        part = evaluate_tensors(model, *val, loss, device, batch_size)
    return concat(gather_objects(part, d)).summary()


def _sources(train: Split | StreamedSplit, val: Split | StreamedSplit, cfg: TrainParams,
             device: torch.device, d: Dist
             ) -> tuple[InMemory | Streamed, tuple[torch.Tensor, torch.Tensor] | StreamedSplit]:
    """The training batches' source, and the validation shard (tensors, or the split to stream)."""
    in_memory = [s for s in (train, val) if isinstance(s, Split)]
    nbytes = sum(a.nbytes for s in in_memory for a in (s.images, s.masks))
    on_device = bool(in_memory) and data_on_device(cfg.data_on_device, device, nbytes)
    if isinstance(train, StreamedSplit):
        source = Streamed(train, cfg.seed, pin=device.type == "cuda")
    else:
        source = InMemory(train, device if on_device else None)
    if isinstance(val, StreamedSplit):
        return source, val
    shards = tuple(shard(t, d) for t in as_tensors(val))
    return source, tuple(t.to(device) for t in shards) if on_device else shards


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _resume(checkpointer: Checkpointer, model: nn.Module, optimizer: torch.optim.Optimizer,
            rng: torch.Generator, device: torch.device, dist: Dist,
            on_resume: Callable[[str], None] | None,
            average: WeightAverage | None) -> Progress | None:
    """Restore the saved state into the run if it belongs to it; every rank must agree."""
    if dist.main:
        checkpointer.clean()
    barrier(dist)
    saved, why = checkpointer.load()
    seen = gather_objects(None if saved is None else saved["progress"]["step"], dist)
    if len(set(seen)) > 1:
        raise DataError(f"{checkpointer.path}: the ranks disagree on the saved training state "
                        f"(step per rank: {seen}); is the project folder on a file system that "
                        "every node shares?")
    if on_resume is not None and dist.main:
        on_resume(why if saved else f"starting fresh: {why}")
    if saved is None:
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if average is not None:   # the fingerprint holds the params: ema was on when saved too
        average.load_state_dict(saved["ema"])
    rng.set_state(saved["generator"])
    _set_rng_states(saved["rng"][min(dist.rank, len(saved["rng"]) - 1)], device)
    p = progress_from_dict(saved["progress"])
    if not dist.main:
        p.running = torch.zeros_like(p.running)
    return p


def train_model(model: nn.Module, train: Split | StreamedSplit, val: Split | StreamedSplit,
                cfg: TrainParams, loss: LossParams, device: torch.device,
                on_epoch: Callable[[EpochRecord], None] | None = None, *,
                dist: Dist = SINGLE, checkpointer: Checkpointer | None = None,
                on_resume: Callable[[str], None] | None = None) -> TrainResult:
    """Train `model` in place; return the history and the best-validation-IoU weights.

    On CPU the same inputs give the same weights bit for bit, with or without an interruption
    in between (`checkpointer` saves and restores the state). Seed torch's global RNG before
    building the model for the initialisation (and dropout). Under torchrun, `dist` is this
    rank; `train.batch_size` is the global batch.
    """
    model.to(device)
    precision = resolve_precision(cfg.precision, device)
    channels_last = device.type == "cuda"
    if channels_last:   # tensor cores: TF32 for fp32 matmuls and convs, NHWC convs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        model.to(memory_format=torch.channels_last)
    net = _compiled(wrap(model, dist, device), cfg.compile, device)
    # The fused kernel updates all parameters in one pass; the default per-tensor loop spent
    # about an eighth of each CPU training step on optimizer bookkeeping.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True)
    rng = torch.Generator().manual_seed(cfg.seed)
    source, validation = _sources(train, val, cfg, device, dist)
    n, batch = len(train), cfg.batch_size
    trained = n - n % batch if 0 < n % batch < dist.world else n   # less a skipped remainder
    square = train.shape[-1] == train.shape[-2]
    steps_per_epoch = math.ceil(trained / batch)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = cfg.peak_lr()
    show = dist.main and cfg.progress

    # With train.ema, the weight average is what is validated and kept as the best weights.
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    p = Progress()
    if checkpointer is not None:
        p = _resume(checkpointer, model, optimizer, rng, device, dist, on_resume, average) or p

    def save_state() -> None:
        rng_states = gather_objects(_rng_states(device), dist)
        # The running loss is each rank's share: save the total, which rank 0 alone resumes.
        total = all_sum(p.running.clone(), dist)
        if dist.main:
            checkpointer.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "ema": average.state_dict() if average else None,
                               "generator": rng.get_state(), "rng": rng_states,
                               "progress": progress_to_dict(p) | {"running": total.cpu()}})
        barrier(dist)
        checkpointer.restart_timer()

    while p.epoch <= cfg.epochs:
        if cfg.early_stopping and p.epoch - 1 - p.best_epoch >= cfg.early_stopping:
            break
        model.train()
        if p.order is None:
            p.order = source.order(p.epoch, rng)
            p.running = torch.zeros((), dtype=torch.float64, device=device)
        p.running = p.running.to(device)
        bar = tqdm(total=steps_per_epoch, initial=p.position // batch, unit="batch",
                   desc=f"epoch {p.epoch}/{cfg.epochs}", leave=False,
                   disable=None if show else True)
        batches = source.batches(p.epoch, p.order, p.position, batch, dist)
        while p.position < n:
            count = min(batch, n - p.position)     # the global batch
            if count < dist.world:   # some rank would get no image: skip this remainder
                p.position = n
                break
            x, y = next(batches)
            x, y = _to_device(x, device), _to_device(y, device)
            if cfg.augment:   # drawn for the global batch, so every rank stays in step
                ops = _to_device(shard(draw_ops(count, rng, square), dist), device)
                x, y = apply_ops(x, ops), apply_ops(y, ops)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = peak_lr * lr_factor(p.step, total_steps, warmup, cfg.schedule,
                                                  cfg.min_lr_ratio)
            with _autocast(device, precision):
                logits = net(x)
            per_image = segmentation_loss(logits, y, loss)
            # DDP averages gradients over ranks: scale each rank's sum so the average is the
            # global batch's mean, however unevenly a last batch splits.
            batch_loss = (per_image.mean() if dist.world == 1
                          else per_image.sum() * (dist.world / count))
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            if average is not None:
                average.update(model)
            p.step += 1
            p.position += count
            p.running += batch_loss.detach().double() * (count / dist.world)
            bar.update()
            if show and not bar.disable and p.step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{p.running.item() * dist.world / p.position:.4f}")
            if checkpointer is not None:
                stopping, due = any_rank([checkpointer.stop.received is not None,
                                          checkpointer.due()], dist)
                if stopping or due:
                    save_state()
                if stopping:
                    raise Interrupted(
                        f"train: stopped by {checkpointer.stop.received or 'a signal to a peer rank'}"
                        f" in epoch {p.epoch} after {p.position} of {n} images; saved the "
                        f"training state to {checkpointer.path}: rerun the stage to resume")
        bar.close()
        with average.swapped_in(model) if average else contextlib.nullcontext():
            summary = _validate(model, validation, loss, device, max(batch, 32), dist)
        train_loss = float(all_sum(p.running.clone(), dist)) / trained
        record = EpochRecord(epoch=p.epoch, train_loss=train_loss, val_loss=summary["loss"],
                             val_iou=summary["iou"], val_dice=summary["dice"],
                             lr=optimizer.param_groups[0]["lr"])
        p.history.append(record)
        if on_epoch is not None and dist.main:
            on_epoch(record)
        if record.val_iou > p.best_iou:
            p.best_iou, p.best_epoch = record.val_iou, p.epoch
            kept = average.state if average else model.state_dict()
            p.best_state = {k: v.detach().cpu().clone() for k, v in kept.items()}
        p.epoch, p.position, p.order = p.epoch + 1, 0, None
        if checkpointer is not None:
            save_state()
    return TrainResult(p.history, p.best_epoch, p.best_state, precision)
