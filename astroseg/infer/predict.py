"""Apply a trained model to new images: numpy in, probabilities and predicted labels out.

    from astroseg.infer.predict import load_model, predict
    model = load_model("models/model.pt")
    prob, labels = predict(model, raw, normalize=True)   # raw pixels, e.g. counts from a FITS file
    prob, labels = predict(model, images)                # already normalised like the training data

One output channel (binary): `prob` is (N, H, W), the source probability, and `labels` is
prob >= threshold. K classes: `prob` is (N, K, H, W) and `labels` the argmax class. The model
was trained on images normalised to [0, 1] per field (`data.normalize`); `normalize=True`
applies that normalisation to each image, and inputs far outside [0, 1] without it draw a
warning, since the model would see nothing it was trained on.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from astroseg.atomic import atomic_output
from astroseg.models.checkpoint import load_checkpoint
from astroseg.device import resolve_device
from astroseg.errors import DataError, ParamsError
from astroseg.scoring.losses import probabilities
from astroseg.scoring.metrics import predict_labels
from astroseg.data.normalize import check_method, normalize_array
from astroseg.models.symmetry import averaged_logits

# Normalised training inputs lie in [0, 1]; beyond this margin an input was not normalised.
_TRAINED_RANGE = (-0.5, 1.5)


def load_model(path: str | os.PathLike = "models/model.pt", device: str = "auto") -> nn.Module:
    """A checkpoint's model in eval mode on `device` ('auto', 'cpu' or 'cuda')."""
    model, _ = load_checkpoint(path, resolve_device(device, "--device"))
    return model


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_normalization(model: nn.Module) -> str:
    """The normalisation (data.normalize) the model was trained with, from its checkpoint."""
    meta = getattr(model, "astroseg_meta", {})
    return check_method(meta.get("normalization", "minmax"), "model normalization")


def normalize_images(model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (H, W) image normalised as the model's training fields were; also the valid mask.

    Non-finite pixels are invalid: they are left out of the statistics and set to 0.
    """
    method = model_normalization(model)
    valid = np.isfinite(images)
    out = np.empty(images.shape, np.float32)
    for i, (image, ok) in enumerate(zip(images, valid)):
        out[i] = normalize_array(image, ok, method, f"image {i}")[0]
    return out, valid


def _warn_if_unnormalised(model: nn.Module, images: np.ndarray) -> None:
    lo, hi = float(images.min()), float(images.max())
    if lo < _TRAINED_RANGE[0] or hi > _TRAINED_RANGE[1]:
        warnings.warn(f"images range from {lo:.4g} to {hi:.4g}, but the model was trained on "
                      f"images normalised to [0, 1] ('{model_normalization(model)}'); pass "
                      "normalize=True (--normalize on the command line; FITS input is always "
                      "normalised) or normalise them first", stacklevel=4)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 16,
            threshold: float = 0.5, tta: bool = False,
            normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float32) and labels (uint8) for (N, H, W) or (H, W) images, in batches.

    `tta` averages the logits over the 8 flips/rotations of each image (8x the compute).
    `normalize` applies the model's training normalisation to each image first (raw pixels in);
    then NaN/inf pixels are allowed, and their probability is NaN and their label 0.
    """
    images = np.asarray(images, dtype=np.float32)
    single = images.ndim == 2
    if single:
        images = images[None]
    if images.ndim != 3:
        raise DataError(f"images have shape {images.shape}; expected (N, H, W) or (H, W)")
    valid = None
    if normalize:
        images, valid = normalize_images(model, images)
    elif not np.isfinite(images).all():
        raise DataError("images hold NaN or infinite values; mask or fill them first, or pass "
                        "normalize=True")
    elif images.size:
        _warn_if_unnormalised(model, images)
    stride = getattr(model, "stride", 1)
    if images.shape[1] % stride or images.shape[2] % stride:
        raise DataError(f"images are {images.shape[1]}x{images.shape[2]}; this model needs sides "
                        f"that are multiples of {stride}")
    model.eval()
    device = _device(model)
    probs, labels = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).unsqueeze(1).to(device)
        prob = probabilities(averaged_logits(model, x) if tta else model(x).float())
        labels.append(predict_labels(prob, threshold).cpu().numpy())
        probs.append((prob[:, 0] if prob.shape[1] == 1 else prob).cpu().numpy())
    prob, label = np.concatenate(probs), np.concatenate(labels)
    if valid is not None:
        label[~valid] = 0
        if prob.ndim == 3:
            prob[~valid] = np.nan
        else:
            prob.transpose(0, 2, 3, 1)[~valid] = np.nan   # every class of an invalid pixel
    return (prob[0], label[0]) if single else (prob, label)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (provenance of the model that made an output)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following symlinks: equal for every path to it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output(output_path: str | os.PathLike,
                 keep: list[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuse an output that is one of the `keep` files (role, path) by any path or link."""
    out = file_id(output_path)
    if out is None:
        return
    for role, path in keep:
        # Same device and inode: the same path, a symlink to it, or a hard link.
        if path is not None and str(path) != "" and file_id(path) == out:
            raise ParamsError(f"-o {output_path}: is the {role} {path} (the same file); astroseg "
                              f"never writes over its {role}: choose another output")


@dataclass(frozen=True)
class H5Prediction:
    """What `segment_h5` did: images segmented, their size, the fraction marked as source."""
    images: int
    height: int
    width: int
    source_fraction: float


def predict_h5(input_path: str | os.PathLike, output_path: str | os.PathLike,
               model_path: str | os.PathLike = "models/model.pt", device: str = "auto",
               batch_size: int = 16, threshold: float = 0.5, tta: bool = False,
               normalize: bool = False) -> int:
    """Segment the `images` dataset of an HDF5 file into `probabilities` and `labels` datasets.

    `labels` is the predicted class (1 = source for a binary model); `masks`, in every astroseg
    file, is a truth. `normalize` applies the model's normalisation to each image (raw pixels
    in). Reads and writes one batch at a time, so memory stays bounded whatever N is. Returns N.
    """
    model = load_model(model_path, device)
    return segment_h5(model, model_path, file_sha256(model_path), input_path, output_path,
                      batch_size, threshold, tta, normalize).images


def segment_h5(model: nn.Module, model_path: str | os.PathLike, model_sha256: str,
               input_path: str | os.PathLike, output_path: str | os.PathLike,
               batch_size: int = 16, threshold: float = 0.5, tta: bool = False,
               normalize: bool = False) -> H5Prediction:
    """`predict_h5` with a model already loaded (and its file hashed): many files, one load."""
    input_path = Path(input_path)
    check_output(output_path, [("input", input_path), ("model", model_path)])
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
        prob_out = label_out = None
        marked = valid = 0
        for start in range(0, n, batch_size):
            batch = images[start:start + batch_size]
            try:
                prob, label = predict(model, batch, batch_size, threshold, tta, normalize)
            except DataError as exc:
                raise DataError(f"{input_path}: images[{start}:{start + batch_size}]: {exc}") from None
            if prob_out is None:
                prob_out = out.create_dataset("probabilities", (n, *prob.shape[1:]), np.float32,
                                              chunks=(1, *prob.shape[1:]), compression="lzf")
                label_out = out.create_dataset("labels", (n, h, w), np.uint8, chunks=(1, h, w),
                                               compression="lzf")
            prob_out[start:start + len(prob)] = prob
            label_out[start:start + len(label)] = label
            # Non-finite inputs pass only with `normalize`, and then are invalid (label 0).
            marked += int(np.count_nonzero(label))
            valid += int(np.count_nonzero(np.isfinite(batch)))
        fraction = marked / valid if valid else 0.0
        out.attrs.update({"model": str(model_path), "model_sha256": model_sha256,
                          "threshold": threshold, "tta": tta, "normalized": normalize,
                          "source_fraction": fraction})
    return H5Prediction(n, h, w, fraction)
