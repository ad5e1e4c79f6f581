"""evaluate: models/model.pt on the test split -> metrics/metrics.json + example predictions."""

import sys

from astroseg.atomic import write_json
from astroseg.models.checkpoint import load_checkpoint
from astroseg.data.dataset import load_split, read_attrs, read_meta, split_nbytes
from astroseg.data.stream import sequential_blocks, streamed
from astroseg.device import resolve_device
from astroseg.errors import DataError, run_main
from astroseg.scoring.evaluation import evaluate, evaluate_stream
from astroseg.scoring.examples import Examples, save_examples
from astroseg.params import load_params

DATA = "data/dataset.h5"
MODEL = "models/model.pt"
METRICS = "metrics/metrics.json"
PREDICTIONS = "metrics/test_predictions.h5"


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
    if split_nbytes(DATA, "test") > cfg.max_memory_gb * 1e9:
        # Larger than evaluate.max_memory_gb: stream it in file order, block by block.
        stream = streamed(DATA, "test", cfg.max_memory_gb, cfg.loader_workers)
        blocks = sequential_blocks(stream, 0, stream.n, pin=device.type == "cuda")
        result = evaluate_stream(model, blocks, params.loss, device, cfg.batch_size,
                                 cfg.threshold, keep=cfg.n_examples, tta=cfg.tta)
        test = load_split(DATA, "test", limit=cfg.n_examples)   # the examples' inputs
        test.meta = read_meta(DATA, "test")
        n_images = stream.n
    else:
        test = load_split(DATA, "test")
        result = evaluate(model, test, params.loss, device, cfg.batch_size, cfg.threshold,
                          keep=cfg.n_examples, tta=cfg.tta)
        n_images = len(test)
    metrics = {**result.summary(), "pooled": result.pooled(), "n_images": n_images,
               "threshold": cfg.threshold, "tta": cfg.tta}
    class_names = checkpoint["meta"].get("class_names", ["background", "source"])
    if len(class_names) > 2:
        metrics["per_class"] = result.per_class(class_names)
    spiral = test.meta.get("has_spiral")
    if spiral is not None and spiral.any():
        # Unmasked spiral ridges are where thresholding and weak models fail: report them apart.
        metrics["spiral"] = {**result.summary(spiral), "pooled": result.pooled(spiral),
                             "n_images": int(spiral.sum())}
    write_json(METRICS, metrics)

    n = len(result.labels)
    save_examples(PREDICTIONS, Examples(test.images[:n], test.masks[:n], result.foreground,
                                        result.labels))
    print(f"evaluate: test IoU {metrics['iou']:.4f} | Dice {metrics['dice']:.4f} | "
          f"precision {metrics['precision']:.4f} | recall {metrics['recall']:.4f} "
          f"over {n_images} images -> {METRICS}")


if __name__ == "__main__":
    sys.exit(run_main(main))
