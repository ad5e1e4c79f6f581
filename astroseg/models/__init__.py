"""Model registry: `build_model(config)` from a checkpoint's or params' model config."""

from __future__ import annotations

from typing import Any

from torch import nn

from astroseg.models.segformer import SegFormer
from astroseg.models.tiny_segformer import TinySegFormer

MODELS: dict[str, type[nn.Module]] = {"segformer": SegFormer, "tiny_segformer": TinySegFormer}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate the architecture `config['name']` with the rest of `config` as arguments."""
    kwargs = dict(config)
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    # Params and checkpoints hold lists; the models take tuples.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return MODELS[name](**kwargs)
