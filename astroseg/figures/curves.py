"""PNG figures of scores: precision-recall, reliability (calibration), completeness against S/N."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from astroseg.errors import DataError
from astroseg.figures.plotting import save_png

# The columns each CSV must have (what the evaluate and baseline stages write).
PR_COLUMNS = ("threshold", "precision", "recall")
RELIABILITY_COLUMNS = ("bin_lo", "bin_hi", "confidence", "frequency", "count")
COMPLETENESS_COLUMNS = ("snr_lo", "snr_hi", "snr", "n", "found", "completeness")

MODEL_COLOUR = "#1f5fbf"
BASELINE_COLOUR = "#d95f02"


def wilson_interval(found: np.ndarray, n: np.ndarray,
                    z: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of found/n (z = 1: the 68% band); NaN where n is 0.

    Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at 0 or 1, which
    is where completeness usually sits at the faint and the bright end.
    """
    found, n = np.asarray(found, float), np.asarray(n, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = found / n
        denom = 1 + z ** 2 / n
        centre = (p + z ** 2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / denom
    lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    empty = n <= 0
    lo[empty], hi[empty] = np.nan, np.nan
    return lo, hi


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10)


def _iso_f1(ax, lims: tuple[float, float]) -> None:
    """Grey iso-F1 lines over the visible square, labelled where they fit."""
    grid = np.linspace(max(lims[0], 1e-3), lims[1], 300)
    r, p = np.meshgrid(grid, grid)
    f1 = 2 * p * r / (p + r)
    levels = [f for f in (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
              if f1.min() < f < f1.max()]
    if levels:
        lines = ax.contour(r, p, f1, levels=levels, colors="0.8", linewidths=0.8, zorder=0)
        ax.clabel(lines, fmt="F1 %g", fontsize=6, colors="0.55")


def _pr_panel(ax, curve: dict[str, np.ndarray], k: int | None,
              baseline: tuple[float, float] | None, lims: tuple[float, float]):
    _iso_f1(ax, lims)
    order = np.argsort(curve["recall"], kind="stable")
    ax.plot(curve["recall"][order], curve["precision"][order], color=MODEL_COLOUR, lw=1.5,
            zorder=2, label="model")
    dots = ax.scatter(curve["recall"], curve["precision"], c=curve["threshold"], s=12,
                      cmap="viridis", vmin=0, vmax=1, zorder=3)
    if k is not None:
        ax.plot(curve["recall"][k], curve["precision"][k], marker="*", ms=16, mfc="none",
                mec="k", mew=1.4, ls="none", zorder=4,
                label=f"operating threshold {curve['threshold'][k]:.2f}")
    if baseline is not None:
        ax.plot(baseline[1], baseline[0], marker="s", ms=9, color=BASELINE_COLOUR, ls="none",
                zorder=4, label="photutils baseline")
    ax.set(xlim=lims, ylim=lims, xlabel="recall (pixels)", ylabel="precision (pixels)",
           aspect="equal")
    ax.grid(alpha=0.3)
    return dots


def plot_pr_curve(curve: dict[str, np.ndarray], threshold: float | None,
                  baseline: tuple[float, float] | None, path: str | os.PathLike,
                  dpi: int) -> None:
    """Pixel precision against recall over thresholds; the operating point and the baseline's.

    Left the whole square, right a zoom on the operating point: a good model lives in the top
    right corner, where the full view shows one blob.
    """
    if not len(curve["recall"]):
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax = fig.subplots()
        _no_data(ax, "no precision-recall points")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall (pixels)", ylabel="precision (pixels)")
        save_png(fig, path, dpi)
        return
    f1 = 2 * curve["precision"] * curve["recall"] / np.maximum(
        curve["precision"] + curve["recall"], 1e-12)
    k = (int(np.argmin(np.abs(curve["threshold"] - threshold))) if threshold is not None
         else None)
    centre = k if k is not None else int(np.argmax(f1))
    low = max(0.0, min(curve["precision"][centre], curve["recall"][centre]) - 0.05)
    fig = Figure(figsize=(11.5, 5.2), layout="constrained")
    full, zoom = fig.subplots(1, 2)
    dots = _pr_panel(full, curve, k, baseline, (0.0, 1.01))
    _pr_panel(zoom, curve, k, baseline, (low, 1.0 + (1 - low) * 0.02))
    full.set_title("Precision-recall over thresholds, test split")
    zoom.set_title("near the operating point" if k is not None else "near the best F1")
    full.legend(loc="lower left", fontsize=8)
    fig.colorbar(dots, ax=[full, zoom], label="threshold")
    save_png(fig, path, dpi)


def plot_reliability(table: dict[str, np.ndarray], calibration: dict[str, float | None],
                     path: str | os.PathLike, dpi: int) -> None:
    """Observed source frequency against predicted probability per bin, with the bin counts."""
    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfectly calibrated")
    used = (table["count"] > 0) & np.isfinite(table["confidence"]) & np.isfinite(table["frequency"])
    if used.any():
        lo, hi = table["bin_lo"][used], table["bin_hi"][used]
        conf, freq = table["confidence"][used], table["frequency"][used]
        # Gap bars from the diagonal: the miscalibration ECE averages (weighted by count).
        top.bar(lo, freq - conf, bottom=conf, width=hi - lo, align="edge", color="#e8282b",
                alpha=0.25, label="gap")
        top.plot(conf, freq, marker="o", color=MODEL_COLOUR, label="model")
        bottom.bar(lo, table["count"][used], width=hi - lo, align="edge", color="0.5")
        bottom.set_yscale("log")
    else:
        _no_data(top, "no reliability bins")
    title = "Reliability of P(source), test pixels"
    parts = [f"ECE {calibration['ece']:.4f}"] if calibration.get("ece") is not None else []
    if calibration.get("ece_uncalibrated") is not None:
        parts.append(f"uncalibrated {calibration['ece_uncalibrated']:.4f}")
    if calibration.get("temperature") is not None:
        parts.append(f"T = {calibration['temperature']:.3g}")
    top.set_title(title + ("\n" + ", ".join(parts) if parts else ""), fontsize=10)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency of source pixels")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set(xlabel="predicted probability (bin mean confidence)", ylabel="pixels")
    bottom.grid(alpha=0.3)
    save_png(fig, path, dpi)


def plot_completeness(model: dict[str, np.ndarray], baseline: dict[str, np.ndarray] | None,
                      path: str | os.PathLike, dpi: int) -> None:
    """Object completeness against S/N, model and baseline on one axis, Wilson 68% error bars."""
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.subplots()
    missing = []
    all_snr = []
    for name, table, colour, marker in (("model", model, MODEL_COLOUR, "o"),
                                        ("photutils baseline", baseline, BASELINE_COLOUR, "s")):
        if table is None or not len(table["snr"]):
            missing.append(name)
            continue
        lo, hi = wilson_interval(table["found"], table["n"])
        c = table["completeness"]
        yerr = np.vstack([np.clip(c - lo, 0, None), np.clip(hi - c, 0, None)])
        ax.errorbar(table["snr"], c, yerr=yerr, color=colour, marker=marker, ms=5, capsize=3,
                    lw=1.4, label=f"{name} ({int(table['n'].sum())} objects)")
        all_snr.append(table["snr"])
    if all_snr:
        ax.axhline(0.5, color="0.6", ls=":", lw=1)   # where the 50%-completeness S/N is read
    snr = np.concatenate(all_snr) if all_snr else np.array([])
    if snr.size and (snr > 0).all() and snr.max() / snr.min() > 10:
        ax.set_xscale("log")
        # S/N reads as plain numbers (2, 5, 10, 20), not as powers of ten.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    title = "Object completeness against S/N (error bars: Wilson 68%)"
    why = "no per-object truth (e.g. FITS masks without an object catalogue)"
    if missing and all_snr:
        title += f"\nno curve for the {missing[0]}: {why}"
    elif missing:
        _no_data(ax, f"no completeness curves:\n{why}")
    ax.set(ylim=(-0.02, 1.05), xlabel="S/N of the true object", ylabel="completeness")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if all_snr:
        ax.legend(loc="lower right", fontsize=8)
    save_png(fig, path, dpi)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike,
                   dpi: int) -> None:
    """The pixel confusion matrix, each row (true class) normalised to 1, with the counts."""
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise DataError(f"confusion matrix of shape {matrix.shape}: expected ({k}, {k}), one "
                        f"row and column per class {class_names}; rerun the evaluate stage")
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.4 * k + 2.6, 1.2 * k + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rows[i, j]:.3f}\n{int(matrix[i, j]):,}", ha="center", va="center",
                    fontsize=8, color="white" if rows[i, j] > 0.6 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class")
    ax.set_xticklabels(class_names, rotation=30, ha="right")
    ax.set_yticklabels(class_names)
    ax.set_title("Pixel confusion, test split (rows sum to 1; counts below)", fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    save_png(fig, path, dpi)
