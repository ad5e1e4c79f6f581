"""The classic baseline: photutils image segmentation, tuned on val, scored like the model.

Per image: background and noise from sigma-clipped statistics (3 sigma), Gaussian smoothing
(`fwhm`), then `photutils.segmentation.detect_sources` keeps the 8-connected regions of at least
`npixels` pixels above `nsigma` x the noise, optionally deblended (`deblend_sources`: the binary
mask stays the same, touching sources become separate objects). `nsigma` and `npixels` are
chosen on the validation split by a grid, for the best mean pixel IoU (ties to the first grid
point, nsigma outer, npixels inner); the chosen setting is then scored on the test split with
the model's pixel metrics (astroseg/scoring/metrics.py) and object metrics (objects.py).
Tiles cut from FITS fields carry a `valid` map: the statistics, the smoothing and the detection
use the valid pixels only (the file holds zeros elsewhere, which would fake a sky edge).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from astropy.stats import sigma_clipped_stats
from photutils.segmentation import make_2dgaussian_kernel
from scipy import ndimage

from astroseg.data import labeling
from astroseg.data.dataset import CHUNK_ROWS, open_split
from astroseg.errors import DataError
from astroseg.params import BaselineParams
from astroseg.scoring.metrics import SCORES, confusion_counts, pooled_scores, scores_from_counts
from astroseg.scoring.objects import ObjectScorer, truth_objects

Blocks = Iterable[tuple[np.ndarray, np.ndarray]]


def smoothed(images: np.ndarray, fwhm: float, valid: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) images -> background-subtracted Gaussian-smoothed images and (N,) noise std,
    both from the `valid` pixels only (FITS tiles: invalid ones are zero-filled in the file)."""
    images = np.asarray(images, dtype=np.float32)
    invalid = None if valid is None else ~np.asarray(valid, dtype=bool)
    # Per-image stats in one call: astropy clips each image along its own axes. The zeros of
    # a mosaic's edge would otherwise pull the median down and the noise far off.
    _, median, std = sigma_clipped_stats(images, mask=invalid, sigma=3.0, axis=(1, 2))
    median = np.nan_to_num(np.atleast_1d(median).astype(np.float32))   # NaN: nothing valid
    std = np.nan_to_num(np.atleast_1d(std).astype(np.float64))
    data = images - median[:, None, None]
    if invalid is not None:
        data[invalid] = 0     # the sky level: no light leaks from the gap into the smoothing
    size = 2 * math.ceil(fwhm) + 1    # odd, covering about +-2.5 sigma of the Gaussian
    kernel = make_2dgaussian_kernel(fwhm, size=size).array.astype(np.float32)
    # The kernel's third axis of 1 smooths every image of the stack on its own; "nearest"
    # edges do not darken the borders the way zero padding would.
    return ndimage.convolve(data, kernel[None], mode="nearest"), std


def detect(data: np.ndarray, std: float, nsigma: float, npixels: int,
           deblend: bool = False, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int32 source labels (0 = sky) of one smoothed image, from photutils; nothing is
    detected on pixels outside `valid`."""
    if std <= 0:    # a constant (or wholly invalid) image: no noise to scale a threshold by
        return np.zeros(data.shape, dtype=np.int32)
    return labeling.detect(data, nsigma * std, npixels, deblend, valid)


def _iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) per-image pixel IoU of bool stacks, by the metrics module's rules."""
    counts = confusion_counts(torch.from_numpy(pred.astype(np.uint8)),
                              torch.from_numpy(truth.astype(np.uint8)))
    return scores_from_counts(counts)["iou"][:, 0].numpy()


def grid_iou(images: np.ndarray, masks: np.ndarray, cfg: BaselineParams,
             valid: np.ndarray | None = None) -> np.ndarray:
    """(len(nsigma), len(npixels), N) pixel IoU of every grid point on every image."""
    data, std = smoothed(images, cfg.fwhm, valid)
    some = [None] * len(images) if valid is None else valid
    truth = np.asarray(masks) > 0
    smallest = min(cfg.npixels)
    sizes = np.asarray(cfg.npixels)
    out = np.zeros((len(cfg.nsigma), len(sizes), len(images)))
    for s, nsigma in enumerate(cfg.nsigma):
        # One detection per threshold at the smallest npixels; a larger npixels only drops the
        # smaller sources, exactly what detect_sources would do with it.
        labels = np.stack([detect(data[i], std[i], nsigma, smallest, valid=some[i])
                           for i in range(len(images))])
        area = [np.bincount(lab.ravel()) for lab in labels]
        for p, npix in enumerate(sizes):
            keep = np.stack([np.r_[False, a[1:] >= npix][lab] for a, lab in zip(area, labels)])
            out[s, p] = _iou(keep, truth)
    return out


@dataclass
class Tuning:
    """The val-tuned setting and the mean val IoU of every grid point."""
    nsigma: float
    npixels: int
    val_iou: float
    grid: list[dict[str, float | int]]

    def record(self) -> dict:
        """As written to metrics/baseline.json under "tuned"."""
        return {"nsigma": self.nsigma, "npixels": self.npixels, "val_iou": self.val_iou,
                "grid": self.grid}


def tune(blocks: Blocks, cfg: BaselineParams) -> Tuning:
    """Pick nsigma and npixels by the best mean pixel IoU over (images, masks[, valid]) blocks
    of val."""
    total, n = 0.0, 0
    for images, masks, *valid in blocks:
        total = total + grid_iou(images, masks, cfg, *valid).sum(-1)
        n += len(images)
    if n == 0:
        raise DataError("baseline: the validation split holds no images to tune on")
    mean = total / n
    # argmax over the flattened grid returns the first maximum: ties go to the first point.
    s, p = np.unravel_index(int(np.argmax(mean)), mean.shape)
    grid = [{"nsigma": ns, "npixels": npix, "iou": float(mean[i, j])}
            for i, ns in enumerate(cfg.nsigma) for j, npix in enumerate(cfg.npixels)]
    return Tuning(float(cfg.nsigma[s]), int(cfg.npixels[p]), float(mean[s, p]), grid)


@dataclass
class BaselineScores:
    """Pixel and object scores of one setting, accumulated block by block."""
    counts: list[torch.Tensor] = field(default_factory=list)
    objects: ObjectScorer = field(default_factory=ObjectScorer)

    def add(self, images: np.ndarray, masks: np.ndarray, meta: dict[str, np.ndarray],
            nsigma: float, npixels: int, cfg: BaselineParams,
            valid: np.ndarray | None = None) -> np.ndarray:
        """Detect on a block of images, score it; meta rows match the block. Returns labels."""
        data, std = smoothed(images, cfg.fwhm, valid)
        truth = np.asarray(masks) > 0
        some = [None] * len(images) if valid is None else valid
        labels = np.stack([detect(data[i], std[i], nsigma, npixels, cfg.deblend, some[i])
                           for i in range(len(images))])
        self.counts.append(confusion_counts(torch.from_numpy((labels > 0).astype(np.uint8)),
                                            torch.from_numpy(truth.astype(np.uint8))))
        for i in range(len(images)):
            self.objects.add(labels[i], truth[i], *truth_objects(meta, i))
        return labels

    def metrics(self) -> dict:
        """Mean per-image and pooled pixel scores (metrics/metrics.json's keys), objects, n."""
        counts = torch.cat(self.counts) if self.counts else torch.zeros((0, 1, 3), dtype=torch.long)
        per_image = scores_from_counts(counts)
        out: dict = {name: float(per_image[name].mean()) for name in SCORES}
        out["pooled"] = pooled_scores(counts)
        out["objects"] = self.objects.summary()
        out["n_images"] = len(counts)
        return out


def score(blocks: Iterable[tuple], tuning: Tuning, cfg: BaselineParams) -> BaselineScores:
    """Score the tuned setting on (images, masks, meta[, valid]) blocks of the test split."""
    scores = BaselineScores()
    for images, masks, meta, *valid in blocks:
        scores.add(images, masks, meta, tuning.nsigma, tuning.npixels, cfg, *valid)
    return scores


# Bytes held per pixel of a block: the image, its smoothed copy and a temporary, labels, mask.
_BYTES_PER_PIXEL = 20


def split_blocks(path: str | os.PathLike, split: str, max_memory_gb: float
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray],
                                     np.ndarray | None]]:
    """(images, masks, meta, valid or None) of `split` in blocks of rows that fit in
    `max_memory_gb`."""
    with open_split(path, split) as group:
        n, (h, w) = len(group["images"]), group["images"].shape[-2:]
        rows = max(CHUNK_ROWS, int(max_memory_gb * 1e9 / (_BYTES_PER_PIXEL * h * w)))
        rows -= rows % CHUNK_ROWS    # whole HDF5 chunks: each is read and decompressed once
        meta = group["meta"] if "meta" in group else {}
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            images = group["images"][start:stop].astype(np.float32, copy=False)
            if images.ndim == 4:   # several bands: detect on their mean (a detection image)
                images = images.mean(1, dtype=np.float32)
            if not np.isfinite(images).all():
                raise DataError(f"{path}: {split}/images holds NaN or infinite values "
                                f"(rows {start}..{stop - 1})")
            valid = group["valid"][start:stop] > 0 if "valid" in group else None
            yield (images, group["masks"][start:stop], {k: v[start:stop] for k, v in meta.items()},
                   valid)
