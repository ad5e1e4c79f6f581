"""Tampered checkpoints, a model changed outside DVC, a fresh clone without the data, and
errors without tracebacks unless --debug / ASTROSEG_DEBUG asks for one."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from astroseg.cli import main as cli_main
from astroseg.errors import DataError
from astroseg.models import build_model
from astroseg.models.checkpoint import load_checkpoint, lock_mismatch, save_checkpoint
from conftest import ROOT, TINY_MODEL, TRACEBACK, _env, run_stage, tiny_params, write_params

MARKER = "astroseg-pwned"


class _RunsCode:
    """Unpickling this would run a shell command: what a tampered checkpoint can hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload(untrained: Path) -> dict:
    return torch.load(untrained, map_location="cpu", weights_only=True)


def _save(path: Path, payload: object) -> Path:
    with open(path, "wb") as f:
        torch.save(payload, f)
    return path


def _stack(tmp_path: Path) -> Path:
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    return path


def _predict(tmp_path: Path, model: Path) -> list[str]:
    return ["predict", str(_stack(tmp_path)), "-o", str(tmp_path / "out.h5"),
            "--model", str(model), "--device", "cpu"]


@pytest.mark.fault("checkpoint")
def test_a_checkpoint_that_would_run_code_is_refused(untrained, pipeline_outputs, tmp_path,
                                                     capsys):
    marker = tmp_path / MARKER
    payload = _payload(untrained)
    payload["meta"]["note"] = _RunsCode(marker)
    bad = _save(tmp_path / "tampered.pt", payload)
    assert cli_main(_predict(tmp_path, bad)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: refused, the checkpoint holds a Python object")
    assert "posix.system" in err and "\n" not in err
    assert not marker.exists() and not (tmp_path / "out.h5").exists()
    # train.init_from reads checkpoints the same way.
    shutil.copytree(pipeline_outputs / "data", tmp_path / "data")
    write_params(tmp_path, tiny_params(train={"init_from": str(bad)}))
    result = run_stage("train", tmp_path)
    assert result.returncode == 2 and "refused, the checkpoint holds a Python object" in result.stderr
    assert not marker.exists()


def _edited(untrained: Path, edit) -> dict:
    payload = _payload(untrained)
    edit(payload)
    return payload


def _other_dims(p: dict) -> None:
    config = {**TINY_MODEL, "dims": [8, 24]}
    p["state_dict"] = build_model(config).state_dict()


CASES = {
    "missing weight": (lambda p: p["state_dict"].pop("head.weight"),
                       "the checkpoint misses 1 weight(s) of this model (head.weight)"),
    "extra weight": (lambda p: p["state_dict"].update(spare=torch.zeros(2)),
                     "the checkpoint has unexpected 1 weight(s) of this model (spare)"),
    "another architecture's weights": (_other_dims, "has other shapes for"),
    "unknown model name": (lambda p: p["model_config"].update(name="unet"),
                           "its model_config does not build a model (unknown model 'unet'"),
    "unknown model argument": (lambda p: p["model_config"].update(width=3),
                               "its model_config does not build a model"),
    "no state_dict": (lambda p: p.pop("state_dict"), "key 'state_dict' is missing"),
    "state_dict of non-tensors": (lambda p: p.update(state_dict={"head.weight": [1.0]}),
                                  "'state_dict' must map names to tensors"),
    "another format version": (lambda p: p.update(format_version=7),
                               "checkpoint format 7, expected 1"),
}


@pytest.mark.fault("checkpoint")
@pytest.mark.parametrize("case", list(CASES))
def test_an_edited_checkpoint_is_refused_naming_what_differs(untrained, tmp_path, case):
    edit, message = CASES[case]
    path = _save(tmp_path / "edited.pt", _edited(untrained, edit))
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


@pytest.mark.fault("checkpoint")
@settings(max_examples=12)
@given(cut=st.floats(0.0, 0.999), garbage=st.binary(max_size=64))
def test_a_truncated_or_overwritten_checkpoint_is_a_clean_error(untrained, tmp_path_factory,
                                                                cut, garbage):
    data = untrained.read_bytes()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    path.write_bytes(data[:int(cut * len(data))] + garbage)
    with pytest.raises(DataError, match=f"^{path}: ") as info:
        load_checkpoint(path)
    assert "refused" not in str(info.value)   # damage is not a hostile pickle


def _lock(folder: Path, model: Path) -> None:
    md5 = hashlib.md5(model.read_bytes()).hexdigest()
    (folder / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {
        "cmd": "python stages/train.py",
        "outs": [{"path": "models/model.pt", "hash": "md5", "md5": md5}]}}}))


@pytest.mark.fault("checkpoint")
def test_predict_warns_when_the_model_differs_from_dvc_lock(untrained, tmp_path, capsys,
                                                            monkeypatch):
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(untrained.read_bytes())
    _lock(tmp_path, model)
    monkeypatch.chdir(tmp_path)
    assert lock_mismatch("models/model.pt") is None
    assert cli_main(_predict(tmp_path, Path("models/model.pt"))) == 0
    assert "warning" not in capsys.readouterr().err
    # Retrained by hand outside DVC: same architecture, other weights, other bytes.
    torch.manual_seed(1)
    save_checkpoint(model, build_model(TINY_MODEL), TINY_MODEL, {"normalization": "minmax"})
    assert cli_main(_predict(tmp_path, Path("models/model.pt"))) == 0
    err = capsys.readouterr().err
    assert f"warning: models/model.pt: md5 {hashlib.md5(model.read_bytes()).hexdigest()} is " \
           "not the " in err and "dvc checkout models/model.pt" in err
    # A model outside any DVC project, or not an output the lock records: nothing to say.
    assert lock_mismatch(untrained) is None
    other = tmp_path / "models" / "other.pt"
    other.write_bytes(untrained.read_bytes())
    assert lock_mismatch(other) is None


@pytest.mark.fault("missing-data")
@pytest.mark.parametrize("stage,missing", [
    ("train", "data/dataset.h5: dataset file not found"),
    ("evaluate", "models/model.pt: checkpoint not found"),
    ("baseline", "data/dataset.h5: dataset file not found"),
    ("plots", "not found; the "),
])
def test_a_fresh_clone_without_the_data_is_told_to_pull_or_repro(tmp_path, stage, missing):
    write_params(tmp_path, tiny_params())
    result = run_stage(stage, tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and missing in line, line
    assert "run `dvc repro` (or `dvc pull`" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]   # nothing written


@pytest.mark.fault("missing-data")
def test_predict_without_the_model_is_told_to_pull_or_repro(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = _stack(tmp_path)
    assert cli_main(["predict", str(stack), "-o", "out.h5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: models/model.pt: checkpoint not found; the train stage writes it: run `dvc "
        "repro` (or `dvc pull` if a DVC remote holds the outputs)")


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "astroseg.cli", *args], capture_output=True,
                          text=True, env={**_env(), **(env or {})}, cwd=ROOT)


@pytest.mark.fault("errors")
def test_tracebacks_only_with_debug(tmp_path):
    bad = tmp_path / "missing.h5"
    quiet = _cli(["info", str(bad)])
    assert quiet.returncode == 2 and TRACEBACK not in quiet.stderr
    assert quiet.stderr.startswith(f"error: {bad}") and quiet.stderr.count("\n") == 1
    for args, env in ((["--debug", "info", str(bad)], None), (["info", str(bad), "--debug"], None),
                      (["info", str(bad)], {"ASTROSEG_DEBUG": "1"})):
        loud = _cli(args, env)
        assert loud.returncode == 1 and TRACEBACK in loud.stderr, args
        assert str(bad) in loud.stderr.splitlines()[-1]


@pytest.mark.fault("errors")
def test_an_os_error_is_one_line_naming_the_file(untrained, tmp_path, capsys):
    # The output's folder is a file: the OS refuses, and the user reads which path and why.
    (tmp_path / "taken").write_text("")
    args = _predict(tmp_path, untrained)
    args[3] = str(tmp_path / "taken" / "out.h5")
    assert cli_main(args) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(tmp_path / "taken") in err
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.fault("errors")
def test_an_unexpected_exception_is_an_internal_error_line(monkeypatch, tmp_path, capsys):
    from astroseg.errors import ERROR_LOG_ENV, run_main

    log = tmp_path / "internal.log"
    monkeypatch.setenv(ERROR_LOG_ENV, str(log))   # not the session's log: this one is on purpose
    monkeypatch.delenv("ASTROSEG_DEBUG", raising=False)

    def broken() -> None:
        {}["missing"]
    assert run_main(broken) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error: KeyError: 'missing' (please report it; rerun "
                          "with ASTROSEG_DEBUG=1, or `astroseg --debug`, for the traceback)")
    assert err.count("\n") == 1
    assert "KeyError" in log.read_text()
    monkeypatch.setenv("ASTROSEG_DEBUG", "1")
    with pytest.raises(KeyError):
        run_main(broken)


@pytest.mark.fault("errors")
@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 4398046511104 bytes")])
def test_out_of_memory_is_one_line_with_advice(exc, capsys, monkeypatch):
    from astroseg.errors import run_main

    monkeypatch.delenv("ASTROSEG_DEBUG", raising=False)

    def allocate() -> None:
        raise exc
    assert run_main(allocate) == 1
    assert capsys.readouterr().err == ("error: out of memory (lower the batch size, chunk or "
                                       "window, or free memory)\n")


@pytest.mark.fault("errors")
def test_a_lost_torchrun_peer_is_one_line_not_an_internal_error(capsys, monkeypatch):
    from astroseg.errors import run_main

    monkeypatch.delenv("ASTROSEG_DEBUG", raising=False)

    def collective() -> None:   # what rank 0 of a DDP run saw when rank 1 was SIGKILLed
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:13207: "
                           "Connection reset by peer")
    assert run_main(collective) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: another rank of this run stopped (killed, or failed") and \
        "internal error" not in err and err.count("\n") == 1


@pytest.mark.fault("errors")
def test_an_interrupt_is_one_line_and_status_130(capsys, monkeypatch):
    from astroseg.errors import run_main

    monkeypatch.delenv("ASTROSEG_DEBUG", raising=False)

    def interrupted() -> None:
        raise KeyboardInterrupt
    assert run_main(interrupted) == 130
    assert capsys.readouterr().err == "interrupted\n"
