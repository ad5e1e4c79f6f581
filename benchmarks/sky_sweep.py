"""Variants of the realistic sky, each trained and scored zero-shot on real frames, in one run.

    python benchmarks/sky_sweep.py [--frames F1 ...] [--keep DIR] --variant NAME 'key=value ...'

Each variant is presets/realistic.txt plus its own `key=value` overrides (what `dvc exp run
-S` takes), run as prepare + train in a temp folder (the stage scripts, as `dvc repro` runs
them), then benchmarks/zero_shot.py on the frames (without --frames, its own space and ground
groups of real frames). --keep DIR keeps each variant's folder (params, dataset, model) as
DIR/NAME. Meant for a GPU, where one variant takes a minute or two; choosing among variants by real frames is choosing on what the check measures,
so keep the frames and the ranges wide and report every variant (docs/tuning.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def apply(params: dict, line: str) -> None:
    """Set params[a][b]... from 'a.b.c=value' (value read as YAML)."""
    key, _, value = line.partition("=")
    *path, last = key.strip().split(".")
    node = params
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command, fail loudly, return its output."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", nargs="+", default=[])
    ap.add_argument("--keep", type=Path, help="keep each variant's folder as KEEP/NAME")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"),
                    required=True)
    ap.add_argument("--preset", default=str(ROOT / "presets/realistic.txt"))
    args = ap.parse_args()
    preset = [line for line in Path(args.preset).read_text().splitlines() if line.strip()]
    for name, overrides in args.variant:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep / name if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            for line in preset + overrides.split():
                apply(params, line)
            params["train"]["progress"] = False
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            t0 = time.perf_counter()
            for stage in ("prepare", "train"):
                log = run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], work)
                print(f"[{name}] {log.strip().splitlines()[-1]}", flush=True)
            print(f"[{name}] prepare + train {time.perf_counter() - t0:.0f} s", flush=True)
            scores = run([sys.executable, str(ROOT / "benchmarks/zero_shot.py"), "--model",
                          str(work / "models/model.pt"), *args.frames], ROOT)
            for line in scores.strip().splitlines():
                print(f"[{name}] {line}", flush=True)


if __name__ == "__main__":
    main()
