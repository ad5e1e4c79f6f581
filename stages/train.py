"""train: data/dataset.h5 + params `model.*`, `loss.*`, `train.*` -> models/model.pt + history."""

import sys
import time

import torch

from astroseg.models.checkpoint import save_checkpoint
from astroseg.data.dataset import load_split, read_attrs
from astroseg.device import resolve_device, resolve_precision
from astroseg.errors import ParamsError, run_main
from astroseg.train.history import EpochRecord, write_history
from astroseg.models import build_model
from astroseg.params import load_params
from astroseg.train.loop import train_model

DATA = "data/dataset.h5"
MODEL = "models/model.pt"
HISTORY = "metrics/train_history.tsv"


def main() -> None:
    params = load_params()
    cfg = params.train
    device = resolve_device(cfg.device, "train.device")
    attrs = read_attrs(DATA)
    class_names = attrs.get("class_names", ["background", "source"])
    k = params.model.num_classes
    if k != 1 and k != len(class_names):
        raise ParamsError(f"model.num_classes = {k}: {DATA} has {len(class_names)} classes "
                          f"{class_names}; use 1 (binary) or {len(class_names)}")
    train, val = load_split(DATA, "train"), load_split(DATA, "val")
    config = {**params.model.config(), "image_size": list(train.images.shape[1:])}

    torch.manual_seed(cfg.seed)
    try:
        model = build_model(config)
    except ValueError as exc:
        raise ParamsError(f"model.{config['name']}: {exc}") from None
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train: {config['name']} with {n_params / 1e6:.2f} M parameters on {device} "
          f"({resolve_precision(cfg.precision, device)}); {len(train)} train / {len(val)} val "
          "images")

    t0 = time.perf_counter()

    def report(r: EpochRecord) -> None:
        print(f"epoch {r.epoch:3d} | train loss {r.train_loss:.4f} | val loss {r.val_loss:.4f} "
              f"| IoU {r.val_iou:.4f} | Dice {r.val_dice:.4f} | lr {r.lr:.2e} "
              f"| {time.perf_counter() - t0:6.1f} s", flush=True)

    result = train_model(model, train, val, cfg, params.loss, device, on_epoch=report)
    model.load_state_dict(result.best_state)
    best = result.history[result.best_epoch - 1]
    meta = {"normalization": attrs.get("normalization", "minmax"), "class_names": class_names,
            "epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "val_iou": best.val_iou, "precision": result.precision}
    if attrs.get("source") == "fits":
        # The HDUs read in training: `astroseg predict` reads a FITS image the same way.
        fits_params = attrs.get("params", {}).get("fits", {})
        meta["fits"] = {k: fits_params.get(k, "") for k in ("hdu", "bad_pixel_hdu", "bad_pixels")}
    save_checkpoint(MODEL, model, config, meta)
    write_history(HISTORY, result.history)
    print(f"train: kept epoch {result.best_epoch} (val IoU {best.val_iou:.4f}); wrote {MODEL} "
          f"and {HISTORY} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(run_main(main))
