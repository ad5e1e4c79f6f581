"""Resume after preemption: the whole training state, saved often, on SIGTERM and SIGINT too.

The state holds everything the rest of the run depends on: the model, the optimizer, the
shuffle-and-augmentation generator, torch's RNGs, the epoch and the position within it, the
running loss, the history and the best weights so far. Restored, the run continues exactly as
if it had never stopped; on the CPU the final weights are the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from astroseg.atomic import atomic_output
from astroseg.errors import AstrosegError
from astroseg.train.history import EpochRecord

FORMAT_VERSION = 1


class Interrupted(AstrosegError):
    """Training stopped on a signal after saving its state."""


@dataclass
class Progress:
    """Where the loop is: everything about the run that is not a module, optimizer or RNG."""
    epoch: int = 1                        # the epoch under way (or next)
    position: int = 0                     # samples of this epoch's order already trained on
    step: int = 0                         # optimizer steps so far, for the LR schedule
    order: torch.Tensor | None = None     # this epoch's permutation (None between epochs)
    running: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_iou: float = -1.0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


class StopSignals:
    """SIGTERM and SIGINT set a flag the loop polls; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Catch SIGTERM (a cluster's preemption notice) and SIGINT while the block runs."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop    # signals only reach the main thread; nothing to install
        return
    previous = {s: signal.signal(s, stop._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fingerprint(params: dict[str, Any], dataset: str | os.PathLike, dataset_attrs: dict[str, Any],
                code: list[Path]) -> str:
    """A hash of what a run's result depends on: its params, the dataset file and the code.

    The dataset enters by its root attributes (the params that made its pixels), size and
    modification time: hashing its bytes would cost minutes for a survey-sized file, and any
    rewrite of it changes the time, so a state is never resumed on other data.
    """
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    st = os.stat(dataset)
    h.update(json.dumps(dataset_attrs, sort_keys=True, default=str).encode())
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    for path in sorted(code):
        h.update(str(path.name).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def package_code(*extra: str | os.PathLike) -> list[Path]:
    """The library's source files, and `extra` ones (the stage script)."""
    root = Path(__file__).resolve().parents[1]
    return sorted(root.rglob("*.py")) + [Path(p) for p in extra]


@dataclass
class Checkpointer:
    """Saves and restores the training state at `path`, every `every_s` seconds of training."""
    path: Path
    fingerprint: str
    every_s: float = 0.0                  # 0: only when asked (after each epoch, on a signal)
    stop: StopSignals = field(default_factory=StopSignals)
    last: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        """Whether a periodic save is due."""
        return self.every_s > 0 and time.monotonic() - self.last >= self.every_s

    def clean(self) -> None:
        """Delete temp files of saves that were killed halfway (one process calls it)."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Any] | None, str]:
        """The saved state if it belongs to this run, and why it is (or is not) used."""
        if not self.path.exists():
            return None, f"no saved state at {self.path}"
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            return None, f"{self.path} is unreadable ({' '.join(str(exc).split())[:120]})"
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            return None, f"{self.path} has another format"
        if state.get("fingerprint") != self.fingerprint:
            return None, (f"{self.path} was saved for other params, data or code")
        where = (f"epoch {state['progress']['epoch']}, after {state['progress']['position']} "
                 "images")
        return state, f"resuming from {self.path} at {where}"

    def save(self, state: dict[str, Any]) -> None:
        """Atomically and durably write `state`: a kill, or a crash of the machine, mid-save
        leaves the previous state intact."""
        payload = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, **state}
        with atomic_output(self.path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)      # the rename itself
        finally:
            os.close(folder)

    def restart_timer(self) -> None:
        """Count the next periodic save from now (every rank, after every save)."""
        self.last = time.monotonic()

    def remove(self) -> None:
        """Delete the state (and its folder, if that is left empty): the run has finished."""
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()


def progress_to_dict(p: Progress) -> dict[str, Any]:
    """`p` as plain values and tensors (a copy), loadable with weights_only=True."""
    return asdict(p)


def progress_from_dict(d: dict[str, Any]) -> Progress:
    """The inverse of progress_to_dict."""
    return Progress(**{**d, "history": [EpochRecord(**r) for r in d["history"]]})
