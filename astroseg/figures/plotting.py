"""PNG figures of images: training curves, samples, predictions against the truth, MC uncertainty.

Images are shown the way astronomers look at them: a ZScale interval (IRAF's, robust to the
few bright pixels that would wash a min/max scale out) with an asinh stretch (faint wings and
bright cores in one view), origin at the lower left, with a colour bar.
"""

from __future__ import annotations

import os

import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
# Figure without pyplot: no global state and no GUI backend, so stages run headless anywhere.
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from astroseg.atomic import atomic_output
from astroseg.data.dataset import IGNORE

TRUTH_COLOUR = "#00e5ff"        # cyan: stands out on magma, gray and viridis alike
PREDICTION_COLOUR = "#ffb000"   # amber
# Error map: true positive, false positive, false negative (red/blue, as the eye expects).
ERROR_COLOURS = {"TP": "#c8c8c8", "FP": "#e8282b", "FN": "#2f6fff"}


def save_png(fig: Figure, path: str | os.PathLike, dpi: int) -> None:
    """Write `fig` atomically as a PNG with fixed metadata (same figure, same bytes)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def note_figure(text: str, path: str | os.PathLike, dpi: int,
                size: tuple[float, float] = (6.4, 2.4)) -> None:
    """A figure that only says `text`: a DVC output must exist even with nothing to draw."""
    fig = Figure(figsize=size)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
    save_png(fig, path, dpi)


def zscale_asinh(image: np.ndarray) -> ImageNormalize:
    """ZScale limits with an asinh stretch; a flat image gets a unit range instead of none."""
    finite = image[np.isfinite(image)]
    vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0.0, 1.0)
    if not vmax > vmin:
        vmax = vmin + 1.0
    return ImageNormalize(vmin=vmin, vmax=vmax, stretch=AsinhStretch(), clip=True)


def _show_image(fig: Figure, ax: Axes, image: np.ndarray, cmap: str, bar: bool = True) -> None:
    if image.ndim == 3:   # several bands: their mean, a detection image as SExtractor makes one
        image = image.mean(0)
    norm = zscale_asinh(image)
    im = ax.imshow(image, cmap=cmap, origin="lower", norm=norm, interpolation="nearest")
    if bar:
        # Ticks evenly spaced in the stretched scale: linear ones crowd where asinh compresses.
        ticks = norm.inverse(np.linspace(0, 1, 5))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=ticks, format="%.3g")


def _outline(ax: Axes, mask: np.ndarray, colour: str, width: float = 1.0) -> None:
    # contour() of a mask without both values has no level to draw (and warns): skip it.
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width,
                   origin="lower")


def _bare(axes: np.ndarray) -> None:
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


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
    save_png(fig, path, dpi)


def plot_samples(images: np.ndarray, masks: np.ndarray, path: str | os.PathLike,
                 cmap: str, dpi: int) -> None:
    """Each sample (ZScale, asinh) above the same image with its mask outlined."""
    n = len(images)
    fig = Figure(figsize=(2.4 * n, 5), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        _show_image(fig, axes[0, i], images[i], cmap, bar=False)
        _show_image(fig, axes[1, i], images[i], "gray", bar=False)
        _outline(axes[1, i], masks[i] > 0, TRUTH_COLOUR)
        axes[0, i].set_title(f"#{i}")
    axes[0, 0].set_ylabel("image (zscale, asinh)")
    axes[1, 0].set_ylabel("mask outlined")
    _bare(axes)
    save_png(fig, path, dpi)


def _error_overlay(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGBA: TP grey, FP red, FN blue, transparent where both say background."""
    rgba = np.zeros(pred.shape + (4,), np.float32)
    for kind, where in (("TP", pred & truth), ("FP", pred & ~truth), ("FN", ~pred & truth)):
        rgba[where] = to_rgba(ERROR_COLOURS[kind], alpha=0.75)
    return rgba


def plot_predictions(images: np.ndarray, masks: np.ndarray, foreground: np.ndarray,
                     labels: np.ndarray, path: str | os.PathLike, cmap: str, dpi: int) -> None:
    """Per example: image, truth and prediction outlined, TP/FP/FN map, source probability."""
    n = len(images)
    fig = Figure(figsize=(15, 3.3 * n), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        # Pixels not measured (IGNORE in the truth) are neither found nor missed, as in the metrics.
        known = masks[i] != IGNORE
        pred, truth = (labels[i] > 0) & known, (masks[i] > 0) & known
        _show_image(fig, axes[i, 0], images[i], cmap)
        _show_image(fig, axes[i, 1], images[i], "gray", bar=False)
        _outline(axes[i, 1], truth, TRUTH_COLOUR, 1.4)
        _outline(axes[i, 1], pred, PREDICTION_COLOUR, 1.0)
        _show_image(fig, axes[i, 2], images[i], "gray", bar=False)
        axes[i, 2].imshow(_error_overlay(pred, truth), origin="lower", interpolation="nearest")
        union = (pred | truth).sum()
        iou = (pred & truth).sum() / union if union else 1.0
        fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
        axes[i, 2].set_xlabel(f"IoU {iou:.3f}   FP {fp} px   FN {fn} px", fontsize=8)
        prob = axes[i, 3].imshow(foreground[i], cmap="viridis", origin="lower", vmin=0, vmax=1,
                                 interpolation="nearest")
        fig.colorbar(prob, ax=axes[i, 3], fraction=0.046, pad=0.02, label="P(source)")
        axes[i, 0].set_ylabel(f"example #{i}")
    titles = ("image (zscale, asinh)", "truth and prediction", "errors", "source probability")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
    axes[0, 1].legend(handles=[Line2D([], [], color=TRUTH_COLOUR, lw=1.4, label="truth"),
                               Line2D([], [], color=PREDICTION_COLOUR, lw=1.0, label="prediction")],
                      loc="upper right", fontsize=7, framealpha=0.7)
    axes[0, 2].legend(handles=[Patch(color=ERROR_COLOURS[k], label=label) for k, label in
                               (("TP", "true positive"), ("FP", "false positive"),
                                ("FN", "false negative"))],
                      loc="upper right", fontsize=7, framealpha=0.7)
    _bare(axes)
    save_png(fig, path, dpi)


def plot_uncertainty(images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                     mc_mean: np.ndarray | None, mc_std: np.ndarray | None,
                     path: str | os.PathLike, cmap: str, dpi: int) -> None:
    """Per example: image, MC-dropout mean and std of P(source), with the errors outlined."""
    if mc_mean is None or mc_std is None:
        note_figure("MC dropout was off (evaluate.mc_samples: 0):\n"
                    "the predictions carry no uncertainty maps.", path, dpi)
        return
    n = len(images)
    top = max(float(np.nanmax(mc_std[:n])), 1e-6) if n else 1.0   # one std scale for all rows
    fig = Figure(figsize=(12, 3.3 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        known = masks[i] != IGNORE
        wrong = ((labels[i] > 0) != (masks[i] > 0)) & known
        _show_image(fig, axes[i, 0], images[i], cmap)
        mean = axes[i, 1].imshow(mc_mean[i], cmap="viridis", origin="lower", vmin=0, vmax=1,
                                 interpolation="nearest")
        fig.colorbar(mean, ax=axes[i, 1], fraction=0.046, pad=0.02, label="mean P(source)")
        std = axes[i, 2].imshow(mc_std[i], cmap="inferno", origin="lower", vmin=0, vmax=top,
                                interpolation="nearest")
        fig.colorbar(std, ax=axes[i, 2], fraction=0.046, pad=0.02, label="std P(source)")
        for ax in axes[i, 1:]:
            _outline(ax, wrong, "#ffffff", 0.8)
        axes[i, 2].set_xlabel(f"mean std: wrong px {_mean(mc_std[i], wrong)}, "
                              f"right px {_mean(mc_std[i], ~wrong & known)}", fontsize=8)
        axes[i, 0].set_ylabel(f"example #{i}")
    for ax, title in zip(axes[0], ("image (zscale, asinh)", "MC dropout mean",
                                   "MC dropout std (errors outlined white)")):
        ax.set_title(title, fontsize=10)
    _bare(axes)
    save_png(fig, path, dpi)


def _mean(values: np.ndarray, where: np.ndarray) -> str:
    return f"{values[where].mean():.3f}" if where.any() else "n/a"
