"""The real `dvc` CLI in a temp git repo: a change reruns exactly the stages it affects."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, STAGES, copy_project, sh, tiny_params, write_params

DVC = str(Path(sys.executable).parent / "dvc")


def _ran(output: str) -> list[str]:
    """The stages dvc ran, in order (baseline, which needs only the dataset, may run anywhere
    after prepare: reported in pipeline order)."""
    ran = re.findall(r"Running stage '(\w+)'", output)
    return [s for s in STAGES if s in ran]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dvcrepo")
    copy_project(path)
    write_params(path, tiny_params())
    sh(["git", "init", "-q"], path)
    sh(["git", "config", "user.email", "ci@example.invalid"], path)
    sh(["git", "config", "user.name", "ci"], path)
    sh([DVC, "init", "-q"], path)
    sh([DVC, "config", "core.analytics", "false"], path)
    return path


def _set(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    write_params(repo, params)


def test_full_repro_then_nothing_to_do(repo):
    out = sh([DVC, "repro"], repo).stdout
    assert _ran(out) == list(STAGES)
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert {"iou", "dice", "precision", "recall"} <= metrics.keys()
    again = sh([DVC, "repro"], repo).stdout
    assert _ran(again) == []
    assert "up to date" in sh([DVC, "status"], repo).stdout
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "reference run"], repo)
    shown = json.loads(sh([DVC, "metrics", "show", "--json"], repo).stdout)
    assert "metrics/metrics.json" in json.dumps(shown)


def test_plots_param_reruns_only_plots(repo):
    _set(repo, "plots", "dpi", 50)
    status = sh([DVC, "status"], repo).stdout
    assert "plots:" in status and "train:" not in status and "prepare:" not in status
    assert _ran(sh([DVC, "repro"], repo).stdout) == ["plots"]


def test_train_param_reruns_train_evaluate_plots_not_prepare(repo):
    _set(repo, "train", "lr", 0.0123)
    assert _ran(sh([DVC, "repro"], repo).stdout) == ["train", "evaluate", "plots"]


def test_evaluate_param_leaves_training_alone(repo):
    _set(repo, "evaluate", "threshold", 0.4)
    assert _ran(sh([DVC, "repro"], repo).stdout) == ["evaluate", "plots"]


def test_streamed_training_and_evaluation_through_dvc(repo):
    # Splits over max_memory_gb (here all of them) are read from disk in blocks, not loaded.
    _set(repo, "train", "max_memory_gb", 1e-5)
    _set(repo, "evaluate", "max_memory_gb", 1e-5)
    out = sh([DVC, "repro"], repo).stdout
    assert _ran(out) == ["train", "evaluate", "plots"]
    assert "streaming train" in out and "streaming val" in out
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert metrics["n_images"] == 8 and 0 <= metrics["iou"] <= 1
    assert "up to date" in sh([DVC, "status"], repo).stdout
    _set(repo, "train", "max_memory_gb", 4.0)
    _set(repo, "evaluate", "max_memory_gb", 4.0)


def test_nproc_2_trains_under_torchrun_through_dvc(repo):
    _set(repo, "train", "nproc", 2)
    out = sh([DVC, "repro"], repo).stdout
    assert _ran(out) == ["train", "evaluate", "plots"]
    assert "x 2 ranks" in out and out.count("train: kept epoch") == 1
    assert json.loads((repo / "metrics/metrics.json").read_text())["n_images"] > 0
    assert not (repo / ".astroseg").exists()     # the training state went with the finish
    assert "up to date" in sh([DVC, "status"], repo).stdout
    _set(repo, "train", "nproc", 1)


def test_bad_param_fails_and_keeps_outputs(repo):
    model = (repo / "models/model.pt").read_bytes()
    metrics = (repo / "metrics/metrics.json").read_text()
    _set(repo, "train", "epochs", -3)
    result = sh([DVC, "repro"], repo, check=False)
    assert result.returncode != 0
    assert "train.epochs = -3 is out of range" in result.stdout + result.stderr
    # persist: true outputs are not deleted by DVC before the stage, and the stage never got
    # as far as writing: the previous run's results are all still there.
    assert (repo / "models/model.pt").read_bytes() == model
    assert (repo / "metrics/metrics.json").read_text() == metrics


def _module_files(modules: list[str]) -> set[str]:
    """The source files of imported astroseg modules; a package's docstring-only __init__ is
    not code a stage depends on."""
    files = set()
    for m in modules:
        path = ROOT / m.replace(".", "/")
        if path.is_dir():
            init = path / "__init__.py"
            tree = ast.parse(init.read_text())
            if tree.body[1 if ast.get_docstring(tree) else 0:]:
                files.add(str(init.relative_to(ROOT)))
        else:
            files.add(m.replace(".", "/") + ".py")
    return files


def test_dvc_yaml_deps_are_exactly_what_each_stage_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        probe = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
                 "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('astroseg.'))))")
        modules = subprocess.run([sys.executable, "-c", probe, str(ROOT / script)], text=True,
                                 capture_output=True, check=True).stdout.split()
        imported = _module_files(modules)
        listed = {d for d in stage["deps"] if d.startswith("astroseg/")}
        # A listed folder stands for every source file in it, and all of them must be imported.
        covered = set()
        for dep in listed:
            if (ROOT / dep).is_dir():
                folder = {str(p.relative_to(ROOT)) for p in (ROOT / dep).rglob("*.py")}
                assert folder <= imported, f"{name}: {dep} holds unimported {sorted(folder - imported)}"
                covered |= folder
            else:
                covered.add(dep)
        assert covered == imported, f"{name}: dvc.yaml lists {sorted(covered ^ imported)} wrongly"
        assert script in stage["deps"]


def test_new_bytecode_leaves_the_pipeline_up_to_date(repo):
    """A .pyc written later (another Python, a cleared cache) is not a code change."""
    _set(repo, "train", "epochs", tiny_params()["train"]["epochs"])   # undo the bad param
    sh([DVC, "repro"], repo)
    assert "up to date" in sh([DVC, "status"], repo).stdout
    written = [repo / "astroseg/models/__pycache__/segformer.cpython-99.pyc",
               repo / "astroseg/__pycache__/params.cpython-99.pyc",
               repo / "stages/stray.pyc"]
    for path in written:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not the code")
    try:
        assert "up to date" in sh([DVC, "status"], repo).stdout
    finally:
        for path in written:
            path.unlink()


def test_fits_source_is_a_params_change_plus_dvc_add(repo):
    """The README's own-data workflow, step by step: make-sky, dvc add, commit, dvc exp run."""
    astroseg = str(Path(sys.executable).parent / "astroseg")
    sh([astroseg, "make-sky", "raw", "--fields", "4", "--size", "128"], repo)
    sh([DVC, "add", "-q", "raw/images", "raw/masks"], repo)
    sh(["git", "add", "raw/images.dvc", "raw/masks.dvc", "raw/.gitignore"], repo)
    sh(["git", "commit", "-qm", "Track the survey fields with DVC"], repo)
    out = sh([DVC, "exp", "run", "-n", "fits", "-S", "data.source=fits", "-S", "data.fits.tile=48",
              "-S", "data.fits.stride=40", "-S", "train.epochs=1"], repo).stdout
    assert _ran(out) == list(STAGES)
    assert json.loads((repo / "metrics/metrics.json").read_text())["n_images"] > 0
    # The data pointers stay tracked, so keeping the experiment keeps what it was trained on.
    status = sh(["git", "status", "--porcelain"], repo).stdout
    assert "raw/" not in status, status
    sh(["git", "commit", "-qam", "Train on the survey fields"], repo)
    committed = sh(["git", "ls-tree", "-r", "--name-only", "HEAD", "raw"], repo).stdout.split()
    assert {"raw/images.dvc", "raw/masks.dvc"} <= set(committed)
    assert "up to date" in sh([DVC, "status"], repo).stdout
    # A changed raw file is a changed dependency of prepare.
    sh([astroseg, "make-sky", "raw", "--fields", "1", "--size", "128", "--seed", "9",
        "--overwrite"], repo)
    assert "prepare:" in sh([DVC, "status"], repo).stdout
