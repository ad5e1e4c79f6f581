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

Calibration: the evaluate stage fits a temperature T for a model file and writes it beside it
(calibration.json, astroseg.scoring.calibration); the logits are divided by T before the
sigmoid/softmax. `load_model` returns the model calibrated (a forward hook divides its logits
by T, so `predict(model, ...)` and `model(x)` agree); `load_model(..., calibration=False)` gives
the raw one. The file-to-file paths (`predict_h5`, predict_fits, survey) load the raw model
and pass T to `predict_probabilities` explicitly, and record it in their outputs.
`predict_with_std` runs Monte Carlo dropout (astroseg.scoring.uncertainty): the mean of N
stochastic passes and the per-pixel standard deviation.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from astroseg.atomic import atomic_h5
from astroseg.data.dataset import as_channels
from astroseg.models.checkpoint import file_sha256, load_checkpoint  # noqa: F401 (re-exported)
from astroseg.device import resolve_device
from astroseg.errors import DataError, ParamsError
from astroseg.scoring.calibration import calibration_path, load_temperature
from astroseg.scoring.losses import probabilities
from astroseg.scoring.metrics import predict_labels
from astroseg.scoring.uncertainty import mc_probabilities
from astroseg.data.normalize import check_method, normalize_array
from astroseg.models.symmetry import averaged_logits

# Normalised training inputs lie in [0, 1]; beyond this margin an input was not normalised.
_TRAINED_RANGE = (-0.5, 1.5)


def load_model(path: str | os.PathLike = "models/model.pt", device: str = "auto",
               calibration: bool = True) -> nn.Module:
    """A checkpoint's model in eval mode on `device` ('auto', 'cpu' or 'cuda').

    With `calibration`, the model's logits come divided by the temperature fitted for this
    model file (calibration.json beside it), if there is one: `model.astroseg_temperature`.
    """
    model, _ = load_checkpoint(path, resolve_device(device, "--device"))
    # Hash only when there is a calibration file to match: most callers have none.
    found = calibration and calibration_path(path).is_file()
    temperature = load_temperature(path, file_sha256(path)) if found else None
    model.astroseg_temperature = 1.0 if temperature is None else temperature
    if temperature is not None:
        # On the module itself, so every caller (predict, TTA, MC dropout, a direct
        # model(x)) sees the same calibrated logits.
        model.register_forward_hook(lambda module, args, logits: logits / temperature)
    return model


def model_temperature(model_path: str | os.PathLike, model_sha256: str,
                      calibration: bool = True) -> float | None:
    """The temperature to divide the logits by: the calibrated one of this model file, or None."""
    return load_temperature(model_path, model_sha256) if calibration else None


def calibration_note(model_path: str | os.PathLike, temperature: float | None,
                     calibration: bool = True) -> str | None:
    """One line saying whether a temperature calibrates the probabilities; None when there is
    no calibration.json beside the model (nothing to apply, nothing to say)."""
    path = calibration_path(model_path)
    if temperature is not None:
        return (f"calibrated probabilities: logits divided by the temperature {temperature:.4g} "
                f"fitted for this model ({path}; --no-calibration for the raw ones)")
    if not path.is_file():
        return None
    if not calibration:
        return f"--no-calibration: {path} is not applied; probabilities are uncalibrated"
    return (f"uncalibrated probabilities: {path} was not fitted (evaluate.calibrate false) or "
            "belongs to another model file (SHA-256 differs)")


def check_mc_samples(mc_samples: int, tta: bool) -> None:
    """Refuse --mc-samples other than 0 (off) or >= 2, and together with --tta."""
    if mc_samples < 0 or mc_samples == 1:
        raise ParamsError(f"--mc-samples = {mc_samples}: expected 0 (off) or >= 2 (the number "
                          "of stochastic passes; a standard deviation needs two)")
    if mc_samples and tta:
        raise ParamsError(f"--mc-samples {mc_samples} with --tta: the two are not combined (it "
                          "would cost 8 x N passes); choose one")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_normalization(model: nn.Module) -> str:
    """The normalisation (data.normalize) the model was trained with, from its checkpoint."""
    meta = getattr(model, "astroseg_meta", {})
    return check_method(meta.get("normalization", "minmax"), "model normalization")


def normalize_images(model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (H, W) image, or each band of an (N, C, H, W) stack on its own, normalised as the
    model's training fields were; also the valid mask.

    Non-finite pixels are invalid: they are left out of the statistics and set to 0.
    """
    method = model_normalization(model)
    valid = np.isfinite(images)
    out = np.empty(images.shape, np.float32)
    for i in np.ndindex(images.shape[:-2]):
        out[i] = normalize_array(images[i], valid[i], method, f"image {i[0]}"
                                 + (f" band {i[1]}" if len(i) > 1 else ""))[0]
    return out, valid


def in_channels(model: nn.Module) -> int:
    """The bands each input image must have."""
    return getattr(model, "in_channels", 1)


def as_batch(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """`images` as the (N, H, W) (one band) or (N, C, H, W) stack the model takes."""
    c = in_channels(model)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == (2 if c == 1 else 3):
        images = images[None]
    want = "(N, H, W) or (H, W)" if c == 1 else f"(N, {c}, H, W) or ({c}, H, W)"
    if images.ndim != (3 if c == 1 else 4) or (c > 1 and images.shape[1] != c):
        bands = getattr(model, "astroseg_meta", {}).get("bands")
        raise DataError(f"images have shape {images.shape}; expected {want}"
                        + (f": one plane per band {bands}" if bands else ""))
    return images


def _warn_if_unnormalised(model: nn.Module, images: np.ndarray) -> None:
    lo, hi = float(images.min()), float(images.max())
    if lo < _TRAINED_RANGE[0] or hi > _TRAINED_RANGE[1]:
        warnings.warn(f"images range from {lo:.4g} to {hi:.4g}, but the model was trained on "
                      f"images normalised to [0, 1] ('{model_normalization(model)}'); pass "
                      "normalize=True (--normalize on the command line; FITS input is always "
                      "normalised) or normalise them first", stacklevel=4)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 16,
            threshold: float = 0.5, tta: bool = False, normalize: bool = False,
            temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float32) and labels (uint8) for (N, H, W) or (H, W) images, in batches.

    `tta` averages the logits over the 8 flips/rotations of each image (8x the compute).
    `normalize` applies the model's training normalisation to each image first (raw pixels in);
    then NaN/inf pixels are allowed, and their probability is NaN and their label 0.
    `temperature` divides the model's logits (a `load_model` model is calibrated already).
    """
    prob, label, _ = predict_probabilities(model, images, batch_size, threshold, tta,
                                           normalize, temperature, 0)
    return prob, label


def predict_with_std(model: nn.Module, images: np.ndarray, samples: int, batch_size: int = 16,
                     threshold: float = 0.5, normalize: bool = False,
                     temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`predict` by Monte Carlo dropout: the mean probability over `samples` stochastic passes,
    its labels, and the per-pixel standard deviation (same shape as the probabilities)."""
    check_mc_samples(samples, False)
    if samples == 0:
        raise ParamsError("samples = 0: predict_with_std needs >= 2 stochastic passes")
    return predict_probabilities(model, images, batch_size, threshold, False, normalize,
                                 temperature, samples)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: np.ndarray, batch_size: int = 16,
                          threshold: float = 0.5, tta: bool = False, normalize: bool = False,
                          temperature: float = 1.0, mc_samples: int = 0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`predict` and `predict_with_std` in one: probabilities, labels, and the MC standard
    deviation when `mc_samples` >= 2 (else None). Arguments are not checked for sense here."""
    single = np.ndim(images) == (2 if in_channels(model) == 1 else 3)
    images = as_batch(model, images)
    valid = None
    if normalize:
        images, valid = normalize_images(model, images)
        if valid.ndim == 4:     # a pixel any band lacks is invalid
            valid = valid.all(1)
    elif not np.isfinite(images).all():
        raise DataError("images hold NaN or infinite values; mask or fill them first, or pass "
                        "normalize=True")
    elif images.size:
        _warn_if_unnormalised(model, images)
    stride = getattr(model, "stride", 1)
    h, w = images.shape[-2:]
    if h % stride or w % stride:
        raise DataError(f"images are {h}x{w}; this model needs sides that are multiples of "
                        f"{stride}")
    model.eval()
    device = _device(model)
    probs, labels, stds = [], [], []
    for start in range(0, len(images), batch_size):
        x = as_channels(torch.from_numpy(images[start:start + batch_size])).to(device)
        if mc_samples:
            prob, std = mc_probabilities(model, x, mc_samples, temperature)
            stds.append((std[:, 0] if std.shape[1] == 1 else std).cpu().numpy())
        else:
            logits = averaged_logits(model, x) if tta else model(x).float()
            # Dividing by 1.0 is exact: an uncalibrated run gives the bits it always gave.
            prob = probabilities(logits / temperature)
        labels.append(predict_labels(prob, threshold).cpu().numpy())
        probs.append((prob[:, 0] if prob.shape[1] == 1 else prob).cpu().numpy())
    prob, label = np.concatenate(probs), np.concatenate(labels)
    std = np.concatenate(stds) if mc_samples else None
    if valid is not None:
        label[~valid] = 0
        for plane in (prob, std):
            if plane is None:
                continue
            if plane.ndim == 3:
                plane[~valid] = np.nan
            else:
                plane.transpose(0, 2, 3, 1)[~valid] = np.nan   # every class of an invalid pixel
    if single:
        return prob[0], label[0], None if std is None else std[0]
    return prob, label, std


def file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following symlinks: equal for every path to it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output(output_path: str | os.PathLike,
                 keep: list[tuple[str, str | os.PathLike | None]], option: str = "-o") -> None:
    """Refuse an output (given with `option`) that is one of the `keep` files (role, path) by
    any path or link."""
    out = file_id(output_path)
    if out is None:
        return
    for role, path in keep:
        # Same device and inode: the same path, a symlink to it, or a hard link.
        if path is not None and str(path) != "" and file_id(path) == out:
            raise ParamsError(f"{option} {output_path}: is the {role} {path} (the same file); "
                              f"astroseg never writes over its {role}: choose another output")


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
               normalize: bool = False, calibration: bool = True, mc_samples: int = 0,
               notify: Callable[[str], None] | None = None) -> int:
    """Segment the `images` dataset of an HDF5 file into `probabilities` and `labels` datasets.

    `labels` is the predicted class (1 = source for a binary model); `masks`, in every astroseg
    file, is a truth. `normalize` applies the model's normalisation to each image (raw pixels
    in). `calibration` applies the model's fitted temperature; `mc_samples` >= 2 adds `std`
    (Monte Carlo dropout). Reads and writes one batch at a time, so memory stays bounded
    whatever N is. Returns N.
    """
    check_mc_samples(mc_samples, tta)
    model = load_model(model_path, device, calibration=False)
    sha256 = file_sha256(model_path)
    temperature = model_temperature(model_path, sha256, calibration)
    n = segment_h5(model, model_path, sha256, input_path, output_path, batch_size, threshold,
                   tta, normalize, temperature, mc_samples).images
    note = calibration_note(model_path, temperature, calibration)
    if notify is not None and note:   # after the work: an error stays the only line
        notify(note)
    return n


# What h5py raises on a damaged file whose superblock still opens: KeyError and RuntimeError (a
# bad object header or link), ValueError and TypeError (a datatype it cannot decode), OSError
# (a chunk it cannot read or decompress).
_H5_ERRORS = (KeyError, RuntimeError, ValueError, TypeError, OSError)


def _detail(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _input_images(src: h5py.File, input_path: Path, c: int) -> h5py.Dataset:
    """The `images` dataset of an input file, checked to be real numbers of the shape a model of
    `c` bands takes, with at least one pixel."""
    want = "(N, H, W)" if c == 1 else f"(N, {c}, H, W), one plane per band"
    try:
        images = src.get("images")
        if not isinstance(images, h5py.Dataset) or images.ndim != (3 if c == 1 else 4):
            found = ", ".join(f"{k} {getattr(v, 'shape', '(group)')}" for k, v in src.items())
            raise DataError(f"{input_path}: expected a dataset 'images' of shape {want}; "
                            f"found {found or 'nothing'}")
        kind = images.dtype.kind
    except _H5_ERRORS as exc:
        raise DataError(f"{input_path}: cannot read its layout, truncated or corrupt? "
                        f"({_detail(exc)})") from None
    # Integers are raw counts (for --normalize); strings, complex numbers, compounds are no pixels.
    if kind not in "fiu":
        raise DataError(f"{input_path}: images has dtype {images.dtype}; expected real numbers "
                        "(float pixels, or integer counts with --normalize)")
    if 0 in images.shape:
        raise DataError(f"{input_path}: images has shape {images.shape}: no pixel to segment")
    return images


@contextlib.contextmanager
def seeded(model: nn.Module, on: bool, seed: int = 0) -> Iterator[None]:
    """Seed torch's RNG for MC dropout, restoring it after: a rerun writes the same bytes."""
    if not on:
        yield
        return
    device = _device(model)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def segment_h5(model: nn.Module, model_path: str | os.PathLike, model_sha256: str,
               input_path: str | os.PathLike, output_path: str | os.PathLike,
               batch_size: int = 16, threshold: float = 0.5, tta: bool = False,
               normalize: bool = False, temperature: float | None = None,
               mc_samples: int = 0) -> H5Prediction:
    """`predict_h5` with a model already loaded (and its file hashed): many files, one load.

    `temperature` None: uncalibrated (1). `mc_samples` >= 2 writes `std` beside
    `probabilities` (same shape): the standard deviation over the stochastic passes.
    """
    input_path = Path(input_path)
    check_mc_samples(mc_samples, tta)
    check_output(output_path, [("input", input_path), ("model", model_path)])
    applied = 1.0 if temperature is None else temperature
    try:
        src = h5py.File(input_path, "r")
    except FileNotFoundError:
        raise DataError(f"{input_path}: input file not found") from None
    except OSError as exc:
        raise DataError(f"{input_path}: not a readable HDF5 file ({exc})") from None
    with src, atomic_h5(output_path) as (out, check), seeded(model, mc_samples > 0):
        c = in_channels(model)
        images = _input_images(src, input_path, c)
        n, (h, w) = len(images), images.shape[-2:]
        prob_out = label_out = std_out = None
        marked = valid = 0
        for start in range(0, n, batch_size):
            try:
                batch = images[start:start + batch_size]
            except _H5_ERRORS as exc:
                raise DataError(f"{input_path}: cannot read images[{start}:{start + batch_size}], "
                                f"truncated or corrupt? ({_detail(exc)})") from None
            try:
                prob, label, std = predict_probabilities(model, batch, batch_size, threshold, tta,
                                                         normalize, applied, mc_samples)
            except DataError as exc:
                raise DataError(f"{input_path}: images[{start}:{start + batch_size}]: {exc}") from None
            if prob_out is None:
                prob_out = out.create_dataset("probabilities", (n, *prob.shape[1:]), np.float32,
                                              chunks=(1, *prob.shape[1:]), compression="lzf")
                label_out = out.create_dataset("labels", (n, h, w), np.uint8, chunks=(1, h, w),
                                               compression="lzf")
                if std is not None:
                    std_out = out.create_dataset("std", prob_out.shape, np.float32,
                                                 chunks=prob_out.chunks, compression="lzf")
            prob_out[start:start + len(prob)] = prob
            label_out[start:start + len(label)] = label
            if std_out is not None:
                std_out[start:start + len(std)] = std
            check()   # a full disk ends the run at this batch, not after the last
            # Non-finite inputs pass only with `normalize`, and then are invalid (label 0).
            marked += int(np.count_nonzero(label))
            finite = np.isfinite(batch)
            valid += int(np.count_nonzero(finite if c == 1 else finite.all(1)))
        fraction = marked / valid if valid else 0.0
        out.attrs.update({"model": str(model_path), "model_sha256": model_sha256,
                          "threshold": threshold, "tta": tta, "normalized": normalize,
                          "calibrated": temperature is not None, "temperature": applied,
                          "mc_samples": mc_samples, "source_fraction": fraction})
    return H5Prediction(n, h, w, fraction)
