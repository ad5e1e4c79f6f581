"""PNG figures: training curves, sample images with masks, predictions against the truth."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.colors import ListedColormap
# Figure without pyplot: no global state and no GUI backend, so stages run headless anywhere.
from matplotlib.figure import Figure

from astroseg.atomic import atomic_output

# Difference map classes: true negative, true positive, false positive, false negative.
_DIFF_COLOURS = ListedColormap(["#000000", "#bbbbbb", "#e66100", "#5d3a9b"])


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> None:
    with atomic_output(path) as tmp:
        # Fixed metadata so the same figure gives the same bytes run after run.
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def plot_training_curves(history: dict[str, np.ndarray], path: str | os.PathLike,
                         dpi: int) -> None:
    """Loss (train and val), val IoU and val Dice against epoch, side by side."""
    epoch = history["epoch"]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].plot(epoch, history["train_loss"], marker="o", label="train")
    axes[0].plot(epoch, history["val_loss"], marker="o", label="val")
    axes[0].set(title="Dice + BCE loss", ylabel="loss")
    axes[0].legend()
    for ax, key, title in ((axes[1], "val_iou", "Validation IoU"),
                           (axes[2], "val_dice", "Validation Dice")):
        ax.plot(epoch, history[key], marker="o")
        ax.set(title=title, ylabel=key.removeprefix("val_"))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _save(fig, path, dpi)


def plot_samples(images: np.ndarray, masks: np.ndarray, path: str | os.PathLike,
                 cmap: str, dpi: int) -> None:
    """Each sample as its image over its mask, in two rows."""
    n = len(images)
    fig = Figure(figsize=(2.4 * n, 5), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i], cmap=cmap, origin="lower")
        axes[1, i].imshow(masks[i], cmap="gray", origin="lower", vmin=0, vmax=1)
        axes[0, i].set_title(f"#{i}")
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("mask")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path, dpi)


def plot_predictions(images: np.ndarray, masks: np.ndarray, foreground: np.ndarray,
                     labels: np.ndarray, path: str | os.PathLike, cmap: str, dpi: int) -> None:
    """One row per image: image, truth, source probability, and where prediction and truth differ."""
    n = len(images)
    fig = Figure(figsize=(10, 2.6 * n), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    top = max(1, int(masks.max()), int(labels.max()))
    for i in range(n):
        pred, truth = labels[i] > 0, masks[i] > 0
        diff = np.select([pred & truth, pred & ~truth, ~pred & truth], [1, 2, 3], 0)
        axes[i, 0].imshow(images[i], cmap=cmap, origin="lower")
        axes[i, 1].imshow(masks[i], cmap="gray", origin="lower", vmin=0, vmax=top)
        axes[i, 2].imshow(foreground[i], cmap="gray", origin="lower", vmin=0, vmax=1)
        axes[i, 3].imshow(diff, cmap=_DIFF_COLOURS, origin="lower", vmin=0, vmax=3,
                          interpolation="nearest")
        union = (pred | truth).sum()
        iou = (pred & truth).sum() / union if union else 1.0
        axes[i, 3].set_ylabel(f"IoU {iou:.3f}")
        axes[i, 3].yaxis.set_label_position("right")
    for ax, title in zip(axes[0], ("image", "truth", "source probability",
                                   "diff: TP grey, FP orange, FN purple")):
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path, dpi)
