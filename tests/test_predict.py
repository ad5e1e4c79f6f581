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


@pytest.mark.fault("hdf5")
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


@pytest.mark.fault("hdf5")
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


def _tiny_checkpoint(path, **config):
    from astroseg.models import build_model
    from astroseg.models.checkpoint import save_checkpoint

    config = {"name": "segformer", "num_classes": 1, "dims": [8, 16], "depths": [1, 1],
              "heads": [1, 2], "sr_ratios": [2, 1], "decoder_dim": 16, "refine_dim": 4, **config}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(path, build_model(config), config, {"normalization": "minmax"})
    return path


def test_hdf5_predict_writes_std_and_calibration_attributes(tmp_path, capsys):
    import json

    from astroseg.infer.predict import file_sha256, predict_with_std

    model = _tiny_checkpoint(tmp_path / "m/model.pt")   # dropout 0.1 and drop-path 0.1
    images = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    with h5py.File(src, "w") as f:
        f["images"] = images
    args = ["predict", str(src), "-o", str(out), "--model", str(model), "--device", "cpu"]
    assert cli_main([*args, "--mc-samples", "3"]) == 0
    assert "probabilities and std and labels for 3 images" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert f["std"].shape == f["probabilities"].shape and f["std"].dtype == np.float32
        assert f["std"][:].max() > 0
        assert f.attrs["mc_samples"] == 3 and not f.attrs["calibrated"]
        assert f.attrs["temperature"] == 1.0
    # The same as the API's MC prediction, seeded the same way.
    from astroseg.infer.predict import seeded

    net = load_model(model, "cpu")
    with seeded(net, True):
        prob, _, std = predict_with_std(net, images, 3)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["probabilities"][:], prob, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["std"][:], std, rtol=1e-5, atol=1e-6)
    # A calibration.json for this model file: the CLI and load_model + predict both apply it.
    raw, _ = predict(load_model(model, "cpu"), images)
    (model.parent / "calibration.json").write_text(json.dumps(
        {"temperature": 2.0, "calibrated": True, "model_sha256": file_sha256(model)}))
    assert cli_main(args) == 0
    assert "logits divided by the temperature 2" in capsys.readouterr().err
    expected = torch.sigmoid(torch.logit(torch.from_numpy(raw).double()) / 2).numpy()
    with h5py.File(out, "r") as f:
        assert f.attrs["calibrated"] and f.attrs["temperature"] == 2.0 and "std" not in f
        np.testing.assert_allclose(f["probabilities"][:], expected, atol=2e-6)
    np.testing.assert_allclose(predict(load_model(model, "cpu"), images)[0], expected, atol=2e-6)
    np.testing.assert_array_equal(predict(load_model(model, "cpu", calibration=False),
                                          images)[0], raw)
    assert cli_main([*args, "--no-calibration"]) == 0
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["probabilities"][:], raw)
        assert not f.attrs["calibrated"]
