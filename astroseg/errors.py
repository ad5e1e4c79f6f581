"""User-facing errors: bad params, files and data, reported in one line without a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class AstrosegError(Exception):
    """Something the user can fix; the message names the file, key or value at fault."""


class ParamsError(AstrosegError):
    """A params file or value is missing, malformed or out of range."""


class DataError(AstrosegError):
    """A data file (HDF5 dataset, checkpoint, history) is missing, corrupt or of the wrong shape."""


def run_main(main: Callable[[], object]) -> int:
    """Run an entry point; turn an AstrosegError into 'error: ...' on stderr and exit status 2."""
    try:
        main()
    except AstrosegError as exc:
        # Under torchrun every rank may fail alike: say which one is speaking.
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
        print(f"error: {rank}{exc}", file=sys.stderr, flush=True)
        return 2
    return 0
