"""Figures and the offline report from small fake inputs: valid PNGs, a self-contained HTML file."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib.image import imread

from astroseg.data.dataset import Split, write_splits
from astroseg.errors import DataError
from astroseg.figures.curves import (COMPLETENESS_COLUMNS, PR_COLUMNS, RELIABILITY_COLUMNS,
                                     plot_completeness, plot_pr_curve, plot_reliability,
                                     wilson_interval)
from astroseg.figures.inputs import number, read_json, read_table
from astroseg.figures.plotting import (plot_predictions, plot_samples, plot_training_curves,
                                       plot_uncertainty, zscale_asinh)
from astroseg.figures.report import render_report, write_report
from astroseg.train.history import EpochRecord, write_history
from conftest import run_stage, tiny_params, write_params

PNG = b"\x89PNG\r\n\x1a\n"
DPI = 30


def _is_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG, path
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10
    return pixels.shape[:2]


def _examples(n: int = 3, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.uniform(8, size - 8, 2)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 18.0)
        images.append(blob + rng.normal(0, 0.03, blob.shape))
        masks.append(blob > 0.2)
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.uint8)
    foreground = np.clip(np.roll(masks, 1, axis=2) * 0.9 + rng.uniform(0, 0.1, masks.shape),
                         0, 1).astype(np.float32)
    labels = (foreground > 0.5).astype(np.uint8)
    return {"images": images, "masks": masks, "foreground": foreground, "labels": labels,
            "mc_mean": foreground,
            "mc_std": (0.2 * foreground * (1 - foreground)).astype(np.float32)}


def _csv(path: Path, columns: tuple[str, ...], rows: np.ndarray) -> None:
    lines = [",".join(columns)] + [",".join(f"{v:g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _completeness_rows(shift: float) -> np.ndarray:
    lo = np.array([1.0, 3.0, 10.0, 30.0])
    n = np.array([40, 30, 20, 10])
    found = np.round(n * np.clip([0.1 + shift, 0.6 + shift, 0.95, 1.0], 0, 1))
    return np.column_stack([lo, lo * 3, lo * 1.8, n, found, found / n])


def _fake_metrics(tmp_path: Path) -> Path:
    """The evaluate and baseline stages' outputs the plots stage reads, small and fake."""
    metrics = tmp_path / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    t = np.linspace(0.05, 0.95, 19)
    _csv(metrics / "pr_curve.csv", PR_COLUMNS,
         np.column_stack([t, 0.6 + 0.4 * t, 1 - 0.8 * t ** 3]))
    lo = np.linspace(0, 0.9, 10)
    count = np.array([5000, 40, 20, 0, 10, 12, 15, 30, 60, 900])
    conf = lo + 0.05
    _csv(metrics / "reliability.csv", RELIABILITY_COLUMNS,
         np.column_stack([lo, lo + 0.1, conf, np.clip(conf + 0.03, 0, 1), count]))
    _csv(metrics / "completeness.csv", COMPLETENESS_COLUMNS, _completeness_rows(0.2))
    _csv(metrics / "baseline_completeness.csv", COMPLETENESS_COLUMNS, _completeness_rows(0.0))
    pixel = {"iou": 0.91, "dice": 0.95, "precision": 0.94, "recall": 0.96,
             "pooled": {"iou": 0.9, "dice": 0.947, "precision": 0.93, "recall": 0.97}}
    objects = {"n_true": 100, "n_pred": 97, "found": 90, "completeness": 0.9, "purity": 0.93,
               "splits": 2, "merges": 3}
    (metrics / "confusion.json").write_text(json.dumps(
        {"classes": ["background", "source"], "matrix": [[9000, 40], [60, 900]]}))
    (metrics / "metrics.json").write_text(json.dumps({
        **pixel, "n_images": 8, "threshold": 0.5, "tta": True, "objects": objects,
        "calibration": {"ece": 0.0123, "ece_uncalibrated": 0.034, "temperature": 1.4},
        "uncertainty": {"std_wrong": 0.2, "std_right": 0.02, "ratio": 10.0}}))
    (metrics / "baseline.json").write_text(json.dumps({
        "iou": 0.8, "dice": 0.88, "precision": 0.85, "recall": 0.9, "objects": objects,
        "pooled": {"iou": 0.79, "dice": 0.88, "precision": 0.84, "recall": 0.91},
        "deblend": False,
        "tuned": {"nsigma": 2.0, "npixels": 5, "val_iou": 0.81,
                  "grid": [{"nsigma": ns, "npixels": npix, "iou": 0.7 + ns / 100 - npix / 1000}
                           for ns in (1.5, 2.0) for npix in (5, 10)],
                  "note": "<b>see https://example.org</b>"}}))
    return metrics


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A pipeline directory holding every input of the plots stage, small and fake."""
    ex = _examples(4)
    write_splits(tmp_path / "data/dataset.h5",
                 [("train", Split(ex["images"], ex["masks"]))], {"source": "test"})
    write_history(tmp_path / "metrics/train_history.tsv",
                  [EpochRecord(e, 1 / e, 1.2 / e, 0.8 + e / 100, 0.9 + e / 200, 1e-3)
                   for e in (1, 2, 3)])
    _fake_metrics(tmp_path)
    with h5py.File(tmp_path / "metrics/test_predictions.h5", "w") as f:
        for key, value in ex.items():
            f.create_dataset(key, data=value)
    write_params(tmp_path, tiny_params(plots={"n_samples": 2, "n_predictions": 1, "dpi": DPI}))
    return tmp_path


# ---------------------------------------------------------------- image figures

def test_image_figures_write_valid_pngs(tmp_path):
    ex = _examples(2)
    plot_samples(ex["images"], ex["masks"], tmp_path / "samples.png", "magma", DPI)
    plot_predictions(ex["images"], ex["masks"], ex["foreground"], ex["labels"],
                     tmp_path / "predictions.png", "magma", DPI)
    plot_uncertainty(ex["images"], ex["masks"], ex["labels"], ex["mc_mean"], ex["mc_std"],
                     tmp_path / "uncertainty.png", "magma", DPI)
    plot_training_curves({"epoch": np.arange(1.0, 4), "train_loss": np.ones(3),
                          "val_loss": np.ones(3), "val_iou": np.ones(3), "val_dice": np.ones(3)},
                         tmp_path / "training_curves.png", DPI)
    for name in ("samples", "predictions", "uncertainty", "training_curves"):
        _is_png(tmp_path / f"{name}.png")
    # One row per example: two rows make the predictions figure at least 0.4 as tall as wide.
    height, width = _is_png(tmp_path / "predictions.png")
    assert height > 0.4 * width
    assert not list(tmp_path.glob(".*.tmp"))


def test_uncertainty_without_mc_dropout_still_writes_a_figure(tmp_path):
    ex = _examples(2)
    plot_uncertainty(ex["images"], ex["masks"], ex["labels"], None, None,
                     tmp_path / "uncertainty.png", "magma", DPI)
    _is_png(tmp_path / "uncertainty.png")


def test_predictions_survive_empty_and_full_masks(tmp_path):
    ex = _examples(2)
    masks, labels = ex["masks"].copy(), ex["labels"].copy()
    masks[0], labels[0] = 0, 0            # nothing to find, nothing found: no contour level
    masks[1], labels[1] = 1, 1
    flat = np.zeros_like(ex["images"])    # ZScale of a flat image has no range
    plot_predictions(flat, masks, ex["foreground"], labels, tmp_path / "p.png", "gray", DPI)
    _is_png(tmp_path / "p.png")
    norm = zscale_asinh(flat[0])
    assert norm.vmax > norm.vmin


# ---------------------------------------------------------------- curves

def test_curve_figures_write_valid_pngs(tmp_path):
    metrics = _fake_metrics(tmp_path)
    curve = read_table(metrics / "pr_curve.csv", PR_COLUMNS, "evaluate")
    plot_pr_curve(curve, 0.5, (0.85, 0.9), tmp_path / "pr.png", DPI)
    plot_reliability(read_table(metrics / "reliability.csv", RELIABILITY_COLUMNS, "evaluate"),
                     {"ece": 0.01, "ece_uncalibrated": None, "temperature": 1.2},
                     tmp_path / "rel.png", DPI)
    plot_completeness(read_table(metrics / "completeness.csv", COMPLETENESS_COLUMNS, "evaluate"),
                      read_table(metrics / "baseline_completeness.csv", COMPLETENESS_COLUMNS,
                                 "baseline"), tmp_path / "comp.png", DPI)
    for name in ("pr", "rel", "comp"):
        _is_png(tmp_path / f"{name}.png")


def test_header_only_and_missing_tables_still_plot(tmp_path):
    _csv(tmp_path / "empty.csv", COMPLETENESS_COLUMNS, np.empty((0, 6)))
    empty = read_table(tmp_path / "empty.csv", COMPLETENESS_COLUMNS, "evaluate")
    assert all(len(v) == 0 for v in empty.values())
    plot_completeness(empty, empty, tmp_path / "comp.png", DPI)
    plot_completeness(_table(_completeness_rows(0.1)), None, tmp_path / "half.png", DPI)
    _csv(tmp_path / "pr.csv", PR_COLUMNS, np.empty((0, 3)))
    plot_pr_curve(read_table(tmp_path / "pr.csv", PR_COLUMNS, "evaluate"), 0.5, None,
                  tmp_path / "pr.png", DPI)
    no_bins = {c: np.zeros(0) for c in RELIABILITY_COLUMNS}
    plot_reliability(no_bins, {}, tmp_path / "rel.png", DPI)
    for name in ("comp", "half", "pr", "rel"):
        _is_png(tmp_path / f"{name}.png")


def _table(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {c: rows[:, i] for i, c in enumerate(COMPLETENESS_COLUMNS)}


def test_wilson_interval_brackets_the_fraction_and_stays_in_unit_range():
    lo, hi = wilson_interval(np.array([0, 5, 10, 0]), np.array([10, 10, 10, 0]))
    assert lo[0] == 0 and 0 < hi[0] < 0.2            # 0/10 is not certainly 0
    assert lo[1] < 0.5 < hi[1] and hi[1] - 0.5 == pytest.approx(0.5 - lo[1])
    assert 0.8 < lo[2] < 1 and hi[2] == pytest.approx(1)
    assert np.isnan(lo[3]) and np.isnan(hi[3])
    # z = 1 on 50/100: about +- one binomial sigma, 0.05.
    lo, hi = wilson_interval(np.array([50]), np.array([100]))
    assert hi[0] - lo[0] == pytest.approx(0.1, abs=0.002)


# ---------------------------------------------------------------- inputs

@pytest.mark.fault("missing-data")
def test_missing_and_bad_inputs_name_the_file_and_the_stage(tmp_path):
    with pytest.raises(DataError, match=r"baseline\.json: input not found; the baseline stage writes it: run `dvc repro`"):
        read_json(tmp_path / "baseline.json", "baseline")
    with pytest.raises(DataError, match=r"pr_curve\.csv: input not found; the evaluate stage writes it"):
        read_table(tmp_path / "pr_curve.csv", PR_COLUMNS, "evaluate")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON.*evaluate"):
        read_json(tmp_path / "bad.json", "evaluate")
    (tmp_path / "cols.csv").write_text("threshold,precision\n0.5,0.9\n")
    with pytest.raises(DataError, match=r"cols\.csv: no column recall"):
        read_table(tmp_path / "cols.csv", PR_COLUMNS, "evaluate")
    (tmp_path / "nan.csv").write_text("threshold,precision,recall\n0.5,x,0.9\n")
    with pytest.raises(DataError, match=r"nan\.csv, line 2: precision = 'x' is not a number"):
        read_table(tmp_path / "nan.csv", PR_COLUMNS, "evaluate")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: empty"):
        read_table(tmp_path / "empty.csv", PR_COLUMNS, "evaluate")


def test_number_reads_optional_keys():
    obj = {"a": {"b": 0.5, "flag": True, "nan": float("nan")}, "c": 3}
    assert number(obj, "a", "b") == 0.5 and number(obj, "c") == 3
    assert number(obj, "a", "x") is None and number(obj, "c", "d") is None
    assert number(obj, "a", "flag") is None and number(obj, "a", "nan") is None


# ---------------------------------------------------------------- report

def _pngs(tmp_path: Path) -> list[tuple[str, Path]]:
    ex = _examples(2)
    plot_samples(ex["images"], ex["masks"], tmp_path / "samples.png", "magma", DPI)
    plot_uncertainty(ex["images"], ex["masks"], ex["labels"], None, None,
                     tmp_path / "uncertainty.png", "magma", DPI)
    return [("training samples <&>", tmp_path / "samples.png"),
            ("MC dropout", tmp_path / "uncertainty.png")]


def test_report_is_self_contained_and_embeds_every_png(tmp_path):
    metrics_dir = _fake_metrics(tmp_path)
    figures = _pngs(tmp_path)
    metrics = read_json(metrics_dir / "metrics.json", "evaluate")
    baseline = read_json(metrics_dir / "baseline.json", "baseline")
    comp = read_table(metrics_dir / "completeness.csv", COMPLETENESS_COLUMNS, "evaluate")
    base = read_table(metrics_dir / "baseline_completeness.csv", COMPLETENESS_COLUMNS, "baseline")
    write_report(tmp_path / "report.html", figures, metrics, baseline, comp, base,
                 "data:\n  images: http://host/<x>.fits\n")
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "http" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)  # nothing to fetch
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) == len(figures)
    for uri, (_, path) in zip(uris, figures):
        assert base64.b64decode(uri.replace("\n", "")) == path.read_bytes()
    # Text from files is escaped: no tag from baseline.json, the caption or the params.
    assert "<b>" not in text and "&lt;b&gt;" in text and "&lt;x&gt;.fits" in text
    assert "training samples &lt;&amp;&gt;" in text
    # Model beside baseline; object and calibration rows; completeness with Wilson bands.
    assert "<td>0.9100</td><td>0.8000</td>" in text              # IoU: model, baseline
    assert "<td>0.0123</td>" in text and "<td>10.0000</td>" in text
    assert "<td>nsigma</td><td>2</td>" in text and "<td>deblend</td><td>no</td>" in text
    # The tuning grid as nsigma x npixels, the best point in bold.
    assert "iou: nsigma \\ npixels" in text and "<td class=\"best\">0.7150</td>" in text
    assert re.search(r"<td>1 to 3</td><td>1\.8</td><td>40</td><td>12</td><td>0\.300 \[", text)


def test_report_without_optional_inputs(tmp_path):
    figures = _pngs(tmp_path)
    empty = {c: np.zeros(0) for c in COMPLETENESS_COLUMNS}
    text = render_report(figures, {"iou": 0.5}, None, empty, None)
    assert "http" not in text.lower() and text.count("data:image/png;base64,") == 2
    assert "No completeness bins" in text and "no tuned settings" in text
    assert "&mdash;" in text            # absent scores show a dash, not a crash


def test_report_breaks_http_that_base64_spells_by_chance(tmp_path):
    # A PNG whose base64 holds "http": the report splits it, and the image decodes the same.
    data = PNG + b"\0" + base64.b64decode("AAhttpAA")   # 9 bytes: aligned to base64 groups
    (tmp_path / "x.png").write_bytes(data)
    assert "http" in base64.b64encode(data).decode()
    text = render_report([("x", tmp_path / "x.png")], {}, None, None, None)
    assert "http" not in text.lower()
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    assert base64.b64decode(uri.replace("\n", "")) == data


@pytest.mark.fault("missing-data")
def test_report_refuses_a_missing_figure(tmp_path):
    with pytest.raises(DataError, match=r"gone\.png: cannot embed"):
        render_report([("x", tmp_path / "gone.png")], {}, None, None, None)


# ---------------------------------------------------------------- the stage

OUTPUTS = ("training_curves", "samples", "predictions", "pr_curve", "reliability",
           "completeness", "uncertainty", "confusion")


def test_plots_stage_writes_every_figure_and_the_report(fake_run):
    result = run_stage("plots", fake_run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "plots: wrote 8 figures and report.html to plots/"]
    for name in OUTPUTS:
        _is_png(fake_run / "plots" / f"{name}.png")
    text = (fake_run / "plots/report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == len(OUTPUTS)
    assert "http" not in text.lower() and "n_predictions: 1" in text
    assert not list(fake_run.rglob("*.tmp"))


@pytest.mark.fault("missing-data")
def test_plots_stage_names_a_missing_input_and_writes_nothing(fake_run):
    (fake_run / "metrics/baseline_completeness.csv").unlink()
    result = run_stage("plots", fake_run)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: metrics/baseline_completeness.csv: input not "
                                     "found; the baseline stage writes it: run `dvc repro` (or "
                                     "`dvc pull` if a DVC remote holds the outputs)")
    assert not (fake_run / "plots").exists()
