"""Resume after interruption: SIGKILL or SIGTERM mid-run, rerun, and the result is the same bytes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, _env, run_stage, tiny_params, write_params

STATE = ".astroseg/train_state.pt"
OUTPUTS = ("models/model.pt", "metrics/train_history.tsv")
# Long enough to be caught mid-run; saves after every step (checkpoint_minutes ~ 6 ms).
TRAIN = {"epochs": 10, "batch_size": 4, "checkpoint_minutes": 0.0001}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A dataset and the outputs of one uninterrupted run (saving its state only per epoch)."""
    path = tmp_path_factory.mktemp("resume")
    write_params(path, tiny_params(train={**TRAIN, "checkpoint_minutes": 0}))
    for stage in ("prepare", "train"):
        result = run_stage(stage, path)
        assert result.returncode == 0, result.stderr
    assert "starting fresh" in result.stdout
    assert not (path / STATE).exists(), "the state outlives a finished run"
    return path


def _copy(reference: Path, where: Path, **train) -> Path:
    shutil.copytree(reference, where)     # copy2 keeps the dataset's mtime: the same data
    for name in OUTPUTS:
        (where / name).unlink()
    write_params(where, tiny_params(train={**TRAIN, **train}))
    return where


def _start(where: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "stages/train.py")], cwd=where,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_state(job: subprocess.Popen, where: Path) -> None:
    deadline = time.monotonic() + 60
    while not (where / STATE).exists():
        assert job.poll() is None, "finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.fault("kill")
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_moment_then_rerun_gives_the_same_bytes(reference, tmp_path, seed):
    where = _copy(reference, tmp_path / "run")
    job = _start(where)
    _wait_for_state(job, where)
    time.sleep(random.Random(seed).uniform(0, 1.0))
    job.send_signal(signal.SIGKILL)
    job.communicate()
    assert job.returncode == -signal.SIGKILL, "finished before the kill: lengthen TRAIN"
    assert (where / STATE).exists() and not (where / "models/model.pt").exists()
    rerun = run_stage("train", where)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from .astroseg/train_state.pt at epoch" in rerun.stdout
    _same_outputs(where, reference)
    assert not (where / STATE).exists()
    assert not list((where / ".astroseg").glob("*.tmp")), "a killed save's temp file is left"


def test_sigterm_saves_exits_nonzero_and_the_rerun_resumes(reference, tmp_path):
    where = _copy(reference, tmp_path / "run", checkpoint_minutes=0)
    job = _start(where)
    _wait_for_state(job, where)              # after the first epoch
    saved = (where / STATE).stat().st_mtime_ns
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=60)
    assert job.returncode != 0
    assert "stopped by SIGTERM" in err and "saved the training state to .astroseg/train_state.pt" in err
    assert (where / STATE).stat().st_mtime_ns > saved, "the signal did not save"
    state = torch.load(where / STATE, weights_only=True)
    assert state["progress"]["position"] > 0      # saved mid-epoch, not only at its end
    # A changed param starts afresh from the same state file (on a copy of the directory).
    changed = tmp_path / "changed"
    shutil.copytree(where, changed)
    write_params(changed, tiny_params(train={**TRAIN, "lr": 0.001}))
    fresh = run_stage("train", changed)
    assert fresh.returncode == 0, fresh.stderr
    assert "starting fresh: .astroseg/train_state.pt was saved for other params" in fresh.stdout
    rerun = run_stage("train", where)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stdout
    _same_outputs(where, reference)


def test_changed_data_or_code_starts_fresh(reference, tmp_path):
    where = _copy(reference, tmp_path / "run", checkpoint_minutes=0)
    job = _start(where)
    _wait_for_state(job, where)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    os.utime(where / "data/dataset.h5")      # rewritten (here: touched) since the state
    rerun = run_stage("train", where)
    assert "starting fresh: .astroseg/train_state.pt was saved for other params, data or code" \
        in rerun.stdout
