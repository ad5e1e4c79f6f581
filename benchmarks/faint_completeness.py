"""Completeness against S/N on a fainter sky: the reference model against the photutils baseline.

    .venv/bin/python benchmarks/faint_completeness.py [--peak 0.03 0.4] [--images 400]

The default sky's galaxies all have S/N 35-75, where the model and the baseline both find every
one. This renders a test split (and, for the baseline's tuning, a val split) with
data.galaxies.peak drawn from --peak instead (S/N ~1.5-20 at the default noise), everything else
as params.yaml says, and scores models/model.pt (with its temperature and evaluate.tta) and the
baseline tuned on the faint val split (over a lower --nsigma grid than params.yaml's), both with
the evaluate stage's object matching. Run it
from the project folder after `dvc repro`. Not a speed benchmark: an accuracy measurement that
needs no change to the pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from astroseg.data.synthetic import render
from astroseg.models.checkpoint import file_sha256, load_checkpoint
from astroseg.params import load_params
from astroseg.scoring.baseline import BaselineScores, tune
from astroseg.scoring.calibration import load_temperature
from astroseg.scoring.evaluation import evaluate_tensors
from astroseg.scoring.science import Science

MODEL = "models/model.pt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak", type=float, nargs=2, default=(0.03, 0.4))
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--nsigma", type=float, nargs="+", default=(0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
                    help="the baseline's threshold grid: lower than params.yaml's for faint sources")
    args = ap.parse_args()
    params = load_params()
    galaxies = dataclasses.replace(params.data.galaxies, peak=tuple(args.peak))
    p = dataclasses.replace(params.data, galaxies=galaxies)
    test, val = render(p, "test", range(args.images)), render(p, "val", range(args.images // 2))

    device = torch.device("cpu")
    model, _ = load_checkpoint(MODEL, device)
    temperature = load_temperature(MODEL, file_sha256(MODEL)) or 1.0
    model_science = Science(meta=test.objects)
    result = evaluate_tensors(model, torch.from_numpy(test.images).unsqueeze(1),
                              torch.from_numpy(test.masks).unsqueeze(1), params.loss, device,
                              params.evaluate.batch_size, params.evaluate.threshold, 0,
                              params.evaluate.tta, temperature, model_science)
    cfg = dataclasses.replace(params.baseline, nsigma=tuple(args.nsigma))
    tuning = tune([(val.images, val.masks)], cfg)
    base = BaselineScores()
    base.add(test.images, test.masks, test.objects, tuning.nsigma, tuning.npixels, cfg)

    print(f"peak {args.peak[0]:g}-{args.peak[1]:g}, {args.images} test images; baseline tuned "
          f"on {args.images // 2} faint val images: nsigma {tuning.nsigma:g}, npixels "
          f"{tuning.npixels} (val IoU {tuning.val_iou:.4f})")
    print(f"pixel IoU: model {result.summary()['iou']:.4f}, baseline {base.metrics()['iou']:.4f}")
    for name, objects in (("model", model_science.objects), ("baseline", base.objects)):
        s = objects.summary()
        print(f"{name:9s} completeness {s['completeness']:.3f} purity {s['purity']:.3f} "
              f"merges {s['merges']} (in the truth {s['merges_in_truth']}) splits {s['splits']} "
              f"({s['n_true']} true, {s['n_pred']} predicted)")
    print("S/N bin    n  model  baseline")
    for m, b in zip(model_science.objects.completeness_rows(), base.objects.completeness_rows()):
        print(f"{m['snr_lo']:g}-{m['snr_hi']:g}".ljust(9)
              + f"{m['n']:4d}  {m['completeness']:.3f}  {b['completeness']:.3f}")


if __name__ == "__main__":
    main()
