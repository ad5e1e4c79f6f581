"""The HDF5 dataset file: one group per split with images, masks and per-image metadata.

Schema (version 1):
  /                 attrs: schema_version, source, class_names (JSON), normalization, params (JSON)
  /<split>/images   float32 (N, H, W), one chunk per image, lzf-compressed
  /<split>/masks    uint8 (N, H, W), class index per pixel (0 = background)
  /<split>/meta/*   one (N,) array per per-image field (n_sources, has_spiral, ...)
  /<split>/valid    optional uint8 (N, H, W), 1 where the pixel was measured (FITS sources)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astroseg.atomic import atomic_output
from astroseg.errors import DataError

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split held in memory."""
    images: np.ndarray                    # float32 (N, H, W)
    masks: np.ndarray                     # uint8 (N, H, W)
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    valid: np.ndarray | None = None       # uint8 (N, H, W) if the file has it

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class SplitWriter:
    """Writes rows of one split into datasets created with their final size."""
    group: h5py.Group

    def write(self, start: int, images: np.ndarray, masks: np.ndarray,
              meta: dict[str, np.ndarray], valid: np.ndarray | None = None) -> None:
        """Write rows [start, start + len(images)) of images, masks, metadata (and valid maps).

        A split created with unknown size grows to fit.
        """
        stop = start + len(images)
        arrays = {"images": images, "masks": masks, **({"valid": valid} if valid is not None else {})}
        lengths = {key: len(values) for key, values in {**arrays, **meta}.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{self.group.name}: rows to write differ in length ({lengths})")
        for target in [self.group[k] for k in arrays] + [self.group["meta"][k] for k in meta]:
            if target.shape[0] < stop:
                target.resize(stop, axis=0)
        # Metadata first: its storage is allocated at the first write, before any image chunk,
        # whatever the batch size.
        for key, values in meta.items():
            self.group["meta"][key][start:stop] = values
        # Image by image, each with its mask: compressed chunks are placed in the file in the
        # order they are written, so writing a whole batch of images, then its masks, would make
        # the bytes depend on the batch size (data.chunk).
        pairs = [(self.group[key], values) for key, values in arrays.items()]
        for i in range(len(images)):
            for target, values in pairs:
                target[start + i] = values[i]


class DatasetWriter:
    """Builds a dataset file in a temp file; it replaces `path` only if every split was written."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any]):
        self.path = Path(path)
        self.attrs = attrs
        self._atomic = atomic_output(self.path)
        self._file: h5py.File | None = None

    def __enter__(self) -> DatasetWriter:
        tmp = self._atomic.__enter__()
        # No chunk cache: every chunk goes to the file when written, in write order. A cache
        # flushes chunks in an order of its own, which made the bytes depend on data.chunk.
        self._file = h5py.File(tmp, "w", track_order=True, rdcc_nbytes=0)
        self._file.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in self.attrs.items():
            self.set_attr(key, value)
        return self

    def split(self, name: str, n: int | None, shape: tuple[int, int],
              meta_dtypes: dict[str, np.dtype], valid: bool = False) -> SplitWriter:
        """Create the datasets of split `name` for `n` images of `shape` (None: grow on write)."""
        group = self._file.create_group(name)
        grow = {"maxshape": (None, *shape)} if n is None else {}
        n = 0 if n is None else n
        keys = (("images", np.float32), ("masks", np.uint8)) + ((("valid", np.uint8),) if valid else ())
        # track_times=False keeps the bytes identical across runs of the same params.
        for key, dtype in keys:
            group.create_dataset(key, shape=(n, *shape), dtype=dtype, chunks=(1, *shape),
                                 compression="lzf", track_times=False, **grow)
        meta = group.create_group("meta")
        for key, dtype in meta_dtypes.items():
            meta.create_dataset(key, shape=(n,), dtype=dtype, track_times=False,
                                **({"maxshape": (None,)} if grow else {}))
        return SplitWriter(group)

    def set_attr(self, key: str, value: Any) -> None:
        """Set a root attribute (JSON-encoded unless a plain str/int/float)."""
        self._file.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)

    def __exit__(self, *exc_info) -> bool | None:
        self._file.close()
        return self._atomic.__exit__(*exc_info)


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(f"{path}: dataset file not found (run the prepare stage first)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file, truncated or corrupt? ({exc})") from None


def _checked_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    attrs = dict(f.attrs)
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        found = "missing" if version is None else f"{version}"
        raise DataError(f"{path}: schema_version is {found}, this astroseg reads version "
                        f"{SCHEMA_VERSION}; regenerate it with the prepare stage")
    for key in ("class_names", "params", "fields"):
        if key in attrs:
            attrs[key] = json.loads(attrs[key])
    return attrs


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a dataset file, JSON values decoded; checks the schema version."""
    path = Path(path)
    with _open(path) as f:
        return _checked_attrs(f, path)


def load_split(path: str | os.PathLike, split: str, limit: int | None = None) -> Split:
    """Read (the first `limit` images of) one split into memory, checking shapes and values."""
    path = Path(path)
    with _open(path) as f:
        _checked_attrs(f, path)
        if split not in f:
            raise DataError(f"{path}: no split '{split}' (found: {', '.join(f.keys()) or 'none'})")
        group = f[split]
        try:
            images = group["images"][:limit]
            masks = group["masks"][:limit]
            meta = {k: v[:limit] for k, v in group["meta"].items()} if "meta" in group else {}
            valid = group["valid"][:limit] if "valid" in group else None
        except (KeyError, OSError) as exc:
            raise DataError(f"{path}: cannot read split '{split}': {exc}") from None
    if images.ndim != 3 or images.shape != masks.shape:
        raise DataError(f"{path}: {split}/images has shape {images.shape} and {split}/masks "
                        f"{masks.shape}; expected equal (N, H, W)")
    if not np.isfinite(images).all():
        raise DataError(f"{path}: {split}/images holds NaN or infinite values")
    return Split(images.astype(np.float32, copy=False), masks.astype(np.uint8, copy=False), meta,
                 valid)


def split_sizes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shape of each split's images, without reading the pixels."""
    path = Path(path)
    with _open(path) as f:
        _checked_attrs(f, path)
        return {name: f[name]["images"].shape for name in f if "images" in f[name]}


def write_splits(path: str | os.PathLike, splits: Iterable[tuple[str, Split]],
                 attrs: dict[str, Any]) -> None:
    """Write in-memory splits to a new dataset file (for small data and tests)."""
    with DatasetWriter(path, attrs) as out:
        for name, s in splits:
            dtypes = {k: v.dtype for k, v in s.meta.items()}
            out.split(name, len(s), s.images.shape[1:], dtypes).write(0, s.images, s.masks, s.meta)
