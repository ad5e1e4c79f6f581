"""FITS predict's pipeline (issue 15): torch normalisation and blending, reader and writer
threads. The output is the whole-image computation's, for any batch size, and a failure in
either thread is the one-line error it would be in the main thread, with no temp file left."""

from __future__ import annotations

import errno
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from scipy import ndimage

from astroseg.cli import main as cli_main
from astroseg.data import fits_io
from astroseg.data.normalize import METHODS, Normalization, fit_field
from astroseg.data.tiling import starts, window_weight
from astroseg.errors import DataError
from astroseg.infer import blend, fits_output, predict_fits as pf
from astroseg.infer.predict import predict_probabilities, seeded
from astroseg.models import build_model
from astroseg.models.checkpoint import save_checkpoint
from conftest import ROOT, TINY_MODEL


def _sky(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Sky ~200 with Gaussian sources, a NaN block, scattered NaNs and an inf."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    data = 200 + 3 * rng.standard_normal(size)
    for cy, cx, s in rng.uniform((0, 0, 2), (h, w, 6), (6, 3)):
        data += 400 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / s ** 2)
    data = data.astype(np.float32)
    data[5:9, 7:30] = np.nan
    data.flat[rng.choice(data.size, data.size // 100, replace=False)] = np.nan
    data[h - 1, w - 1] = np.inf
    return data


def _write(path: Path, data: np.ndarray) -> Path:
    fits.PrimaryHDU(data).writeto(path)
    return path


def _model(path: Path, **config) -> Path:
    torch.manual_seed(0)
    meta = {"normalization": config.pop("normalization", "minmax")}
    cfg = {**TINY_MODEL, **config}
    if cfg["num_classes"] > 1:
        meta["class_names"] = ["background", "disk", "bulge"][:cfg["num_classes"]]
    save_checkpoint(path, build_model(cfg), cfg, meta)
    return path


@pytest.mark.parametrize("method", METHODS)
def test_torch_normalisation_is_numpys(method):
    data = _sky((64, 80))
    valid = np.isfinite(data)
    valid[40:44, 50:60] = False   # flagged bad pixels
    norm = fit_field(method, lambda a, b: (data[a:b], valid[a:b]), *data.shape, "sky")
    expected = norm.apply(data, valid)
    got = blend.normalize_tensor(norm, torch.from_numpy(data), torch.from_numpy(valid)).numpy()
    assert got.dtype == np.float32 and (got[~valid] == 0).all()
    if method in ("minmax", "zscale"):   # subtract, divide, clip: the same float32 roundings
        np.testing.assert_array_equal(got, expected)
    else:   # torch's asinh is not NumPy's: the last bit or so
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # A constant noise field (span 0) and a field whose lo/hi need float32 rounding.
    for n in (Normalization("noise", 5.0, 5.0), Normalization(method, 199.99999, 604.1234567)):
        np.testing.assert_allclose(
            blend.normalize_tensor(n, torch.from_numpy(data), torch.from_numpy(valid)).numpy(),
            n.apply(data, valid), rtol=1e-6, atol=1e-7)


def _whole_image(model_path: Path, image: Path, window: int, overlap: int, threshold: float,
                 mc_samples: int = 0, tta: bool = False) -> dict[str, np.ndarray]:
    """The output planes computed the plain way: the whole image in memory, one window at a
    time (row by row, left to right), blended over the whole image in NumPy."""
    fm = pf.load_fits_model(model_path, "cpu", "fp32", window, overlap, calibration=False)
    x, valid, _ = pf.normalized_input(image, fm.meta)
    height, width = x.shape
    stride = fm.model.stride
    win_h, win_w = (min(window, -(-n // stride) * stride) for n in (height, width))
    padded = np.zeros((max(height, win_h), max(width, win_w)), np.float32)
    padded[:height, :width] = x
    k = fm.payload["model_config"]["num_classes"]
    weight = window_weight(win_h, win_w, overlap)
    num = np.zeros((k + (mc_samples > 0), *padded.shape), np.float32)
    den = np.zeros(padded.shape, np.float32)
    with seeded(fm.model, mc_samples > 0):
        for y0 in starts(height, win_h, win_h - overlap):
            for x0 in starts(width, win_w, win_w - overlap):
                tile = padded[None, y0:y0 + win_h, x0:x0 + win_w]
                prob, _, std = predict_probabilities(fm.model, tile, 1, threshold, tta, False,
                                                     1.0, mc_samples)
                planes = prob.reshape(k, win_h, win_w)
                if std is not None:
                    planes = np.concatenate([planes, std.reshape(k, win_h, win_w)[:1]])
                num[:, y0:y0 + win_h, x0:x0 + win_w] += planes * weight
                den[y0:y0 + win_h, x0:x0 + win_w] += weight
    prob = num[:, :height, :width] / den[:height, :width]
    prob[:, ~valid] = np.nan
    if k == 1:
        out = {"PRIMARY": prob[0], "MASK": (prob[0] >= threshold).astype(np.uint8)}
    else:
        out = {"PRIMARY": 1 - prob[0],
               "MASK": np.nan_to_num(prob[:k], nan=-1).argmax(0).astype(np.uint8)}
        out["MASK"][~valid] = 0
        out.update({f"PROB_{n.upper()}": p for n, p in zip(fm.meta["class_names"], prob)})
    out["LABELS"] = ndimage.label(out["MASK"], np.ones((3, 3)))[0]
    if mc_samples:
        out["STD"] = prob[k]
    return out


@pytest.mark.parametrize("case", ["binary", "multiclass", "mc-dropout", "tta", "zscale"])
def test_threaded_pipeline_writes_the_whole_image_computation(tmp_path, case):
    config = {"multiclass": {"num_classes": 3}, "zscale": {"normalization": "zscale"}}
    model = _model(tmp_path / "model.pt", **config.get(case, {}))
    image = _write(tmp_path / "in.fits", _sky((88, 112)))
    kw = {"mc_samples": 3 if case == "mc-dropout" else 0, "tta": case == "tta"}
    expected = _whole_image(model, image, 32, 8, 0.45, **kw)
    r = pf.predict_fits(image, tmp_path / "out.fits", model, "cpu", batch_size=1, window=32,
                        overlap=8, threshold=0.45, precision="fp32", calibration=False, **kw)
    with fits.open(tmp_path / "out.fits") as hdul:
        assert [h.name for h in hdul] == list(expected)
        for name, plane in expected.items():
            np.testing.assert_array_equal(hdul[name].data, plane, err_msg=name)
        assert hdul[0].header["ASNSRC"] == r.sources == expected["LABELS"].max()
        good = ~np.isnan(expected["PRIMARY"])
        assert r.source_fraction == np.count_nonzero(expected["MASK"]) / good.sum()
        assert r.source_fraction == hdul["LABELS"].header["ASSRCFRC"]


class _WindowWise(torch.nn.Module):
    """A model whose output for a window depends on that window alone, bit for bit: logits
    from each pixel and its window's mean (oneDNN's convolutions may round a window's
    output differently in another batch)."""
    stride = 8

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(6.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x - x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize("size", [(88, 112), (20, 300), (300, 24)])
def test_blended_result_is_the_same_for_any_batch_size(tmp_path, size):
    image = _write(tmp_path / "in.fits", _sky(size))
    fm = pf.FitsModel(tmp_path / "model.pt", _WindowWise().eval(),
                      {"model_config": {"num_classes": 1}, "meta": {"normalization": "minmax"}},
                      "0" * 64, "fp32", 32, 8)
    outputs = []
    for batch in (1, 3, 64):
        out = tmp_path / f"b{batch}.fits"
        pf.segment_fits(fm, image, out, batch_size=batch)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    with fits.open(out) as hdul:
        assert 0.05 < hdul[0].header["ASSRCFRC"] < 0.95   # not all one way


def test_a_real_model_agrees_across_batch_sizes_to_rounding(tmp_path, untrained):
    image = _write(tmp_path / "in.fits", _sky((88, 112)))
    planes = []
    for batch in (1, 64):
        pf.predict_fits(image, tmp_path / "o.fits", untrained, "cpu", batch_size=batch,
                        window=32, overlap=8, precision="fp32")
        planes.append(fits.getdata(tmp_path / "o.fits").astype(np.float64))
    np.testing.assert_allclose(planes[0], planes[1], rtol=0, atol=1e-5)


def test_output_is_the_previous_implementations_byte_for_byte(tmp_path, monkeypatch):
    """The NumPy version kept for the benchmark (benchmarks/predict_fits_before.py) writes the
    same bytes in fp32, MC dropout and two bands included."""
    spec = importlib.util.spec_from_file_location(
        "predict_fits_before", ROOT / "benchmarks/predict_fits_before.py")
    before = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, before)   # its dataclasses look it up there
    spec.loader.exec_module(before)
    image = _write(tmp_path / "in.fits", _sky((100, 90)))
    other = _write(tmp_path / "r.fits", _sky((100, 90), seed=1))
    torch.manual_seed(0)
    cfg = {**TINY_MODEL, "in_channels": 2}
    save_checkpoint(tmp_path / "two.pt", build_model(cfg), cfg,
                    {"normalization": "minmax", "bands": ["g", "r"]})
    model = _model(tmp_path / "m.pt")
    kw = {"window": 48, "overlap": 16, "precision": "fp32", "batch_size": 4}
    for name, args, extra in (("plain", (image, model), {}),
                              ("mc", (image, model), {"mc_samples": 2}),
                              ("bands", ([image, other], tmp_path / "two.pt"),
                               {"bands": ["g", "r"]})):
        for impl in (before, pf):
            fm = impl.load_fits_model(args[1], "cpu", **{k: kw[k] for k in
                                                          ("window", "overlap", "precision")})
            impl.segment_fits(fm, args[0], tmp_path / f"{name}-{impl.__name__}.fits",
                              kw["batch_size"], **extra)
        old = (tmp_path / f"{name}-predict_fits_before.fits").read_bytes()
        assert (tmp_path / f"{name}-{pf.__name__}.fits").read_bytes() == old, name


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("astroseg-")]


def test_a_reader_thread_failure_is_the_same_one_line_error(tmp_path, untrained, monkeypatch,
                                                            capsys):
    image = _write(tmp_path / "in.fits", _sky((200, 64)))
    rows = fits_io.ImageSource.rows

    def failing(self, y0, y1):
        if threading.current_thread() is not threading.main_thread() and y0 >= 64:
            raise DataError(f"{self.path}: cannot read rows {y0}-{y1} of HDU PRIMARY: "
                            "truncated or corrupt? (test)")
        return rows(self, y0, y1)

    monkeypatch.setattr(fits_io.ImageSource, "rows", failing)
    out = tmp_path / "out/seg.fits"
    code = cli_main(["predict", str(image), "-o", str(out), "--model", str(untrained),
                     "--device", "cpu", "--window", "32", "--overlap", "8"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {image}: cannot read rows ") and err.endswith("(test)\n")
    assert not out.exists() and not _temps(tmp_path) and not _threads()


def test_a_writer_thread_failure_is_the_same_one_line_error(tmp_path, untrained, monkeypatch,
                                                            capsys):
    image = _write(tmp_path / "in.fits", _sky((200, 64)))
    out = tmp_path / "seg.fits"
    out.write_bytes(b"previous output")
    write = fits_output.pwrite_all

    def full(fd, data, offset):
        if threading.current_thread() is not threading.main_thread() and offset > 20000:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(fd, data, offset)

    monkeypatch.setattr(fits_output, "pwrite_all", full)
    code = cli_main(["predict", str(image), "-o", str(out), "--model", str(untrained),
                     "--device", "cpu", "--window", "32", "--overlap", "8"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {out}: No space left on device"), err
    assert out.read_bytes() == b"previous output" and not _temps(tmp_path) and not _threads()


def test_a_main_thread_failure_stops_both_threads(tmp_path, untrained, monkeypatch):
    image = _write(tmp_path / "in.fits", _sky((300, 64)))
    calls = []

    def model_fails(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the model broke")
        return probabilities(*args)

    probabilities = blend.window_probabilities
    monkeypatch.setattr(pf, "window_probabilities", model_fails)
    with pytest.raises(RuntimeError, match="the model broke"):
        pf.predict_fits(image, tmp_path / "seg.fits", untrained, "cpu", window=32, overlap=8,
                        batch_size=2)
    assert not (tmp_path / "seg.fits").exists() and not _temps(tmp_path) and not _threads()
