"""Where the training loop's batches come from: a split in memory, or one streamed from disk.

Both hand the loop this rank's share of each global batch, in the epoch's order, starting at
any position (a resumed run starts mid-epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from astroseg.data.dataset import Split
from astroseg.data.stream import StreamedSplit, block_order, shuffled_rows
from astroseg.scoring.evaluation import as_tensors
from astroseg.train.distributed import Dist, shard

Batch = tuple[torch.Tensor, torch.Tensor]


class InMemory:
    """A split held as tensors (on the device, if it fits there); any order, any batch."""

    def __init__(self, split: Split, device: torch.device | None = None):
        self.images, self.masks = as_tensors(split)
        if device is not None:
            self.images, self.masks = self.images.to(device), self.masks.to(device)
        self.n = len(split)

    def order(self, epoch: int, rng: torch.Generator) -> torch.Tensor:
        """A uniform permutation, drawn from the run's generator."""
        return torch.randperm(self.n, generator=rng)

    def batches(self, epoch: int, order: torch.Tensor, position: int, batch: int,
                d: Dist) -> Iterator[Batch]:
        """This rank's share of each global batch of `order` from `position` on."""
        order = order.to(self.images.device)
        for start in range(position, self.n, batch):
            mine = shard(order[start:start + batch], d)
            yield self.images[mine], self.masks[mine]


class Streamed:
    """A split read from the dataset file in a two-level shuffle (astroseg.data.stream)."""

    def __init__(self, split: StreamedSplit, seed: int, pin: bool):
        self.split, self.seed, self.pin = split, seed, pin
        self.n = split.n

    def _buffers(self, epoch: int) -> list[np.ndarray]:
        s = self.split
        return block_order(s.n, s.block_rows, s.buffer_rows, self.seed, epoch)

    def order(self, epoch: int, rng: torch.Generator) -> torch.Tensor:
        """The epoch's block-shuffled order: a function of train.seed and the epoch alone."""
        return torch.from_numpy(np.concatenate(self._buffers(epoch)))

    def batches(self, epoch: int, order: torch.Tensor, position: int, batch: int,
                d: Dist) -> Iterator[Batch]:
        """This rank's share of each global batch from `position` on, read as the loader's
        workers deliver the buffers; memory holds a few buffers, not the split."""
        mine = np.zeros(self.n, bool)
        sizes = []
        for start in range(position, self.n, batch):
            local = shard(torch.arange(start, min(self.n, start + batch)), d)
            mine[local.numpy()] = True
            sizes.append(len(local))
        rows = iter(shuffled_rows(self.split, self._buffers(epoch), position, mine,
                                  self.pin))
        held: list[Batch] = []
        have = 0
        for size in sizes:
            while have < size:
                x, y = next(rows)
                held.append((x, y))
                have += len(x)
            x, y = (torch.cat(t) if len(held) > 1 else t[0] for t in zip(*held))
            yield x[:size], y[:size]
            held = [(x[size:], y[size:])] if len(x) > size else []
            have -= size
