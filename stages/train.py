"""train: data/dataset.h5 + params `model.*`, `loss.*`, `train.*` -> models/model.pt + history.

Runs as one process, or as every rank of a torchrun job (`train.nproc > 1` starts torchrun
itself). The training state in .astroseg/ lets a rerun resume an interrupted run.
"""

import sys
import time
from pathlib import Path

import torch

from astroseg.data.dataset import Split, load_split, read_attrs, split_nbytes, split_sizes
from astroseg.data.stream import StreamedSplit, streamed
from astroseg.device import resolve_precision
from astroseg.errors import ParamsError, run_main
from astroseg.models import build_model
from astroseg.models.checkpoint import file_sha256, init_from, save_checkpoint
from astroseg.params import Params, TrainParams, load_params, to_dict
from astroseg.train import distributed
from astroseg.train.history import EpochRecord, write_history
from astroseg.train.loop import train_model
from astroseg.train.resume import (Checkpointer, Interrupted, fingerprint, package_code,
                                   stop_signals)

DATA = "data/dataset.h5"
MODEL = "models/model.pt"
HISTORY = "metrics/train_history.tsv"
STATE = ".astroseg/train_state.pt"
# Params that change how a run is watched or spread over processes, not what it computes.
NOT_IN_RESULT = ("progress", "log_every", "checkpoint_minutes", "nproc", "data_on_device",
                 "loader_workers")


def _checked_model(params: Params, attrs: dict, image_shape: tuple[int, ...],
                   bands: int) -> tuple[torch.nn.Module, dict]:
    """The model the params describe, checked against the dataset's classes and image shape;
    its input channels are the dataset's bands."""
    class_names = attrs.get("class_names", ["background", "source"])
    k = params.model.num_classes
    if k != len(class_names) and not (k == 1 and len(class_names) == 2):
        raise ParamsError(f"model.num_classes = {k}: {DATA} has {len(class_names)} classes "
                          f"{class_names}; use {len(class_names)}"
                          + (" or 1 (binary)" if len(class_names) == 2 else ""))
    config = {**params.model.config(), "image_size": list(image_shape), "in_channels": bands}
    torch.manual_seed(params.train.seed)
    try:
        return build_model(config), config
    except ValueError as exc:
        raise ParamsError(f"model.{config['name']}: {exc}") from None


def _split(name: str, sizes: dict[str, tuple[int, ...]], cfg: TrainParams) -> Split | StreamedSplit:
    """The split in memory, or streamed from DATA if it is larger than train.max_memory_gb."""
    if name in sizes and split_nbytes(DATA, name) > cfg.max_memory_gb * 1e9:
        return streamed(DATA, name, cfg.max_memory_gb, cfg.loader_workers)
    return load_split(DATA, name)


def _check_ranks(world: int, batch_size: int, n_val: int) -> None:
    """Every rank needs a share of each batch and of the validation split."""
    if world > min(batch_size, n_val):
        raise ParamsError(f"{world} ranks need train.batch_size >= {world} (it is {batch_size}) "
                          f"and at least {world} validation images ({DATA} has {n_val})")


def main() -> None:
    params = load_params()
    cfg = params.train
    attrs = read_attrs(DATA)
    first = load_split(DATA, "train", limit=1)
    # before any rank starts: errors once
    model, config = _checked_model(params, attrs, first.shape, first.channels)
    init = {}
    if cfg.init_from:    # fine-tuning: every rank loads the same weights
        if Path(cfg.init_from).resolve() == Path(MODEL).resolve():
            raise ParamsError(f"train.init_from = {cfg.init_from}: is this stage's own output, "
                              "which every run replaces; copy it to a name of its own first "
                              "(README \"Fine-tuning from the synthetic sky\")")
        start = init_from(model, config, cfg.init_from)
        if start["meta"].get("bands") != attrs.get("bands"):
            raise ParamsError(f"train.init_from = {cfg.init_from}: trained on bands "
                              f"{start['meta'].get('bands') or 'one band'}, {DATA} has "
                              f"{attrs.get('bands') or 'one band'}; the bands (and their order) "
                              "must be the same")
        init = {"path": cfg.init_from, "sha256": file_sha256(cfg.init_from),
                "normalization": start["meta"].get("normalization", "minmax")}
    if cfg.nproc > 1 and not distributed.launched_by_torchrun():
        _check_ranks(cfg.nproc, cfg.batch_size, split_sizes(DATA).get("val", (0,))[0])
        distributed.relaunch_under_torchrun(cfg.nproc, __file__)    # does not return
    dist, device = distributed.init(cfg.device)
    say = print if dist.main else (lambda *a, **k: None)
    try:
        sizes = split_sizes(DATA)
        train, val = (_split(name, sizes, cfg) for name in ("train", "val"))
        _check_ranks(dist.world, cfg.batch_size, len(val))
        for s in (train, val):
            if isinstance(s, StreamedSplit):
                say(f"train: streaming {s.split} ({split_nbytes(DATA, s.split) / 1e9:.2f} GB > "
                    f"train.max_memory_gb = {cfg.max_memory_gb:g}) from {DATA} in shuffled "
                    f"blocks of {s.block_rows}, buffers of {s.buffer_rows} images, "
                    f"{s.workers} loader workers")
        if dist.world > 1:   # DDP gave every rank rank 0's weights; decorrelate their dropout
            torch.manual_seed(cfg.seed + dist.rank)
        n_params = sum(p.numel() for p in model.parameters())
        ranks = f" x {dist.world} ranks" if dist.world > 1 else ""
        say(f"train: {config['name']} with {n_params / 1e6:.2f} M parameters on {device}{ranks} "
            f"({resolve_precision(cfg.precision, device)}); {len(train)} train / {len(val)} val "
            f"images; peak lr {cfg.peak_lr():.3g} at batch {cfg.batch_size}")
        if init:
            say(f"train: starting from the weights of {init['path']} (trained on "
                f"'{init['normalization']}'-normalised data; this data is "
                f"'{attrs.get('normalization', 'minmax')}')")
        if cfg.compile != "false" and device.type != "cuda":
            say("train: train.compile applies on CUDA only; training eagerly on the CPU")
        left = len(train) % cfg.batch_size
        if 0 < left < dist.world:
            say(f"train: the last {left} image(s) of each epoch's shuffled order are skipped: "
                f"a global batch needs one image per rank (train.batch_size = {cfg.batch_size})")
        recorded = to_dict(params)
        recorded["train"] = {k: v for k, v in recorded["train"].items() if k not in NOT_IN_RESULT}
        # The starting weights' hash too: a resumed state must have begun from the same file.
        key = fingerprint({**{s: recorded[s] for s in ("model", "loss", "train")}, "init": init},
                          DATA, attrs, package_code(__file__))
        t0 = time.perf_counter()

        def report(r: EpochRecord) -> None:
            say(f"epoch {r.epoch:3d} | train loss {r.train_loss:.4f} | val loss {r.val_loss:.4f} "
                f"| IoU {r.val_iou:.4f} | Dice {r.val_dice:.4f} | lr {r.lr:.2e} "
                f"| {time.perf_counter() - t0:6.1f} s", flush=True)

        with stop_signals() as stop:
            checkpointer = Checkpointer(Path(STATE), key, cfg.checkpoint_minutes * 60, stop)
            try:
                result = train_model(model, train, val, cfg, params.loss, device,
                                     on_epoch=report, dist=dist, checkpointer=checkpointer,
                                     on_resume=lambda why: say(f"train: {why}", flush=True))
            except Interrupted:
                if dist.main:
                    raise
                sys.exit(2)      # rank 0 says that the state is saved
        if not dist.main:
            return
        model.load_state_dict(result.best_state)
        best = result.history[result.best_epoch - 1]
        meta = {"normalization": attrs.get("normalization", "minmax"),
                "class_names": attrs.get("class_names", ["background", "source"]),
                **({"bands": attrs["bands"]} if "bands" in attrs else {}),
                "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                "val_iou": best.val_iou, "precision": result.precision,
                **({"init_from": init} if init else {})}
        if attrs.get("source") == "fits":
            # The HDUs read in training: `astroseg predict` reads a FITS image the same way.
            fits_params = attrs.get("params", {}).get("fits", {})
            meta["fits"] = {k: fits_params.get(k, "") for k in ("hdu", "bad_pixel_hdu", "bad_pixels")}
        save_checkpoint(MODEL, model, config, meta)
        write_history(HISTORY, result.history)
        checkpointer.remove()
        say(f"train: kept epoch {result.best_epoch} (val IoU {best.val_iou:.4f}); wrote {MODEL} "
            f"and {HISTORY} in {time.perf_counter() - t0:.1f} s")
    finally:
        distributed.shutdown(dist)


if __name__ == "__main__":
    sys.exit(run_main(main))
