"""Calibration: ECE of known predictors, temperature scaling, the PR table, calibration.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from astroseg.errors import DataError
from astroseg.scoring.calibration import (Calibration, ProbabilityHistogram, calibrated_event,
                                          fit_temperature, load_temperature, nll,
                                          save_calibration)


def _binary(n: int, sharpen: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose sigmoid / sharpen is the true probability of each pixel's label."""
    g = torch.Generator().manual_seed(seed)
    true_logit = torch.randn(n, generator=g) * 2
    target = torch.rand(n, generator=g) < torch.sigmoid(true_logit)
    return (true_logit * sharpen).view(1, 1, 1, n), target.view(1, 1, 1, n).to(torch.uint8)


def _ece(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> float:
    hist = ProbabilityHistogram()
    hist.add(*calibrated_event(logits, target, temperature))
    return hist.ece()


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_is_not():
    logits, target = _binary(400_000, sharpen=1.0)
    assert _ece(logits, target) < 0.005
    over, target = _binary(400_000, sharpen=4.0)
    assert _ece(over, target) > 0.05


def test_temperature_scaling_recovers_the_sharpening_and_lowers_nll():
    logits, target = _binary(200_000, sharpen=3.0, seed=1)
    t = fit_temperature(logits, target)
    assert t == pytest.approx(3.0, rel=0.05)
    assert nll(logits, target, t) < nll(logits, target, 1.0)
    assert _ece(logits, target, t) < 0.01 < _ece(logits, target, 1.0)


def test_multiclass_calibration_uses_the_top_class():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 50, 50, generator=g) * 5
    target = logits.argmax(1, keepdim=True)       # always right: confidence vs accuracy 1
    prob, right = calibrated_event(logits, target, 1.0)
    assert bool(right.all())
    assert fit_temperature(logits, target) < 1.0  # a predictor never wrong gets sharper


def test_pr_table_at_one_half_is_the_threshold_decision():
    logits, target = _binary(10_000, sharpen=1.0, seed=3)
    hist = ProbabilityHistogram()
    prob = torch.sigmoid(logits)
    hist.add(prob, target > 0)
    row = next(r for r in hist.pr_rows() if r["threshold"] == 0.5)
    pred, truth = prob >= 0.5, target > 0
    assert row["precision"] == pytest.approx(float((pred & truth).sum() / pred.sum()))
    assert row["recall"] == pytest.approx(float((pred & truth).sum() / truth.sum()))
    rows = hist.reliability_rows()
    assert sum(r["count"] for r in rows) == 10_000


def test_calibration_file_applies_only_to_its_model(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    assert load_temperature(model, "abc") is None                 # no file
    save_calibration(model, Calibration(2.5, True, "abc"))
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == 2.5
    assert load_temperature(model, "abc") == 2.5
    assert load_temperature(model, "other") is None               # another model file
    save_calibration(model, Calibration(1.0, False, "abc"))
    assert load_temperature(model, "abc") is None                 # evaluate.calibrate false
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(DataError, match="calibration.json"):
        load_temperature(model, "abc")
    (tmp_path / "calibration.json").write_text(json.dumps(
        {"temperature": -1, "calibrated": True, "model_sha256": "abc"}))
    with pytest.raises(DataError, match="temperature = -1"):
        load_temperature(model, "abc")


def test_empty_histogram_has_zero_ece():
    assert ProbabilityHistogram().ece() == 0.0
    assert np.isfinite([r["precision"] for r in ProbabilityHistogram().pr_rows()]).all()
