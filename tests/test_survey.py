"""`astroseg predict` over a whole survey: OUTDIR mode, resume, failures, workers, torchrun."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits

from astroseg.cli import main as cli_main
from astroseg.data.fits_io import open_image
from astroseg.errors import DataError
from astroseg.infer.predict import file_sha256
from conftest import ROOT, _env

COLUMNS = ["input", "output", "shape", "source_fraction", "seconds", "status", "error"]


@pytest.fixture(scope="module")
def model(pipeline_outputs) -> Path:
    """The tiny model the pipeline trained (48x48 synthetic fields, minmax, stride 8)."""
    return pipeline_outputs / "models/model.pt"


def _sky(path: Path, seed: int, size: int = 64) -> Path:
    """A float32 field: noise around a sky of 100 and one Gaussian source."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size / 4, 3 * size / 4, 2)
    source = 400 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (size / 12) ** 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU((100 + 3 * rng.standard_normal((size, size)) + source)
                    .astype(np.float32)).writeto(path)
    return path


def _corrupt_rice(path: Path) -> Path:
    """A Rice-compressed field whose compressed tile bytes are overwritten halfway through."""
    data = np.random.default_rng(5).normal(100, 5, (64, 64)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]
                 ).writeto(path)
    with fits.open(path) as hdul:
        info = hdul.fileinfo(1)
    raw = bytearray(path.read_bytes())
    middle = info["datLoc"] + info["datSpan"] // 2
    raw[middle:middle + 64] = bytes(64)
    path.write_bytes(raw)
    return path


def _predict(model: Path, *args: str) -> int:
    return cli_main(["predict", *args, "--model", str(model), "--device", "cpu"])


def _summary(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def _pixels(path: Path) -> list[bytes]:
    with fits.open(path) as hdul:
        return [h.data.tobytes() for h in hdul]


def _mtimes(outdir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.fits")}


@pytest.mark.fault("fits")
def test_bad_files_fail_alone_and_the_summary_records_them(model, tmp_path, capsys):
    sky = tmp_path / "sky"
    for i in range(3):
        _sky(sky / f"f{i}.fits", seed=i)
    _corrupt_rice(sky / "c_rice.fits")
    (sky / "d_text.fits").write_text("SIMPLE? no, a text file\n" * 200)
    fits.PrimaryHDU(np.full((64, 64), np.nan, np.float32)).writeto(sky / "e_nan.fits")
    out = tmp_path / "out"
    assert _predict(model, str(sky / "*.fits"), "-o", str(out)) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert f"{out}: 3 segmented, 0 up to date (skipped), 3 failed, of 6 inputs" in captured.out
    rows = _summary(out)
    assert [r["input"] for r in rows] == [str(p) for p in sorted(sky.glob("*.fits"))]
    failed = {Path(r["input"]).name: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == {"c_rice.fits", "d_text.fits", "e_nan.fits"}
    assert "cannot decompress rows" in failed["c_rice.fits"] and "RICE_1" in failed["c_rice.fits"]
    assert "not a readable FITS file" in failed["d_text.fits"]
    assert "no valid pixels" in failed["e_nan.fits"]
    for name, message in failed.items():   # the same one line on stderr as in the summary
        assert message.startswith(str(sky / name)) and f"error: {message}" in errors
        assert not (out / name).exists()
    sha = file_sha256(model)
    for row in rows[3:]:
        assert row["status"] == "ok" and row["shape"] == "64x64" and not row["error"]
        assert row["output"] == str(out / Path(row["input"]).name) and float(row["seconds"]) > 0
        with fits.open(row["output"]) as hdul:
            assert hdul[0].header["ASMHASH"] == sha
            valid = ~np.isnan(hdul[0].data)
            fraction = np.count_nonzero(hdul["MASK"].data[valid]) / valid.sum()
        assert float(row["source_fraction"]) == pytest.approx(fraction, abs=1e-6)
        assert 0 < fraction < 0.5   # the model finds the source, not the whole sky
    assert sorted(p.name for p in out.iterdir()) == ["f0.fits", "f1.fits", "f2.fits",
                                                    "summary.csv"]


@pytest.mark.fault("fits")
def test_a_corrupt_tile_compressed_image_is_a_one_line_error(model, tmp_path, capsys):
    image = _corrupt_rice(tmp_path / "rice.fits")
    with pytest.raises(DataError, match=r"rice.fits: cannot decompress rows 0-\d+ of HDU "
                                        r"COMPRESSED_IMAGE \(RICE_1\): corrupt compressed data"):
        with open_image(image) as src:
            src.read()
    assert _predict(model, str(image), "-o", str(tmp_path / "seg.fits")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {image}: cannot decompress") and err.count("\n") == 1
    assert "CfitsioException" in err and not (tmp_path / "seg.fits").exists()


def test_an_output_never_replaces_an_input(model, tmp_path, capsys):
    image = _sky(tmp_path / "d/img.fits", seed=1)
    before = image.read_bytes()
    (tmp_path / "link.fits").symlink_to(image)
    os.link(image, tmp_path / "hard.fits")
    for target in (image, tmp_path / "d/../d/img.fits", tmp_path / "link.fits",
                   tmp_path / "hard.fits"):
        assert _predict(model, str(image), "-o", str(target)) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"error: -o {target}: is the input {image} (the same file); "
                               "astroseg never writes over its input: choose another output")
    assert _predict(model, str(image), "-o", str(model)) == 2
    assert "is the model" in capsys.readouterr().err
    stack = tmp_path / "stack.h5"
    with h5py.File(stack, "w") as f:
        f["images"] = np.zeros((1, 48, 48), np.float32)
    assert _predict(model, str(stack), "-o", str(stack)) == 2
    assert "is the input" in capsys.readouterr().err
    # OUTDIR mode: -o the inputs' own folder, where d/img.fits would be its own output.
    _sky(tmp_path / "d/other.fits.gz", seed=2)
    assert _predict(model, str(tmp_path / "d/*"), "-o", str(tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {image}: the output of {image} would replace the input "
                           f"{image} (the same file); astroseg never writes over an input: "
                           "choose another -o directory")
    assert image.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["img.fits", "other.fits.gz"]


def test_list_and_glob_inputs_and_mixed_types(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("x1", "x2"):
        _sky(tmp_path / f"a/{name}.fits", seed=10 + int(name[1]))
    with fits.open(_sky(tmp_path / "b/y.fits", seed=7)) as hdul:   # gzip-compressed too
        hdul.writeto(tmp_path / "b/y.fits.gz")
    (tmp_path / "b/y.fits").unlink()
    with h5py.File(tmp_path / "b/z.h5", "w") as f:
        f["images"] = np.random.default_rng(0).random((3, 48, 48), dtype=np.float32)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/survey.txt").write_text(
        "# night 1\n../a/x1.fits\n\n   ../b/*.fits.gz\n# an HDF5 stack of cut-outs\n../b/z.h5\n")
    # x1 is named by the list and by the glob: segmented once, where the list put it.
    assert _predict(model, "@lists/survey.txt", "a/x*.fits", "-o", "seg/") == 0
    rows = _summary(Path("seg"))
    assert [(r["input"], r["output"], r["shape"]) for r in rows] == [
        ("lists/../a/x1.fits", "seg/x1.fits", "64x64"),
        ("lists/../b/y.fits.gz", "seg/y.fits", "64x64"),
        ("lists/../b/z.h5", "seg/z.h5", "3x48x48"),
        ("a/x2.fits", "seg/x2.fits", "64x64")]
    assert {r["status"] for r in rows} == {"ok"}
    with h5py.File("seg/z.h5", "r") as f:
        assert f["labels"].shape == (3, 48, 48)
        assert f.attrs["source_fraction"] == pytest.approx(float(rows[2]["source_fraction"]),
                                                           abs=1e-6)
    # The same command again: all four are up to date, HDF5 included.
    assert _predict(model, "@lists/survey.txt", "a/x*.fits", "-o", "seg/") == 0
    assert [r["status"] for r in _summary(Path("seg"))] == ["skipped"] * 4
    assert _predict(model, "a/nothing*.fits", "-o", "seg") == 2
    assert _predict(model, "@lists/missing.txt", "-o", "seg") == 2
    # A recursive glob that covers the output directory never picks up the outputs.
    assert _predict(model, "a/**/*.fits", "-o", "a/seg/") == 0
    assert _predict(model, "a/**/*.fits", "-o", "a/seg/") == 0
    assert [r["status"] for r in _summary(Path("a/seg"))] == ["skipped"] * 2


@pytest.mark.fault("errors")
def test_outputs_that_would_collide_are_refused_up_front(model, tmp_path, capsys):
    one, two = _sky(tmp_path / "a/x.fits", seed=1), _sky(tmp_path / "b/x.fits", seed=2)
    shutil.move(two, tmp_path / "b/x.fit")
    two = tmp_path / "b/x.fit"
    assert _predict(model, str(one), str(two), "-o", str(tmp_path / "out")) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {one} and {two} would both be written to {tmp_path / 'out/x.fits'}; rename "
        "one, or segment them into different output directories")
    assert not (tmp_path / "out").exists()
    assert _predict(model, str(one), str(two), "-o", str(tmp_path / "seg.fits")) == 2
    assert "names a file, but several inputs" in capsys.readouterr().err


def test_resume_redoes_other_models_other_settings_and_damaged_outputs(model, tmp_path):
    for i in range(3):
        _sky(tmp_path / f"in/f{i}.fits", seed=i)
    out, glob_ = tmp_path / "out", str(tmp_path / "in/*.fits")
    assert _predict(model, glob_, "-o", str(out)) == 0
    first = _mtimes(out)
    assert _predict(model, glob_, "-o", str(out)) == 0
    assert [r["status"] for r in _summary(out)] == ["skipped"] * 3 and _mtimes(out) == first
    # A truncated output and an input newer than its output are redone; the rest is not.
    data = (out / "f1.fits").read_bytes()
    (out / "f1.fits").write_bytes(data[:len(data) - 2880])
    os.utime(tmp_path / "in/f2.fits", ns=(first["f2.fits"] + 10**9,) * 2)
    assert _predict(model, glob_, "-o", str(out)) == 0
    assert [r["status"] for r in _summary(out)] == ["skipped", "ok", "ok"]
    assert (out / "f1.fits").read_bytes() != data[:len(data) - 2880]
    # Another threshold, then another model file (same weights, other bytes): all redone.
    assert _predict(model, glob_, "-o", str(out), "--threshold", "0.4") == 0
    assert [r["status"] for r in _summary(out)] == ["ok"] * 3
    payload = torch.load(model, weights_only=True)
    payload["meta"]["note"] = "a copy"
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    assert _predict(other, glob_, "-o", str(out), "--threshold", "0.4") == 0
    assert [r["status"] for r in _summary(out)] == ["ok"] * 3
    assert fits.getheader(out / "f0.fits")["ASMHASH"] == file_sha256(other)


@pytest.mark.fault("kill")
def test_a_killed_run_leaves_whole_outputs_and_a_rerun_does_only_the_rest(model, tmp_path):
    for i in range(20):
        _sky(tmp_path / f"in/f{i:02d}.fits", seed=i, size=128)
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "in/*.fits"), "-o", str(out), "--model", str(model),
            "--device", "cpu", "--batch-size", "1"]
    job = subprocess.Popen([sys.executable, "-m", "astroseg.cli", *args], cwd=ROOT, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.fits"))) < 3:
            assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        job.kill()
    done = _mtimes(out)
    assert 3 <= len(done) < 20, f"{len(done)} done before the kill: give it more work per file"
    assert not (out / "summary.csv").exists()
    for name in done:   # written whole or not at all
        assert fits.getheader(out / name)["ASMHASH"] == file_sha256(model)
    assert cli_main(args) == 0
    rows = _summary(out)
    assert len(rows) == 20
    assert {Path(r["output"]).name for r in rows if r["status"] == "skipped"} == set(done)
    assert sum(r["status"] == "ok" for r in rows) == 20 - len(done)
    after = _mtimes(out)
    assert len(after) == 20 and all(after[name] == t for name, t in done.items())


def test_two_workers_write_the_bytes_one_writes(model, tmp_path):
    for i in range(6):
        _sky(tmp_path / f"in/f{i}.fits", seed=i)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _predict(model, str(tmp_path / "in/*.fits"), "-o", str(one)) == 0
    assert _predict(model, str(tmp_path / "in/*.fits"), "-o", str(two), "--workers", "2") == 0
    rows = _summary(two)
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert [r["output"] for r in rows] == [str(two / f"f{i}.fits") for i in range(6)]
    for i in range(6):
        assert _pixels(one / f"f{i}.fits") == _pixels(two / f"f{i}.fits")


def test_torchrun_ranks_share_the_files_into_one_summary(model, tmp_path):
    for i in range(4):
        _sky(tmp_path / f"in/f{i}.fits", seed=i)
    (tmp_path / "in/f3.fits").write_bytes(b"\0" * 100)   # rank 1's second file
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "astroseg.cli", "predict", str(tmp_path / "in/*.fits"), "-o", str(out),
         "--model", str(model), "--device", "cpu"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0   # a file failed
    assert result.stderr.count(f"error: {tmp_path / 'in/f3.fits'}: not a readable FITS") == 1
    # Rank 0 alone writes the summary, and it holds rank 1's rows (f1, f3) too.
    assert result.stdout.count("2 segmented") == 0 and result.stdout.count("3 segmented") == 1
    rows = _summary(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert all(float(r["seconds"]) > 0 for r in rows[:3])
    for i in range(3):
        assert fits.getheader(out / f"f{i}.fits")["ASMHASH"] == file_sha256(model)


def test_resume_redoes_outputs_of_another_temperature_or_mc_samples(tmp_path):
    import json

    from astroseg.models import build_model
    from astroseg.models.checkpoint import save_checkpoint

    config = {"name": "segformer", "num_classes": 1, "dims": [8, 16], "depths": [1, 1],
              "heads": [1, 2], "sr_ratios": [2, 1], "decoder_dim": 16, "refine_dim": 4}
    own = tmp_path / "m/model.pt"   # its own directory: calibration.json is written beside it
    own.parent.mkdir()
    torch.manual_seed(0)
    save_checkpoint(own, build_model(config), config, {"normalization": "minmax"})
    for i in range(2):
        _sky(tmp_path / f"in/f{i}.fits", seed=i)
    out, glob_ = tmp_path / "out", str(tmp_path / "in/*.fits")

    def statuses(*extra: str) -> list[str]:
        assert _predict(own, glob_, "-o", str(out), "--window", "32", "--overlap", "8",
                        *extra) == 0
        return [r["status"] for r in _summary(out)]

    assert statuses() == ["ok"] * 2
    assert statuses() == ["skipped"] * 2
    assert statuses("--mc-samples", "2") == ["ok"] * 2
    with fits.open(out / "f0.fits") as hdul:
        assert hdul[0].header["ASMCSAMP"] == 2 and "STD" in hdul
    assert statuses("--mc-samples", "2") == ["skipped"] * 2
    # A calibration fitted for this model appears: the applied temperature changes, redo.
    (own.parent / "calibration.json").write_text(json.dumps(
        {"temperature": 1.5, "calibrated": True, "model_sha256": file_sha256(own)}))
    assert statuses("--mc-samples", "2") == ["ok"] * 2
    assert fits.getheader(out / "f1.fits")["ASTEMP"] == 1.5
    assert statuses("--mc-samples", "2") == ["skipped"] * 2
    assert statuses("--mc-samples", "2", "--no-calibration") == ["ok"] * 2
    assert fits.getheader(out / "f1.fits")["ASCALIB"] is False
