"""TinySegFormer: shapes, a positional embedding that really trains, checkpoints."""

from __future__ import annotations

import pytest
import torch

from astroseg.models.checkpoint import load_checkpoint, save_checkpoint
from astroseg.errors import DataError
from astroseg.models import build_model
from astroseg.models.tiny_segformer import patch_kernel

CONFIG = {"name": "tiny_segformer", "image_size": [32, 32], "embed_dim": 16, "depth": 1,
          "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 4, "overlap": 0.5}


def test_patch_kernel_matches_the_notebook_rule():
    assert patch_kernel(8, 0.5) == 13  # 8 + 4 = 12, made odd
    assert patch_kernel(4, 0.5) == 7
    assert patch_kernel(4, 0.0) == 5


def test_logits_match_input_size_including_other_sizes():
    torch.manual_seed(0)
    model = build_model(CONFIG)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    # Other sizes resample the positional embedding instead of failing.
    assert model(torch.randn(1, 1, 48, 24)).shape == (1, 1, 48, 24)


def test_positional_embedding_is_a_trained_parameter():
    torch.manual_seed(0)
    model = build_model(CONFIG)
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" in names
    before = model.pos_embed.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 1, 32, 32)).mean().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.pos_embed)


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = build_model(CONFIG).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, CONFIG, {"normalization": "minmax"})
    loaded, payload = load_checkpoint(path)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert payload["meta"]["normalization"] == "minmax"
    assert payload["model_config"] == CONFIG
    # Same weights, same bytes: DVC hashes the file, so a rerun must not look like a change.
    again = tmp_path / "sub" / "m.pt"
    save_checkpoint(again, model, CONFIG, {"normalization": "minmax"})
    assert again.read_bytes() == path.read_bytes()


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match=f"{junk}: not a readable checkpoint"):
        load_checkpoint(junk)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(1)}, wrong)
    with pytest.raises(DataError, match="checkpoint format None, expected 1"):
        load_checkpoint(wrong)


SEGFORMER = {"name": "segformer", "image_size": [64, 64], "dims": [8, 16, 24], "depths": [1, 1, 1],
             "heads": [1, 2, 3], "sr_ratios": [4, 2, 1], "decoder_dim": 16, "refine_dim": 4}


@pytest.mark.parametrize("refine_dim", [0, 4])
def test_segformer_accepts_any_multiple_of_its_stride(refine_dim):
    torch.manual_seed(0)
    model = build_model({**SEGFORMER, "refine_dim": refine_dim, "num_classes": 3}).eval()
    assert model.stride == 16
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    assert model(torch.randn(1, 1, 48, 112)).shape == (1, 3, 48, 112)
    with pytest.raises(ValueError, match="not a multiple of the model stride 16"):
        model(torch.randn(1, 1, 40, 64))
    with pytest.raises(ValueError, match="image size 40x64 is not a multiple"):
        build_model({**SEGFORMER, "image_size": [40, 64]})


def test_default_segformer_is_under_one_gflop_per_128px_image():
    from torch.utils.flop_counter import FlopCounterMode

    from astroseg.params import load_params
    from conftest import ROOT

    config = {**load_params(ROOT / "params.yaml").model.config(), "image_size": [128, 128]}
    assert config["name"] == "segformer"
    model = build_model(config).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 128, 128))
    assert counter.get_total_flops() <= 1.0e9


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    model = build_model({**SEGFORMER, "drop_path": 0.5, "dropout": 0.0})
    x = torch.randn(2, 1, 64, 64)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_relative_position_bias_variant_trains_and_resizes():
    torch.manual_seed(0)
    model = build_model({**CONFIG, "pos_encoding": "relative_bias"})
    assert model.pos_embed is None
    model(torch.randn(2, 1, 32, 32)).mean().backward()
    assert model.rel_bias[0].table.grad.abs().sum() > 0
    assert model(torch.randn(1, 1, 48, 24)).shape == (1, 1, 48, 24)


@pytest.mark.parametrize("h, w, r", [(32, 32, 8), (16, 8, 4), (12, 10, 4)])
def test_patchify_is_the_strided_conv_it_replaces(h, w, r):
    from astroseg.models.segformer import _patchify
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, r, stride=r)
    tokens = torch.randn(3, h * w, 6)
    want = conv(tokens.transpose(1, 2).reshape(3, 6, h, w)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(_patchify(conv, tokens, h, w), want, rtol=1e-5, atol=1e-5)
