"""plots: history, dataset samples and example predictions + params `plots.*` -> plots/*.png."""

import sys
from pathlib import Path

from astroseg.data.dataset import load_split
from astroseg.errors import ParamsError, run_main
from astroseg.scoring.examples import load_examples
from astroseg.train.history import read_history
from astroseg.params import load_params
from astroseg.figures.plotting import plot_predictions, plot_samples, plot_training_curves

DATA = "data/dataset.h5"
HISTORY = "metrics/train_history.tsv"
PREDICTIONS = "metrics/test_predictions.h5"
OUT = Path("plots")


def main() -> None:
    cfg = load_params().plots
    history = read_history(HISTORY)
    samples = load_split(DATA, "train", limit=cfg.n_samples)
    examples = load_examples(PREDICTIONS)
    n = cfg.n_predictions
    if n > len(examples.images):
        raise ParamsError(f"plots.n_predictions = {n} but {PREDICTIONS} holds "
                          f"{len(examples.images)}; raise evaluate.n_examples")
    plot_training_curves(history, OUT / "training_curves.png", cfg.dpi)
    plot_samples(samples.images, samples.masks, OUT / "samples.png", cfg.cmap, cfg.dpi)
    plot_predictions(examples.images[:n], examples.masks[:n], examples.foreground[:n],
                     examples.labels[:n], OUT / "predictions.png", cfg.cmap, cfg.dpi)
    print(f"plots: wrote training_curves.png, samples.png, predictions.png to {OUT}/")


if __name__ == "__main__":
    sys.exit(run_main(main))
