"""Model checkpoints: state_dict + model config + metadata, loadable with weights_only=True."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astroseg.atomic import atomic_output
from astroseg.errors import DataError
from astroseg.models import build_model
from astroseg.models.segformer import fold_decoder_biases

FORMAT_VERSION = 1


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (provenance of the model that made an output)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict[str, Any],
                    meta: dict[str, Any]) -> None:
    """Atomically save weights (on CPU), the config that rebuilds the model, and metadata."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format_version": FORMAT_VERSION, "model_config": config, "state_dict": state,
               "meta": meta}
    # Save through a file object: given a path, torch names the archive's root folder after the
    # (random) temp file name, and the same weights would give different bytes every run.
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode on `device`; return it and the payload."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found (run the train stage first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: not a readable checkpoint, truncated or corrupt? "
                        f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(f"{path}: checkpoint format {found!r}, expected {FORMAT_VERSION}")
    model = build_model(payload["model_config"])
    state = payload["state_dict"]
    if payload["model_config"].get("name") == "segformer":
        state = fold_decoder_biases(state)
    model.load_state_dict(state)
    # What the model was trained on (normalisation, classes) travels with it, so `predict` can
    # prepare raw inputs the same way.
    model.astroseg_meta = dict(payload.get("meta", {}))
    return model.to(device).eval(), payload
