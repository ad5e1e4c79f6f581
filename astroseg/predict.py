"""Apply a trained model to new images: numpy in, probabilities and masks out.

    from astroseg.predict import load_model, predict
    model = load_model("models/model.pt")
    prob, mask = predict(model, images)     # images: (N, H, W) float32, normalised like training

One output channel (binary): `prob` is (N, H, W), the source probability, and `mask` is
prob >= threshold. K classes: `prob` is (N, K, H, W) and `mask` the argmax class.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from astroseg.atomic import atomic_output
from astroseg.checkpoint import load_checkpoint
from astroseg.device import resolve_device
from astroseg.errors import DataError
from astroseg.losses import probabilities
from astroseg.metrics import predict_labels
from astroseg.symmetry import averaged_logits


def load_model(path: str | os.PathLike = "models/model.pt", device: str = "auto") -> nn.Module:
    """A checkpoint's model in eval mode on `device` ('auto', 'cpu' or 'cuda')."""
    model, _ = load_checkpoint(path, resolve_device(device, "--device"))
    return model


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 16,
            threshold: float = 0.5, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float32) and masks (uint8) for (N, H, W) or (H, W) images, in batches.

    `tta` averages the logits over the 8 flips/rotations of each image (8x the compute)."""
    images = np.asarray(images, dtype=np.float32)
    single = images.ndim == 2
    if single:
        images = images[None]
    if images.ndim != 3:
        raise DataError(f"images have shape {images.shape}; expected (N, H, W) or (H, W)")
    if not np.isfinite(images).all():
        raise DataError("images hold NaN or infinite values; mask or fill them first")
    stride = getattr(model, "stride", 1)
    if images.shape[1] % stride or images.shape[2] % stride:
        raise DataError(f"images are {images.shape[1]}x{images.shape[2]}; this model needs sides "
                        f"that are multiples of {stride}")
    model.eval()
    device = _device(model)
    probs, masks = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).unsqueeze(1).to(device)
        prob = probabilities(averaged_logits(model, x) if tta else model(x).float())
        masks.append(predict_labels(prob, threshold).cpu().numpy())
        probs.append((prob[:, 0] if prob.shape[1] == 1 else prob).cpu().numpy())
    prob, mask = np.concatenate(probs), np.concatenate(masks)
    return (prob[0], mask[0]) if single else (prob, mask)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (provenance of the model that made an output)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predict_h5(input_path: str | os.PathLike, output_path: str | os.PathLike,
               model_path: str | os.PathLike = "models/model.pt", device: str = "auto",
               batch_size: int = 16, threshold: float = 0.5, tta: bool = False) -> int:
    """Segment the `images` dataset of an HDF5 file into `probabilities` and `masks` datasets.

    Reads and writes one batch at a time, so memory stays bounded whatever N is. Returns N.
    """
    input_path = Path(input_path)
    model = load_model(model_path, device)
    try:
        src = h5py.File(input_path, "r")
    except FileNotFoundError:
        raise DataError(f"{input_path}: input file not found") from None
    except OSError as exc:
        raise DataError(f"{input_path}: not a readable HDF5 file ({exc})") from None
    with src, atomic_output(output_path) as tmp, h5py.File(tmp, "w") as out:
        if "images" not in src or src["images"].ndim != 3:
            found = ", ".join(src.keys()) or "nothing"
            raise DataError(f"{input_path}: expected a dataset 'images' of shape (N, H, W); "
                            f"found {found}")
        images = src["images"]
        n, h, w = images.shape
        prob_out = mask_out = None
        for start in range(0, n, batch_size):
            try:
                prob, mask = predict(model, images[start:start + batch_size], batch_size,
                                     threshold, tta)
            except DataError as exc:
                raise DataError(f"{input_path}: images[{start}:{start + batch_size}]: {exc}") from None
            if prob_out is None:
                prob_out = out.create_dataset("probabilities", (n, *prob.shape[1:]), np.float32,
                                              chunks=(1, *prob.shape[1:]), compression="lzf")
                mask_out = out.create_dataset("masks", (n, h, w), np.uint8, chunks=(1, h, w),
                                              compression="lzf")
            prob_out[start:start + len(prob)] = prob
            mask_out[start:start + len(mask)] = mask
        out.attrs.update({"model": str(model_path), "model_sha256": file_sha256(model_path),
                          "threshold": threshold, "tta": tta})
    return n
