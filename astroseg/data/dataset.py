"""The HDF5 dataset file: one group per split with images, masks and per-image metadata.

Schema (version 1):
  /                 attrs: schema_version, source, class_names (JSON), normalization, params (JSON)
  /<split>/images   float32 (N, H, W), or (N, C, H, W) for C bands (root attr `bands` names
                    them), chunks of CHUNK_ROWS images, not compressed
  /<split>/masks    uint8 (N, H, W), class index per pixel (0 = background), lzf
  /<split>/meta/*   one (N,) array per per-image field (n_sources, has_spiral, ...), or (N, K)
                    for K values per image (gal_*: the synthetic truth of each galaxy, NaN-padded)
  /<split>/valid    optional uint8 (N, H, W), 1 where the pixel was measured (FITS sources)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from astroseg.atomic import atomic_h5
from astroseg.errors import DataError, missing_output

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
# HDF5 chunks of CHUNK_ROWS images (masks, valid maps): what a streamed split reads in blocks
# of. Images are stored raw: the noise fills the low bits of every float32, so no filter
# shrank them, and lzf cost a third of the read speed. Masks compress 25x with lzf. Chosen by
# benchmarks/bench_h5_layout.py (benchmarks/README.md, "HDF5 chunk layout for streaming").
CHUNK_ROWS = 16
# Mask value of a pixel outside the `valid` map, as the model-facing tensors carry it: the loss
# and the metrics leave such pixels out. The file itself holds 0 there and the valid map.
IGNORE = 255
COMPRESSION = {"images": {}, "masks": {"compression": "lzf"}, "valid": {"compression": "lzf"}}


@dataclass
class Split:
    """One split held in memory."""
    images: np.ndarray                    # float32 (N, H, W), or (N, C, H, W) for C bands
    masks: np.ndarray                     # uint8 (N, H, W)
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    valid: np.ndarray | None = None       # uint8 (N, H, W) if the file has it

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        """(H, W) of every image."""
        return self.images.shape[-2:]

    @property
    def channels(self) -> int:
        """Bands per image."""
        return channels(self.images)

    def targets(self) -> np.ndarray:
        """The masks with IGNORE outside the valid map (the masks themselves without one)."""
        return self.masks if self.valid is None else with_ignore(self.masks, self.valid)


def channels(images: np.ndarray) -> int:
    """Bands of an (N, H, W) (one) or (N, C, H, W) stack."""
    return 1 if images.ndim == 3 else images.shape[1]


def as_channels(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) images as the (N, C, H, W) a model takes (a view)."""
    return images.unsqueeze(1) if images.ndim == 3 else images


def with_ignore(masks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`masks` with IGNORE where `valid` is 0."""
    return np.where(valid.astype(bool), masks, np.uint8(IGNORE))


@dataclass
class SplitWriter:
    """Writes the rows of one split in order, a whole HDF5 chunk at a time.

    Rows are held until a chunk of `rows` rows is complete, so the file's chunks are written in
    row order, each once, whatever the batches handed to `write` are: the bytes of the file do
    not depend on data.chunk or data.workers.
    """
    group: h5py.Group
    rows: int                  # per HDF5 chunk
    check: Callable[[], None] = lambda: None   # raises if a write to the file has failed
    _next: int = 0
    _held: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def write(self, start: int, images: np.ndarray, masks: np.ndarray,
              meta: dict[str, np.ndarray], valid: np.ndarray | None = None) -> None:
        """Write rows [start, start + len(images)) of images, masks, metadata (and valid maps).

        `start` must be the row after the last one written. A split created with unknown size
        grows to fit.
        """
        if start != self._next:
            raise DataError(f"{self.group.name}: rows must be written in order: got row {start}, "
                            f"expected {self._next}")
        stop = start + len(images)
        arrays = {"images": images, "masks": masks, **({"valid": valid} if valid is not None else {})}
        lengths = {key: len(values) for key, values in {**arrays, **meta}.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{self.group.name}: rows to write differ in length ({lengths})")
        for target in [self.group[k] for k in arrays] + [self.group["meta"][k] for k in meta]:
            if target.shape[0] < stop:
                target.resize(stop, axis=0)
        # Metadata first: its storage is allocated at the first write, before any image chunk.
        for key, values in meta.items():
            self.group["meta"][key][start:stop] = values
        for key, values in arrays.items():
            self._held.setdefault(key, []).append(values)
        self._next = stop
        self._write_chunks(final=False)
        self.check()    # a full disk stops the run here, not after the last split

    def close(self) -> None:
        """Write the held rows (the last, partial chunk)."""
        self._write_chunks(final=True)

    def _write_chunks(self, final: bool) -> None:
        if not self._held:
            return
        held = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in self._held.items()}
        n = len(held["images"])
        first = self._next - n
        whole = n if final else n - n % self.rows
        # Chunk by chunk, images then masks (then valid): chunks are placed in the file in the
        # order they are written.
        for c in range(0, whole, self.rows):
            rows = slice(c, min(whole, c + self.rows))
            for key, values in held.items():
                self.group[key][first + rows.start:first + rows.stop] = values[rows]
        # A copy: a view of the tail would keep the whole batch it came from alive.
        self._held = {k: [v[whole:].copy()] for k, v in held.items()} if whole < n else {}


class DatasetWriter:
    """Builds a dataset file in a temp file; it replaces `path` only if every split was written."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any]):
        self.path = Path(path)
        self.attrs = attrs
        self._stack: contextlib.ExitStack | None = None
        self._file: h5py.File | None = None
        self._check: Callable[[], None] = lambda: None
        self._splits: list[SplitWriter] = []

    def __enter__(self) -> DatasetWriter:
        with contextlib.ExitStack() as stack:    # unwound here if this method fails
            # No chunk cache: every chunk goes to the file when written, in write order. A
            # cache flushes chunks in an order of its own: the bytes depended on data.chunk.
            # Through atomic_h5, a full disk is one OSError, not a crash of HDF5.
            self._file, self._check = stack.enter_context(
                atomic_h5(self.path, track_order=True, rdcc_nbytes=0))
            # Unwound first: the last, partial chunks are written only if nothing failed.
            stack.push(lambda exc_type, *_: exc_type is None and self._close_splits())
            self._file.attrs["schema_version"] = SCHEMA_VERSION
            for key, value in self.attrs.items():
                self.set_attr(key, value)
            self._stack = stack.pop_all()
        return self

    def split(self, name: str, n: int | None, shape: tuple[int, int],
              meta_dtypes: dict[str, np.dtype], valid: bool = False,
              bands: int = 1) -> SplitWriter:
        """Create the datasets of split `name` for `n` images of `shape` (None: grow on write),
        with `bands` channels per image (more than 1: images are (N, bands, H, W))."""
        group = self._file.create_group(name)
        grow = n is None
        n = 0 if grow else n
        rows = CHUNK_ROWS if grow else max(1, min(CHUNK_ROWS, n))   # HDF5: a chunk fits the data
        keys = (("images", np.float32), ("masks", np.uint8)) + ((("valid", np.uint8),) if valid else ())
        # track_times=False keeps the bytes identical across runs of the same params.
        for key, dtype in keys:
            item = (bands, *shape) if key == "images" and bands > 1 else tuple(shape)
            group.create_dataset(key, shape=(n, *item), dtype=dtype, chunks=(rows, *item),
                                 track_times=False, **COMPRESSION[key],
                                 **({"maxshape": (None, *item)} if grow else {}))
        meta = group.create_group("meta")
        for key, dtype in meta_dtypes.items():
            # A subarray dtype, np.dtype((np.float32, (K,))), makes an (n, K) field: one row of
            # K values per image (the generator's truth per galaxy).
            dtype = np.dtype(dtype)
            meta.create_dataset(key, shape=(n, *dtype.shape), dtype=dtype.base, track_times=False,
                                **({"maxshape": (None, *dtype.shape)} if grow else {}))
        self._splits.append(SplitWriter(group, rows, self._check))
        return self._splits[-1]

    def set_attr(self, key: str, value: Any) -> None:
        """Set a root attribute (JSON-encoded unless a plain str/int/float)."""
        self._file.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)

    def _close_splits(self) -> None:
        for split in self._splits:    # their last, partial chunks
            split.close()

    def __exit__(self, *exc_info) -> bool | None:
        # Whatever fails (a split, the file's close), the temp file is removed, never renamed.
        return self._stack.__exit__(*exc_info)


def open_dataset_file(path: Path) -> h5py.File:
    """An HDF5 file opened for reading; missing, cut or damaged is a DataError naming it."""
    if not path.exists():
        raise missing_output(path, "dataset file", "prepare")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file, truncated or corrupt? ({exc})") from None


# JSON root attributes: (what the value must be, its items' type, how the message says it).
_JSON_ATTRS = {"class_names": (list, str, "a JSON list of class names"),
               "params": (dict, None, "a JSON object (the params)"),
               "fields": (list, dict, "a JSON list of objects, one per field"),
               "bands": (list, str, "a JSON list of band names")}


# What h5py raises on a damaged file whose superblock still opens: KeyError and RuntimeError (a
# bad object header, link or heap), ValueError and TypeError (a datatype it cannot decode),
# OSError (a chunk it cannot read or decompress).
_H5_ERRORS = (KeyError, RuntimeError, ValueError, TypeError, OSError)


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Report what h5py raises on damaged metadata or data as a DataError naming the file."""
    try:
        yield
    except _H5_ERRORS as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(f"{path}: cannot read {what}, truncated or corrupt? ({detail})") from None


def _checked_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    attrs = dict(f.attrs)
    version = attrs.get("schema_version")
    if isinstance(version, np.generic):   # as its writer meant it: 1.5, not np.float64(1.5)
        version = version.item()
    # The integer 1, not "1", 1.5 or [1, 1]: anything else was not written by the prepare stage.
    integer = isinstance(version, int) and not isinstance(version, bool)
    if not integer or version != SCHEMA_VERSION:
        if version is None:
            found = "missing"
        elif integer:
            found = f"{version}"
        else:
            found = f"{_shown(version)} ({type(version).__name__}, not an integer)"
        raise DataError(f"{path}: schema_version is {found}, this astroseg reads version "
                        f"{SCHEMA_VERSION}; regenerate it with the prepare stage")
    for key, (kind, item, what) in _JSON_ATTRS.items():
        if key not in attrs:
            continue
        try:
            value = json.loads(attrs[key])
        except (TypeError, ValueError):   # not a string, or not JSON
            value = None
        if not isinstance(value, kind) or (item is not None and
                                           not all(isinstance(v, item) for v in value)):
            raise DataError(f"{path}: root attribute {key} is {_shown(attrs[key])}; expected "
                            f"{what}")
        attrs[key] = value
    return attrs


def _shown(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(obj: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        return f"a dataset of shape {obj.shape} and dtype {obj.dtype}"
    return "a group" if isinstance(obj, h5py.Group) else "missing"


def _group_of(f: h5py.File, path: Path, split: str) -> h5py.Group:
    """The group of `split`, with its datasets' kinds, dtypes and shapes checked from their
    headers (no pixel read): what the readers and the training loop index and cast."""
    where = f"{path}: {split}"
    group = f.get(split)
    if not isinstance(group, h5py.Group):
        raise DataError(f"{where} is {_describe(group)}; expected a group of images and masks")
    items = {key: group.get(key) for key in ("images", "masks", "valid", "meta")}
    for key in ("images", "masks", "valid"):
        if (key != "valid" or items[key] is not None) and \
                not isinstance(items[key], h5py.Dataset):
            raise DataError(f"{where}/{key} is {_describe(items[key])}; expected a dataset")
    images, masks, valid = items["images"], items["masks"], items["valid"]
    # Pixels are floats (float32 as written); masks and valid maps small integers.
    for key, kinds, want in (("images", "f", "float32 pixels"),
                             ("masks", "iub", "integer class indices (uint8)"),
                             ("valid", "iub", "a 0/1 map (uint8)")):
        ds = items[key]
        if ds is not None and ds.dtype.kind not in kinds:
            raise DataError(f"{where}/{key} has dtype {ds.dtype}; expected {want}")
    n = masks.shape[0] if masks.ndim else None
    if images.ndim not in (3, 4) or masks.ndim != 3 or images.shape[0] != n \
            or images.shape[-2:] != masks.shape[1:] or 0 in masks.shape[1:]:
        raise DataError(f"{where}/images has shape {images.shape} and {split}/masks "
                        f"{masks.shape}; expected (N, H, W) or (N, bands, H, W) images over "
                        "(N, H, W) masks, H and W >= 1")
    if valid is not None and valid.shape != masks.shape:
        raise DataError(f"{where}/valid has shape {valid.shape}; expected that of "
                        f"{split}/masks, {masks.shape}")
    meta = items["meta"]
    if meta is not None:
        if not isinstance(meta, h5py.Group):
            raise DataError(f"{where}/meta is {_describe(meta)}; expected a group of one "
                            "array per image field")
        for key, ds in meta.items():
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "biuf" or \
                    ds.ndim not in (1, 2) or ds.shape[0] != n:
                raise DataError(f"{where}/meta/{key} is {_describe(ds)}; expected numbers, "
                                f"one row per image ({n})")
    return group


def class_count(attrs: dict[str, Any]) -> int:
    """How many mask values a file's masks may hold: its class names, else all but IGNORE."""
    names = attrs.get("class_names")
    return len(names) if isinstance(names, list) and names else IGNORE


def check_classes(masks: np.ndarray, classes: int, where: str) -> None:
    """Raise unless every mask value is a class index in [0, `classes`)."""
    if masks.size and (masks.min() < 0 or masks.max() >= classes):
        bad = masks.min() if masks.min() < 0 else masks.max()
        raise DataError(f"{where} holds the value {bad}; expected class indices 0 to "
                        f"{classes - 1}")


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a dataset file, JSON values decoded; checks the schema version."""
    path = Path(path)
    with open_dataset_file(path) as f, _reading(path, "the root attributes"):
        return _checked_attrs(f, path)


def load_split(path: str | os.PathLike, split: str, limit: int | None = None) -> Split:
    """Read (the first `limit` images of) one split into memory, checking shapes and values."""
    path = Path(path)
    with open_dataset_file(path) as f, _reading(path, f"split '{split}'"):
        attrs = _checked_attrs(f, path)
        if split not in f:
            raise DataError(f"{path}: no split '{split}' (found: {', '.join(f.keys()) or 'none'})")
        group = _group_of(f, path, split)
        images = group["images"][:limit]
        masks = group["masks"][:limit]
        meta = {k: v[:limit] for k, v in group["meta"].items()} if "meta" in group else {}
        valid = group["valid"][:limit] if "valid" in group else None
    # Cast first: a float64 beyond float32's range becomes inf here, and is refused below.
    with np.errstate(over="ignore"):
        images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise DataError(f"{path}: {split}/images holds NaN or infinite values")
    check_classes(masks, class_count(attrs), f"{path}: {split}/masks")
    return Split(images, masks.astype(np.uint8, copy=False), meta,
                 None if valid is None else valid.astype(np.uint8, copy=False))


@contextlib.contextmanager
def open_split(path: str | os.PathLike, split: str) -> Iterator[h5py.Group]:
    """The group of `split` in an open dataset file, schema checked."""
    path = Path(path)
    with open_dataset_file(path) as f:
        with _reading(path, f"split '{split}'"):   # the checks only: the caller's errors pass
            _checked_attrs(f, path)
            group = f.get(split)
            if not isinstance(group, h5py.Group) or not {"images", "masks"} <= set(group):
                raise DataError(f"{path}: no split '{split}' with images and masks (found: "
                                f"{', '.join(f.keys()) or 'none'})")
            group = _group_of(f, path, split)
        yield group


def read_meta(path: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """The per-image metadata of `split` (small: one value per image), without the pixels."""
    with open_split(path, split) as group, _reading(Path(path), f"{split}/meta"):
        return {k: v[:] for k, v in group["meta"].items()} if "meta" in group else {}


def split_nbytes(path: str | os.PathLike, split: str) -> int:
    """Bytes `load_split` would hold for `split`: images, masks and valid maps; 0 if absent."""
    path = Path(path)
    with open_dataset_file(path) as f, _reading(path, f"split '{split}'"):
        _checked_attrs(f, path)
        if split not in f:
            return 0
        group = _group_of(f, path, split)
        # As load_split holds them: float32 images, uint8 masks and valid maps.
        return sum(group[k].size * (4 if k == "images" else 1)
                   for k in ("images", "masks", "valid") if k in group)


def split_sizes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shape of each split's images, without reading the pixels."""
    path = Path(path)
    with open_dataset_file(path) as f, _reading(path, "the splits"):
        _checked_attrs(f, path)
        # Every split, and any other group with images, checked as load_split would.
        names = [name for name in f if name in SPLITS or
                 (isinstance(f.get(name), h5py.Group) and "images" in f[name])]
        return {name: _group_of(f, path, name)["images"].shape for name in names}


def write_splits(path: str | os.PathLike, splits: Iterable[tuple[str, Split]],
                 attrs: dict[str, Any]) -> None:
    """Write in-memory splits to a new dataset file (for small data and tests)."""
    with DatasetWriter(path, attrs) as out:
        for name, s in splits:
            dtypes = {k: np.dtype((v.dtype, v.shape[1:])) for k, v in s.meta.items()}
            writer = out.split(name, len(s), s.shape, dtypes, valid=s.valid is not None,
                               bands=s.channels)
            writer.write(0, s.images, s.masks, s.meta, s.valid)
