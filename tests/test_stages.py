"""The stage scripts run directly: outputs, and bad input that fails cleanly without damage."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from astroseg.train.history import read_history
from conftest import run_stage, tiny_params, write_params

FIGURES = ["plots/training_curves.png", "plots/samples.png", "plots/predictions.png",
           "plots/pr_curve.png", "plots/reliability.png", "plots/completeness.png",
           "plots/uncertainty.png", "plots/confusion.png"]
OUTPUTS = ["data/dataset.h5", "models/model.pt", "metrics/train_history.tsv",
           "metrics/metrics.json", "metrics/test_predictions.h5", *FIGURES, "plots/report.html"]


def test_pipeline_writes_every_output(pipeline_outputs):
    for name in OUTPUTS:
        assert (pipeline_outputs / name).stat().st_size > 0, name
    metrics = json.loads((pipeline_outputs / "metrics/metrics.json").read_text())
    for key in ("loss", "iou", "dice", "precision", "recall"):
        assert 0.0 <= metrics[key] <= (10.0 if key == "loss" else 1.0), key
    for key in ("iou", "dice", "precision", "recall"):
        assert 0.0 <= metrics["pooled"][key] <= 1.0, key
    assert metrics["n_images"] == 8
    history = read_history(pipeline_outputs / "metrics/train_history.tsv")
    assert history["epoch"].tolist() == [1.0, 2.0]
    for name in FIGURES:
        assert (pipeline_outputs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in (pipeline_outputs / "plots/report.html").read_text().lower()
    # No temp files left behind by the atomic writes.
    assert not list(pipeline_outputs.rglob("*.tmp"))


def _snapshot(directory, names):
    return {n: (directory / n).read_bytes() for n in names if (directory / n).exists()}


@pytest.mark.parametrize("stage, override, message", [
    ("prepare", {"data": {"n_train": -1}}, "data.n_train = -1 is out of range"),
    ("train", {"train": {"lr": 0}}, "train.lr = 0 is out of range: expected > 0"),
    ("train", {"model": {"tiny_segformer": {"num_heads": 3}}}, "is not divisible by"),
    ("evaluate", {"evaluate": {"threshold": 2}}, "evaluate.threshold = 2"),
    ("plots", {"plots": {"cmap": "no-such-map"}}, "plots.cmap = 'no-such-map': not a matplotlib colormap"),
    ("plots", {"plots": {"n_predictions": 99}}, "plots.n_predictions = 99 exceeds"),
    # What a later stage would refuse stops the first stage, before it writes anything.
    ("prepare", {"data": {"height": 100}}, "data.height = 100 is not a multiple of 8"),
    ("prepare", {"plots": {"cmap": "notacmap"}}, "plots.cmap = 'notacmap'"),
    ("prepare", {"model": {"num_classes": 3}}, "model.num_classes = 3: data.classes"),
    ("prepare", {"train": {"lr": "1e-3x"}}, "train.lr = '1e-3x' (str): expected float"),
])
@pytest.mark.fault("params")
def test_bad_params_exit_nonzero_and_leave_outputs_untouched(pipeline_outputs, tmp_path, stage,
                                                             override, message):
    work = tmp_path / "work"
    shutil.copytree(pipeline_outputs, work)
    before = _snapshot(work, OUTPUTS)
    write_params(work, tiny_params(**override))
    result = run_stage(stage, work)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert _snapshot(work, OUTPUTS) == before


@pytest.mark.fault("params")
def test_cuda_without_a_gpu_is_a_clear_error(workdir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_params(workdir, tiny_params(train={"device": "cuda"}))
    assert run_stage("prepare", workdir).returncode == 0
    result = run_stage("train", workdir)
    assert result.returncode == 2 and "train.device = 'cuda' but torch" in result.stderr


@pytest.mark.fault("hdf5")
def test_corrupt_dataset_is_named(pipeline_outputs, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(pipeline_outputs, work)
    data = work / "data/dataset.h5"
    data.write_bytes(data.read_bytes()[:4096])
    result = run_stage("train", work)
    assert result.returncode == 2
    assert "data/dataset.h5: not a readable HDF5 file" in result.stderr


def test_two_class_softmax_runs_end_to_end_and_wrong_k_is_refused(pipeline_outputs, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(pipeline_outputs, work)
    write_params(work, tiny_params(model={"num_classes": 2}))
    for stage in ("train", "evaluate", "plots"):
        result = run_stage(stage, work)
        assert result.returncode == 0, result.stderr
    metrics = json.loads((work / "metrics/metrics.json").read_text())
    assert 0.0 <= metrics["iou"] <= 1.0
    write_params(work, tiny_params(model={"num_classes": 3}))
    result = run_stage("train", work)
    assert result.returncode == 2
    assert "model.num_classes = 3: data.classes = binary gives 2 classes" in result.stderr
