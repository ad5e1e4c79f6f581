"""Reading the small JSON and CSV files the figures are drawn from, with errors that name them."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from astroseg.errors import DataError, missing_output


def _missing(path: Path, made_by: str) -> DataError:
    return missing_output(path, "input", made_by)


def read_json(path: str | os.PathLike, made_by: str) -> dict[str, Any]:
    """A JSON object from `path`; `made_by` names the stage that writes it, for the error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _missing(path, made_by) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not readable ({exc}); rerun the {made_by} stage") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); rerun the {made_by} stage") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(obj).__name__}; "
                        f"rerun the {made_by} stage")
    return obj


def read_table(path: str | os.PathLike, columns: tuple[str, ...],
               made_by: str) -> dict[str, np.ndarray]:
    """The numeric `columns` of a CSV file with a header, as float arrays (empty if no rows)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise _missing(path, made_by) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}); "
                        f"rerun the {made_by} stage") from None
    rows = [row for row in rows if row]
    if not rows:
        raise DataError(f"{path}: empty, expected a header with {', '.join(columns)}; "
                        f"rerun the {made_by} stage")
    header = [name.strip() for name in rows[0]]
    absent = [c for c in columns if c not in header]
    if absent:
        raise DataError(f"{path}: no column {', '.join(absent)} (found {', '.join(header)}); "
                        f"rerun the {made_by} stage")
    index = [header.index(c) for c in columns]
    table = np.empty((len(rows) - 1, len(columns)))
    for r, row in enumerate(rows[1:]):
        for c, i in enumerate(index):
            try:
                table[r, c] = float(row[i])
            except (IndexError, ValueError):
                cell = row[i] if i < len(row) else "nothing"
                raise DataError(f"{path}, line {r + 2}: {columns[c]} = {cell!r} is not a "
                                f"number; rerun the {made_by} stage") from None
    return {name: table[:, c] for c, name in enumerate(columns)}


def number(obj: dict[str, Any] | None, *keys: str) -> float | None:
    """The finite number at obj[key0][key1]..., or None where a key or the number is absent."""
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        return None
    return obj
