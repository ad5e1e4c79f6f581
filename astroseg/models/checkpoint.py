"""Model checkpoints: state_dict + model config + metadata, loadable with weights_only=True."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from astroseg.atomic import atomic_output
from astroseg.errors import DataError, missing_output
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


def lock_mismatch(path: str | os.PathLike) -> str | None:
    """A warning if `path` is an output that a dvc.lock above it records with another md5 (the
    model was replaced or edited outside DVC), else None."""
    path = Path(path)
    if not path.is_file():
        return None
    full = path.resolve()
    lock = next((d / "dvc.lock" for d in full.parents if (d / "dvc.lock").is_file()), None)
    if lock is None:
        return None
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
        rel = full.relative_to(lock.parent).as_posix()
        recorded = [out.get("md5") for stage in stages.values() for out in stage.get("outs", [])
                    if out.get("path") == rel]
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None   # a lock we cannot read says nothing about this file
    if not recorded or not recorded[0]:
        return None
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() == recorded[0]:
        return None
    return (f"{path}: md5 {digest.hexdigest()} is not the {recorded[0]} that {lock} records: "
            f"the model was changed outside DVC (`dvc status` shows it; `dvc checkout {rel}` "
            "restores the recorded one)")


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
    payload = read_checkpoint(path)
    config = payload["model_config"]
    try:
        model = build_model(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: its model_config does not build a model ({exc})") from None
    try:
        state = _state(payload)
    except (KeyError, RuntimeError) as exc:   # an edited pre-fold state_dict
        raise DataError(f"{path}: the checkpoint's weights are inconsistent ({exc})") from None
    check_state(model, state, f"{path}:")
    model.load_state_dict(state)
    # What the model was trained on (normalisation, classes) travels with it, so `predict` can
    # prepare raw inputs the same way.
    model.astroseg_meta = dict(payload.get("meta", {}))
    return model.to(device).eval(), payload


def check_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not exactly `model`'s, naming the first missing, unexpected or
    reshaped ones (torch's own error is a multi-line dump)."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
              if k in state and state[k].shape != v.shape]
    for what, keys in (("misses", missing), ("has unexpected", extra),
                       ("has other shapes for", shapes)):
        if keys:
            raise DataError(f"{where} the checkpoint {what} {len(keys)} weight(s) of this model "
                            f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}): saved "
                            "from another architecture or edited")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's payload (config, weights, metadata), its format checked."""
    path = Path(path)
    if not path.exists():
        raise missing_output(path, "checkpoint", "train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only unpickles tensors and plain containers only; any other object (a
        # GLOBAL it does not allow) is refused, since unpickling one can run code.
        found = _refused_global(str(exc))
        if not found:   # junk bytes, not a refused object
            raise DataError(f"{path}: not a readable checkpoint, truncated or corrupt? "
                            f"({_weights_only_detail(str(exc))})") from None
        raise DataError(f"{path}: refused, the checkpoint holds a Python object that loading "
                        f"could execute code with ({found}); astroseg "
                        "checkpoints hold only tensors and plain values (load only files you "
                        "trust, and retrain or re-save this one)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise DataError(f"{path}: not a readable checkpoint, truncated or corrupt? "
                        f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(f"{path}: checkpoint format {found!r}, expected {FORMAT_VERSION}")
    for key, kind in (("model_config", dict), ("state_dict", dict), ("meta", dict)):
        if not isinstance(payload.get(key, {} if key == "meta" else None), kind):
            raise DataError(f"{path}: checkpoint key {key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor)
               for k, v in payload["state_dict"].items()):
        raise DataError(f"{path}: checkpoint 'state_dict' must map names to tensors")
    return payload


def _weights_only_detail(message: str) -> str:
    # torch's message is a paragraph of advice; the line after "WeightsUnpickler error:" says
    # what was wrong.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line]
    return (after[0] if after else " ".join(message.split()))[:200]


def _refused_global(message: str) -> str:
    # torch names the offending global ("Unsupported global: GLOBAL posix.system ...").
    for line in message.splitlines():
        if "GLOBAL" in line:
            return " ".join(line.split())[:160]
    return ""


def _state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = payload["state_dict"]
    if payload["model_config"].get("name") == "segformer":
        state = fold_decoder_biases(state)
    return state


# Config keys that change no weight's shape or meaning: they may differ when fine-tuning.
_FREE = ("image_size", "dropout", "attn_dropout", "drop_path")


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    # Tuples (params) and lists (YAML, older checkpoints) of the same values are the same; a
    # checkpoint from before bands has one input channel.
    return {"in_channels": 1,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}


def init_from(model: nn.Module, config: dict[str, Any], path: str | os.PathLike,
              key: str = "train.init_from") -> dict[str, Any]:
    """Load the weights of checkpoint `path` into `model` (built from `config`) to fine-tune
    it; refuse, naming the difference, a checkpoint of another architecture. Returns the
    checkpoint's payload."""
    if not Path(path).is_file():
        raise DataError(f"{key} = {str(path)!r}: no such checkpoint file (a path relative to "
                        "the project root, or '' to start from random weights)")
    payload = read_checkpoint(path)
    theirs, ours = _plain(payload["model_config"]), _plain(config)
    differ = [f"{k}: {theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} here"
              for k in sorted(set(theirs) | set(ours))
              if k not in _FREE and theirs.get(k) != ours.get(k)]
    if differ:
        raise DataError(f"{key} = {path}: another architecture ({'; '.join(differ)}); "
                        "set model.* (and the data's bands) to the checkpoint's to fine-tune it")
    state = _state(payload)
    check_state(model, state, f"{key} = {path}:")
    model.load_state_dict(state)
    return payload
