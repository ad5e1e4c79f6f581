"""Example test predictions that the evaluate stage keeps for the plots stage, in HDF5."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from astroseg.atomic import atomic_output
from astroseg.errors import DataError, missing_output

_KEYS = ("images", "masks", "foreground", "labels")
_OPTIONAL = ("mc_mean", "mc_std")


@dataclass
class Examples:
    """A few test images with their truth and the model's maps."""
    images: np.ndarray       # float32 (n, H, W), or (n, C, H, W) for C bands
    masks: np.ndarray        # uint8 (n, H, W) true class, IGNORE (255) where not measured
    foreground: np.ndarray   # float32 (n, H, W) probability of not being background
    labels: np.ndarray       # uint8 (n, H, W) predicted class
    mc_mean: np.ndarray | None = None   # float32 (n, H, W) MC-dropout mean and standard
    mc_std: np.ndarray | None = None    # deviation of `foreground` (evaluate.mc_samples >= 2)


def save_examples(path: str | os.PathLike, examples: Examples) -> None:
    """Atomically write the examples to HDF5."""
    # Built in memory (a few images; the same bytes HDF5 writes to disk) and written with plain
    # file I/O: a full disk is then one OSError, where a failed write inside HDF5 crashed the
    # process (SIGSEGV) after a screen of tracebacks.
    with h5py.File(f"{path}.in-memory", "w", driver="core", backing_store=False) as f:
        for key in _KEYS + _OPTIONAL:
            if getattr(examples, key) is not None:
                f.create_dataset(key, data=getattr(examples, key), track_times=False)
        f.flush()
        image = f.id.get_file_image()
    with atomic_output(path) as tmp:
        tmp.write_bytes(image)


def load_examples(path: str | os.PathLike) -> Examples:
    """Read what save_examples wrote."""
    path = Path(path)
    if not path.exists():
        raise missing_output(path, "example predictions", "evaluate")
    try:
        with h5py.File(path, "r") as f:
            return Examples(*(f[key][:] for key in _KEYS),
                            *(f[key][:] if key in f else None for key in _OPTIONAL))
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable predictions file ({exc})") from None
