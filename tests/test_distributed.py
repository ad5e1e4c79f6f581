"""torchrun + DDP on the CPU (gloo): two ranks train the weights one process trains."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from astroseg.models import build_model
from conftest import ROOT, run_stage, tiny_params, write_params


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a directory's models/model.pt."""
    return torch.load(directory / "models/model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Tiny params and their dataset (35 training images: a last global batch of 3 images,
    2 for rank 0 and 1 for rank 1)."""
    path = tmp_path_factory.mktemp("ddp")
    write_params(path, tiny_params(data={"n_train": 35}, train={"epochs": 2, "batch_size": 8}))
    assert run_stage("prepare", path).returncode == 0
    return path


def _params(**train) -> dict:
    """The DDP tests' params: 35 images, batch 8, and what makes ranks match one process."""
    # No dropout: each rank draws its own masks, so only a dropout-free model matches exactly.
    # fp32: bf16 autocast (precision auto on a CPU with AVX-512-BF16) rounds each rank's
    # half-batch sums differently, 1e-2 apart after ten steps.
    return tiny_params(data={"n_train": 35},
                       train={"epochs": 2, "batch_size": 8, "precision": "fp32", **train},
                       model={"segformer": {"dropout": 0.0}})


def _train(prepared: Path, where: Path, **train) -> str:
    shutil.copytree(prepared, where)
    write_params(where, _params(**train))
    result = run_stage("train", where)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_ranks_give_the_weights_of_one_process_with_the_same_global_batch(prepared, tmp_path):
    one = _train(prepared, tmp_path / "one")
    two = _train(prepared, tmp_path / "two", nproc=2)
    assert "x 2 ranks" in two
    # Rank 0 alone prints and writes.
    assert two.count("train: kept epoch") == 1 and two.count("epoch   1 |") == 1
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    # The BatchNorm statistics were global: its running variance moved, and identically.
    assert not torch.equal(a["fuse.0.running_var"], torch.ones_like(a["fuse.0.running_var"]))
    # Ten steps did move the weights far from their initial values: the check is not trivial.
    payload = torch.load(tmp_path / "one/models/model.pt", weights_only=True)
    torch.manual_seed(tiny_params()["train"]["seed"])
    init = build_model(payload["model_config"]).state_dict()
    assert max((a[k].double() - init[k].double()).abs().max().item() for k in a) > 1e-2


def test_a_failing_rank_fails_the_job_with_its_message(prepared, tmp_path):
    where = tmp_path / "bad"
    shutil.copytree(prepared, where)
    write_params(where, tiny_params(data={"n_train": 35}, train={"nproc": 2}))
    # A dataset whose val split is unreadable: the ranks find out after the launch.
    with h5py.File(where / "data/dataset.h5", "a") as f:
        del f["val/masks"]
    result = run_stage("train", where)
    assert result.returncode != 0
    assert "val" in result.stderr and "error:" in result.stderr
    assert not (where / "models/model.pt").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc to find the ranks")
def test_a_killed_rank_ends_the_job_instead_of_hanging(prepared, tmp_path):
    where = tmp_path / "killed"
    shutil.copytree(prepared, where)
    write_params(where, tiny_params(data={"n_train": 35}, train={"nproc": 2, "epochs": 200}))
    job = subprocess.Popen([sys.executable, str(ROOT / "stages/train.py")], cwd=where,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (where / ".astroseg/train_state.pt").exists():   # training is under way
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
            time.sleep(0.2)
        ranks = _children(job.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        out = job.communicate(timeout=90)[0]
    finally:
        job.kill()
    assert job.returncode != 0
    assert "Signal 9" in out or "SIGKILL" in out, out[-2000:]
    assert not (where / "models/model.pt").exists()


def test_ddp_sigterm_saves_and_every_rank_resumes(prepared, tmp_path):
    """torchrun forwards SIGTERM to the ranks; rank 0 saves, both resume, and the history and
    weights are those of the uninterrupted two-rank run."""
    train = {"nproc": 2, "epochs": 8, "checkpoint_minutes": 0}
    _train(prepared, tmp_path / "whole", **train)
    where = tmp_path / "cut"
    shutil.copytree(prepared, where)
    write_params(where, _params(**train))   # as _train
    job = subprocess.Popen([sys.executable, str(ROOT / "stages/train.py")], cwd=where,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (where / ".astroseg/train_state.pt").exists():
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)     # to torchrun, as a scheduler would
        out = job.communicate(timeout=90)[0]
    finally:
        job.kill()
    assert job.returncode != 0, out[-2000:]
    assert out.count("stopped by SIGTERM") == 1 and "saved the training state" in out
    rerun = run_stage("train", where)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from .astroseg/train_state.pt" in rerun.stdout
    whole = (tmp_path / "whole/metrics/train_history.tsv").read_text().splitlines()
    cut = (where / "metrics/train_history.tsv").read_text().splitlines()
    assert len(whole) == len(cut) == 9
    for a, b in zip(whole[1:], cut[1:]):
        assert [float(v) for v in a.split()] == pytest.approx([float(v) for v in b.split()],
                                                               rel=1e-6)
    a, b = weights(tmp_path / "whole"), weights(where)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-6


def test_more_ranks_than_a_batch_is_refused_before_launch(prepared, tmp_path):
    where = tmp_path / "small"
    shutil.copytree(prepared, where)
    write_params(where, tiny_params(data={"n_train": 35}, train={"nproc": 2, "batch_size": 1}))
    result = run_stage("train", where)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: params.yaml: train.nproc = 2 exceeds "
                                     "train.batch_size = 1, the global batch the ranks share")
