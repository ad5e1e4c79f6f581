"""User-facing errors: bad params, files and data, reported in one line without a traceback.

Every entry point (the `astroseg` command and each stage script) runs through `run_main`, which
turns any exception into one line on stderr: an AstrosegError as it is (exit status 2), an
OS error with its file and a hint (disk full, permissions), anything else as an internal error
that asks for a report. `ASTROSEG_DEBUG=1` (or `astroseg --debug`) lets the traceback through.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

DEBUG_ENV = "ASTROSEG_DEBUG"
# Set by the test suite: internal errors are appended to this file, so that a run which
# printed one fails even when its test only looked at the exit status.
ERROR_LOG_ENV = "ASTROSEG_ERROR_LOG"


class AstrosegError(Exception):
    """Something the user can fix; the message names the file, key or value at fault."""


class ParamsError(AstrosegError):
    """A params file or value is missing, malformed or out of range."""


class DataError(AstrosegError):
    """A data file (HDF5 dataset, checkpoint, history) is missing, corrupt or of the wrong shape."""


def missing_output(path: object, what: str, stage: str) -> DataError:
    """The error for a pipeline output that is not there (a fresh clone, or a stage not run)."""
    return DataError(f"{path}: {what} not found; the {stage} stage writes it: run `dvc repro` "
                     f"(or `dvc pull` if a DVC remote holds the outputs)")


def debug_enabled() -> bool:
    """Whether tracebacks should reach the user (ASTROSEG_DEBUG set to anything but 0/empty)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


_OS_HINTS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "file too large for this file "
             "system or over the process's file-size limit (ulimit -f)",
             errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
             errno.EROFS: "read-only file system"}


def describe(exc: BaseException) -> str:
    """One line for an exception: its message, with the file for OS errors."""
    if isinstance(exc, AstrosegError):
        return " ".join(str(exc).split())
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        what = _OS_HINTS.get(exc.errno) or exc.strerror or " ".join(str(exc).split())
        if exc.errno in _OS_HINTS and exc.strerror and exc.strerror.lower() not in what:
            what = f"{exc.strerror}: {what}"
        return f"{where}: {what}" if where else what
    if out_of_memory(exc):
        return "out of memory (lower the batch size, chunk or window, or free memory)"
    if peer_lost(exc):
        return ("another rank of this run stopped (killed, or failed: its error is in the log): "
                + " ".join(str(exc).split())[:160])
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure: Python's, torch's CUDA one, or torch's CPU
    allocator's (a plain RuntimeError)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or \
        (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is torch.distributed losing another rank (killed or failed), which the
    surviving ranks see as a connection error inside a collective."""
    text = str(exc)
    return type(exc).__name__ in ("DistBackendError", "DistNetworkError") or (
        isinstance(exc, RuntimeError) and "gloo" in text and "Connection" in text)


def _log_internal(line: str) -> None:
    path = os.environ.get(ERROR_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{' '.join(sys.argv)}: {line}\n")


def run_main(main: Callable[[], object]) -> int:
    """Run an entry point; report any error as one 'error: ...' line on stderr and return the
    exit status: 2 for an AstrosegError, 1 for anything else, 130 for Ctrl-C."""
    try:
        main()
    except BrokenPipeError:
        # The reader went away (`astroseg info ... | head`): nothing more to say, to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:   # SystemExit (argparse, signals) passes through as it is
        if debug_enabled():
            raise
        # Under torchrun every rank may fail alike: say which one is speaking.
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
        line = describe(exc)
        if not isinstance(exc, (AstrosegError, OSError)) and not out_of_memory(exc) \
                and not peer_lost(exc):
            _log_internal(line)
            line = (f"internal error: {line} (please report it; rerun with {DEBUG_ENV}=1, or "
                    "`astroseg --debug`, for the traceback)")
        print(f"error: {rank}{line}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, AstrosegError) else 1
    return 0
