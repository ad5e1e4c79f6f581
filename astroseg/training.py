"""The training loop: AdamW over the train split, validation scores after every epoch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from astroseg.dataset import Split
from astroseg.evaluation import as_tensors, evaluate
from astroseg.history import EpochRecord
from astroseg.losses import combo_loss
from astroseg.params import LossParams, TrainParams


def train_model(model: nn.Module, train: Split, val: Split, cfg: TrainParams, loss: LossParams,
                device: torch.device,
                on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
    """Train `model` in place for `cfg.epochs`; returns the per-epoch history.

    Shuffling uses its own generator seeded from `cfg.seed`, so on CPU the same inputs give the
    same weights bit for bit. Seed torch's global RNG before building the model for the init.
    """
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    images, masks = as_tensors(train)
    n = len(train)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=shuffle)
        total = 0.0
        steps = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}",
                     unit="batch", leave=False, disable=None if cfg.progress else True)
        for start in steps:
            idx = order[start:start + cfg.batch_size]
            x = images[idx].to(device, non_blocking=True)
            y = masks[idx].to(device, non_blocking=True).float()
            batch_loss = combo_loss(model(x), y, loss).mean()
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item() * len(idx)
            steps.set_postfix(loss=f"{batch_loss.item():.4f}")
        result = evaluate(model, val, loss, device, batch_size=max(cfg.batch_size, 32))
        summary = result.summary()
        record = EpochRecord(epoch=epoch, train_loss=total / n, val_loss=summary["loss"],
                             val_iou=summary["iou"], val_dice=summary["dice"],
                             lr=optimizer.param_groups[0]["lr"])
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history
