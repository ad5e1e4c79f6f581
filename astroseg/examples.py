"""Example test predictions that the evaluate stage keeps for the plots stage, in HDF5."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from astroseg.atomic import atomic_output
from astroseg.dataset import Split
from astroseg.errors import DataError


def save_examples(path: str | os.PathLike, split: Split, probabilities: np.ndarray,
                  threshold: float) -> None:
    """Atomically write the first len(probabilities) images, masks and predicted maps to HDF5."""
    n = len(probabilities)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["threshold"] = threshold
        for key, values in (("images", split.images[:n]), ("masks", split.masks[:n]),
                            ("probabilities", probabilities)):
            f.create_dataset(key, data=values, track_times=False)


def load_examples(path: str | os.PathLike) -> tuple[Split, np.ndarray, float]:
    """Read what save_examples wrote: the examples, their probability maps and the threshold."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: example predictions not found (run the evaluate stage first)")
    try:
        with h5py.File(path, "r") as f:
            split = Split(f["images"][:], f["masks"][:])
            return split, f["probabilities"][:], float(f.attrs["threshold"])
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable predictions file ({exc})") from None
