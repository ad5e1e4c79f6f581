"""Segment a whole survey in one run: many inputs into one directory, resumable, in parallel.

Inputs are files, globs (expanded here, so quoted globs work, `**` included) and @LIST files
(one path or glob a line; blank lines and lines starting with '#' are skipped; relative entries
are relative to the list file's directory, so a list travels with its data). Each input X.fits
(.fit .fts .fits.gz .fit.gz .fz) becomes OUTDIR/X.fits and any other input (read as HDF5)
OUTDIR/X.h5. Before any work, the plan is refused if two inputs map to one output, or an output
(or summary.csv) is an input, the model or the bad-pixel map, by any path or link.

An output is up to date, and skipped, when it reads back whole, names the same model file
(SHA-256, hashed once per run) and the same threshold, TTA, applied temperature, MC samples and
(FITS) window and overlap, or (HDF5) --normalize, and is no older than its input. With
`catalog` (ecsv or fits) each FITS input also gets OUTDIR/<stem>.cat.<format>
(astroseg.infer.catalog); an up-to-date output whose catalogue is missing, older than it or
made with another --error-hdu gets only its catalogue made again. One bad input is a "failed"
row and the run goes on; Ctrl-C or SIGTERM stops it, and outputs are written atomically, so a
rerun redoes only what is missing. OUTDIR/summary.csv gets one row per input of the run, in
input order.

Parallelism: `workers` > 1 runs that many CPU processes (forkserver, else spawn: torch and fork
do not mix), each loading the model once and using cores // workers threads. Under torchrun
(RANK, WORLD_SIZE set) each rank takes inputs[rank::world] on cuda:LOCAL_RANK (or the CPU) and
the rows are gathered with torch.distributed over gloo; every rank gets them all, rank 0 writes
the summary.
"""

from __future__ import annotations

import csv
import glob
import io
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import timedelta
from pathlib import Path

import h5py
import torch
import torch.distributed as dist
from astropy.io import fits
from tqdm import tqdm

from astroseg.atomic import write_text
from astroseg.device import resolve_device
from astroseg.errors import AstrosegError, DataError, ParamsError, describe, missing_output
from astroseg.data.fits_io import is_fits, stem
from astroseg.data.parallel import cpu_count
from astroseg.infer.catalog import catalog_current, survey_catalog, write_catalog
from astroseg.infer.predict import calibration_note, file_id, file_sha256, segment_h5
from astroseg.infer.predict_fits import FitsModel, load_fits_model, segment_fits

SUMMARY = "summary.csv"
_GLOB = set("*?[")


@dataclass
class Row:
    """One input's line in summary.csv."""
    input: str
    output: str
    shape: str = ""                      # HxW (FITS) or NxHxW (HDF5)
    source_fraction: float | None = None  # of the valid pixels, those the mask marks
    seconds: float = 0.0
    status: str = ""                     # ok | skipped | failed
    error: str = ""


@dataclass(frozen=True)
class Settings:
    """The `astroseg predict` options every file of a survey is segmented with."""
    model: Path
    device: str = "auto"
    batch_size: int = 8
    threshold: float = 0.5
    window: int = 256
    overlap: int = 32
    hdu: str | None = None
    bad_pixel_hdu: str | None = None
    bad_pixels: str | None = None
    precision: str = "auto"
    tta: bool = False
    normalize: bool = False
    calibration: bool = True          # divide the logits by the model's fitted temperature
    mc_samples: int = 0               # MC dropout passes (0 = off)
    catalog: str | None = None        # ecsv | fits: a catalogue per FITS input
    error_hdu: str | None = None      # the inputs' 1-sigma error HDU, for the catalogue


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM); `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _is_glob(arg: str) -> bool:
    return bool(_GLOB & set(arg)) and not os.path.isfile(arg)


def is_survey(inputs: list[str], output: str) -> bool:
    """OUTDIR mode: several inputs, a glob, an @list, or -o an existing dir or ending in '/'."""
    return (len(inputs) > 1 or any(a.startswith("@") or _is_glob(a) for a in inputs)
            or output.endswith(("/", os.sep)) or os.path.isdir(output))


def _inside(path: str, directory: Path | None) -> bool:
    return directory is not None and Path(path).resolve().is_relative_to(directory.resolve())


def _expand(arg: str, base: Path | None, where: str, skip: Path | None = None) -> list[Path]:
    path = arg if base is None or os.path.isabs(arg) else str(base / arg)
    if os.path.isdir(path):
        raise ParamsError(f"{where}{path}: a directory; name its files, e.g. "
                          f"'{os.path.join(path, '*.fits')}' (quoted: astroseg expands it)")
    if not _is_glob(path):
        return [Path(path)]
    # A glob skips the run's own outputs (`'**/*.fits' -o seg/` must rerun cleanly), unless it
    # matches nothing else: then the plan's check says why OUTDIR cannot hold the inputs.
    matched = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    found = [p for p in matched if not _inside(p, skip)] or matched
    if not found:
        raise ParamsError(f"{where}'{arg}' matches no file")
    return [Path(p) for p in found]


def read_list(path: str | os.PathLike) -> list[str]:
    """The entries of an @list file: one path or glob a line, without blanks and # comments."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"@{path}: cannot read the input list ({exc})") from None
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def expand_inputs(args: list[str], outdir: Path | None = None) -> list[Path]:
    """Files from paths, globs and @lists, in the order given; each file once. Globs skip
    files inside `outdir` (the survey's outputs)."""
    files: list[Path] = []
    for arg in args:
        if arg.startswith("@"):
            listed = Path(arg[1:])
            for entry in read_list(listed):
                files += _expand(entry, listed.parent, f"{arg}: ", outdir)
        else:
            files += _expand(arg, None, "", outdir)
    seen, unique = set(), []
    for f in files:   # a file named twice (a path and a glob) is segmented once
        key = file_id(f) or os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if not unique:
        raise ParamsError("no input files (the @lists given are empty)")
    return unique


def output_name(path: Path) -> str:
    """OUTDIR/<stem>.fits for a FITS input (compressed or not), <stem>.h5 for any other."""
    return f"{stem(path)}.fits" if is_fits(path) else f"{stem(path)}.h5"


def plan(inputs: list[Path], outdir: Path, keep: list[tuple[str, str | os.PathLike | None]],
         catalog: str | None = None) -> list[tuple[Path, Path]]:
    """(input, output) pairs; refuse shared output names and outputs that are inputs."""
    if outdir.is_file() or (not outdir.exists() and (
            is_fits(outdir) or outdir.suffix.lower() in (".h5", ".hdf5"))):
        # `a.fits b.fits -o seg.fits` is a slip, not a request for a directory named seg.fits.
        raise ParamsError(f"-o {outdir}: names a file, but several inputs (or a glob or an "
                          "@list) write one output each into a directory: give -o DIR/")
    pairs, taken, extra = [], {}, []
    for path in inputs:
        out = outdir / output_name(path)
        cat = survey_catalog(out, catalog) if catalog and is_fits(path) else None
        # A catalogue x.cat.fits can clash with the output of an input named x.cat.fits.
        for written in (out, cat) if cat is not None else (out,):
            if written.name in taken:
                raise ParamsError(f"{taken[written.name]} and {path} would both be written to "
                                  f"{written}; rename one, or segment them into different "
                                  "output directories")
            taken[written.name] = path
        pairs.append((path, out))
        if cat is not None:
            extra.append((path, cat))
    protected = {file_id(p): f"the input {p}" for p in inputs if file_id(p)}
    protected.update({file_id(p): f"the {role} {p}" for role, p in keep if p and file_id(p)})
    for path, out in pairs + extra + [(None, outdir / SUMMARY)]:
        victim = protected.get(file_id(out)) if file_id(out) else None
        if victim:
            what = f"the output of {path}" if path else "the run's summary"
            raise ParamsError(f"{out}: {what} would replace {victim} (the same file); astroseg "
                              "never writes over an input: choose another -o directory")
    return pairs


def _model_stamp(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class _Worker:
    """What one process segments with: the model, loaded once, and the run's settings."""
    settings: Settings
    fits: FitsModel

    @classmethod
    def load(cls, settings: Settings, sha256: str, stamp: tuple[int, ...], device: str,
             notify: Callable[[str], None] | None = None) -> _Worker:
        """Load the model; refuse it if the file changed since the run hashed it."""
        fm = load_fits_model(settings.model, device, settings.precision, settings.window,
                             settings.overlap, settings.bad_pixels, sha256, notify,
                             settings.calibration)
        # An atomic rewrite (a train stage finishing) gives a new inode: the hash would lie.
        if _model_stamp(settings.model) != stamp:
            raise DataError(f"{settings.model}: the model file changed after this run hashed "
                            "it; run again")
        return cls(settings, fm)

    def expected(self, path: Path) -> dict[str, object]:
        """The provenance an up-to-date output of `path` records."""
        s, t = self.settings, self.fits.temperature
        temperature = 1.0 if t is None else t
        if is_fits(path):
            return {"ASMHASH": self.fits.sha256, "ASTHRESH": s.threshold, "ASTTA": s.tta,
                    "ASWINDOW": self.fits.window, "ASOVERLP": self.fits.overlap,
                    "ASCALIB": t is not None, "ASTEMP": temperature, "ASMCSAMP": s.mc_samples}
        return {"model_sha256": self.fits.sha256, "threshold": s.threshold, "tta": s.tta,
                "normalized": s.normalize, "calibrated": t is not None,
                "temperature": temperature, "mc_samples": s.mc_samples}

    def catalog_due(self, path: Path, out: Path) -> bool:
        """Whether the catalogue of an up-to-date output is to be made (again)."""
        s = self.settings
        if not s.catalog or not is_fits(path):
            return False
        return not catalog_current(survey_catalog(out, s.catalog), out,
                                   {"MODELSHA": self.fits.sha256, "ERRHDU": s.error_hdu or ""})

    def segment(self, path: Path, out: Path, catalog_only: bool = False) -> Row:
        """Segment one input (or, `catalog_only`, make the catalogue of its up-to-date output);
        any error becomes a failed row (Ctrl-C and SIGTERM propagate)."""
        s, t0, row = self.settings, time.perf_counter(), Row(str(path), str(out))
        try:
            if catalog_only:
                shape, row.source_fraction = _fits_done(out, {})
                row.shape = shape
            elif is_fits(path):
                r = segment_fits(self.fits, path, out, s.batch_size, s.threshold, s.hdu, s.tta,
                                 s.bad_pixel_hdu, s.bad_pixels, mc_samples=s.mc_samples)
                row.shape, row.source_fraction = f"{r.height}x{r.width}", r.source_fraction
            else:
                r = segment_h5(self.fits.model, s.model, self.fits.sha256, path, out,
                               s.batch_size, s.threshold, s.tta, s.normalize,
                               self.fits.temperature, s.mc_samples)
                row.shape = f"{r.images}x{r.height}x{r.width}"
                row.source_fraction = r.source_fraction
            if s.catalog and is_fits(path):
                write_catalog(path, out, survey_catalog(out, s.catalog), self.fits.meta, s.hdu,
                              s.bad_pixel_hdu, s.bad_pixels, s.error_hdu)
            row.status = "ok"
        except AstrosegError as exc:
            row.status, row.error = "failed", _one_line(str(exc), path)
        except OSError as exc:   # the output's file and a hint (disk full), as run_main says
            row.status, row.error = "failed", _one_line(describe(exc), path)
        except Exception as exc:   # one file's surprise must not end the survey
            row.status, row.error = "failed", _one_line(f"{type(exc).__name__}: {exc}", path)
        row.seconds = time.perf_counter() - t0
        return row


def _one_line(message: str, path: Path) -> str:
    message = " ".join(message.split())
    return message if message.startswith(str(path)) else f"{path}: {message}"


def up_to_date(path: Path, out: Path, expected: dict[str, object]) -> Row | None:
    """A skipped row if `out` is whole, newer than `path` and records `expected`, else None."""
    try:
        if os.stat(out).st_mtime_ns < os.stat(path).st_mtime_ns:
            return None
        if is_fits(out):
            shape, fraction = _fits_done(out, expected)
        else:
            shape, fraction = _h5_done(out, expected)
    except Exception:   # missing, truncated, unreadable, foreign: redo it
        return None
    return Row(str(path), str(out), shape, fraction, status="skipped")


def _fits_done(out: Path, expected: dict[str, object]) -> tuple[str, float | None]:
    size = os.path.getsize(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "may have been truncated": checked below
        with fits.open(out, lazy_load_hdus=False) as hdul:
            whole = all(hdul.fileinfo(i)["datLoc"] + hdul.fileinfo(i)["datSpan"] <= size
                        for i in range(len(hdul)))
            header = hdul[0].header
            if not whole or "MASK" not in hdul or any(header.get(k) != v
                                                      for k, v in expected.items()):
                raise ValueError("not an up-to-date output")
            return f"{header['NAXIS2']}x{header['NAXIS1']}", header.get("ASSRCFRC")


def _h5_done(out: Path, expected: dict[str, object]) -> tuple[str, float | None]:
    with h5py.File(out, "r") as f:
        labels, prob = f["labels"], f["probabilities"]
        if labels.shape[0] != prob.shape[0] or any(f.attrs.get(k) != v
                                                   for k, v in expected.items()):
            raise ValueError("not an up-to-date output")
        fraction = f.attrs.get("source_fraction")
        return "x".join(map(str, labels.shape)), None if fraction is None else float(fraction)


def write_summary(path: Path, rows: list[Row]) -> None:
    """OUTDIR/summary.csv, written atomically: one row per input, in input order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f.name for f in fields(Row)])
    for row in rows:
        values = list(astuple(row))
        values[3] = "" if row.source_fraction is None else f"{row.source_fraction:.6f}"
        values[4] = f"{row.seconds:.3f}"
        writer.writerow(values)
    write_text(path, buf.getvalue())


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises Interrupted here, like Ctrl-C, so the run stops and cleans up."""
    def stop(signum, frame):
        raise Interrupted(signum)
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:   # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The worker processes' state: the model, loaded once per process by _init_worker.
_STATE: _Worker | str | None = None


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _init_worker(settings: Settings, sha256: str, stamp: tuple[int, ...], threads: int) -> None:
    global _STATE
    # The main process owns Ctrl-C and stops the workers; SIGTERM unwinds (temp files removed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit)
    torch.set_num_threads(threads)
    # Workers draw no bars; tqdm's default lock is a multiprocessing one, which a worker
    # stopped by SIGTERM (os._exit) would leave for the resource tracker to warn about.
    tqdm.set_lock(threading.RLock())
    try:
        _STATE = _Worker.load(settings, sha256, stamp, "cpu")
    except Exception as exc:   # reported on every file, instead of a silently broken pool
        _STATE = " ".join(f"{type(exc).__name__}: {exc}".split())


def _work(path: Path, out: Path, catalog_only: bool = False) -> Row:
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        os._exit(1)   # the run was killed (SIGKILL): start no more files as an orphan
    if not isinstance(_STATE, _Worker):
        return Row(str(path), str(out), status="failed",
                   error=f"{path}: worker failed to start: {_STATE}")
    try:
        return _STATE.segment(path, out, catalog_only)
    except SystemExit as exc:
        # SIGTERM from the main process: the temp files are removed by now. Leave for good,
        # or the pool's worker loop would catch this and take the next file.
        os._exit(exc.code if isinstance(exc.code, int) else 1)


def _stop(pool: ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)   # Python 3.14+
    if terminate is not None:
        terminate()
    else:   # before shutdown(), which forgets the processes without waiting for them
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()   # SIGTERM: each worker unwinds and removes its temp files
    pool.shutdown(wait=True, cancel_futures=True)   # quick: the workers are gone


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forkserver where the OS has it, started now; else spawn. Never fork (torch threads)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    # The server imports torch and astroseg once, before any thread pool exists, and each
    # worker forks from it instead of importing them again. Started here, it imports while
    # this process hashes the model and checks the outputs.
    ctx.set_forkserver_preload([__name__])
    forkserver.ensure_running()
    return ctx


def _run_pool(todo: list[tuple[int, Path, Path, bool]], settings: Settings, sha256: str,
              stamp: tuple[int, ...], workers: int, done: Callable[[int, Row], None],
              ctx: multiprocessing.context.BaseContext) -> None:
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(settings, sha256, stamp, max(1, cpu_count() // workers)))
    try:
        futures = {pool.submit(_work, path, out, only): (i, path, out)
                   for i, path, out, only in todo}
        for future in as_completed(futures):
            i, path, out = futures[future]
            try:
                row = future.result()
            except BrokenProcessPool:
                row = Row(str(path), str(out), status="failed", error=f"{path}: a worker process "
                          "died (killed, out of memory or crashed) before this file was done")
            except (Exception, SystemExit) as exc:
                row = Row(str(path), str(out), status="failed",
                          error=_one_line(f"{type(exc).__name__}: {exc}", path))
            done(i, row)
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def _torchrun() -> tuple[int, int, int]:
    """(rank, world size, local rank); (0, 1, 0) outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)))


def _device(settings: Settings, workers: int, world: int, local_rank: int,
            notify: Callable[[str], None] | None) -> str:
    if workers > 1:
        if settings.device == "cuda":
            raise ParamsError("--workers runs CPU processes; with --device cuda use one "
                              "process per GPU under torchrun instead")
        if settings.device == "auto" and torch.cuda.is_available() and notify is not None:
            notify(f"--workers {workers} runs CPU processes; the GPU is left idle (torchrun "
                   "runs one process per GPU)")
        return "cpu"
    device = resolve_device(settings.device, "--device")
    if world > 1 and device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(f"local rank {local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}; start at most that many processes "
                              "per node")
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return str(device)


def run_survey(inputs: list[str], outdir: str | os.PathLike, settings: Settings,
               workers: int = 1, progress: bool = False,
               notify: Callable[[str], None] | None = None,
               report: Callable[[Row], None] | None = None) -> list[Row]:
    """Segment every input into `outdir` (see module docstring); rows in input order.

    `progress` shows a bar over the files on a terminal; `notify` gets one-line notes and
    `report` each failed row as it happens. Ctrl-C / SIGTERM raise Interrupted (or
    KeyboardInterrupt) after stopping the workers.
    """
    outdir = Path(outdir)
    if workers < 1:
        raise ParamsError(f"--workers = {workers}: expected >= 1")
    rank, world, local_rank = _torchrun()
    if world > 1 and workers > 1:
        raise ParamsError(f"--workers = {workers} under torchrun: each rank is one worker; "
                          "start more ranks instead (--nproc-per-node)")
    pairs = plan(expand_inputs(inputs, outdir), outdir,
                 [("model", settings.model), ("bad-pixel map", settings.bad_pixels)],
                 settings.catalog)
    device = _device(settings, workers, world, local_rank, notify if rank == 0 else None)
    ctx = _pool_context() if workers > 1 else None
    if world > 1:
        # Ranks wait for the slowest at the gather; a dead peer breaks the connection at once,
        # so the timeout only bounds a silent hang.
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    outdir.mkdir(parents=True, exist_ok=True)
    if not settings.model.is_file():
        raise missing_output(settings.model, "checkpoint", "train")
    stamp = _model_stamp(settings.model)
    sha256 = file_sha256(settings.model)   # once per run: the workers are handed it
    worker = _Worker.load(settings, sha256, stamp, device, notify if rank == 0 else None)
    note = calibration_note(settings.model, worker.fits.temperature, settings.calibration)
    if note and rank == 0 and notify is not None:
        notify(note)
    mine = list(range(rank, len(pairs), world))
    rows: dict[int, Row] = {}
    bar = tqdm(total=len(mine), desc=f"{outdir}", unit="file",
               disable=None if progress and rank == 0 else True)

    def done(i: int, row: Row) -> None:
        rows[i] = row
        bar.update(1)
        if row.status == "failed" and report is not None:
            report(row)

    with bar, _sigterm_stops():
        todo = []
        for i in mine:
            t0 = time.perf_counter()
            skipped = up_to_date(*pairs[i], worker.expected(pairs[i][0]))
            if skipped is None or worker.catalog_due(*pairs[i]):
                todo.append((i, *pairs[i], skipped is not None))
            else:
                skipped.seconds = time.perf_counter() - t0
                done(i, skipped)
        if workers > 1 and len(todo) > 1:
            del worker   # the workers load their own
            _run_pool(todo, settings, sha256, stamp, min(workers, len(todo)), done, ctx)
        else:
            for i, path, out, only in todo:
                done(i, worker.segment(path, out, only))
    if world > 1:
        parts: list[dict[int, Row] | None] = [None] * world
        dist.all_gather_object(parts, rows)
        dist.destroy_process_group()
        rows = {i: row for part in parts for i, row in part.items()}
    ordered = [rows[i] for i in range(len(pairs))]
    if rank == 0:
        write_summary(outdir / SUMMARY, ordered)
    return ordered
