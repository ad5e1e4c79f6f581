"""The training loop as it was before issue 9 (DDP, resume, device data), kept verbatim for
benchmarks/bench_train_loop.py to time side by side with astroseg.train.loop; the helpers that
did not change (TrainResult, lr_factor, _autocast) come from there."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from astroseg.data.dataset import Split
from astroseg.device import resolve_precision
from astroseg.scoring.evaluation import as_tensors, evaluate
from astroseg.train.history import EpochRecord
from astroseg.scoring.losses import segmentation_loss
from astroseg.params import LossParams, TrainParams
from astroseg.models.symmetry import augment
from astroseg.train.loop import TrainResult, _autocast, lr_factor


def train_model(model: nn.Module, train: Split, val: Split, cfg: TrainParams, loss: LossParams,
                device: torch.device,
                on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Train `model` in place; return the history and the best-validation-IoU weights.

    Shuffling and augmentation draw from their own generator seeded from `cfg.seed`, so on CPU
    the same inputs give the same weights bit for bit. Seed torch's global RNG before building
    the model for the initialisation (and dropout).
    """
    model.to(device)
    precision = resolve_precision(cfg.precision, device)
    # The fused kernel updates all parameters in one pass; the default per-tensor loop spent
    # about an eighth of each CPU training step on optimizer bookkeeping.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True)
    rng = torch.Generator().manual_seed(cfg.seed)
    images, masks = as_tensors(train)
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    history: list[EpochRecord] = []
    best = TrainResult(history, 0, {}, precision)
    best_iou = -1.0
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=rng)
        total = 0.0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}",
                   unit="batch", leave=False, disable=None if cfg.progress else True)
        for start in bar:
            idx = order[start:start + cfg.batch_size]
            x, y = images[idx], masks[idx]
            if cfg.augment:
                x, y = augment(x, y, rng)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total_steps, warmup, cfg.schedule,
                                                 cfg.min_lr_ratio)
            with _autocast(device, precision):
                logits = model(x)
            batch_loss = segmentation_loss(logits, y, loss).mean()
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            step += 1
            total += batch_loss.item() * len(idx)
            bar.set_postfix(loss=f"{batch_loss.item():.4f}")
        summary = evaluate(model, val, loss, device, batch_size=max(cfg.batch_size, 32)).summary()
        record = EpochRecord(epoch=epoch, train_loss=total / n, val_loss=summary["loss"],
                             val_iou=summary["iou"], val_dice=summary["dice"],
                             lr=optimizer.param_groups[0]["lr"])
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if record.val_iou > best_iou:
            best_iou = record.val_iou
            best.best_epoch = epoch
            best.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        elif cfg.early_stopping and epoch - best.best_epoch >= cfg.early_stopping:
            break
    return best
