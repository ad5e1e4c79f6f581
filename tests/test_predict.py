"""Prediction API and `astroseg predict` on HDF5: same answers as evaluation, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from astroseg.cli import main as cli_main
from astroseg.data.dataset import load_split
from astroseg.errors import DataError
from astroseg.data.normalize import normalize_array
from astroseg.infer.predict import load_model, predict


def test_predict_matches_a_direct_forward_pass(pipeline_outputs):
    model = load_model(pipeline_outputs / "models/model.pt", "cpu")
    test = load_split(pipeline_outputs / "data/dataset.h5", "test")
    prob, mask = predict(model, test.images, batch_size=3)
    assert prob.shape == mask.shape == test.images.shape
    assert prob.dtype == np.float32 and mask.dtype == np.uint8
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(test.images[:2, None])))[:, 0].numpy()
    np.testing.assert_allclose(prob[:2], direct, rtol=1e-5, atol=1e-6)
    assert np.array_equal(mask, (prob >= 0.5).astype(np.uint8))
    one_prob, _ = predict(model, test.images[0])
    np.testing.assert_allclose(one_prob, prob[0], rtol=1e-5, atol=1e-6)


def test_predict_refuses_bad_arrays(pipeline_outputs):
    model = load_model(pipeline_outputs / "models/model.pt", "cpu")
    with pytest.raises(DataError, match="NaN"):
        predict(model, np.full((1, 48, 48), np.nan, np.float32))
    with pytest.raises(DataError, match="multiples of 8"):
        predict(model, np.zeros((1, 44, 48), np.float32))


def test_predict_normalizes_raw_pixels_as_the_model_was_trained(pipeline_outputs):
    model = load_model(pipeline_outputs / "models/model.pt", "cpu")
    test = load_split(pipeline_outputs / "data/dataset.h5", "test")
    # Raw counts: the test images scaled and offset like a detector's output.
    raw = 200.0 + 5000.0 * test.images[:3]
    with pytest.warns(UserWarning, match=r"trained on images normalised to \[0, 1\] \('minmax'\)"):
        unnormalised, _ = predict(model, raw)
    prob, labels = predict(model, raw, normalize=True)
    expected = np.stack([normalize_array(im, np.ones(im.shape, bool), "minmax", "x")[0] for im in raw])
    direct, _ = predict(model, expected)
    np.testing.assert_allclose(prob, direct, rtol=1e-5, atol=1e-6)
    # Without normalisation the model sees values it never saw in training.
    assert np.abs(unnormalised - prob).max() > 0.1
    # NaN pixels are invalid: left out of the statistics, probability NaN, label 0.
    holed = raw.copy()
    holed[0, 5:9, 5:9] = np.nan
    prob, labels = predict(model, holed, normalize=True)
    assert np.isnan(prob[0, 5:9, 5:9]).all() and (labels[0, 5:9, 5:9] == 0).all()
    assert np.isfinite(prob[1:]).all()


def test_normalised_inputs_draw_no_warning(pipeline_outputs, recwarn):
    model = load_model(pipeline_outputs / "models/model.pt", "cpu")
    predict(model, load_split(pipeline_outputs / "data/dataset.h5", "test").images[:2])
    assert not [w for w in recwarn if "normalised" in str(w.message)]


def test_cli_predict_round_trip(pipeline_outputs, tmp_path, capsys):
    test = load_split(pipeline_outputs / "data/dataset.h5", "test")
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    with h5py.File(src, "w") as f:
        f["images"] = test.images
    model = pipeline_outputs / "models/model.pt"
    assert cli_main(["predict", str(src), "-o", str(out), "--model", str(model),
                     "--batch-size", "3", "--device", "cpu"]) == 0
    prob, mask = predict(load_model(model, "cpu"), test.images)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["probabilities"][:], prob, rtol=1e-5, atol=1e-6)
        assert np.array_equal(f["labels"][:], mask)
        assert "masks" not in f   # in astroseg files `masks` is always a truth
        assert len(f.attrs["model_sha256"]) == 64


def test_cli_predict_errors_name_the_file(pipeline_outputs, tmp_path, capsys):
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f["pixels"] = np.zeros((1, 8, 8), np.float32)
    model = str(pipeline_outputs / "models/model.pt")
    out = tmp_path / "out.h5"
    assert cli_main(["predict", str(src), "-o", str(out), "--model", model]) == 2
    assert f"{src}: expected a dataset 'images'" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    assert cli_main(["predict", str(tmp_path / "none.h5"), "-o", str(out), "--model", model]) == 2
    assert "input file not found" in capsys.readouterr().err
