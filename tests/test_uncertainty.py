"""MC dropout: only the stochastic layers switch on, and no dropout means a spread of exactly 0."""

from __future__ import annotations

import torch

from astroseg.models import build_model
from astroseg.params import ModelParams, parse_section
from astroseg.scoring.uncertainty import has_dropout, mc_probabilities, stochastic


def _model(dropout: float, drop_path: float = 0.0) -> torch.nn.Module:
    p = parse_section(ModelParams, {"segformer": {
        "dims": [8, 16], "depths": [1, 1], "heads": [1, 2], "sr_ratios": [2, 1],
        "decoder_dim": 16, "refine_dim": 4, "dropout": dropout, "drop_path": drop_path}}, "model")
    torch.manual_seed(0)
    return build_model(p.config()).eval()


def test_without_dropout_every_pass_agrees_exactly():
    model = _model(0.0)
    assert not has_dropout(model)
    x = torch.rand(2, 1, 32, 32)
    mean, std = mc_probabilities(model, x, 5)
    assert torch.equal(std, torch.zeros_like(std))
    with torch.no_grad():
        assert torch.allclose(mean, torch.sigmoid(model(x)), atol=1e-6)


def test_dropout_and_drop_path_spread_the_probabilities_and_switch_back_off():
    model = _model(0.3, drop_path=0.2)
    assert has_dropout(model)
    x = torch.rand(2, 1, 32, 32)
    norms = {name: m.running_mean.clone() for name, m in model.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms   # the decoder has a BatchNorm: it must stay in eval mode while sampling
    with stochastic(model):
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert not any(m.training for m in bn)
    _, std = mc_probabilities(model, x, 6)
    assert float(std.max()) > 1e-4
    assert not any(m.training for m in model.modules())
    for name, m in model.named_modules():
        if name in norms:
            assert torch.equal(m.running_mean, norms[name])
