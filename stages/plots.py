"""plots: figures of the history, data, predictions and scores, and one offline HTML report.

params `plots.*` (and the whole params file, shown in the report) -> plots/*.png, plots/report.html.
"""

import sys
from pathlib import Path

from astroseg.data.dataset import load_split
from astroseg.errors import ParamsError, run_main
from astroseg.figures.curves import (COMPLETENESS_COLUMNS, PR_COLUMNS, RELIABILITY_COLUMNS,
                                     plot_completeness, plot_confusion, plot_pr_curve,
                                     plot_reliability)
from astroseg.figures.inputs import number, read_json, read_table
from astroseg.figures.plotting import (plot_predictions, plot_samples, plot_training_curves,
                                       plot_uncertainty)
from astroseg.figures.report import write_report
from astroseg.params import dump_params, load_params
from astroseg.scoring.examples import load_examples
from astroseg.train.history import read_history

DATA = "data/dataset.h5"
HISTORY = "metrics/train_history.tsv"
PREDICTIONS = "metrics/test_predictions.h5"
METRICS = "metrics/metrics.json"
PR_CURVE = "metrics/pr_curve.csv"
RELIABILITY = "metrics/reliability.csv"
COMPLETENESS = "metrics/completeness.csv"
CONFUSION = "metrics/confusion.json"
BASELINE = "metrics/baseline.json"
BASELINE_COMPLETENESS = "metrics/baseline_completeness.csv"
OUT = Path("plots")

FIGURES = (   # (file, caption in the report)
    ("training_curves.png", "loss, validation IoU and Dice per epoch"),
    ("samples.png", "training images (ZScale, asinh) with their masks outlined"),
    ("predictions.png", "test examples: truth and prediction outlined, errors "
                        "(FP red, FN blue, TP grey), source probability"),
    ("pr_curve.png", "pixel precision-recall over thresholds, operating point, baseline"),
    ("reliability.png", "calibration of the source probability"),
    ("completeness.png", "object completeness against S/N, model and baseline"),
    ("uncertainty.png", "MC dropout mean and std of the source probability"),
    ("confusion.png", "pixel confusion matrix of the classes, test split"),
)


def main() -> None:
    params = load_params()
    cfg = params.plots
    history = read_history(HISTORY)
    samples = load_split(DATA, "train", limit=cfg.n_samples)
    examples = load_examples(PREDICTIONS)
    n = cfg.n_predictions
    if n > len(examples.images):
        raise ParamsError(f"plots.n_predictions = {n} but {PREDICTIONS} holds "
                          f"{len(examples.images)}; raise evaluate.n_examples")
    metrics = read_json(METRICS, made_by="evaluate")
    baseline = read_json(BASELINE, made_by="baseline")
    confusion = read_json(CONFUSION, made_by="evaluate")
    curve = read_table(PR_CURVE, PR_COLUMNS, made_by="evaluate")
    reliability = read_table(RELIABILITY, RELIABILITY_COLUMNS, made_by="evaluate")
    completeness = read_table(COMPLETENESS, COMPLETENESS_COLUMNS, made_by="evaluate")
    baseline_completeness = read_table(BASELINE_COMPLETENESS, COMPLETENESS_COLUMNS,
                                       made_by="baseline")
    # The PR curve counts pixels over the whole split: compare the baseline's pooled scores.
    baseline_point = tuple(number(baseline, "pooled", key) for key in ("precision", "recall"))

    plot_training_curves(history, OUT / "training_curves.png", cfg.dpi)
    plot_samples(samples.images, samples.masks, OUT / "samples.png", cfg.cmap, cfg.dpi)
    plot_predictions(examples.images[:n], examples.masks[:n], examples.foreground[:n],
                     examples.labels[:n], OUT / "predictions.png", cfg.cmap, cfg.dpi)
    plot_pr_curve(curve, number(metrics, "threshold"),
                  None if None in baseline_point else baseline_point,
                  OUT / "pr_curve.png", cfg.dpi)
    plot_reliability(reliability, {key: number(metrics, "calibration", key) for key in
                                   ("ece", "ece_uncalibrated", "temperature")},
                     OUT / "reliability.png", cfg.dpi)
    plot_completeness(completeness, baseline_completeness, OUT / "completeness.png", cfg.dpi)
    plot_uncertainty(examples.images[:n], examples.masks[:n], examples.labels[:n],
                     # None unless evaluate ran MC dropout (evaluate.mc_samples >= 2)
                     None if examples.mc_mean is None else examples.mc_mean[:n],
                     None if examples.mc_std is None else examples.mc_std[:n],
                     OUT / "uncertainty.png", cfg.cmap, cfg.dpi)
    plot_confusion(confusion.get("matrix"), confusion.get("classes"), OUT / "confusion.png",
                   cfg.dpi)
    write_report(OUT / "report.html", [(caption, OUT / name) for name, caption in FIGURES],
                 metrics, baseline, completeness, baseline_completeness, dump_params(params))
    print(f"plots: wrote {len(FIGURES)} figures and report.html to {OUT}/")


if __name__ == "__main__":
    sys.exit(run_main(main))
