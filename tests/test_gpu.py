"""CUDA: the stages, predict and FITS predict on a GPU agree with the CPU. Skipped without one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from astropy.io import fits

from astroseg.data.dataset import load_split
from astroseg.train.history import read_history
from astroseg.infer.predict import load_model, predict
from astroseg.infer.predict_fits import predict_fits
from astroseg.data.sky import write_sky
from conftest import run_stage, tiny_params, write_params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """The tiny pipeline trained and evaluated on the GPU (bf16 autocast, the default)."""
    path = tmp_path_factory.mktemp("cuda")
    write_params(path, tiny_params(train={"device": "cuda", "epochs": 3},
                                   evaluate={"device": "cuda"}))
    for stage in ("prepare", "train", "evaluate"):
        result = run_stage(stage, path)
        assert result.returncode == 0, result.stderr
        if stage == "train":
            assert "on cuda (bf16)" in result.stdout
    return path


def test_cuda_training_learns_and_evaluates_like_the_cpu(cuda_run, tmp_path):
    history = read_history(cuda_run / "metrics/train_history.tsv")
    assert len(history["epoch"]) == 3 and history["train_loss"][-1] < history["train_loss"][0]
    gpu = json.loads((cuda_run / "metrics/metrics.json").read_text())
    # The same checkpoint evaluated on the CPU: TF32/bf16 kernels differ in the last bits only.
    for name in ("data", "models"):
        (tmp_path / name).symlink_to(cuda_run / name)
    write_params(tmp_path, tiny_params(evaluate={"device": "cpu"}))
    assert run_stage("evaluate", tmp_path).returncode == 0
    cpu = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert abs(cpu["iou"] - gpu["iou"]) < 0.01 and abs(cpu["loss"] - gpu["loss"]) < 0.01


def test_predict_on_cuda_matches_cpu(cuda_run):
    images = load_split(cuda_run / "data/dataset.h5", "test").images
    p_gpu, m_gpu = predict(load_model(cuda_run / "models/model.pt", "cuda"), images)
    p_cpu, m_cpu = predict(load_model(cuda_run / "models/model.pt", "cpu"), images)
    assert p_gpu.dtype == np.float32 and p_gpu.shape == p_cpu.shape
    assert np.abs(p_gpu - p_cpu).max() < 0.02
    assert (m_gpu == m_cpu).mean() > 0.995


def test_fits_predict_on_cuda_uses_bf16_and_matches_cpu(cuda_run, tmp_path):
    write_sky(tmp_path / "sky", n_fields=1, size=192, seed=3)
    image = tmp_path / "sky/images/field_00.fits"
    model = cuda_run / "models/model.pt"
    predict_fits(image, tmp_path / "gpu.fits", model, "cuda", window=96, overlap=24)
    predict_fits(image, tmp_path / "cpu.fits", model, "cpu", window=96, overlap=24,
                 precision="fp32")
    with fits.open(tmp_path / "gpu.fits") as g, fits.open(tmp_path / "cpu.fits") as c:
        assert g[0].header["ASPREC"] == "bf16" and c[0].header["ASPREC"] == "fp32"
        assert np.array_equal(np.isnan(g[0].data), np.isnan(c[0].data))
        assert (g["MASK"].data == c["MASK"].data).mean() > 0.99



def test_cuda_data_on_device_and_compile_train_the_same_run(cuda_run, tmp_path):
    """Data held on the GPU or copied per batch, compiled or not: the same run, to rounding."""
    histories = {}
    for name, on_device, compile_mode in (("copied", "false", "false"),
                                          ("on_device", "true", "false"),
                                          ("compiled", "true", "reduce-overhead")):
        where = tmp_path / name
        where.mkdir()
        (where / "data").symlink_to(cuda_run / "data")
        write_params(where, tiny_params(train={"device": "cuda", "epochs": 3, "precision": "fp32",
                                               "data_on_device": on_device,
                                               "compile": compile_mode}))
        result = run_stage("train", where)
        assert result.returncode == 0, result.stderr
        histories[name] = read_history(where / "metrics/train_history.tsv")
    base = histories["copied"]
    assert base["train_loss"][-1] < base["train_loss"][0]
    for name in ("on_device", "compiled"):
        assert np.allclose(histories[name]["train_loss"], base["train_loss"], rtol=0.02), name
        assert np.allclose(histories[name]["val_iou"], base["val_iou"], atol=0.02), name


def test_fits_predict_keeps_its_tensors_on_the_gpu(untrained, tmp_path, monkeypatch):
    """From the normalised strip to the blended, thresholded rows every tensor of FITS predict
    is on the GPU; only finished rows go to the host. The result is the CPU's, to rounding."""
    from astroseg.infer import blend, predict_fits as pf

    devices: list[str] = []

    def spy(fn):
        def wrapper(*args, **kwargs):
            devices.extend(a.device.type for a in [*args, *kwargs.values()]
                           if isinstance(a, torch.Tensor))
            return fn(*args, **kwargs)
        return wrapper

    for name in ("normalize_tensor", "window_probabilities", "finish_rows"):
        monkeypatch.setattr(pf, name, spy(getattr(pf, name)))
    monkeypatch.setattr(blend.Blender, "add", spy(blend.Blender.add))
    monkeypatch.setattr(blend.Blender, "flush", spy(blend.Blender.flush))
    monkeypatch.setattr(pf, "to_host", lambda planes: devices.extend(
        p.device.type for p in planes.values()) or blend.to_host(planes))
    write_sky(tmp_path / "sky", n_fields=1, size=192, seed=3)
    image = tmp_path / "sky/images/field_00.fits"
    kw = {"window": 96, "overlap": 24, "precision": "fp32"}
    predict_fits(image, tmp_path / "gpu.fits", untrained, "cuda", **kw)
    assert devices and set(devices) == {"cuda"}, set(devices)
    monkeypatch.undo()
    predict_fits(image, tmp_path / "cpu.fits", untrained, "cpu", **kw)
    with fits.open(tmp_path / "gpu.fits") as g, fits.open(tmp_path / "cpu.fits") as c:
        assert np.array_equal(np.isnan(g[0].data), np.isnan(c[0].data))
        assert np.nanmax(np.abs(g[0].data - c[0].data)) < 5e-3   # TF32 convolutions
        assert (g["MASK"].data == c["MASK"].data).mean() > 0.99
