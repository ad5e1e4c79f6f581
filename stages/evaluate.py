"""evaluate: models/model.pt on the test split -> metrics (pixels, objects, calibration,
uncertainty), DVC plot tables, example predictions, and the temperature beside the model."""

import sys

import torch

from astroseg.atomic import write_csv, write_json
from astroseg.data.dataset import load_split, read_attrs, read_meta, split_nbytes, split_sizes
from astroseg.data.stream import sequential_blocks, streamed
from astroseg.device import resolve_device
from astroseg.errors import DataError, run_main
from astroseg.models.checkpoint import file_sha256, load_checkpoint
from astroseg.params import EvaluateParams, load_params
from astroseg.scoring.calibration import Calibration, fit_temperature, nll, save_calibration
from astroseg.scoring.evaluation import as_tensors, evaluate, evaluate_stream, split_logits
from astroseg.scoring.examples import Examples, save_examples
from astroseg.scoring.science import Science
from astroseg.scoring.uncertainty import has_dropout

DATA = "data/dataset.h5"
MODEL = "models/model.pt"
METRICS = "metrics/metrics.json"
PREDICTIONS = "metrics/test_predictions.h5"
COMPLETENESS = "metrics/completeness.csv"
RELIABILITY = "metrics/reliability.csv"
PR_CURVE = "metrics/pr_curve.csv"
CONFUSION = "metrics/confusion.json"
CALIBRATION_PIXELS = 8_000_000   # validation pixels the temperature is fitted on, at most


def calibrate(model: torch.nn.Module, cfg: EvaluateParams, device: torch.device) -> Calibration:
    """Fit the temperature on (the first images of) the validation split, or record T = 1."""
    sha = file_sha256(MODEL)
    if not cfg.calibrate:
        return Calibration(1.0, False, sha)
    height, width = split_sizes(DATA)["val"][-2:]
    val = load_split(DATA, "val", limit=max(1, CALIBRATION_PIXELS // (height * width)))
    images, masks = as_tensors(val)
    logits = split_logits(model, images, device, cfg.batch_size, cfg.tta)
    t = fit_temperature(logits, masks)
    return Calibration(t, True, sha, nll(logits, masks, 1.0), nll(logits, masks, t))


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    device = resolve_device(cfg.device, "evaluate.device")
    model, checkpoint = load_checkpoint(MODEL, device)
    attrs = read_attrs(DATA)
    trained_on = checkpoint["meta"].get("normalization", "minmax")
    if attrs.get("normalization", "minmax") != trained_on:
        raise DataError(f"{DATA} is normalised with '{attrs.get('normalization')}' "
                        f"but {MODEL} was trained on '{trained_on}': rerun the train stage")
    if attrs.get("bands") != checkpoint["meta"].get("bands"):
        raise DataError(f"{DATA} has bands {attrs.get('bands') or 'one band'} but {MODEL} was "
                        f"trained on {checkpoint['meta'].get('bands') or 'one band'}: rerun the "
                        "train stage")
    cal = calibrate(model, cfg, device)
    if cfg.mc_samples and not has_dropout(model):
        print(f"evaluate: evaluate.mc_samples = {cfg.mc_samples} but {MODEL} has no dropout or "
              "drop-path: every pass agrees and the std is 0 (set model.segformer.dropout)")
    science = Science(meta=read_meta(DATA, "test"), mc_samples=cfg.mc_samples)
    torch.manual_seed(0)   # the MC-dropout masks: a rerun gives the same metrics
    run = dict(threshold=cfg.threshold, keep=cfg.n_examples, tta=cfg.tta,
               temperature=cal.temperature, science=science)
    if split_nbytes(DATA, "test") > cfg.max_memory_gb * 1e9:
        # Larger than evaluate.max_memory_gb: stream it in file order, block by block.
        stream = streamed(DATA, "test", cfg.max_memory_gb, cfg.loader_workers)
        blocks = sequential_blocks(stream, 0, stream.n, pin=device.type == "cuda")
        result = evaluate_stream(model, blocks, params.loss, device, cfg.batch_size, **run)
        test = load_split(DATA, "test", limit=cfg.n_examples)   # the examples' inputs
        test.meta = science.meta
        n_images = stream.n
    else:
        test = load_split(DATA, "test")
        result = evaluate(model, test, params.loss, device, cfg.batch_size, **run)
        n_images = len(test)
    metrics = {**result.summary(), "pooled": result.pooled(), "n_images": n_images,
               "threshold": cfg.threshold, "tta": cfg.tta,
               "objects": science.objects.summary(),
               "calibration": {"ece": science.calibrated.ece(), "ece_uncalibrated":
                               science.raw.ece(), "temperature": cal.temperature,
                               "calibrated": cal.calibrated, "val_nll_before": cal.val_nll_before,
                               "val_nll_after": cal.val_nll_after}}
    if science.mc_samples:
        metrics["uncertainty"] = science.uncertainty()
    class_names = checkpoint["meta"].get("class_names", ["background", "source"])
    if len(class_names) > 2:
        metrics["per_class"] = result.per_class(class_names)
    spiral = test.meta.get("has_spiral")
    if spiral is not None and spiral.any():
        # Unmasked spiral ridges are where thresholding and weak models fail: report them apart.
        metrics["spiral"] = {**result.summary(spiral), "pooled": result.pooled(spiral),
                             "n_images": int(spiral.sum())}
    save_calibration(MODEL, cal)
    write_json(METRICS, metrics)
    write_csv(COMPLETENESS, science.objects.completeness_rows(),
              ["snr_lo", "snr_hi", "snr", "n", "found", "completeness"])
    write_csv(RELIABILITY, science.calibrated.reliability_rows(),
              ["bin_lo", "bin_hi", "confidence", "frequency", "count"])
    write_csv(PR_CURVE, science.foreground.pr_rows(), ["threshold", "precision", "recall"])
    write_json(CONFUSION, {"classes": class_names, "matrix": result.confusion.tolist()})

    n = len(result.labels)
    save_examples(PREDICTIONS, Examples(test.images[:n], test.targets()[:n], result.foreground,
                                        result.labels, result.mc_mean, result.mc_std))
    objects, unc = metrics["objects"], metrics.get("uncertainty", {})
    print(f"evaluate: test IoU {metrics['iou']:.4f} | Dice {metrics['dice']:.4f} | "
          f"completeness {objects['completeness']:.4f} | purity {objects['purity']:.4f} | "
          f"ECE {metrics['calibration']['ece']:.4f} (T = {cal.temperature:.3f})"
          + (f" | MC std wrong/right {unc['ratio']:.2f}" if unc.get("ratio") else "")
          + f" over {n_images} images -> {METRICS}")


if __name__ == "__main__":
    sys.exit(run_main(main))
