"""Fault injection: SIGKILL at seeded random moments and a full disk, for every stage and for
`astroseg predict` (HDF5, FITS, many files).

Kill: the previous outputs are intact (or a complete new version), nothing truncated is left,
a killed run's temp files are swept by the rerun (and are nothing DVC or git would track), and
the rerun writes the bytes an uninterrupted run writes. Disk full (RLIMIT_FSIZE: Python
ignores SIGXFSZ, so a write fails with EFBIG): one line naming the output, exit status 1, the
previous outputs intact, no temp file left.

Runs are real processes that get real signals and limits, forked from one interpreter that
imported torch and astroseg once (a fresh `python stages/x.py` spends ~2 s importing, which
would eat the budget and most of the kill moments): the child runs the script as __main__,
exits through the interpreter's normal shutdown, and nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from astropy.io import fits

from astroseg import atomic
from astroseg.atomic import atomic_output, space_errno, sweep_stale, write_json
from conftest import ROOT, TRACEBACK, _env, tiny_params, write_params

# The forking server: warms up on every stage's imports and the CLI's, then for each request
# (one JSON line) forks a child that runs the script or module as __main__, its stdout and
# stderr in pipes (a file would count against RLIMIT_FSIZE); answers {"pid"} at once and
# {"status", "stdout", "stderr"} when the child has gone.
ZYGOTE = r"""
import json, os, resource, runpy, selectors, sys
for name in ("prepare", "train", "evaluate", "baseline", "plots"):
    runpy.run_path(os.path.join("stages", name + ".py"), run_name="warm-up")
import astroseg.infer.predict, astroseg.infer.predict_fits, astroseg.infer.survey
# matplotlib builds its font cache on first use: on a fresh machine, done here rather than in
# a child under a file-size limit (where it fails and every font lookup warns).
from matplotlib import font_manager
font_manager.findfont("STIXGeneral"), font_manager.findfont("cmr10")
out = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
out.write("ready\n")
out.flush()
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pipes = [os.pipe(), os.pipe()]
    pid = os.fork()
    if pid == 0:
        os.dup2(pipes[0][1], 1)
        os.dup2(pipes[1][1], 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for r, w in pipes:
            os.close(r)
            os.close(w)
        out.close()
        os.chdir(req["cwd"])
        if req["limit"] is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (req["limit"], req["limit"]))
        sys.argv = req["argv"]
        if sys.argv[0].endswith(".py"):
            sys.path[0] = os.path.dirname(sys.argv[0])
            runpy.run_path(sys.argv[0], run_name="__main__")
        else:
            sys.modules.pop(sys.argv[0], None)   # imported as itself, it would run twice
            runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        sys.exit(0)
    for r, w in pipes:
        os.close(w)
    out.write(json.dumps({"pid": pid}) + "\n")
    out.flush()
    texts = {pipes[0][0]: b"", pipes[1][0]: b""}
    sel = selectors.DefaultSelector()
    for fd in texts:
        sel.register(fd, selectors.EVENT_READ)
    while sel.get_map():
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if chunk:
                texts[key.fd] += chunk
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
    _, status = os.waitpid(pid, 0)
    stdout, stderr = (texts[p[0]].decode(errors="replace") for p in pipes)
    out.write(json.dumps({"status": os.waitstatus_to_exitcode(status), "stdout": stdout,
                          "stderr": stderr}) + "\n")
    out.flush()
"""

OUT_DIRS = ("data", "models", "metrics", "plots", ".astroseg")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
HINT = "over the process's file-size limit (ulimit -f)"


@dataclass
class Run:
    """One forked run: its pid, when it started, and (once it has gone) how it ended."""
    pid: int
    started: float
    status: int | None = None
    stdout: str = ""
    stderr: str = ""


class Zygote:
    """The forking server, and this side of its line protocol."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=ROOT, env=_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buf = b""
        assert self._line(120) == "ready", "the forking server did not start"

    def _line(self, timeout: float | None) -> str | None:
        """The next line it wrote, or None if none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "the forking server died"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def start(self, argv: list[str], cwd: Path, limit: int | None = None) -> Run:
        """Fork a run of `argv` (a script path or a module name, then its arguments) in `cwd`,
        under a file-size limit of `limit` bytes if given."""
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "limit": limit}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        run = Run(json.loads(self._line(60))["pid"], time.monotonic())
        return run

    def poll(self, run: Run, timeout: float = 0.0) -> bool:
        """Whether the run has ended (waiting up to `timeout` s); fills in how it ended."""
        if run.status is None:
            line = self._line(timeout)
            if line is None:
                return False
            end = json.loads(line)
            run.status, run.stdout, run.stderr = end["status"], end["stdout"], end["stderr"]
        return True

    def run(self, argv: list[str], cwd: Path, limit: int | None = None) -> Run:
        """Run to the end."""
        run = self.start(argv, cwd, limit)
        assert self.poll(run, 300), "a run took over 300 s"
        assert TRACEBACK not in run.stderr, f"a traceback reached the user:\n{run.stderr[-3000:]}"
        return run

    def close(self) -> None:
        """Let the server exit (end of its input), or stop it."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """The forking server of this module's runs."""
    # A matplotlib font cache of its own, built before any limit: a user's stale one (fonts of
    # a deleted venv) makes every font lookup warn, which the one-line checks would catch.
    os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("mplconfig"))
    try:
        server = Zygote()
    finally:
        del os.environ["MPLCONFIGDIR"]
    yield server
    server.close()


def stage_argv(stage: str) -> list[str]:
    """The command of a stage script."""
    return [str(ROOT / "stages" / f"{stage}.py")]


def predict_argv(*args: object) -> list[str]:
    """The command `astroseg predict ARGS` (on the CPU, in fp32: emulated bf16 is ~20x slower)."""
    return ["astroseg.cli", "predict", *map(str, args), "--device", "cpu", "--precision", "fp32"]


# --- what a whole output is ---------------------------------------------------------------

def assert_whole(path: Path) -> None:
    """`path` is a complete file of its kind: every byte its format promises is there."""
    data = path.read_bytes()
    assert data, f"{path}: empty"
    kind = "".join(path.suffixes[-1:])
    if kind == ".h5":
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    elif kind == ".fits":
        assert len(data) % 2880 == 0, f"{path}: not whole FITS blocks"
        with warnings.catch_warnings():
            warnings.simplefilter("error")     # "file may have been truncated" included
            with fits.open(path, checksum=True) as hdul:
                hdul.verify("exception")
                for i, hdu in enumerate(hdul):
                    info = hdul.fileinfo(i)
                    assert info["datLoc"] + info["datSpan"] <= len(data), f"{path}: HDU {i}"
                    assert hdu.data is not None
    elif kind == ".json":
        json.loads(data)
    elif kind == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END), path
        import matplotlib.image

        matplotlib.image.imread(path)
    elif kind == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif kind in (".csv", ".tsv"):
        text = data.decode()
        assert text.endswith("\n"), f"{path}: no final newline"
        rows = list(csv.reader(text.splitlines(), delimiter="\t" if kind == ".tsv" else ","))
        assert len(rows) >= 2 and len({len(r) for r in rows}) == 1, f"{path}: ragged or empty"
    elif kind == ".html":
        assert data.rstrip().endswith(b"</html>"), f"{path}: cut short"
    else:
        raise AssertionError(f"{path}: no check for this kind of file")


def is_temp(path: Path) -> bool:
    """A temp file (or folder) of an atomic write: `.NAME.*.tmp`."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def outputs(folders: list[Path]) -> dict[Path, bytes]:
    """The bytes of every file in `folders` (not in temp folders), temp files included."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and not any(is_temp(p) for p in path.relative_to(folder).parents
                                          if p.name):
                found[path] = path.read_bytes()
    return found


def temps(folders: list[Path]) -> list[Path]:
    """Temp files and folders of atomic writes in `folders`."""
    return sorted(p for f in folders if f.is_dir() for p in f.iterdir() if is_temp(p))


def dvc_outs() -> set[str]:
    """Every output (outs and metrics) that dvc.yaml declares, as a path from the pipeline."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = set()
    for stage in stages.values():
        for key in ("outs", "metrics"):
            for entry in stage.get(key, []):
                found |= set(entry) if isinstance(entry, dict) else {entry}
    return found


def assert_untracked(left: list[Path], root: Path) -> None:
    """Temp files are no DVC output and nothing git would add (.gitignore: *.tmp)."""
    ignored = (ROOT / ".gitignore").read_text().split()
    outs = dvc_outs()
    for path in left:
        rel = path.relative_to(root).as_posix()
        assert rel not in outs and not any(rel.startswith(f"{o}/") for o in outs), rel
        assert any(fnmatch(path.name, pattern) for pattern in ignored), f"git would add {rel}"


def assert_after_kill(before: dict[Path, bytes], folders: list[Path]) -> None:
    """Every file is as it was, or a complete new version; none is missing."""
    after = outputs(folders)
    for path, data in before.items():
        if not is_temp(path):
            assert path in after, f"{path}: the previous output is gone"
    for path, data in after.items():
        if not is_temp(path) and before.get(path) != data:
            assert_whole(path)


# --- kill ---------------------------------------------------------------------------------

@dataclass
class KillCase:
    """A command to kill: what it runs, in which folders it writes."""
    argv: list[str]
    folders: list[str]                       # relative to the working directory
    varying: tuple[str, ...] = ()            # file names whose bytes vary run to run
    ended: list[int] = field(default_factory=list)
    mid_write: int = 0                       # kills that left a temp file behind


def watch(zygote: Zygote, run: Run, folders: list[Path], kill_at: float | None = None,
          kill_on_temp: bool = False) -> float | None:
    """Follow a run, polling its folders for temp files; SIGKILL it `kill_at` s after its start
    or (`kill_on_temp`) as soon as a temp file shows. Returns when a temp file first showed."""
    first_temp = None
    while not zygote.poll(run, 0.002):
        now = time.monotonic() - run.started
        if first_temp is None and temps(folders):
            first_temp = now
        if (kill_at is not None and now >= kill_at) or (kill_on_temp and first_temp is not None):
            os.kill(run.pid, signal.SIGKILL)
            zygote.poll(run, 60)
            break
    return first_temp


def kill_and_rerun(zygote: Zygote, case: KillCase, work: Path, timing: Path,
                   rng: random.Random) -> None:
    """Time an uninterrupted run in `timing`; kill runs in `work` at three seeded moments
    (the moment a temp file shows, while computing, in the write phase); then rerun."""
    folders = [work / f for f in case.folders]
    timed = zygote.start(case.argv, timing)
    first_temp = watch(zygote, timed, [timing / f for f in case.folders])
    assert timed.status == 0, timed.stderr
    duration = time.monotonic() - timed.started
    writes = first_temp if first_temp is not None else duration
    # The moment a temp file shows first: the later runs may have less left to do.
    moments = [(None, True), (rng.uniform(0.1, 0.9) * writes, False),
               (writes + rng.uniform(0.0, 1.0) * (duration - writes), False)]
    for kill_at, on_temp in moments:
        before = outputs(folders)
        run = zygote.start(case.argv, work)
        watch(zygote, run, folders, kill_at, on_temp)
        assert run.status in (0, -signal.SIGKILL), run.stderr
        case.ended.append(run.status)
        assert_after_kill(before, folders)
        left = temps(folders)
        case.mid_write += bool(left)
        assert_untracked(left, work)
    assert -signal.SIGKILL in case.ended, f"every run ended before its kill: {case.ended}"
    rerun = zygote.run(case.argv, work)
    assert rerun.status == 0, rerun.stderr
    assert not temps(folders), "the rerun left a killed run's temp files"
    done, reference = outputs(folders), outputs([timing / f for f in case.folders])
    assert {p.relative_to(work) for p in done} == {p.relative_to(timing) for p in reference}
    for path, data in done.items():
        assert_whole(path)
        if path.name not in case.varying:
            assert data == reference[timing / path.relative_to(work)], \
                f"{path}: not the bytes of an uninterrupted run"


# Faster on the CPU, the same writers: fp32 training (emulated bf16 is ~20x slower), no TTA.
FAST = {"train": {"precision": "fp32"}, "evaluate": {"tta": False}}
# New params for the killed runs: every stage's outputs change (and prepare, with 5x the
# images, runs long enough to be caught mid-write).
KILL_PARAMS = {
    "prepare": {"data": {"seed": 7, "n_train": 160, "n_val": 24, "n_test": 24}},
    "train": {"train": {"seed": 7, "precision": "fp32"}},
    "evaluate": {"evaluate": {"threshold": 0.4, "tta": False}},
    "baseline": {"baseline": {"nsigma": [2.0, 4.0]}},
    "plots": {"plots": {"dpi": 44, "cmap": "viridis"}},
}
STAGE_FOLDERS = {"prepare": ["data"], "train": ["models", "metrics", ".astroseg"],
                 "evaluate": ["models", "metrics"], "baseline": ["metrics"], "plots": ["plots"]}


@pytest.mark.fault("kill")
@pytest.mark.parametrize("stage", list(KILL_PARAMS))
def test_sigkill_a_stage_at_random_moments(zygote, pipeline_outputs, tmp_path, stage):
    """Previous outputs intact or new and whole; the rerun writes an uninterrupted run's bytes."""
    work, timing = tmp_path / "work", tmp_path / "timing"
    for where in (work, timing):
        shutil.copytree(pipeline_outputs, where)
        write_params(where, tiny_params(**KILL_PARAMS[stage]))
    case = KillCase(stage_argv(stage), STAGE_FOLDERS[stage])
    kill_and_rerun(zygote, case, work, timing, random.Random(f"14:{stage}"))
    if stage in ("prepare", "plots"):   # their writes span the run: a kill must catch one
        assert case.mid_write, f"no kill caught a write in progress: {case.ended}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Inputs for `astroseg predict`: an HDF5 stack, a large field, a folder of small fields."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(14)
    with h5py.File(root / "stack.h5", "w") as f:
        f["images"] = rng.random((64, 48, 48), dtype=np.float32)

    def field(path: Path, size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sky = 100 + 3 * rng.standard_normal((size, size))
        fits.PrimaryHDU(sky.astype(np.float32)).writeto(path)

    field(root / "field.fits", 384)
    for i in range(8):
        field(root / f"many/f{i}.fits", 96)
    return root


PREDICT = {   # input, output (relative to the working directory)
    "hdf5": ("stack.h5", "out/stack.h5"),
    "fits": ("field.fits", "out/field.fits"),
    "many": ("many/*.fits", "out/"),
}


@pytest.fixture(scope="module")
def predicted(zygote, pipeline_outputs, inputs, tmp_path_factory) -> Path:
    """out/ as `astroseg predict` writes it at the default threshold, in each mode: the
    previous outputs of the runs that are killed or meet a full disk."""
    where = tmp_path_factory.mktemp("predicted")
    for source, target in PREDICT.values():
        run = zygote.run(predict_argv(inputs / source, "-o", target, "--model",
                                      pipeline_outputs / "models/model.pt"), where)
        assert run.status == 0, run.stderr
    return where / "out"


@pytest.mark.fault("kill")
@pytest.mark.parametrize("mode", list(PREDICT))
def test_sigkill_predict_at_random_moments(zygote, pipeline_outputs, inputs, predicted,
                                           tmp_path, mode):
    """A rerun with another threshold, killed: old or new outputs, each whole; then finished."""
    model = pipeline_outputs / "models/model.pt"
    source, target = PREDICT[mode]
    work, timing = tmp_path / "work", tmp_path / "timing"
    for where in (work, timing):
        shutil.copytree(predicted, where / "out")
    argv = predict_argv(inputs / source, "-o", target, "--model", model, "--threshold", 0.4)
    case = KillCase(argv, ["out"], varying=("summary.csv",))   # its seconds, its skipped rows
    kill_and_rerun(zygote, case, work, timing, random.Random(f"14:predict-{mode}"))
    assert case.mid_write, f"no kill caught a write in progress: {case.ended}"
    if mode == "many":
        with open(work / "out/summary.csv", newline="") as f:
            assert {r["status"] for r in csv.DictReader(f)} <= {"ok", "skipped"}


# --- disk full ----------------------------------------------------------------------------

# (case, command, the file its error names, RLIMIT_FSIZE in bytes): each limit lets the
# writes before that file through and stops that file's (measured on the tiny params).
DISK_FULL = [
    ("prepare-metadata", "prepare", "data/dataset.h5", 3_000),
    ("prepare-chunks", "prepare", "data/dataset.h5", 100_000),
    ("train-state", "train", ".astroseg/train_state.pt", 20_000),
    ("train-checkpoint", "checkpoint", "models/model.pt", 20_000),
    ("train-history", "history", "metrics/train_history.tsv", 60),
    ("evaluate-calibration", "evaluate", "models/calibration.json", 100),
    ("evaluate-csv", "evaluate", "metrics/pr_curve.csv", 1_500),
    ("evaluate-examples-h5", "evaluate", "metrics/test_predictions.h5", 100_000),
    ("baseline-json", "baseline", "metrics/baseline.json", 600),
    ("plots-png", "plots", "plots/training_curves.png", 5_000),   # any figure is larger
    ("plots-report", "plots", "plots/report.html", 100_000),
    ("predict-hdf5", "predict-hdf5", "out/stack.h5", 50_000),
    ("predict-fits-scratch", "predict-fits", "out/field.fits", 1_000),
    ("predict-fits-output", "predict-fits", "out/field.fits", 700_000),
    ("predict-many", "predict-many", "out/summary.csv", 1_000),
]

# The writers that the train stage reaches only past its larger state file: called directly.
WRITER = r"""
import sys
from astroseg.errors import run_main
from astroseg.models import build_model
from astroseg.models.checkpoint import read_checkpoint, save_checkpoint
from astroseg.train.history import EpochRecord, write_history

def checkpoint():
    payload = read_checkpoint("models/model.pt")
    model = build_model(payload["model_config"])
    save_checkpoint("models/model.pt", model, payload["model_config"], payload["meta"])

def history():
    write_history("metrics/train_history.tsv", [EpochRecord(1, 0.5, 0.5, 0.5, 0.5, 1e-3)] * 3)

sys.exit(run_main(globals()[sys.argv[1]]))
"""


def disk_full_argv(command: str, work: Path, inputs: Path, model: Path) -> list[str]:
    """The command of a disk-full case, run in `work` (predict: at another threshold than the
    previous outputs', so that it writes them all again)."""
    if command in ("checkpoint", "history"):
        (work / "writer.py").write_text(WRITER)
        return [str(work / "writer.py"), command]
    if command.startswith("predict-"):
        source, target = PREDICT[command.removeprefix("predict-")]
        return predict_argv(inputs / source, "-o", target, "--model", model, "--threshold", 0.4)
    return stage_argv(command)


@pytest.mark.fault("disk-full")
@pytest.mark.parametrize("command, named, limit", [c[1:] for c in DISK_FULL],
                         ids=[c[0] for c in DISK_FULL])
def test_disk_full(zygote, pipeline_outputs, inputs, predicted, tmp_path, command, named,
                   limit):
    """One line naming the file with the ulimit hint, exit status 1, the file's previous version
    intact (those written before it: whole), no temp file left."""
    work = tmp_path / "work"
    shutil.copytree(pipeline_outputs, work)
    write_params(work, tiny_params(**FAST))
    if command.startswith("predict-"):
        shutil.copytree(predicted, work / "out")
    argv = disk_full_argv(command, work, inputs, work / "models/model.pt")
    folders = [work / f for f in (*OUT_DIRS, "out")]
    before = outputs(folders)
    run = zygote.run(argv, work, limit=limit)
    assert run.status == 1, f"exit status {run.status}:\n{run.stderr[-3000:]}"
    lines = [ln for ln in run.stderr.splitlines() if not ln.startswith("note: ")]
    if command == "predict-many":   # a line per file, then the summary's
        assert len(lines) == len(list((inputs / "many").glob("*.fits"))) + 1, run.stderr
        for line in lines[:-1]:
            assert line.startswith(f"error: {inputs / 'many'}/") and line.endswith(HINT), line
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}: ") and \
        lines[0].endswith(HINT), run.stderr
    now = (work / named).read_bytes() if (work / named).exists() else None
    assert now == before.get(work / named), f"{named} changed"   # or is still not there
    assert_after_kill(before, folders)   # what was written before the failure is whole
    assert not temps(folders), "a temp file was left"


# --- the sweep of a killed run's temp files, and what counts as a full disk ---------------

def test_a_write_sweeps_temp_files_of_killed_runs_only(tmp_path):
    """The temp files and folders of the output whose process is gone go; a live writer's,
    another host's recent one and another output's stay."""
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    dead, live, host = int(exited.stdout), os.getppid(), atomic._HOST
    hour_ago = time.time() - 2 * 3600
    names = {   # name: (a folder, untouched for hours, swept)
        f".out.json.{host}.{dead}.k1lled00.tmp": (False, False, True),
        f".out.json.{host}.{dead}.scratch0.tmp": (True, False, True),
        f".out.json.{host}.{live}.wr1t1ng0.tmp": (False, True, False),
        f".out.json.elsewhere.{dead}.rec3nt00.tmp": (False, False, False),
        f".out.json.elsewhere.{dead}.0ld00000.tmp": (False, True, True),
        ".out.json.0ldnam1n.tmp": (False, True, True),   # before HOST.PID: by age alone
        ".out.json.n3wnam1n.tmp": (False, False, False),
        f".out.json.x.{host}.{dead}.0ther000.tmp": (False, False, False),
    }
    for name, (folder, old, _) in names.items():
        path = tmp_path / name
        if folder:
            path.mkdir()
            (path / "prob.npy").write_bytes(b"scratch")
        else:
            path.write_bytes(b"half a write")
        if old:
            os.utime(path, (hour_ago, hour_ago))
    write_json(tmp_path / "out.json", {"a": 1})
    kept = {n for n, (_, _, swept) in names.items() if not swept}
    assert {p.name for p in tmp_path.iterdir()} == kept | {"out.json"}
    other = tmp_path / f".out.json.x.{host}.{dead}.0ther000.tmp"
    assert sweep_stale(tmp_path / "out.json.x") == [other]
    assert sweep_stale(tmp_path / "missing-folder/out.json") == []


def test_a_full_disk_names_the_output_whatever_the_library_raised(tmp_path):
    """torch.save's RuntimeError over an OSError, HDF5's message: an OSError naming the output;
    other errors pass as they are; the temp file goes either way."""
    import errno

    target = tmp_path / "out.bin"

    def fail(exc: BaseException) -> BaseException:
        with pytest.raises(BaseException) as caught, atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise exc
        assert not list(tmp_path.iterdir())
        return caught.value

    try:
        raise OSError(errno.EFBIG, "File too large")
    except OSError as cause:
        wrapped = RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")
        wrapped.__context__ = cause
    for exc, code in ((wrapped, errno.EFBIG),
                      (OSError(errno.ENOSPC, "No space left"), errno.ENOSPC),
                      (RuntimeError("Can't decrement id ref count (file write failed: errno = "
                                    "122, error message = 'Disk quota exceeded')"), errno.EDQUOT),
                      # astropy's writeto: its own free-space check, and a short write
                      (OSError("Not enough space on disk: requested 144000000, available 0"),
                       errno.ENOSPC),
                      (OSError("120000 requested and 4400 written"), errno.EFBIG)):
        raised = fail(exc)
        assert isinstance(raised, OSError) and raised.errno == code
        assert raised.filename == str(target) and space_errno(raised) == code
    for exc in (RuntimeError("a bug"), OSError(errno.ENOENT, "No such file", "in.fits"),
                KeyboardInterrupt()):
        assert fail(exc) is exc


@pytest.mark.fault("kill")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_render_workers_die_with_a_killed_prepare(tmp_path):
    import psutil

    write_params(tmp_path, tiny_params(data={"workers": 2, "n_train": 20000, "chunk": 64}))
    job = subprocess.Popen([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    parent = psutil.Process(job.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = parent.children()
    assert len(workers) >= 2, "the pool never started: lengthen the run"
    job.send_signal(signal.SIGKILL)
    job.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"render workers outlived the killed stage: {alive}"


def _fsize_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.fault("disk-full")
@pytest.mark.parametrize("command", ["make-sky", "label"])
def test_disk_full_in_astropy_writers_names_the_output(tmp_path, command):
    # astropy's writeto loses the errno of a short write ("N requested and M written").
    sky = tmp_path / "sky"
    sh_args = [sys.executable, "-m", "astroseg.cli"]
    if command == "label":
        made = subprocess.run([*sh_args, "make-sky", str(sky), "--fields", "1", "--size", "256"],
                              capture_output=True, text=True, env=_env(), timeout=120)
        assert made.returncode == 0, made.stderr
        args, out = ["label", str(sky / "images" / "field_00.fits"), "-o", str(tmp_path / "m")], \
            tmp_path / "m" / "field_00.fits"
    else:
        args, out = ["make-sky", str(sky), "--fields", "1", "--size", "256"], \
            sky / "images" / "field_00.fits"
    run = subprocess.run([*sh_args, *args], capture_output=True, text=True, env=_env(),
                         timeout=120, preexec_fn=_fsize_limit(20_000))
    assert run.returncode == 1 and TRACEBACK not in run.stderr
    line = run.stderr.splitlines()[0]
    assert line.startswith(f"error: {out}: ") and line.endswith(HINT), run.stderr
    assert not out.exists() and not list(out.parent.glob("*.tmp"))
