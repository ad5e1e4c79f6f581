"""params.yaml validation: defaults, and one clear error per kind of mistake."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from astroseg.cli import main as cli_main
from astroseg.errors import ParamsError
from astroseg.params import Params, dump_params, load_params, parse_section
from conftest import ROOT, tiny_params, write_params


def test_code_defaults_are_the_repo_params():
    # One source of truth: a key left out of a params file gets params.yaml's value.
    assert parse_section(Params, {}, "") == load_params(ROOT / "params.yaml")


def test_data_defaults_are_the_notebooks_generator():
    # The synthetic sky must be the seed notebook's; only the number of training images differs
    # (images are keyed by (seed, split, index), so val/test are the notebook's too).
    data = load_params(ROOT / "params.yaml").data
    assert (data.n_train, data.n_val, data.n_test, data.height, data.width) == (1600, 120, 120,
                                                                                128, 128)
    g = data.galaxies
    assert (g.count, g.margin, g.a, g.b, g.peak, g.mask_level) == ((1, 3), 20.0, (4.0, 12.0),
                                                                   (3.0, 10.0), (0.7, 1.5), 0.1)
    assert data.bar.probability == 0.4 and data.spiral.probability == 0.3
    assert (data.noise.gaussian_sigma, data.noise.poisson_rate) == (0.02, 1.0)


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
    ({"data": {"sky": "realistic", "normalize": "noise",
               "realistic": {"sky": [0, 0], "read_noise": [0, 0]}}},
     "data.realistic.sky = [0.0, 0.0] with data.realistic.read_noise = [0.0, 0.0]"),
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
    ({"train": {"lr": "nan"}}, "train.lr = 'nan' (str): expected float"),
    # Contradictions between sections, caught before any stage writes anything.
    ({"data": {"height": 100}}, "data.height = 100 is not a multiple of 8, the total stride"),
    ({"data": {"source": "fits", "fits": {"tile": 100, "stride": 96}}},
     "data.fits.tile = 100 is not a multiple of 8"),
    ({"plots": {"cmap": "notacmap"}}, "plots.cmap = 'notacmap': not a matplotlib colormap"),
    ({"model": {"num_classes": 3}},
     "model.num_classes = 3: data.classes = binary gives 2 classes"),
    ({"plots": {"n_predictions": 9}}, "plots.n_predictions = 9 exceeds evaluate.n_examples = 4"),
    ({"train": {"compile": "yes"}}, "train.compile = 'yes': expected one of false, true, reduce"),
    ({"train": {"data_on_device": 1}}, "train.data_on_device = 1 (int): expected a string"),
    ({"train": {"nproc": 0}}, "train.nproc = 0 is out of range: expected >= 1"),
    ({"train": {"nproc": 9, "batch_size": 8}}, "train.nproc = 9 exceeds train.batch_size = 8"),
    ({"train": {"nproc": 4}, "data": {"n_val": 3}}, "data.n_val = 3 is less than train.nproc = 4"),
    ({"train": {"lr_scaling": "cubic"}}, "train.lr_scaling = 'cubic': expected one of none, sqrt"),
])
@pytest.mark.fault("params")
def test_bad_values_name_the_file_key_and_value(tmp_path, override, message):
    path = write_params(tmp_path, tiny_params(**override))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.fault("params")
def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 1\n")
    with pytest.raises(ParamsError, match="not a readable YAML file"):
        load_params(bad)


def test_missing_keys_take_the_projects_defaults_and_ints_widen_to_float():
    params = parse_section(Params, {"train": {"lr": 1}}, "")
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.epochs == 12 and params.loss.boundary_weight == 0.5
    # A file holding only `train: {epochs: 2}` trains the project's default, not the seed's.
    params = parse_section(Params, {"train": {"epochs": 2}}, "")
    assert params.model.name == "segformer" and params.train.lr == 3e-3
    assert params.model.config()["refine_dim"] == 32


def test_numbers_that_yaml_1_1_reads_as_strings_are_accepted(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-2\n  epochs: 1e1\n"
                    "data:\n  galaxies:\n    peak: [7e-1, '1.5']\n")
    params = load_params(path)
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "1e-3"   # what PyYAML gives
    assert params.train.lr == 1e-3 and params.train.weight_decay == 0.05
    assert params.train.epochs == 10 and isinstance(params.train.epochs, int)
    assert params.data.galaxies.peak == (0.7, 1.5)


def test_dumped_params_read_back_to_the_same_params(tmp_path):
    params = parse_section(Params, {"train": {"epochs": 2}, "model": {"name": "tiny_segformer"}}, "")
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_params(params))
    assert load_params(path) == params


def test_check_params_show_prints_the_resolved_params(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("train: {epochs: 2}\n")
    assert cli_main(["check-params", "--show", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["epochs"] == 2 and shown["train"]["lr"] == 3e-3
    assert shown["model"]["name"] == "segformer"


def test_yaml_booleans_choose_true_or_false_and_the_lr_follows_the_batch(tmp_path):
    params = load_params(write_params(tmp_path, tiny_params(
        train={"compile": True, "data_on_device": False, "batch_size": 64, "lr": 0.002})))
    assert params.train.compile == "true" and params.train.data_on_device == "false"
    assert params.train.peak_lr() == 0.002      # lr_scaling: none
    sqrt = dataclasses.replace(params.train, lr_scaling="sqrt", lr_batch=16)
    assert sqrt.peak_lr() == pytest.approx(0.004)
    assert dataclasses.replace(sqrt, lr_scaling="linear").peak_lr() == pytest.approx(0.008)


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "presets").glob("*.txt")))
def test_each_preset_line_is_a_dvc_set_param_that_validates(tmp_path, preset):
    # presets/*.txt are applied as `dvc exp run -S LINE ...`: DVC's own override parser must
    # take every line, and the result must pass validation with the keys the preset names.
    from dvc.utils.hydra import apply_overrides

    lines = [line.strip() for line in (ROOT / "presets" / preset).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all("=" in line for line in lines)
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(path, lines)
    params = load_params(path)
    assert params.data.sky == "realistic"
    for line in lines:
        key, _, value = line.partition("=")
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        expected = yaml.safe_load(value)
        assert node == (tuple(expected) if isinstance(node, tuple) else expected), key
