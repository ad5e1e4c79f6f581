"""Ordered parallel map over worker processes, with a bounded number of results in flight."""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

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


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)   # one process per core: no intra-op threads competing


def ordered_map(fn: Callable[..., T], args: Iterable[tuple[Any, ...]], workers: int,
                ahead: int = 2) -> Iterator[T]:
    """Yield fn(*a) for each a in `args`, in order, computed by `workers` processes.

    At most `ahead` x `workers` calls are submitted beyond the one being yielded, so memory
    holds that many results, however long `args` is. One worker runs in this process.
    """
    if workers <= 1:
        for a in args:
            yield fn(*a)
        return
    # fork: the children have every module already imported. They set one torch thread before
    # any work, so a parent's OpenMP pool (which a forked child cannot use) never matters.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pending: collections.deque[Future] = collections.deque()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        try:
            for a in args:
                pending.append(pool.submit(fn, *a))
                if len(pending) > ahead * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
