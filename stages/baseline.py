"""baseline: photutils segmentation tuned on val, scored on test -> metrics/baseline.json + CSV."""

import sys

from astroseg.atomic import write_csv, write_json
from astroseg.errors import run_main
from astroseg.params import load_params
from astroseg.scoring.baseline import score, split_blocks, tune

DATA = "data/dataset.h5"
METRICS = "metrics/baseline.json"
COMPLETENESS = "metrics/baseline_completeness.csv"


def main() -> None:
    cfg = load_params().baseline
    val = ((images, masks, valid)
           for images, masks, _, valid in split_blocks(DATA, "val", cfg.max_memory_gb))
    tuning = tune(val, cfg)
    scores = score(split_blocks(DATA, "test", cfg.max_memory_gb), tuning, cfg)
    metrics = {**scores.metrics(), "deblend": cfg.deblend, "tuned": tuning.record()}
    write_json(METRICS, metrics)
    write_csv(COMPLETENESS, scores.objects.completeness_rows(),
              ["snr_lo", "snr_hi", "snr", "n", "found", "completeness"])
    objects = metrics["objects"]
    print(f"baseline: nsigma {tuning.nsigma:g}, npixels {tuning.npixels} (val IoU "
          f"{tuning.val_iou:.4f}) | test IoU {metrics['iou']:.4f} | Dice {metrics['dice']:.4f} | "
          f"completeness {objects['completeness']:.4f} | purity {objects['purity']:.4f} "
          f"over {metrics['n_images']} images -> {METRICS}")


if __name__ == "__main__":
    sys.exit(run_main(main))
