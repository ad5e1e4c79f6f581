"""Two helper threads around a compute loop: one reads ahead, one writes behind.

Both hand an exception over to the main thread, which raises it as if it had met it itself
(the same object: the same one-line error), and both stop promptly when the main thread gives
up (`close`), so no thread writes to a temp file after the main thread has removed it. Queues
are bounded: at most `depth` items wait on either side, so memory stays bounded too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.05


class ReadAhead(Generic[T]):
    """Iterate `items` in a background thread, up to `depth` items ahead of the consumer."""

    def __init__(self, items: Iterable[T], depth: int = 1, name: str = "astroseg-reader"):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterable[T]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as exc:   # handed to the consumer, raised there
            self._put((_END, exc))

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item, exc = self._queue.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item

    def close(self) -> None:
        """Stop reading (after the read under way) and wait for the thread."""
        self._stop.set()
        self._thread.join()


class WriteBehind(Generic[T]):
    """Call `write(item)` for each `put` item in a background thread, in order."""

    def __init__(self, write: Callable[[T], None], depth: int = 2,
                 name: str = "astroseg-writer"):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None or self._abort:
                continue   # drain: the producer must never block on a dead writer
            try:
                self._write(item)
            except BaseException as exc:   # handed to the producer at its next put or close
                self._error = exc

    def check(self) -> None:
        """Raise the write failure, if there was one."""
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        """Queue `item` (waits while `depth` items are queued); raises an earlier failure."""
        self.check()
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every queued write, then raise a failure if there was one."""
        self._queue.put(_END)
        self._thread.join()
        self.check()

    def abort(self) -> None:
        """Drop the queued writes and wait for the thread (the one under way finishes)."""
        self._abort = True
        self._queue.put(_END)
        self._thread.join()
