"""Shared fixtures: tiny params that run the real pipeline in seconds."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, settings

from astroseg.errors import DEBUG_ENV, ERROR_LOG_ENV

ROOT = Path(__file__).resolve().parents[1]

# Fuzz tests draw a bounded, fixed set of examples (derandomize): the same cases on every run
# and in CI, and no example database written into the checkout.
settings.register_profile("astroseg", derandomize=True, deadline=None, database=None,
                          max_examples=20, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "astroseg"))

TRACEBACK = "Traceback (most recent call last)"


def pytest_configure(config) -> None:
    """Collect every internal error (an exception that would have been a raw traceback) that
    any astroseg process of the session reports, in-process or in a subprocess."""
    fd, path = tempfile.mkstemp(prefix="astroseg-internal-errors-", suffix=".log")
    os.close(fd)
    os.environ[ERROR_LOG_ENV] = path


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session if any run reported an internal error, even one whose test passed."""
    path = Path(os.environ.pop(ERROR_LOG_ENV, ""))
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    path.unlink()
    if text.strip():
        print(f"\ninternal errors (raw tracebacks without run_main) reported by astroseg:\n{text}")
        session.exitstatus = 1


class TooSlow(BaseException):
    """Raised by `time_limit`; a BaseException, so no `except Exception` in the code swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail the test if the block runs longer than `seconds` (a hang on a hostile input)."""
    def expire(signum, frame):
        raise TooSlow(f"took over {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    """A user-facing run printed no traceback (unless it asked for one with ASTROSEG_DEBUG)."""
    if os.environ.get(DEBUG_ENV):
        return
    for stream in (result.stdout, result.stderr):
        assert TRACEBACK not in (stream or ""), f"a traceback reached the user:\n{stream[-3000:]}"

# Small enough for seconds on 2 CPU cores, large enough that every code path runs. Pinned to
# the CPU, where results are promised bit for bit; tests/test_gpu.py covers CUDA.
STAGES = ("prepare", "train", "evaluate", "baseline", "plots")   # in an order dvc may run them
TINY = {
    "data": {"height": 48, "width": 48, "n_train": 32, "n_val": 8, "n_test": 8, "chunk": 16,
             "workers": 1,
             "galaxies": {"margin": 10.0}},
    "model": {"segformer": {"dims": [8, 16], "depths": [1, 1], "heads": [1, 2],
                            "sr_ratios": [2, 1], "decoder_dim": 16, "refine_dim": 4},
              "tiny_segformer": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
    "train": {"epochs": 2, "batch_size": 8, "progress": False, "device": "cpu"},
    "evaluate": {"n_examples": 4, "device": "cpu", "mc_samples": 2},
    "baseline": {"nsigma": [1.5, 3.0, 5.0], "npixels": [3, 10]},
    "plots": {"n_samples": 3, "n_predictions": 2, "dpi": 40},
}


def merge(base: dict, override: dict) -> dict:
    """Recursively merge `override` into a copy of `base`."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_params(**override: dict) -> dict:
    """The repo's params.yaml with the TINY overrides (and any more) applied."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return merge(merge(base, TINY), override)


def write_params(directory: Path, params: dict) -> Path:
    """Write `params` as params.yaml in `directory`."""
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run stages/<name>.py of this checkout with `cwd` as the pipeline directory."""
    result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=cwd,
                            capture_output=True, text=True, env=_env())
    assert_no_traceback(result)
    return result


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A temp directory holding tiny params.yaml, as a pipeline's working directory."""
    write_params(tmp_path, tiny_params())
    return tmp_path


@pytest.fixture(scope="session")
def pipeline_outputs(tmp_path_factory) -> Path:
    """A directory where every stage has run once on tiny params (shared, read-only)."""
    path = tmp_path_factory.mktemp("pipeline")
    write_params(path, tiny_params())
    for stage in STAGES:
        result = run_stage(stage, path)
        assert result.returncode == 0, result.stderr
    return path


def copy_project(dest: Path) -> None:
    """Copy what the DVC pipeline needs (code, dvc.yaml, .dvcignore, raw/) into `dest`."""
    for name in ("astroseg", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "raw").mkdir()
    shutil.copy(ROOT / "raw" / "README.md", dest / "raw" / "README.md")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the venv first on PATH; unless `check` is off, fail the test if it fails."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env())
    assert_no_traceback(result)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# A tiny binary segformer (total stride 8): the checkpoint of the predict and catalogue tests.
TINY_MODEL = {"name": "segformer", "num_classes": 1, "dims": [8, 16], "depths": [1, 1],
              "heads": [1, 2], "sr_ratios": [2, 1], "decoder_dim": 16, "refine_dim": 4}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """An untrained TINY_MODEL checkpoint (minmax), for tests of everything but the weights."""
    from astroseg.models import build_model
    from astroseg.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_model(TINY_MODEL), TINY_MODEL, {"normalization": "minmax"})
    return path
