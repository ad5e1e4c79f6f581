"""Run a command and report the peak memory of its whole process tree (parent + workers).

    .venv/bin/python benchmarks/peak_rss.py [--every 0.2] -- COMMAND...

Samples /proc every `--every` seconds: the sum of RSS over the tree (counts pages that forked
workers share with their parent once per process, so an upper bound) and the sum of PSS
(shared pages split between their users: the tree's real footprint). Linux only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _kb(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=float, default=0.2)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_rss = peak_pss = peak_main = procs = 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        rss = sum(_kb(Path(f"/proc/{p}/status"), "VmRSS:") for p in pids)
        pss = sum(_kb(Path(f"/proc/{p}/smaps_rollup"), "Pss:") for p in pids)
        main_rss = _kb(Path(f"/proc/{proc.pid}/status"), "VmRSS:")
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        peak_main, procs = max(peak_main, main_rss), max(procs, len(pids))
        time.sleep(args.every)
    print(f"peak_rss: exit {proc.returncode} after {time.perf_counter() - t0:.1f} s; peak over "
          f"the process tree (up to {procs} processes): PSS {peak_pss / 1e6:.2f} GB, RSS sum "
          f"{peak_rss / 1e6:.2f} GB; main process RSS {peak_main / 1e6:.2f} GB", flush=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
