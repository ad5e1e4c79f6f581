"""Atomic file output: write to a temp file beside the target, rename over it only on success."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it to `path` if the block succeeds, else delete it.

    The previous file at `path`, if any, is untouched until the rename, so a crash or an error
    halfway through never leaves a truncated output behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write `obj` as indented JSON with a trailing newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Atomically write rows as CSV with a header (floats to 6 significant digits): a DVC plot."""
    def cell(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)
    lines = [",".join(columns)] + [",".join(cell(row[c]) for c in columns) for row in rows]
    write_text(path, "\n".join(lines) + "\n")
