"""Ordered parallel map over worker processes, with a bounded number of results in flight."""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def cpu_count() -> int:
    """CPU cores this process may run on (the affinity mask, as cluster schedulers set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:     # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """`workers`, with 0 meaning one per available core."""
    return workers if workers > 0 else cpu_count()


def _init_worker(parent: int) -> None:
    import torch

    torch.set_num_threads(1)   # one process per core: no intra-op threads competing
    # A parent killed outright (SIGKILL, out of memory) cannot stop its pool, and its forked
    # workers would live on, holding their memory. On Linux the kernel can kill them with it.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:   # it died before prctl took effect
        os._exit(1)


def _shared(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), its array fields as torch tensors: they cross to the parent as shared memory
    (torch.multiprocessing's pickling), not through the result pipe, which capped two workers
    at the speed of one for results of a few MB."""
    import torch

    out = fn(*args)
    if not dataclasses.is_dataclass(out):
        return out
    try:
        arrays = {f.name: torch.from_numpy(getattr(out, f.name)).share_memory_()
                  for f in dataclasses.fields(out) if isinstance(getattr(out, f.name), np.ndarray)}
    except RuntimeError:   # /dev/shm full (a container's default is 64 MB): use the pipe
        return out
    return dataclasses.replace(out, **arrays)


def _unshared(out: T) -> T:
    if dataclasses.is_dataclass(out):
        arrays = {f.name: getattr(out, f.name).numpy() for f in dataclasses.fields(out)
                  if hasattr(getattr(out, f.name), "numpy")}
        out = dataclasses.replace(out, **arrays)
    return out


def ordered_map(fn: Callable[..., T], args: Iterable[tuple[Any, ...]], workers: int,
                ahead: int = 2) -> Iterator[T]:
    """Yield fn(*a) for each a in `args`, in order, computed by `workers` processes.

    At most `ahead` x `workers` calls are submitted beyond the one being yielded, so memory
    holds that many results, however long `args` is. `workers` <= 1 runs the calls in this
    process. The numpy array fields of a dataclass result arrive through shared memory.
    """
    if workers <= 1:
        for a in args:
            yield fn(*a)
        return
    # fork: the children have every module already imported. They set one torch thread before
    # any work, so a parent's OpenMP pool (which a forked child cannot use) never matters.
    import torch.multiprocessing  # noqa: F401  (registers the shared-memory pickling of tensors)

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pending: collections.deque[Future] = collections.deque()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        try:
            for a in args:
                pending.append(pool.submit(_shared, fn, *a))
                if len(pending) > ahead * workers:
                    yield _unshared(pending.popleft().result())
            while pending:
                yield _unshared(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
