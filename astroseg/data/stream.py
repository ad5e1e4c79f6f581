"""A split too large for memory, read from the dataset file in chunk-aligned blocks.

Training visits the rows in a two-level shuffle: the blocks (whole HDF5 chunks, contiguous on
disk) in a random order, then the rows of every few consecutive blocks (a buffer) shuffled
together. The order is a function of (seed, epoch) alone, so it does not depend on the number of
loader workers or ranks, and every row comes once per epoch. A buffer is one item of a
torch DataLoader: its workers each open their own h5py handle, read whole blocks, and hand over
the rows in the shuffled order; memory holds the buffers in flight, not the split.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from astroseg.data.dataset import (IGNORE, as_channels, check_classes, class_count, open_split,
                                   read_attrs, with_ignore)
from astroseg.errors import DataError

BLOCKS_PER_BUFFER_MAX = 64
PREFETCH = 2    # buffers each loader worker reads ahead


@dataclass(frozen=True)
class StreamedSplit:
    """Where a split is and how to stream it: `buffer_rows` rows shuffled together."""
    path: Path
    split: str
    n: int
    shape: tuple[int, ...]    # of one image: (H, W), or (C, H, W) for C bands
    block_rows: int           # rows per block: the file's HDF5 chunk rows
    buffer_rows: int
    workers: int = 2
    classes: int = IGNORE     # mask values allowed: 0 .. classes - 1 (the file's class names)

    def __len__(self) -> int:
        return self.n


def streamed(path: str | os.PathLike, split: str, max_memory_gb: float,
             workers: int) -> StreamedSplit:
    """A StreamedSplit of `split`, with buffers sized so that all a loader holds at once (each
    worker's prefetched buffers, the one being consumed and the one being batched) fit in
    `max_memory_gb`."""
    path = Path(path)
    with open_split(path, split) as group:
        images = group["images"]
        n, shape = images.shape[0], tuple(images.shape[1:])
        block = images.chunks[0] if images.chunks else 1
    classes = class_count(read_attrs(path))
    row = math.prod(shape) * 4 + math.prod(shape[-2:])    # a float32 image, its uint8 mask
    in_flight = PREFETCH * workers + 2
    blocks = int(max_memory_gb * 1e9 / in_flight / (row * block))
    buffer = block * max(1, min(BLOCKS_PER_BUFFER_MAX, blocks))
    return StreamedSplit(path, split, n, shape, block, buffer, workers, classes)


def block_order(n: int, block: int, buffer: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The rows of one epoch, as buffers: blocks of `block` rows in a shuffled order, and the
    rows of each `buffer` // `block` consecutive blocks shuffled together."""
    rng = np.random.Generator(np.random.Philox(key=np.array([seed, epoch], dtype=np.uint64)))
    starts = rng.permutation(np.arange(0, n, block))
    per = max(1, buffer // block)
    out = []
    for i in range(0, len(starts), per):
        rows = np.concatenate([np.arange(s, min(n, s + block)) for s in starts[i:i + per]])
        out.append(rng.permutation(rows))
    return out


class _Rows(Dataset):
    """Item i: images and targets (masks, IGNORE outside a valid map) of the rows `wanted[i]`,
    in that order, read block by block."""

    def __init__(self, s: StreamedSplit, wanted: list[np.ndarray]):
        self.s, self.wanted = s, wanted
        self._file: h5py.File | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.wanted)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}   # a worker started by spawn opens its own

    def _group(self) -> h5py.Group:
        if self._file is None or self._pid != os.getpid():   # a handle per worker process
            self._file = h5py.File(self.s.path, "r")
            self._pid = os.getpid()
        return self._file[self.s.split]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.wanted[i]
        block = self.s.block_rows
        try:
            group = self._group()
        except (KeyError, OSError, RuntimeError) as exc:   # replaced or damaged since opened
            raise DataError(f"{self.s.path}: cannot open split '{self.s.split}': {exc}") from None
        images = np.empty((len(rows), *self.s.shape), np.float32)
        masks = np.empty((len(rows), *self.s.shape[-2:]), np.uint8)
        firsts = rows // block * block
        for first in np.unique(firsts):
            where = np.flatnonzero(firsts == first)
            stop = min(self.s.n, first + block)
            try:
                block_images = group["images"][first:stop]
                block_masks = group["masks"][first:stop]
                check_classes(block_masks, self.s.classes, f"{self.s.path}: {self.s.split}/masks "
                              f"rows {first}-{stop - 1}")
                if "valid" in group:
                    block_masks = with_ignore(block_masks, group["valid"][first:stop])
            except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
                raise DataError(f"{self.s.path}: cannot read rows {first}-{stop - 1} of split "
                                f"'{self.s.split}': {exc}") from None
            with np.errstate(over="ignore"):   # a float64 beyond float32's range: inf, refused
                block_images = block_images.astype(np.float32, copy=False)
            if not np.isfinite(block_images).all():
                raise DataError(f"{self.s.path}: {self.s.split}/images rows {first}-{stop - 1} "
                                "hold NaN or infinite values")
            images[where] = block_images[rows[where] - first]
            masks[where] = block_masks[rows[where] - first]
        return as_channels(torch.from_numpy(images)), torch.from_numpy(masks).unsqueeze(1)


def _loader(s: StreamedSplit, wanted: list[np.ndarray], pin: bool) -> DataLoader:
    workers = min(s.workers, len(wanted))
    return DataLoader(_Rows(s, wanted), batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=pin, prefetch_factor=PREFETCH if workers else None)


def shuffled_rows(s: StreamedSplit, buffers: list[np.ndarray], start: int, mine: np.ndarray,
                  pin: bool = False) -> DataLoader:
    """A loader of the epoch's `buffers` (from block_order) from position `start` on, keeping
    the positions where `mine` (bool, one per position of the epoch) is set."""
    wanted, offset = [], 0
    for rows in buffers:
        end = offset + len(rows)
        if end > start:
            keep = mine[max(start, offset):end]
            wanted.append(rows[max(start, offset) - offset:][keep])
        offset = end
    return _loader(s, [w for w in wanted if len(w)], pin)


def sequential_blocks(s: StreamedSplit, first: int, stop: int, pin: bool = False) -> DataLoader:
    """A loader of rows [first, stop) in file order, a buffer at a time (for evaluation)."""
    edges = list(range(first, stop, s.buffer_rows)) + [stop]
    return _loader(s, [np.arange(a, b) for a, b in zip(edges, edges[1:]) if b > a], pin)
