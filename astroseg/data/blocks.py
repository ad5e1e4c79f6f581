"""Splitting fields into train/val/test: whole fields, or blocks of one field with a guard band.

`field` split: each file goes to one split. Right when there are several fields, since then the
test fields are as independent of training as new survey data would be.

`block` split: each field is cut into a grid of blocks of about `block` pixels, and the blocks
(of all fields together) are dealt to the splits. A single mosaic can then be trained on. Tiles
are cut inside each block, and a tile is kept only if no pixel within `guard / 2` of it belongs
to a block of another split: tiles of different splits are then at least `guard` pixels apart,
so no tile and no pixel is in two splits, and a source straddling a block border is not seen
half in training and half in test (with `guard` = one tile, the default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from astroseg.data.dataset import SPLITS   # split index 0, 1, 2
from astroseg.data.tiling import starts
from astroseg.errors import DataError

def deal(n: int, val_fraction: float, test_fraction: float, seed: int, what: str,
         coverage: np.ndarray | None = None) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of each of `n` items, shuffled with `seed`: test and
    val get their fractions (at least one item each), train the rest.

    `coverage` (valid fraction per item): items with nothing valid count for nothing and stay in
    train, and test and val are dealt items at least half valid first, so a mosaic's empty
    corners do not become its test set."""
    order = np.random.default_rng(seed).permutation(n)
    if coverage is not None:
        good = coverage >= 0.5
        order = np.array([i for i in order if good[i]] +
                         [i for i in order if 0 < coverage[i] < 0.5], dtype=np.int64)
    m = len(order)
    if m < 3:
        raise DataError(f"{m} {what} found{' with valid pixels' if coverage is not None else ''};"
                        " need at least 3 so that train, val and test each get one")
    n_test = min(max(1, round(test_fraction * m)), m - 2)
    n_val = min(max(1, round(val_fraction * m)), m - 1 - n_test)
    out = np.zeros(n, np.int8)
    out[order[:n_test]] = 2
    out[order[n_test:n_test + n_val]] = 1
    return out


def edges(size: int, block: int) -> np.ndarray:
    """Block boundaries along one axis: equal blocks of at least `block` pixels (under 2 x
    `block`) covering [0, size); one block if the field is smaller."""
    # Rounded down, not to the nearest: a block never shrinks below `block`, which params
    # check is at least two tiles, so every block holds a tile inside its guard band.
    n = max(1, size // block)
    return np.round(np.linspace(0, size, n + 1)).astype(np.int64)


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of one field and the split each was dealt to."""
    ys: np.ndarray          # (ny + 1,) row boundaries
    xs: np.ndarray          # (nx + 1,) column boundaries
    split: np.ndarray       # (ny, nx) split index per block

    @property
    def count(self) -> int:
        """Number of blocks."""
        return self.split.size

    def records(self) -> list[list[int | str]]:
        """[y0, y1, x0, x1, split name] per block, row-major: the provenance kept in the file."""
        return [[int(self.ys[i]), int(self.ys[i + 1]), int(self.xs[j]), int(self.xs[j + 1]),
                 SPLITS[self.split[i, j]]]
                for i in range(self.split.shape[0]) for j in range(self.split.shape[1])]

    def _clear(self, y0: int, y1: int, x0: int, x1: int, split: int) -> bool:
        # Every block that [y0, y1) x [x0, x1) (clipped to the field) touches is of `split`.
        i0 = np.searchsorted(self.ys, max(y0, 0), side="right") - 1
        i1 = np.searchsorted(self.ys, min(y1, self.ys[-1]), side="left")
        j0 = np.searchsorted(self.xs, max(x0, 0), side="right") - 1
        j1 = np.searchsorted(self.xs, min(x1, self.xs[-1]), side="left")
        return bool((self.split[i0:i1, j0:j1] == split).all())

    def tiles(self, tile: int, stride: int, guard: int) -> dict[int, np.ndarray]:
        """(K, 2) (y, x) tile starts per split, each tile at least `guard` pixels from any tile
        of another split."""
        half = (guard + 1) // 2
        height, width = int(self.ys[-1]), int(self.xs[-1])
        out: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
        ny, nx = self.split.shape
        for i in range(ny):
            for j in range(nx):
                s = int(self.split[i, j])
                # Shrink the block by half the guard on the sides where another split begins.
                y0 = int(self.ys[i]) + (half if i > 0 and self.split[i - 1, j] != s else 0)
                y1 = int(self.ys[i + 1]) - (half if i < ny - 1 and self.split[i + 1, j] != s else 0)
                x0 = int(self.xs[j]) + (half if j > 0 and self.split[i, j - 1] != s else 0)
                x1 = int(self.xs[j + 1]) - (half if j < nx - 1 and self.split[i, j + 1] != s else 0)
                for y in _starts(y0, y1, height, tile, stride):
                    for x in _starts(x0, x1, width, tile, stride):
                        # Diagonal neighbours: the tile grown by half the guard stays in `s`.
                        if self._clear(y - half, y + tile + half, x - half, x + tile + half, s):
                            out[s].append((y, x))
        return {s: np.array(v, dtype=np.int32).reshape(-1, 2) for s, v in out.items()}


def _starts(lo: int, hi: int, size: int, tile: int, stride: int) -> list[int]:
    # Tile starts inside [lo, hi); a field smaller than a tile gets one (padded) tile at 0.
    if size < tile:
        return [0]
    if hi - lo < tile:
        return []
    return [lo + s for s in starts(hi - lo, tile, stride)]


def block_axes(shape: tuple[int, int], block: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column block boundaries of a field of `shape`."""
    return edges(shape[0], block), edges(shape[1], block)


def deal_blocks(shapes: list[tuple[int, int]], block: int, val_fraction: float,
                test_fraction: float, seed: int,
                coverage: list[np.ndarray] | None = None) -> list[BlockGrid]:
    """Cut each field of `shapes` into blocks and deal all the blocks to the splits at once;
    `coverage`, per field, the (ny, nx) valid fraction of each block (see `deal`)."""
    axes = [block_axes(shape, block) for shape in shapes]
    sizes = [(len(ys) - 1) * (len(xs) - 1) for ys, xs in axes]
    dealt = deal(sum(sizes), val_fraction, test_fraction, seed,
                 f"block(s) of data.fits.block = {block} pixels in {len(shapes)} field(s) "
                 "(a smaller data.fits.block makes more)",
                 None if coverage is None else np.concatenate([c.ravel() for c in coverage]))
    grids, first = [], 0
    for (ys, xs), n in zip(axes, sizes):
        grids.append(BlockGrid(ys, xs, dealt[first:first + n].reshape(len(ys) - 1, len(xs) - 1)))
        first += n
    return grids
