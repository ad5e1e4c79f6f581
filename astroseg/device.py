"""Pick the torch device a stage runs on."""

from __future__ import annotations

import torch

from astroseg.errors import ParamsError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error naming `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"{key} = 'cuda' but torch {torch.__version__} sees no CUDA device; "
                          "use 'auto' or 'cpu', or install a CUDA build of torch (see README)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the device computes bf16 natively (CUDA, AVX-512-BF16/AMX CPUs)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"
