"""The per-epoch training history, stored as a TSV table that DVC plots read."""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from astroseg.atomic import write_text
from astroseg.errors import DataError, missing_output


@dataclass
class EpochRecord:
    """One row of the training history."""
    epoch: int
    train_loss: float
    val_loss: float
    val_iou: float
    val_dice: float
    lr: float


COLUMNS = tuple(f.name for f in fields(EpochRecord))


def write_history(path: str | os.PathLike, records: list[EpochRecord]) -> None:
    """Atomically write the history as tab-separated values with a header row."""
    lines = ["\t".join(COLUMNS)]
    for r in records:
        lines.append("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v)
                               for v in asdict(r).values()))
    write_text(path, "\n".join(lines) + "\n")


def read_history(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The history table as one float array per column."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        return {k: np.array([float(r[k]) for r in rows]) for k in COLUMNS}
    except FileNotFoundError:
        raise missing_output(path, "training history", "train") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable history table, expected columns "
                        f"{', '.join(COLUMNS)} ({exc!r})") from None
