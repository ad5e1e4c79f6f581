"""params.yaml validation: defaults, and one clear error per kind of mistake."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from astroseg.errors import ParamsError
from astroseg.params import DataParams, Params, load_params, parse_section
from conftest import ROOT, tiny_params, write_params


def test_repo_params_load_and_data_defaults_are_the_notebooks():
    params = load_params(ROOT / "params.yaml")
    # The data section must reproduce the seed notebook's generator exactly; only the number of
    # training images differs (images are keyed by (seed, split, index), so val/test are the same).
    assert dataclasses.replace(params.data, n_train=800) == DataParams()
    assert params.data.galaxies.count == (1, 3)
    assert params.data.bar.probability == 0.4 and params.data.spiral.probability == 0.3


def test_every_field_is_listed_in_repo_params():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def missing(cls, section, prefix):
        out = []
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            if f.name not in section:
                out.append(key)
            elif dataclasses.is_dataclass(f.type) or isinstance(section[f.name], dict):
                sub = f.default_factory().__class__
                out += missing(sub, section[f.name], key)
        return out

    assert missing(Params, raw, "") == []


@pytest.mark.parametrize("override, message", [
    ({"train": {"lrr": 0.1}}, "train.lrr: unknown key"),
    ({"bogus": {}}, "bogus: unknown key"),
    ({"train": {"epochs": 0}}, "train.epochs = 0 is out of range: expected >= 1"),
    ({"train": {"epochs": 2.5}}, "train.epochs = 2.5: expected an integer"),
    ({"train": {"epochs": True}}, "train.epochs = True (bool): expected int"),
    ({"train": {"lr": "fast"}}, "train.lr = 'fast' (str): expected float"),
    ({"train": {"lr": -1e-3}}, "train.lr = -0.001 is out of range: expected > 0"),
    ({"train": {"device": "tpu"}}, "train.device = 'tpu': expected one of auto, cpu, cuda"),
    ({"data": {"n_train": -5}}, "data.n_train = -5 is out of range"),
    ({"data": {"galaxies": {"a": [12, 4]}}}, "data.galaxies.a = [12, 4]: expected low <= high"),
    ({"data": {"galaxies": {"a": 4}}}, "data.galaxies.a = 4 (int): expected a list"),
    ({"data": {"width": 16}}, "data.width = 16 must exceed 2 * data.galaxies.margin"),
    ({"model": {"tiny_segformer": {"depth": 0}}}, "model.tiny_segformer.depth = 0 is out of range"),
    ({"model": {"tiny_segformer": {"embed_dim": 30, "num_heads": 4}}},
     "model.tiny_segformer.embed_dim = 30 is not divisible by model.tiny_segformer.num_heads = 4"),
    ({"model": {"name": "unet"}}, "model.name = 'unet': expected one of segformer, tiny_segformer"),
    ({"model": {"segformer": {"depths": [2, 2, 2]}}},
     "model.segformer.depths = [2, 2, 2]: expected 2 values, one per stage"),
    ({"model": {"segformer": {"dims": [8, 15]}}},
     "model.segformer.dims[1] = 15 is not divisible by model.segformer.heads[1] = 2"),
    ({"model": {"segformer": {"dims": []}}}, "model.segformer.dims = [] (list): expected a non-empty"),
    ({"model": {"tiny_segformer": {"pos_encoding": "rope"}}}, "expected one of absolute, relative_bias"),
    ({"train": {"schedule": "step"}}, "train.schedule = 'step': expected one of constant, cosine"),
    ({"loss": {"dice_weight": 0, "bce_weight": 0}}, "loss.dice_weight and loss.bce_weight are both 0"),
    ({"evaluate": {"threshold": 1.0}}, "evaluate.threshold = 1.0 is out of range: expected < 1"),
    ({"plots": "big"}, "plots = 'big' (str): expected a mapping"),
])
def test_bad_values_name_the_file_key_and_value(tmp_path, override, message):
    path = write_params(tmp_path, tiny_params(**override))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 1\n")
    with pytest.raises(ParamsError, match="not a readable YAML file"):
        load_params(bad)


def test_missing_keys_take_defaults_and_ints_widen_to_float():
    params = parse_section(Params, {"train": {"lr": 1}}, "")
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.epochs == 10
    assert params.model.config()["embed_dim"] == 128
