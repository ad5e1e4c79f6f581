"""Training: it learns, and the same params give bit-identical results on CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from astroseg.data.dataset import Split
from astroseg.models import build_model
from astroseg.params import DataParams, LossParams, TrainParams
from astroseg.data.synthetic import render
from astroseg.train.loop import lr_factor, train_model

DATA = DataParams(height=32, width=32,
                  galaxies=dataclasses.replace(DataParams().galaxies, margin=8.0, a=(3.0, 6.0),
                                               b=(2.0, 5.0)))
CONFIG = {"name": "tiny_segformer", "image_size": [32, 32], "embed_dim": 16, "depth": 1,
          "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 4, "overlap": 0.5}


def _split(name: str, n: int) -> Split:
    c = render(DATA, name, range(n))
    return Split(c.images, c.masks)


def _run(cfg: TrainParams, train: Split, val: Split):
    torch.manual_seed(cfg.seed)
    model = build_model(CONFIG)
    result = train_model(model, train, val, cfg, LossParams(), torch.device("cpu"))
    return model, result.history


def test_same_params_give_identical_weights_and_history():
    train, val = _split("train", 24), _split("val", 8)
    cfg = TrainParams(epochs=2, batch_size=8, progress=False)
    m1, h1 = _run(cfg, train, val)
    m2, h2 = _run(cfg, train, val)
    assert h1 == h2
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    # A different seed must actually change the run, or the check above proves nothing.
    m3, h3 = _run(dataclasses.replace(cfg, seed=99), train, val)
    assert h3 != h1


def test_training_learns_the_masks():
    train, val = _split("train", 96), _split("val", 16)
    _, history = _run(TrainParams(epochs=6, batch_size=8, lr=3e-3, progress=False), train, val)
    assert history[-1].train_loss < 0.7 * history[0].train_loss
    assert history[-1].val_iou > 0.5
    assert [r.epoch for r in history] == list(range(1, 7))


def test_best_epoch_weights_are_returned():
    train, val = _split("train", 24), _split("val", 8)
    cfg = TrainParams(epochs=3, batch_size=8, lr=3e-3, progress=False)
    torch.manual_seed(cfg.seed)
    model = build_model(CONFIG)
    result = train_model(model, train, val, cfg, LossParams(), torch.device("cpu"))
    ious = [r.val_iou for r in result.history]
    assert result.best_epoch == 1 + ious.index(max(ious))
    assert set(result.best_state) == set(model.state_dict())


def test_early_stopping_stops_after_patience():
    train, val = _split("train", 16), _split("val", 8)
    # lr so small that validation never improves after the first epoch's score.
    cfg = TrainParams(epochs=6, batch_size=8, lr=1e-9, early_stopping=2, progress=False)
    _, history = _run(cfg, train, val)
    assert len(history) < 6


def test_lr_schedule_warms_up_then_decays_by_cosine():
    f = [lr_factor(s, 100, 10, "cosine", 0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.505, abs=0.01)
    assert f[99] == pytest.approx(0.01, abs=0.001)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(50, 100, 0, "constant", 0.01) == 1.0


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively():
    # Emulated bf16 made a training step ~20x slower on CPUs without AVX-512-BF16/AMX.
    train, val = _split("train", 16), _split("val", 8)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    runs = {}
    for precision in ("auto", "fp32", "bf16"):
        cfg = TrainParams(epochs=1, batch_size=8, progress=False, precision=precision)
        torch.manual_seed(cfg.seed)
        model = build_model(CONFIG)
        result = train_model(model, train, val, cfg, LossParams(), torch.device("cpu"))
        runs[precision] = (result.precision, model.state_dict())
    assert runs["auto"][0] == ("bf16" if native else "fp32")
    assert runs["fp32"][0] == "fp32" and runs["bf16"][0] == "bf16"
    same = runs["bf16" if native else "fp32"][1]
    assert all(torch.equal(v, same[k]) for k, v in runs["auto"][1].items())
    other = runs["fp32" if native else "bf16"][1]
    assert not all(torch.equal(v, other[k]) for k, v in runs["auto"][1].items())


def test_compile_falls_back_to_eager_on_the_cpu():
    """train.compile is for CUDA: torch 2.13's inductor gave the segformer wrong gradients on
    the CPU, so there the run is the eager one, bit for bit."""
    train, val = _split("train", 16), _split("val", 8)
    cfg = TrainParams(epochs=1, batch_size=8, progress=False)
    eager, h_eager = _run(cfg, train, val)
    compiled, h_compiled = _run(dataclasses.replace(cfg, compile="reduce-overhead"), train, val)
    assert h_compiled == h_eager
    for (k, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.equal(a, b), k
