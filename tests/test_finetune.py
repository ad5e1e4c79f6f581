"""`train.init_from`: fine-tuning starts from a checkpoint's weights, or says why it cannot."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from astroseg.errors import DataError
from astroseg.models import build_model
from astroseg.models.checkpoint import init_from
from conftest import TINY_MODEL, run_stage, tiny_params, write_params


@pytest.fixture
def finetune_dir(pipeline_outputs, tmp_path):
    """A project holding the tiny pipeline's dataset and its model as the start."""
    shutil.copytree(pipeline_outputs / "data", tmp_path / "data")
    (tmp_path / "pretrained").mkdir()
    shutil.copy(pipeline_outputs / "models/model.pt", tmp_path / "pretrained/synthetic.pt")
    return tmp_path


def test_init_from_starts_from_the_checkpoint_weights(finetune_dir):
    # A vanishing learning rate and no weight decay: training leaves the weights where they
    # started, so the result shows where that was.
    write_params(finetune_dir, tiny_params(train={"init_from": "pretrained/synthetic.pt",
                                                  "epochs": 1, "lr": 1e-12, "weight_decay": 0.0,
                                                  "warmup_epochs": 0.0}))
    result = run_stage("train", finetune_dir)
    assert result.returncode == 0, result.stderr
    assert "starting from the weights of pretrained/synthetic.pt" in result.stdout
    start = torch.load(finetune_dir / "pretrained/synthetic.pt", weights_only=True)
    tuned = torch.load(finetune_dir / "models/model.pt", weights_only=True)
    assert tuned["meta"]["init_from"]["path"] == "pretrained/synthetic.pt"
    assert len(tuned["meta"]["init_from"]["sha256"]) == 64
    weights = [k for k, v in start["state_dict"].items()
               if v.is_floating_point() and "running" not in k]
    assert weights
    for k in weights:    # BatchNorm running statistics move in training; weights do not
        torch.testing.assert_close(tuned["state_dict"][k], start["state_dict"][k],
                                   rtol=0, atol=1e-6)
    # From scratch, the same run ends elsewhere.
    write_params(finetune_dir, tiny_params(train={"epochs": 1, "lr": 1e-12,
                                                  "weight_decay": 0.0, "warmup_epochs": 0.0}))
    assert run_stage("train", finetune_dir).returncode == 0
    scratch = torch.load(finetune_dir / "models/model.pt", weights_only=True)
    assert any(not torch.allclose(scratch["state_dict"][k], start["state_dict"][k])
               for k in weights)


@pytest.mark.parametrize("model,message", [
    ({"dims": [8, 24]}, "dims: [8, 16] in the checkpoint, [8, 24] here"),
    ({"name": "tiny_segformer"}, "name: 'segformer' in the checkpoint, 'tiny_segformer' here"),
    ({"in_channels": 3}, "in_channels: 1 in the checkpoint, 3 here"),
])
def test_init_from_refuses_another_architecture_naming_it(untrained, model, message):
    config = {**TINY_MODEL, "image_size": [32, 32], **model}
    if config["name"] == "tiny_segformer":
        config = {"name": "tiny_segformer", "image_size": [32, 32], "embed_dim": 16,
                  "depth": 1, "num_heads": 2}
    with pytest.raises(DataError, match=re.escape(
            f"train.init_from = {untrained}: another architecture")) as info:
        init_from(build_model(config), config, untrained)
    assert message in str(info.value)


def test_init_from_refuses_a_missing_or_reshaped_weight(untrained, tmp_path):
    payload = torch.load(untrained, weights_only=True)
    config = {**TINY_MODEL, "image_size": [32, 32]}
    for name, edit in (("misses", lambda s: s.pop(next(iter(s)))),
                       ("has unexpected", lambda s: s.update(extra=torch.zeros(1)))):
        state = dict(payload["state_dict"])
        edit(state)
        torch.save({**payload, "state_dict": state}, tmp_path / "edited.pt")
        with pytest.raises(DataError, match=f"the checkpoint {name} 1 weight"):
            init_from(build_model(config), config, tmp_path / "edited.pt")


def test_init_from_a_missing_or_broken_file_is_a_clear_error(finetune_dir):
    write_params(finetune_dir, tiny_params(train={"init_from": "pretrained/nope.pt"}))
    result = run_stage("train", finetune_dir)
    assert result.returncode == 2 and "train.init_from = 'pretrained/nope.pt': no such " \
        "checkpoint file" in result.stderr
    (finetune_dir / "pretrained/broken.pt").write_bytes(b"not a checkpoint")
    write_params(finetune_dir, tiny_params(train={"init_from": "pretrained/broken.pt"}))
    result = run_stage("train", finetune_dir)
    assert result.returncode == 2 and "not a readable checkpoint" in result.stderr
    write_params(finetune_dir, tiny_params(train={"init_from": "models/model.pt"}))
    result = run_stage("train", finetune_dir)
    assert result.returncode == 2 and "is this stage's own output" in result.stderr
