"""Atomic file output: write to a temp file beside the target, rename over it only on success.

A run that is killed leaves its temp file (`.NAME.HOST.PID.XXXXXXXX.tmp`, ignored by git, never a
DVC output); the next write of NAME removes it. A write that fails because the disk is full (or
the quota, or `ulimit -f`) is reported as an OSError that names the output, whatever the
writing library (h5py, torch, astropy, matplotlib) raised, and the previous output stays.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import h5py

# Temp files are named `.NAME.HOST.PID.XXXXXXXX.tmp`: the next write of NAME removes those whose
# process is gone (killed: SIGKILL, out of memory, power loss). Another host's, and those of an
# older naming, only once untouched since before this process started, for another hour.
_HOST = socket.gethostname().replace(".", "-") or "localhost"
_STARTED = time.time()
_OTHER_HOST_GRACE_S = 3600.0
# Errors that only a write can raise: the disk, the quota or the file-size limit is exhausted.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# HDF5 reports a failed write in its message ("errno = 27, error message = ...").
_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")
_ASTROPY_SHORT = re.compile(r"Not enough space on disk|\d+ requested and \d+ written")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_pattern(path: str | os.PathLike) -> str:
    """The glob, relative to the folder of `path`, of the temp files that write `path`."""
    return f".{Path(path).name}.*.tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _stale(entry: Path, target: Path) -> bool:
    """Whether a temp file (or folder) of `target` was left by a process that is gone."""
    parts = entry.name[len(f".{target.name}."):-len(".tmp")].split(".")
    if len(parts) == 3 and parts[1].isdigit():       # HOST.PID.XXXXXXXX
        if parts[0] == _HOST:
            return not _alive(int(parts[1]))
        return entry.lstat().st_mtime < _STARTED - _OTHER_HOST_GRACE_S
    if len(parts) == 1:                              # an older naming: .NAME.XXXXXXXX.tmp
        return entry.lstat().st_mtime < _STARTED
    return False    # another file's: `.NAME.x.*.tmp` matches the temp files of NAME.x too


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files (and temp folders) of `path` that a killed earlier run left behind;
    a live writer's stay. Returns what was removed."""
    target = Path(path)
    removed = []
    try:
        found = list(target.parent.glob(temp_pattern(target)))
    except OSError:   # the folder is not there (yet) or not readable: nothing to sweep
        return removed
    for entry in found:
        try:
            if not _stale(entry, target):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:   # gone already (another sweeper), or not ours to remove
            continue
        removed.append(entry)
    return removed


def space_errno(exc: BaseException) -> int | None:
    """The errno of a full disk, quota or file-size limit behind `exc`, if that is its cause.

    Libraries wrap a failed write in exceptions of their own (torch.save a RuntimeError whose
    context is the OSError, HDF5 a message with "errno = 27"), so the whole chain is searched.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in SPACE_ERRNOS:
            return e.errno
        match = _HDF5_ERRNO.search(str(e))
        if match and int(match.group(1)) in SPACE_ERRNOS:
            return int(match.group(1))
        # astropy's writeto checks free space itself, and its short-write check loses the
        # errno: OSError("Not enough space on disk: ...") or OSError("N requested and M written").
        if isinstance(e, OSError) and e.errno is None and _ASTROPY_SHORT.search(str(e)):
            return errno.ENOSPC if "space" in str(e) else errno.EFBIG
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return None


@contextmanager
def name_space_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full disk (or quota, or file-size limit) met in the block as an OSError that
    names `path`, whatever the writing library made of it: `run_main` shows one line and a hint."""
    try:
        yield
    except Exception as exc:
        code = space_errno(exc)
        if code is None or (isinstance(exc, OSError) and exc.filename == str(path)):
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it to `path` if the block succeeds, else delete it.

    The previous file at `path`, if any, is untouched until the rename, so a crash or an error
    halfway through never leaves a truncated output behind. Temp files of `path` that a killed
    earlier run left are removed first. A full disk is reported as an OSError naming `path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    with name_space_errors(target):
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp",
                                        dir=target.parent)
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


@contextmanager
def scratch_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temp folder for the work files of the writer of `path`, beside it (on the same disk)
    if its folder exists, else in the system's; removed afterwards, or by the next run if this
    one is killed. A full disk met in the block is reported as an OSError naming `path`."""
    target = Path(path)
    folder = target.parent if target.parent.is_dir() else None
    if folder is not None:
        sweep_stale(target)
    with name_space_errors(target), tempfile.TemporaryDirectory(
            prefix=_temp_prefix(target), suffix=".tmp", dir=folder) as tmp:
        yield Path(tmp)


class _HDF5Sink:
    """The file that HDF5 writes an output through (h5py's "fileobj" driver); a failed write
    is kept in `error`, never raised into HDF5.

    HDF5 does not survive a write that fails (disk full, ulimit -f): with its own drivers, or
    with an exception raised through this one, the process crashed (SIGSEGV) on closing the
    file or at exit, after a screen of tracebacks. Here HDF5 never sees a failure: after the
    first one, writes are discarded (small ones kept in memory, for HDF5 to read back), the
    writer stops at its next `check`, HDF5 closes the file cleanly, and the file, garbage,
    never replaces the output.
    """

    _KEEP_BYTES = 1 << 16   # discarded writes up to this size (metadata) are kept to read back

    def __init__(self, fd: int):
        self._fd = fd
        self.error: OSError | None = None
        self._pos = self._end = 0
        self._kept: dict[int, bytes] = {}

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        """Move to `pos` (relative to `whence`)."""
        self._pos = pos + {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end}[whence]
        return self._pos

    def tell(self) -> int:
        """The position."""
        return self._pos

    def read(self, size: int) -> bytes:
        """`size` bytes from the position (zeros past what is there, as HDF5 expects)."""
        kept = self._kept.get(self._pos)
        data = kept[:size] if kept is not None and len(kept) >= size else \
            os.pread(self._fd, size, self._pos)
        self._pos += size
        return data + bytes(size - len(data))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of `data` at the position (an unbuffered write may take only part)."""
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as exc:
                # A new exception: one raised here would unwind through HDF5's C code.
                self.error = OSError(exc.errno, exc.strerror)
        if self.error is not None and n <= self._KEEP_BYTES:
            self._kept[self._pos] = bytes(view)
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def truncate(self, size: int) -> int:
        """Cut or extend the file to `size` bytes."""
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.error = OSError(exc.errno, exc.strerror)
        self._end = size
        return size

    def flush(self) -> None:
        """Nothing is buffered here."""

    def check(self) -> None:
        """Raise the write failure, if there was one: the writer stops here."""
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror)


@contextmanager
def atomic_h5(path: str | os.PathLike,
              **kwargs: Any) -> Iterator[tuple[h5py.File, Callable[[], None]]]:
    """An h5py.File (`kwargs` for it) open for writing, that atomically becomes `path` if the
    block succeeds, and a function that raises if a write has failed (call it after each
    batch: HDF5 itself is kept from failing, see _HDF5Sink). A full disk is one OSError
    naming `path`."""
    import h5py

    with atomic_output(path) as tmp, open(tmp, "w+b", buffering=0) as raw:
        sink = _HDF5Sink(raw.fileno())
        with h5py.File(sink, "w", **kwargs) as f:
            yield f, sink.check
        sink.check()    # the close's own writes


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
