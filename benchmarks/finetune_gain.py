"""Fine-tuning gain: a few FITS fields trained from the synthetic-sky model vs from scratch.

    .venv/bin/python benchmarks/finetune_gain.py [--start models/model.pt] [--fields 4]
        [--size 512] [--seed 2024] [--epochs 3 11] [--lr 0.003] [--workdir DIR]

Writes `--fields` example fields (`astroseg make-sky`'s FITS: WCS, BLANK pixels, true masks)
into a throw-away project, splits them by whole field (4 fields: 2 train, 1 val, 1 test, so
the test field is never seen in training), and reports the test metrics of
  - zero-shot: the `--start` checkpoint (the synthetic-sky model of the default params,
    `dvc repro`'s models/model.pt) evaluated with no training on these fields;
  - scratch:   train.init_from "" (random weights), for each of `--epochs`;
  - finetune:  train.init_from = a copy of `--start`, the same epochs and lr schedule.
Everything else is params.yaml's (model, loss, lr schedule, augmentation; `--lr` sets the
peak lr of both trained arms), with data.normalize minmax
(what the synthetic model was trained on), tiles of 128 every 96 pixels, CPU, no MC dropout.
The stages run as subprocesses, as `dvc repro` runs them. An accuracy measurement, not a speed
benchmark: the seconds are whole train-stage runs, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from astroseg.data.sky import write_sky

ROOT = Path(__file__).resolve().parents[1]


def write_params(project: Path, epochs: int, init_from: str, lr: float | None = None) -> None:
    """params.yaml of ROOT with the FITS source, CPU and the arm's epochs and start."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="fits", normalize="minmax")
    params["data"]["fits"].update(images="raw/images/*.fits", masks="raw/masks/*.fits",
                                  split="field", tile=128, stride=96,
                                  val_fraction=0.25, test_fraction=0.25)
    params["train"].update(epochs=epochs, init_from=init_from, device="cpu", progress=False)
    if lr is not None:
        params["train"]["lr"] = lr
    params["evaluate"].update(device="cpu", mc_samples=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(project: Path, name: str) -> tuple[float, str]:
    """Run stages/NAME.py in the project; return its seconds and its output's last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=project,
                         env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode:
        sys.exit(f"{name} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    lines = run.stdout.strip().splitlines()
    return seconds, lines[-1] if lines else ""


def arm(project: Path, label: str, epochs: int, init_from: str, lr: float | None) -> dict:
    """Train (unless epochs is 0: evaluate models/model.pt as it is) and evaluate one arm."""
    write_params(project, max(epochs, 1), init_from, lr)
    seconds, kept = 0.0, "no training"
    if epochs:
        seconds, kept = stage(project, "train")
    _, evaluated = stage(project, "evaluate")
    print(f"  {label} ({epochs} epochs): {kept}\n    {evaluated}", flush=True)
    m = json.loads((project / "metrics" / "metrics.json").read_text())
    shutil.copy(project / "metrics" / "metrics.json", project / "results" / f"{label}_{epochs}.json")
    return {"arm": label, "epochs": epochs, "seconds": seconds, "iou": m["iou"],
            "dice": m["dice"], "completeness": m["objects"]["completeness"],
            "purity": m["objects"]["purity"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start", type=Path, default=ROOT / "models" / "model.pt",
                    help="synthetic-sky checkpoint to fine-tune (default params' architecture)")
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2024, help="make-sky seed (the tests use 0-5)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[3, 11])
    ap.add_argument("--lr", type=float, help="peak lr of both arms (default: params.yaml's)")
    ap.add_argument("--workdir", type=Path, help="keep the project here (default: a temp dir)")
    args = ap.parse_args()
    if not args.start.is_file():
        sys.exit(f"{args.start}: no checkpoint; run `dvc repro train` first or give --start")

    project = args.workdir or Path(tempfile.mkdtemp(prefix="finetune_gain_"))
    (project / "pretrained").mkdir(parents=True, exist_ok=True)
    (project / "results").mkdir(exist_ok=True)
    start = project / "pretrained" / "synthetic.pt"
    shutil.copy(args.start, start)
    write_sky(project / "raw", args.fields, args.size, args.seed, overwrite=True)
    write_params(project, 1, "")
    print(f"project {project}\n  {stage(project, 'prepare')[1]}", flush=True)

    (project / "models").mkdir(exist_ok=True)
    shutil.copy(start, project / "models" / "model.pt")
    rows = [arm(project, "zero-shot", 0, "", None)]
    for epochs in args.epochs:
        rows += [arm(project, "scratch", epochs, "", args.lr),
                 arm(project, "finetune", epochs, "pretrained/synthetic.pt", args.lr)]

    print(f"\n{args.fields} fields of {args.size}x{args.size} (make-sky seed {args.seed}), "
          f"split by field; test = the held-out field's tiles; peak lr "
          f"{args.lr or yaml.safe_load((ROOT / 'params.yaml').read_text())['train']['lr']:g}")
    print("arm         epochs  train s  test IoU   Dice  completeness  purity")
    for r in rows:
        print(f"{r['arm']:10s} {r['epochs']:7d} {r['seconds']:8.1f} {r['iou']:9.4f} "
              f"{r['dice']:6.4f} {r['completeness']:13.3f} {r['purity']:7.3f}")
    if not args.workdir:
        shutil.rmtree(project)


if __name__ == "__main__":
    main()
