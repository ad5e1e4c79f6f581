"""Fuzzing params.yaml: every key gets random types and values (issue 14).

Each case either passes validation, and then the value is of its declared type and range and the
rest of the program takes it (the model builds and runs a forward pass, the sky renders), or it
is refused with a ParamsError of one line that names the key. Never another exception, a hang or
a half-written output. Keys are enumerated from the params dataclasses, so a key added later is
fuzzed without touching this file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import subprocess
import sys
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from astroseg.errors import ParamsError
from astroseg.params import Params, dump_params, load_params, parse_section, to_dict
from conftest import (ROOT, _env, assert_no_traceback, run_stage, time_limit, tiny_params,
                      write_params)

# Generous: a parse takes milliseconds; this only turns a hang into a failure.
DEADLINE_S = 20.0
# A message that names the key and the value need not be longer than this, whatever the value.
MAX_MESSAGE = 1000


# ---------------------------------------------------------------- the keys

@dataclasses.dataclass(frozen=True)
class Leaf:
    """One params key: its dotted name, declared type and `_p` metadata."""
    key: str
    hint: Any
    meta: dict
    default: Any


def _sections(cls: type = Params, prefix: str = "") -> Iterator[tuple[str, type]]:
    yield prefix, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)


def _leaves() -> list[Leaf]:
    out = []
    defaults = to_dict(Params())
    for prefix, cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                key = f"{prefix}.{f.name}"
                out.append(Leaf(key, hints[f.name], dict(f.metadata), _get(defaults, key)))
    return out


def _get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part] if isinstance(tree, dict) else getattr(tree, part)
    return tree


def _set(tree: dict, key: str, value: Any) -> dict:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value
    return tree


def _flat(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        out |= _flat(v, key) if isinstance(v, dict) else {key}
    return out


LEAVES = _leaves()
SECTIONS = [prefix for prefix, _ in _sections()]   # "" is the top level


@functools.cache
def _tiny() -> dict:
    return tiny_params()


@functools.cache
def _tiny_parsed() -> Params:
    return parse_section(Params, _tiny(), "")


def base_for(key: str) -> dict:
    """Tiny params in which `key` is in use: its section's source, sky or model is selected."""
    raw = copy.deepcopy(_tiny())
    data = raw["data"]
    if key.startswith("data.realistic."):
        data.update(sky="realistic", normalize="noise")
    elif key.startswith("data.fits."):
        data["source"] = "fits"
    elif key.startswith("data.bands."):
        data["bands"] = {"names": ["g", "r"], "galaxy": [0.6, 1.0], "bar": [0.4, 1.0],
                         "spiral": [1.4, 1.0]}
    elif key.startswith("model.tiny_segformer."):
        raw["model"]["name"] = "tiny_segformer"
    return raw


# ---------------------------------------------------------------- the values

NAN, INF = math.nan, math.inf
INTS = [0, 1, -1, 2, 3, 7, 8, 255, 256, 2 ** 31 - 1, 2 ** 31, 2 ** 48, 2 ** 53 + 1, 2 ** 63 - 1,
        2 ** 63, 2 ** 64 - 1, 2 ** 64, 10 ** 30, -10 ** 30, 10 ** 300]
FLOATS = [0.0, -0.0, 0.5, -0.5, 1.0, 1.5, 5e-324, 1e-300, 1e-9, 1e30, 1e300, -1e300,
          1.7976931348623157e308, 2.0 ** 63, NAN, INF, -INF]
STRINGS = ["", " ", "0", "1", "-1", "1e3", "1E-3", "+5", ".5", "5.", "0x10", "1_000", "1" * 5000,
           "nan", "inf", "-inf", ".inf", "true", "false", "yes", "no", "on", "null", "~", "None",
           "auto", "AUTO", " auto", "cpu\n", "é", "🙂", "日本語", "²", "١٢", "\u2028", "\x00",
           "\x1b[31m", "a\nb", "path/to/file.fits", "../../etc/passwd", "/dev/null", "C:\\x",
           "~/x", "*.fits", "{band}", "{", "%s", "SCI,2", "SCI,²", "x" * 5000]
LISTS = [[], [0], [1, 2], [2, 1], [1, 2, 3], [[1, 2]], [None], ["a", "b"], ["a", "a"], [1.5, "x"],
         [NAN, 1], [1, INF], [True, False], [{}], list(range(100)), ["", "x"], [1e300, 1e300]]
DICTS = [{}, {"a": 1}, {1: 2}, {None: None}, {"low": 1, "high": 2}]

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))


def junk() -> st.SearchStrategy:
    """Any YAML value: the classes of value issue 14 lists, and random ones of each type."""
    return st.one_of(
        st.none(), st.booleans(), st.sampled_from(INTS), st.integers(), st.sampled_from(FLOATS),
        st.floats(), st.sampled_from(STRINGS), st.text(max_size=12), st.sampled_from(LISTS),
        st.lists(_scalars, max_size=5), st.lists(st.lists(_scalars, max_size=3), max_size=3),
        st.sampled_from(DICTS), st.dictionaries(st.text(max_size=5), _scalars, max_size=3))


def _near(bound: float, kind: type) -> list[float]:
    step = 1 if kind is int else 0
    out = [bound, bound - step, bound + step] if step else [bound, math.nextafter(bound, -INF),
                                                            math.nextafter(bound, INF)]
    return [kind(v) if kind is int else v for v in out]


# Magnitudes that break arithmetic (denormals, overflow in squares and exponentials, int64)
EXTREMES = {float: [5e-324, 1e-300, 1e-30, 1e30, 1e300], int: [2 ** 31, 2 ** 63 - 1, 2 ** 63]}


def _numbers(kind: type, meta: dict, default: Any) -> st.SearchStrategy:
    """Numbers of `kind` around its bounds and default, and just past them; extreme ones."""
    edges = [default] if isinstance(default, (int, float)) else []
    edges += EXTREMES[kind]
    for name in ("ge", "gt", "le", "lt"):
        if meta.get(name) is not None:
            edges += _near(meta[name], kind)
    lo = min(edges, default=0) - 3
    hi = max(edges, default=0) + 3
    if kind is int:
        inner = st.integers(int(lo) - 100, int(hi) + 1000)
    else:
        inner = st.floats(lo - 10, hi + 1000, allow_nan=False)
    strategies = [st.sampled_from(edges)] if edges else []
    return st.one_of(*strategies, inner)


def _as_text(value: Any) -> Any:
    """A number as YAML 1.1 reads some: `1e-3` is a string to PyYAML."""
    return f"{value:e}" if isinstance(value, float) and math.isfinite(value) else str(value)


def typed(leaf: Leaf, base: Any) -> st.SearchStrategy:
    """Values of the key's own type near its limits: each side of every bound, each choice;
    lists as long as `base` (the value the fuzzed params had), and longer and shorter."""
    hint, meta = leaf.hint, leaf.meta
    if typing.get_origin(hint) is tuple:
        kinds = typing.get_args(hint)
        kind = kinds[0]
        if kind is str:
            item = st.one_of(st.sampled_from(["g", "r", "i", "", "F606W=raw/*.fits", "{band}"]),
                             st.text(max_size=6), st.integers(0, 3))
            return st.lists(item, max_size=4)
        item = _numbers(kind, meta, base[0] if base else None)
        n = len(kinds) if kinds[-1] is not Ellipsis else len(base) or 2
        return st.one_of(
            st.lists(item, min_size=n, max_size=n),
            st.lists(item, min_size=n, max_size=n).map(sorted),
            st.lists(item, max_size=n + 2),
            st.lists(item, min_size=n, max_size=n).map(lambda v: [_as_text(x) for x in v]))
    if hint is bool:
        return st.sampled_from([True, False, "true", "yes", 0, 1, "on"])
    if hint is str:
        choices = list(meta.get("choices") or ())
        near = [c.upper() for c in choices] + [f" {c}" for c in choices]
        near += [c + "x" for c in choices]
        if leaf.key.endswith("hdu"):
            near += [0, 1, -1, "SCI", "SCI,2", "DQ=0", "1,2", "0x1", "²", "SCI,²", "²=0", "١٢"]
        return st.sampled_from(choices + near + [leaf.default, "", True, False])
    number = _numbers(hint, meta, base)
    return st.one_of(number, number.map(_as_text), number.map(float))


def values_for(leaf: Leaf) -> st.SearchStrategy:
    """Half of the values of the key's type near its limits, half anything at all."""
    return st.one_of(typed(leaf, _get(base_for(leaf.key), leaf.key)), junk())


# ---------------------------------------------------------------- the oracle

def outcome(raw: Any) -> Params | ParamsError:
    """Validate `raw` in-process: the params, or the ParamsError; anything else escapes."""
    with time_limit(DEADLINE_S):
        try:
            return parse_section(Params, raw, "")
        except ParamsError as exc:
            return exc


def assert_names(message: str, key: str) -> None:
    """A refusal is one short line naming the key."""
    assert "\n" not in message and len(message.splitlines()) == 1, repr(message)
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}..."
    assert key in message, f"{key} not in {message!r}"


def assert_declared(value: Any, leaf: Leaf) -> None:
    """An accepted value has the key's declared type, range and choices."""
    hint, meta = leaf.hint, leaf.meta
    if typing.get_origin(hint) is tuple:
        kinds = typing.get_args(hint)
        assert type(value) is tuple, leaf.key
        if kinds[-1] is Ellipsis:
            assert value or meta.get("empty"), leaf.key
            kinds = (kinds[0],) * len(value)
        assert len(value) == len(kinds), leaf.key
        for item, kind in zip(value, kinds):
            assert type(item) is kind, (leaf.key, item)
            if kind is str:
                assert item and item.isprintable(), (leaf.key, item)
            else:
                _assert_in_range(item, meta, leaf.key)
        if meta.get("ordered"):
            assert value[0] <= value[1], leaf.key
        return
    assert type(value) is hint, (leaf.key, value)
    if hint is str:
        assert value.isprintable(), (leaf.key, value)
        if meta.get("choices"):
            assert value in meta["choices"], (leaf.key, value)
    elif hint is not bool:
        _assert_in_range(value, meta, leaf.key)


def _assert_in_range(value: float, meta: dict, key: str) -> None:
    assert math.isfinite(value), (key, value)
    for name, holds in (("ge", value.__ge__), ("gt", value.__gt__), ("le", value.__le__),
                        ("lt", value.__lt__)):
        if meta.get(name) is not None:
            assert holds(meta[name]), (key, value, name, meta[name])


def assert_as_written(written: Any, value: Any, leaf: Leaf) -> None:
    """An accepted number is the number written, not a rounded one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return       # an HDU index written as a number is kept as text, as an EXTNAME is
    if isinstance(written, str):
        text = written.strip()
        written = int(text) if text.lstrip("+-").isdigit() else float(text)
    if isinstance(written, (int, float)) and not isinstance(written, bool):
        # A float key holds the nearest float to an int: 2^53 + 1 is 2^53.
        assert value == (float(written) if type(value) is float else written), \
            (leaf.key, written, value)


@contextlib.contextmanager
def _meta_device() -> Iterator[None]:
    # Shapes only, without memory: any accepted width builds in milliseconds. The segformer's
    # drop-path rates need real numbers (.tolist()), so linspace stays on the CPU.
    linspace = torch.linspace
    torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.linspace = linspace


def check_model(params: Params) -> None:
    """The model train would build from these params runs a batch of the data's images."""
    data = params.data
    if data.source == "fits":
        size, bands = (data.fits.tile, data.fits.tile), max(1, len(data.fits.bands))
    else:
        size, bands = (data.height, data.width), max(1, len(data.bands.names))
    config = {**params.model.config(), "image_size": list(size), "in_channels": bands}
    # Blocks keep their input's shape, so two per stage check every shape that more would;
    # meta tensors still cost ~20 ms a block.
    if "depths" in config:
        config["depths"] = [min(d, 2) for d in config["depths"]]
    else:
        config["depth"] = min(config["depth"], 2)
    _forward(yaml.safe_dump(config, sort_keys=True))


@functools.cache      # examples repeat; a meta forward pass takes ~50 ms
def _forward(config_yaml: str) -> None:
    from astroseg.models import build_model

    config = yaml.safe_load(config_yaml)
    with _meta_device():
        model = build_model(config)
        out = model(torch.empty(2, config["in_channels"], *config["image_size"]))
    assert out.shape == (2, config["num_classes"], *config["image_size"])


def check_sky(params: Params) -> None:
    """The synthetic sky renders an image of finite pixels and a mask from these params."""
    from astroseg.data import realistic, synthetic

    p = params.data
    render = realistic.render if p.sky == "realistic" else synthetic.render
    # An overflow to inf or NaN in float32 is a silently wrong image or truth table.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        chunk = render(p, "train", range(1))
    assert chunk.images.shape[-2:] == (p.height, p.width)
    assert np.isfinite(chunk.images).all(), "non-finite pixels"
    assert chunk.masks.max() < len(p.class_names())


def check_accepted(params: Params, leaf: Leaf, written: Any) -> None:
    """Everything that must hold of params that validated, for the fuzzed key."""
    assert_declared(_get(params, leaf.key), leaf)
    assert_as_written(written, _get(params, leaf.key), leaf)
    # What the program writes down (train's record, check-params --show) reads back the same;
    # through YAML for text, which YAML might read back as another type (6 ms a dump).
    assert parse_section(Params, to_dict(params), "") == params
    if str in (leaf.hint, *typing.get_args(leaf.hint)):
        text = dump_params(params)
        assert parse_section(Params, yaml.load(text, Loader=yaml.CSafeLoader), "") == params
    if leaf.key.startswith("model.") or leaf.key in SHAPE_KEYS:
        check_model(params)
    if (leaf.key.startswith("data.") and params.data.source == "synthetic"
            and params.data.height * params.data.width <= 256 ** 2):
        check_sky(params)
    if leaf.key.startswith("train."):
        assert 0 < params.train.peak_lr() < INF
    if leaf.key.endswith("hdu") and _get(params, leaf.key):
        from astroseg.data.fits_io import parse_hdu     # as fits_source and open_image read it
        value = _get(params, leaf.key)
        parse_hdu(value[:-2] if value.endswith("=0") else value)
    if leaf.key == "plots.cmap":
        import matplotlib
        matplotlib.colormaps[params.plots.cmap]


SHAPE_KEYS = {"data.height", "data.width", "data.source", "data.classes", "data.bands.names",
              "data.fits.tile", "data.fits.bands"}


# ---------------------------------------------------------------- in-process fuzzing

def test_every_key_is_fuzzed():
    # The dataclasses, their defaults and the repo's params.yaml list the same keys, so the
    # parametrisation below (from the dataclasses) covers every key a params file can hold.
    keys = {leaf.key for leaf in LEAVES}
    assert keys == _flat(to_dict(Params()))
    assert keys == _flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert len(keys) == len(LEAVES) > 100


@pytest.mark.parametrize("key", sorted({leaf.key.split(".")[0] for leaf in LEAVES} |
                                       {leaf.key.rsplit(".", 1)[0] for leaf in LEAVES}))
def test_each_base_is_valid(key):
    # Every fuzzed key starts from tiny params that validate, with its section in use.
    assert isinstance(outcome(base_for(f"{key}.x")), Params)


@pytest.mark.fault("params")
@pytest.mark.parametrize("leaf", LEAVES, ids=[leaf.key for leaf in LEAVES])
@given(data=st.data())
def test_fuzz_one_key(leaf, data):
    """Draws, for one key of tiny params: None, bools, ints (0, negative, 2^63, 10^30), floats
    (nan, inf, denormal, 1e308), strings (empty, unicode, control characters, paths, numbers as
    text, 5000 characters), lists (empty, nested, wrong length or types), dicts; and values of
    the key's own type on and just past each bound, choices misspelt, numbers written as text."""
    value = data.draw(values_for(leaf), label=leaf.key)
    raw = base_for(leaf.key)
    _set(raw, leaf.key, copy.deepcopy(value))
    result = outcome(raw)
    if isinstance(result, ParamsError):
        assert_names(str(result), leaf.key)
    else:
        with time_limit(DEADLINE_S):
            check_accepted(result, leaf, value)


# ---------------------------------------------------------------- keys and sections

def _printable_name(key: Any) -> str | None:
    """How a message may quote an unknown key verbatim; None where it must be escaped."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else None


def _typos(fields: list[str]) -> st.SearchStrategy:
    name = fields[0]
    return st.one_of(
        st.sampled_from([name + "s", name[:-1], name.upper(), name.replace("_", "-"), f" {name}",
                         f"{name} ", "", "1e3", "true", "\u2028", "a\nb", "\x00", "x" * 5000]),
        st.sampled_from([0, 1, -1, 1.5, NAN, True, False, None]),   # YAML keys may be anything
        st.text(max_size=10))


@pytest.mark.fault("params")
@pytest.mark.parametrize("section", SECTIONS, ids=[s or "top" for s in SECTIONS])
@given(data=st.data())
def test_an_unknown_key_in_each_section_is_named(section, data):
    """Draws a typo of a key of the section (plural, cut, upper case, dashed, padded), a key
    with a line break, NUL or 5000 characters, a key that is a number, bool or null, any text."""
    fields = [f.name for f in dataclasses.fields(dict(_sections())[section])]
    typo = data.draw(_typos(fields), label="key")
    assume(typo not in fields)
    raw = base_for(f"{section}.")
    (_get(raw, section) if section else raw)[typo] = 1
    result = outcome(raw)
    assert isinstance(result, ParamsError)
    name = _printable_name(typo)
    assert_names(str(result), f"{section}.{name}" if section and name else name or section)
    assert "unknown key" in str(result)


@pytest.mark.fault("params")
@pytest.mark.parametrize("section", SECTIONS[1:])
@given(value=st.one_of(st.none(), st.booleans(), st.sampled_from(INTS), st.sampled_from(FLOATS),
                       st.sampled_from(STRINGS), st.sampled_from(LISTS),
                       st.lists(_scalars, max_size=3)))
def test_a_section_that_is_not_a_mapping_is_named(section, value):
    """Draws None (the section's defaults), a bool, int, float, string or list in its place."""
    raw = base_for(f"{section}.")
    _set(raw, section, value)
    result = outcome(raw)
    if value is None:       # an empty section: its defaults
        if isinstance(result, ParamsError):   # which may not suit the tiny rest (a 4-stage model)
            assert_names(str(result), section.split(".")[0])
        return
    assert isinstance(result, ParamsError)
    assert_names(str(result), section)
    assert "expected a mapping" in str(result)


# ---------------------------------------------------------------- whole files

def _alias_bomb() -> str:
    # Nine levels of nine references: 9^9 items if anything walks it as a tree.
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


FILES = {
    # id: (content, fragment of the message, or None where the file is valid)
    "not_yaml": ("data: {height: 48\nmodel: ]\n", "not a readable YAML file"),
    "tab_indent": ("train:\n\tepochs: 2\n", "not a readable YAML file"),
    "yaml_list": ("- train\n- data\n", "params = ['train', 'data'] (list): expected a mapping"),
    "yaml_scalar": ("42\n", "params = 42 (int): expected a mapping"),
    "yaml_text": ("just some words\n", "params = 'just some words' (str): expected a mapping"),
    "empty": ("", None),
    "comments_only": ("# nothing here\n", None),
    "crlf": ("train:\r\n  epochs: 2\r\n", None),
    "utf8_bom": (b"\xef\xbb\xbftrain: {epochs: 2}\n", None),
    "merge_key": ("train: {<<: {epochs: 2}, lr: 0.1}\n", None),
    "binary": (bytes(range(256)) * 16, "not a readable YAML file"),
    "nul_bytes": (b"train:\x00 {}\n", "not a readable YAML file"),
    "utf16": ("train: {epochs: 2}\n".encode("utf-16"), "not a readable YAML file"),
    "multi_document": ("train: {}\n---\ntrain: {}\n", "not a readable YAML file"),
    "python_tag": ("train: !!python/object/apply:os.system ['true']\n", "not a readable YAML"),
    "bad_date": ("train: {lr: 2024-13-45}\n", "not a readable YAML file"),
    "date": ("train: {lr: 2024-01-01}\n", "train.lr = datetime.date(2024, 1, 1) (date)"),
    "binary_tag": ("plots: {cmap: !!binary aGVsbG8=}\n", "plots.cmap = b'hello' (bytes)"),
    "set_tag": ("baseline: {npixels: !!set {1, 2}}\n", "baseline.npixels = "),
    "int_5000_digits": ("train: {epochs: " + "9" * 5000 + "}\n", "not a readable YAML file"),
    "int_400_digits": ("train: {lr: " + "9" * 400 + "}\n", "expected a finite number"),
    "deep_nesting": ("train: {lr: " + "[" * 1000 + "]" * 1000 + "}\n", "not a readable YAML"),
    "alias_bomb": (_alias_bomb() + "train: {lr: *l8}\n", "l0: unknown key"),
    "alias_bomb_value": ("train: {lr: &a [[1, 2], [1, 2]]}\nplots: {cmap: *a}\n", "train.lr = "),
    "null_key": ("~: 1\n", "None: unknown key"),
    "int_key": ("train: {1: 2}\n", "train.1: unknown key"),
    "newline_key": ('train: {"a\\nb": 2}\n', "train.'a\\nb': unknown key"),
    "long_value": ("plots: {cmap: " + "x" * 200_000 + "}\n", "plots.cmap = 'xxxx"),
    "huge_file": ("# " + "x" * (2 << 20) + "\n", "too large for a params file"),
}


@pytest.mark.fault("params")
@pytest.mark.parametrize("case", FILES)
def test_any_file_is_read_or_refused_in_one_line(tmp_path, case):
    """A params file that is not YAML, not a mapping, binary, huge, or YAML that PyYAML builds
    into dates, bytes, sets, giant ints or alias bombs: read, or refused in one line."""
    content, fragment = FILES[case]
    path = tmp_path / "params.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with time_limit(DEADLINE_S):
        try:
            params = load_params(path)
        except ParamsError as exc:
            assert fragment is not None, f"refused a valid file: {exc}"
            assert_names(str(exc), str(path))
            assert fragment in str(exc)
            return
    assert fragment is None, f"accepted: expected {fragment!r}"
    assert isinstance(params, Params)


@pytest.mark.fault("params")
def test_a_directory_or_a_device_is_refused(tmp_path):
    """A directory, and /dev/zero (which never ends), as the params file."""
    for path in (tmp_path, Path("/dev/zero")):
        with time_limit(DEADLINE_S), pytest.raises(ParamsError) as err:
            load_params(path)
        assert_names(str(err.value), str(path))


# ---------------------------------------------------------------- end to end, in subprocesses

# Keys whose accepted values keep the tiny pipeline at a few seconds: not the data sizes, the
# number of processes, the device, a checkpoint to start from or FITS inputs.
E2E_KEYS = [leaf for leaf in LEAVES if leaf.key.startswith((
    "data.galaxies.", "data.bar.", "data.spiral.", "data.noise.", "data.seed", "data.normalize",
    "data.chunk", "loss.", "model.num_classes", "model.segformer.mlp_ratio",
    "model.segformer.drop", "model.segformer.attn_dropout", "model.segformer.refine_dim",
    "model.segformer.decoder_dim", "train.lr", "train.weight_decay", "train.schedule",
    "train.warmup_epochs", "train.min_lr_ratio", "train.augment", "train.early_stopping",
    "train.precision", "train.seed", "train.batch_size", "train.log_every"))]
E2E_CAPS = {"model.segformer.mlp_ratio": 8, "model.segformer.refine_dim": 32,
            "model.segformer.decoder_dim": 32}


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@st.composite
def accepted_variants(draw: st.DrawFn) -> dict:
    """Tiny params with 3-5 of E2E_KEYS drawn near their limits, each kept if still valid;
    at least two of them changed (Hypothesis's first example is the tiny params themselves)."""
    raw = base_for("")
    raw["train"]["epochs"] = 1
    raw["data"].update(n_train=16, n_val=4, n_test=4)
    leaves = draw(st.lists(st.sampled_from(E2E_KEYS), min_size=3, max_size=5,
                           unique_by=lambda leaf: leaf.key))
    changed = 0
    for leaf in leaves:
        before = _get(raw, leaf.key)
        _set(raw, leaf.key, draw(typed(leaf, before), label=leaf.key))
        params = outcome(raw)
        if not isinstance(params, Params) or any(_get(params, k) > cap
                                                 for k, cap in E2E_CAPS.items()):
            _set(raw, leaf.key, before)
        else:
            changed += _get(params, leaf.key) != _get(_tiny_parsed(), leaf.key)
    assume(changed >= 2)
    return raw


def _run_all(stage: str, workdirs: list[Path]) -> None:
    """Run `stage` in every directory at once (each process on one thread: 2 cores)."""
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=d,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for d in workdirs]
    for proc, workdir in zip(procs, workdirs):
        out, err = proc.communicate(timeout=300)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert_no_traceback(result)
        params = (workdir / "params.yaml").read_text()
        assert proc.returncode == 0, f"{stage} failed on\n{params}\n{err[-2000:]}"


@pytest.mark.fault("params")
@settings(max_examples=1)
@given(data=st.data())
def test_accepted_random_params_run_prepare_and_train(data, tmp_path_factory):
    """Draws three variants of tiny params, each with 3-5 data/model/loss/train keys set to
    values near their limits that validate; prepare and train run on each, side by side."""
    variants = [data.draw(accepted_variants(), label=f"variant {i}") for i in range(3)]
    workdirs = [tmp_path_factory.mktemp("accepted") for _ in variants]
    for workdir, raw in zip(workdirs, variants):
        write_params(workdir, raw)
    _run_all("prepare", workdirs)
    _run_all("train", workdirs)
    for workdir in workdirs:
        assert (workdir / "models" / "model.pt").is_file()


REFUSED = {
    # id: (override of the tiny params, the key the one line must name)
    "count_past_uint8": ({"data": {"galaxies": {"count": [1, 256]}}}, "data.galaxies.count"),
    "mlp_ratio_zero_width": ({"model": {"segformer": {"mlp_ratio": 1e-9}}},
                             "model.segformer.mlp_ratio"),
    "newline_in_key": ({"train": {"lr\nx": 1}}, "train.'lr\\nx'"),
    "huge_string": ({"plots": {"cmap": "x" * 100_000}}, "plots.cmap"),
    "sr_ratio_past_tokens": ({"model": {"segformer": {"sr_ratios": [16, 1]}}},
                             "model.segformer.sr_ratios"),
}


@pytest.mark.fault("params")
@pytest.mark.parametrize("case", REFUSED)
def test_check_params_refuses_in_one_line(tmp_path, case):
    """`astroseg check-params FILE` on values the fuzzing found: exit 2, one line naming the key."""
    override, key = REFUSED[case]
    path = write_params(tmp_path, tiny_params(**override))
    result = subprocess.run([str(Path(sys.executable).parent / "astroseg"), "check-params",
                             str(path)], capture_output=True, text=True, env=_env(), timeout=60)
    assert_no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {path}: ")
    assert_names(line, key)


@pytest.mark.fault("params")
def test_prepare_refuses_in_one_line_and_writes_nothing(tmp_path):
    """The prepare stage on a refused value: exit 2, one line naming the key, no file left."""
    write_params(tmp_path, tiny_params(data={"noise": {"gaussian_sigma": 1e-300}}))
    before = _files(tmp_path)
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: params.yaml: ")
    assert_names(line, "data.noise.gaussian_sigma")
    assert _files(tmp_path) == before      # no data/dataset.h5, nor a temp file
