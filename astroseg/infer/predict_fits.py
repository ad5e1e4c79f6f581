"""Segment a FITS image of any size: sliding windows, blended, streamed to a FITS file.

The input is read in row strips through astropy's section access (memory-mapped where the file
allows), normalised with the method the model was trained with (from the checkpoint), and cut
into `window`-sized windows that overlap by `overlap` pixels. Each window's probabilities are
weighted by a raised-cosine ramp (astroseg.data.tiling.window_weight) and accumulated in a strip
buffer one window-row high; rows no later window touches are final. Memory is O(window x
width), not O(image). Three threads share the work (issue 15): a reader reads the next strip
while the model runs; the main thread normalises, runs the windows, blends and thresholds in
torch on the model's device (astroseg.infer.blend: on a GPU nothing goes back to the host
before the finished rows); a writer writes those rows straight to their places in the
output's temp file (astroseg.infer.fits_output). The output FITS has:
  HDU 0 (PRIMARY)  float32 probability of a source (1 - P(background) when multi-class); NaN
                   where the input pixel was NaN/BLANK
  HDU 1 MASK       uint8 mask (threshold on HDU 0; the argmax class when multi-class), 0 where
                   the input was invalid
  HDU 2.. PROB_<CLASS>  float32 per-class probabilities, multi-class models only
  LABELS           int32 source labels: the connected components (8-connected) of MASK's
                   nonzero pixels, numbered 1..ASNSRC in raster order; 0 = background/invalid
                   (after the PROB_<CLASS> planes of a multi-class model)
  STD              float32 standard deviation of HDU 0 over Monte Carlo dropout passes
                   (`mc_samples` >= 2 only; HDU 0 is then their mean), NaN where invalid
Labelling needs the whole mask at once: scipy.ndimage.label runs on disk-backed arrays, but it
touches every pixel of the uint8 mask and the int32 labels, about 5 bytes per pixel (84 MB for
4096x4096). The model's calibrated temperature (calibration.json beside it) divides the logits
unless calibration is switched off; ASCALIB/ASTEMP say which, ASMCSAMP how many MC passes.
Every HDU carries the input's WCS and header cards (with INHERIT = T, the primary's too), plus
provenance keywords (AS*), except the cards that describe the input's pixel values (see
fits_output._VALUE_CARDS): a probability map must not claim BUNIT = 'count' or the input's SATURATE.
Bad pixels are read as in dataset preparation (astroseg.data.fits_io.open_image): by default the
image and bad-pixel HDUs the model was trained with (checkpoint meta "fits"), and flagged
pixels are NaN in the probabilities and 0 in MASK, like NaN/BLANK input pixels.
A model trained on several bands (checkpoint meta "bands") reads one file per band, in its band
order (`BandStack`): each band normalised on its own, a pixel invalid in any band invalid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from astroseg import __version__
from astroseg.atomic import atomic_output, scratch_dir
from astroseg.models.checkpoint import load_checkpoint
from astroseg.device import resolve_device, resolve_precision
from astroseg.errors import DataError, ParamsError
from astroseg.data.band_files import check_aligned
from astroseg.data.fits_io import (HDUNotFound, ImageSource, check_same_shape, open_image,
                                   parse_hdu)
from astroseg.data.normalize import Normalization, check_method, fit_field
from astroseg.data.tiling import starts, window_weight
from astroseg.infer.blend import (Blender, finish_rows, normalize_tensor, to_host,
                                  window_probabilities)
from astroseg.infer.fits_output import FitsLayout, output_header  # noqa: F401 (re-exported)
from astroseg.infer.predict import (calibration_note, check_mc_samples, check_output,
                                    file_sha256, model_temperature, seeded)
from astroseg.infer.workers import ReadAhead, WriteBehind

_BLOCK_ROWS = 512


@dataclass(frozen=True)
class FitsPrediction:
    """What `predict_fits` did: image size, windows run, normalisation used."""
    height: int
    width: int
    windows: int
    normalization: str
    precision: str
    source_fraction: float = 0.0   # of the valid pixels, those MASK marks (nonzero)
    sources: int = 0               # 8-connected components of MASK (the labels in LABELS)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _as_hdu(value: int | str | None) -> int | str | None:
    return parse_hdu(value) if isinstance(value, str) else value


def open_input(input_path: str | os.PathLike, meta: dict[str, Any],
               hdu: int | str | None = None, bad_pixel_hdu: int | str | None = None,
               bad_pixels: str | os.PathLike | None = None,
               model_name: str = "the model") -> ImageSource:
    """The image to segment, with its bad pixels; HDUs left None are those `meta` records."""
    # `meta` is a checkpoint's: its "fits" holds the HDUs read in training. "" means none
    # (for `hdu`: the first image HDU).
    trained = meta.get("fits") or {}
    given = {"hdu": hdu, "bad_pixel_hdu": bad_pixel_hdu}
    chosen = {k: trained.get(k, "") if v is None else v for k, v in given.items()}
    try:
        return open_image(input_path, _as_hdu(chosen["hdu"]), _as_hdu(chosen["bad_pixel_hdu"]),
                          bad_pixels)
    except HDUNotFound as exc:
        # Name where an HDU the user did not ask for came from, and how to choose another.
        key = next((k for k in chosen if given[k] is None and _as_hdu(chosen[k]) == exc.hdu), None)
        if key is None:
            raise
        off = "the first image HDU" if key == "hdu" else "no bad-pixel HDU"
        raise DataError(f"{exc}; {model_name} was trained with data.fits.{key} = "
                        f"{chosen[key]!r}: give --{key.replace('_', '-')} NAME, or '' for "
                        f"{off}") from None


class BandStack:
    """The bands of one field read together: rows of every band, valid where all are."""

    def __init__(self, sources: list[ImageSource]):
        self.sources = sources
        first = sources[0]
        self.path, self.shape, self.header = first.path, first.shape, first.header
        for other in sources[1:]:
            check_same_shape(first.path, first.shape, other.shape, f"band file {other.path}")
            check_aligned(first.path, first.header, other.path, other.header, first.shape)

    def rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, rows, W) float32 pixels of rows [y0, y1) and the (rows, W) valid mask."""
        parts = [s.rows(y0, y1) for s in self.sources]
        return np.stack([p[0] for p in parts]), np.logical_and.reduce([p[1] for p in parts])

    def close(self) -> None:
        """Close every band's file."""
        for s in self.sources:
            s.close()

    def __enter__(self) -> BandStack:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_bands(paths: list[Path], meta: dict[str, Any], hdu: int | str | None,
               bad_pixel_hdu: int | str | None, bad_pixels: str | os.PathLike | None,
               model_name: str) -> BandStack:
    """The band files of one field, opened and checked against each other."""
    sources: list[ImageSource] = []
    try:
        for path in paths:
            sources.append(open_input(path, meta, hdu, bad_pixel_hdu, bad_pixels, model_name))
        return BandStack(sources)
    except BaseException:
        for s in sources:
            s.close()
        raise


def check_bands(given: list[str] | None, meta: dict[str, Any], model_name: str) -> None:
    """Refuse band names other than the model's, in another order, or missing."""
    trained = list(meta.get("bands") or [])
    if given is None and trained:
        raise ParamsError(f"{model_name} was trained on bands {trained}: give one file per "
                          f"band, --band {trained[0]}=FILE ... in that order")
    if given is not None and given != trained:
        if not trained:
            raise ParamsError(f"--band {', '.join(given)}: {model_name} was trained on one band; "
                              "give the image as the input, without --band")
        missing = [b for b in trained if b not in given]
        extra = [b for b in given if b not in trained]
        why = (f"missing band(s) {missing}" if missing else f"unknown band(s) {extra}" if extra
               else f"bands in the order {given}")
        raise ParamsError(f"--band: {why}; {model_name} was trained on bands {trained}, in "
                          "that order")


def _fit(src: ImageSource, meta: dict[str, Any], model_name: str) -> Normalization:
    method = check_method(meta.get("normalization", "minmax"), f"{model_name}: normalization")
    return fit_field(method, src.rows, *src.shape, str(src.path))


def normalized_input(input_path: str | os.PathLike, meta: dict[str, Any],
                     hdu: int | str | None = None, bad_pixel_hdu: int | str | None = None,
                     bad_pixels: str | os.PathLike | None = None
                     ) -> tuple[np.ndarray, np.ndarray, Normalization]:
    """The whole normalised image, valid mask and normalisation `predict_fits` feeds a model."""
    with open_input(input_path, meta, hdu, bad_pixel_hdu, bad_pixels) as src:
        norm = _fit(src, meta, "the model")
        raw, valid = src.read()
    return norm.apply(raw, valid), valid, norm


@dataclass(frozen=True)
class FitsModel:
    """A checkpoint loaded once for many images, with the window settings and its SHA-256."""
    path: Path
    model: torch.nn.Module
    payload: dict[str, Any]
    sha256: str
    precision: str
    window: int
    overlap: int
    temperature: float | None = None   # the calibrated one applied; None: uncalibrated (1)

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint's metadata (normalisation, classes, FITS HDUs read in training)."""
        return self.payload.get("meta", {})


def load_fits_model(model_path: str | os.PathLike = "models/model.pt", device: str = "auto",
                    precision: str = "auto", window: int = 256, overlap: int = 32,
                    bad_pixels: str | os.PathLike | None = None, sha256: str | None = None,
                    notify: Callable[[str], None] | None = None,
                    calibration: bool = True) -> FitsModel:
    """Load a model for `segment_fits`: window rounded up to its stride, options checked.

    `sha256` is the model file's hash when the caller has it already (hashed once per run).
    `calibration` applies the temperature fitted for this model file, if there is one.
    """
    model_path = Path(model_path)
    model, payload = load_checkpoint(model_path, resolve_device(device, "--device"))
    model = model.to(memory_format=torch.channels_last)  # ~10% faster convolutions on CPU
    precision = resolve_precision(precision, next(model.parameters()).device)
    stride = getattr(model, "stride", 1)
    asked, window = window, _round_up(window, stride)
    if window != asked and notify is not None:
        notify(f"window {asked} rounded up to {window}, a multiple of the model's stride {stride}")
    trained_maps = (payload.get("meta", {}).get("fits") or {}).get("bad_pixels")
    if trained_maps and bad_pixels is None and notify is not None:
        notify(f"{model_path} was trained with bad-pixel maps (data.fits.bad_pixels = "
               f"{trained_maps!r}); give this image's map with --bad-pixels")
    if overlap < 0 or overlap >= window:
        raise ParamsError(f"--overlap = {overlap}: expected 0 <= overlap < window ({window})")
    sha256 = sha256 or file_sha256(model_path)
    temperature = model_temperature(model_path, sha256, calibration)
    return FitsModel(model_path, model, payload, sha256, precision, window, overlap, temperature)


def predict_fits(input_path: str | os.PathLike, output_path: str | os.PathLike,
                 model_path: str | os.PathLike = "models/model.pt", device: str = "auto",
                 batch_size: int = 8, threshold: float = 0.5, window: int = 256,
                 overlap: int = 32, hdu: int | str | None = None,
                 precision: str = "auto", tta: bool = False,
                 bad_pixel_hdu: int | str | None = None,
                 bad_pixels: str | os.PathLike | None = None, progress: bool = False,
                 notify: Callable[[str], None] | None = None, calibration: bool = True,
                 mc_samples: int = 0, bands: list[str] | None = None) -> FitsPrediction:
    """Segment one FITS image (or one file per band of `bands`, in the model's order) into a
    probability + mask + labels FITS file (module docstring).

    `hdu`/`bad_pixel_hdu` None: as the model was trained; "": the first image HDU / none.
    `progress` shows a bar over window rows on a terminal; `notify` receives one-line notes.
    `calibration` applies the model's fitted temperature; `mc_samples` >= 2 adds STD.
    """
    check_mc_samples(mc_samples, tta)
    fm = load_fits_model(model_path, device, precision, window, overlap, bad_pixels,
                         notify=notify, calibration=calibration)
    result = segment_fits(fm, input_path, output_path, batch_size, threshold, hdu, tta,
                          bad_pixel_hdu, bad_pixels, progress, mc_samples, bands)
    note = calibration_note(fm.path, fm.temperature, calibration)
    if notify is not None and note:   # after the work: an error stays the only line
        notify(note)
    return result


def segment_fits(fm: FitsModel, input_path: str | os.PathLike | list[str | os.PathLike],
                 output_path: str | os.PathLike,
                 batch_size: int = 8, threshold: float = 0.5, hdu: int | str | None = None,
                 tta: bool = False, bad_pixel_hdu: int | str | None = None,
                 bad_pixels: str | os.PathLike | None = None,
                 progress: bool = False, mc_samples: int = 0,
                 bands: list[str] | None = None) -> FitsPrediction:
    """`predict_fits` with a model loaded by `load_fits_model` (many images, one load).

    A model trained on several bands takes `input_path` as a list of one file per band, named
    by `bands` in the model's order (each band normalised on its own)."""
    check_mc_samples(mc_samples, tta)
    paths = [Path(p) for p in input_path] if isinstance(input_path, (list, tuple)) \
        else [Path(input_path)]
    input_path, output_path = paths[0], Path(output_path)
    model, payload, meta = fm.model, fm.payload, fm.meta
    check_bands(bands, meta, str(fm.path))
    if len(paths) != len(bands or [None]):
        raise ParamsError(f"{len(paths)} file(s) for bands {bands}: give one file per band")
    check_output(output_path, [*(("input", p) for p in paths), ("model", fm.path),
                               ("bad-pixel map", bad_pixels)])
    class_names = list(meta.get("class_names", ["background", "source"]))
    stride, window, overlap = getattr(model, "stride", 1), fm.window, fm.overlap
    # The scratch folder (the disk-backed mask and labels) is named after the output: a killed
    # run's is swept. The output's temp file is open from the start: rows go to it as they are
    # finished, by the writer thread, and the headers last.
    with open_bands(paths, meta, hdu, bad_pixel_hdu, bad_pixels, str(fm.path)) as src, \
            scratch_dir(output_path) as tmp, atomic_output(output_path) as out_tmp:
        height, width = src.shape
        norms = [_fit(s, meta, str(fm.path)) for s in src.sources]
        norm = norms[0]
        win_h, win_w = min(window, _round_up(height, stride)), min(window, _round_up(width, stride))
        ys, xs = starts(height, win_h, win_h - overlap), starts(width, win_w, win_w - overlap)
        k = payload["model_config"].get("num_classes", 1)
        temperature = 1.0 if fm.temperature is None else fm.temperature
        # A PNG band (a --band NAME=FILE.png) has no header: the output gets no input cards.
        header = output_header(src.header, (src.header or {}).get("NAXIS", 2))
        header["ASMODEL"] = (fm.path.name, "astroseg model file")
        header["ASMHASH"] = fm.sha256  # SHA-256 of the model file (no room for a comment)
        header["ASTHRESH"] = (threshold, "probability threshold of MASK")
        header["ASNORM"] = (norm.method, "input normalisation")
        header["ASNLO"] = (norm.lo, "normalisation: raw value mapped to 0")
        header["ASNHI"] = (norm.hi, "normalisation: raw value mapped to 1 (noise: "
                           "sky + 1 sigma)")
        for i, (band, n, path) in enumerate(zip(bands or [], norms, paths)):
            header[f"ASBAND{i}"] = (band, f"band of input channel {i}")
            header[f"ASINP{i}"] = (path.name, f"image of band {band}")
            header[f"ASNLO{i}"] = (n.lo, f"{band}: raw value mapped to 0")
            header[f"ASNHI{i}"] = (n.hi, f"{band}: raw value mapped to 1")
        header["ASWINDOW"] = (window, "sliding window size (pixels)")
        header["ASOVERLP"] = (overlap, "window overlap (pixels)")
        header["ASPREC"] = (fm.precision, "inference precision")
        header["ASTTA"] = (tta, "logits averaged over the 8 flips/rotations")
        header["ASCALIB"] = (fm.temperature is not None, "logits divided by a fitted temperature")
        header["ASTEMP"] = (temperature, "temperature dividing the logits (1 = none)")
        header["ASMCSAMP"] = (mc_samples, "MC dropout passes (0 = deterministic)")
        header["ASNSRC"] = (0, "sources: 8-connected components of MASK")   # set at the end
        header["ASVERSN"] = (__version__, "astroseg version")
        header["ASINPUT"] = (input_path.name, "segmented image")
        header["ASSRCFRC"] = (0.0, "fraction of valid pixels that MASK marks")   # at the end
        layout = FitsLayout(header, height, width, class_names, k, mc_samples > 0)
        mask = np.lib.format.open_memmap(Path(tmp) / "mask.npy", "w+", np.uint8, (height, width))
        fd = os.open(out_tmp, os.O_WRONLY)
        try:
            run = _Run(fm, src, norms, ys, xs, win_h, win_w, overlap, k, mc_samples)
            bar = tqdm(ys, desc=f"{input_path.name}: window rows", unit="row", leave=False,
                       disable=None if progress else True)   # None: shown on a terminal only
            marked, valid = run.blend(bar, batch_size, threshold, tta, temperature,
                                      lambda y0, planes: _write_rows(fd, layout, mask, y0, planes))
            fraction = marked / valid if valid else 0.0
            labels = np.lib.format.open_memmap(Path(tmp) / "labels.npy", "w+", np.int32,
                                               (height, width))
            sources = int(ndimage.label(mask, structure=np.ones((3, 3), bool), output=labels))
            for y0 in range(0, height, _BLOCK_ROWS):
                layout.write_rows(fd, "LABELS", y0, labels[y0:y0 + _BLOCK_ROWS])
            header["ASNSRC"] = sources
            header["ASSRCFRC"] = fraction
            layout.finish(fd, header)
        finally:
            os.close(fd)
    return FitsPrediction(height, width, len(ys) * len(xs), norm.method, fm.precision,
                          fraction, sources)


def _write_rows(fd: int, layout: FitsLayout, mask: np.ndarray, y0: int,
                planes: dict[str, np.ndarray]) -> None:
    """Write finished rows of every plane to the output and MASK to the scratch mask too."""
    for name, rows in planes.items():
        if name == "PROB":
            for plane, class_rows in zip(layout.prob_names, rows):
                layout.write_rows(fd, plane, y0, class_rows)
        else:
            layout.write_rows(fd, name, y0, rows)
    mask[y0:y0 + len(planes["MASK"])] = planes["MASK"]


def _strips(src: BandStack, ys: list[int], win_h: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each window row, the rows it adds to the previous one's (all of its rows, first):
    (C, n, W) float32 pixels and their (n, W) valid mask."""
    height, end = src.shape[0], 0
    for y0 in ys:
        y1 = min(height, y0 + win_h)
        if len(src.sources) == 1:   # no stack, no copy
            data, valid = src.sources[0].rows(max(y0, end), y1)
            data = data[None]
        else:
            data, valid = src.rows(max(y0, end), y1)
        end = y1
        yield data, valid


@dataclass
class _Run:
    """The compute side of `segment_fits`: strips in, windows through the model, rows out."""
    fm: FitsModel
    src: BandStack
    norms: list[Normalization]
    ys: list[int]
    xs: list[int]
    win_h: int
    win_w: int
    overlap: int
    classes: int
    mc_samples: int

    def blend(self, ys: Iterable[int], batch_size: int, threshold: float, tta: bool,
              temperature: float, emit: Callable[[int, dict[str, np.ndarray]], None]
              ) -> tuple[int, int]:
        """Run every window and hand each block of finished rows to `emit` (in a writer
        thread); return the pixels MASK marks and the valid pixels."""
        model, win_h, win_w = self.fm.model, self.win_h, self.win_w
        device = next(model.parameters()).device
        height, width = self.src.shape
        padded_w = max(width, win_w)
        planes = self.classes + (self.mc_samples > 0)
        # The normalised input and its valid mask, rows [y0, y0 + win_h) of the window row.
        strip = torch.zeros((len(self.norms), win_h, padded_w), dtype=torch.float32,
                            device=device)
        valid = torch.zeros((win_h, padded_w), dtype=torch.bool, device=device)
        blender = Blender(planes, win_h, width, padded_w,
                          window_weight(win_h, win_w, self.overlap), device)
        marked = total = 0
        reader = ReadAhead(_strips(self.src, self.ys, win_h), depth=2)
        writer = WriteBehind(lambda item: emit(*item), depth=2)

        def flush(until: int) -> None:
            nonlocal marked, total
            top = blender.top
            rows = blender.flush(until, valid)
            if rows is None:
                return
            out, m, v = finish_rows(rows, self.classes, threshold)
            marked, total = marked + m, total + v
            writer.put((top, to_host(out)))

        model.eval()
        try:
            with torch.inference_mode(), seeded(model, self.mc_samples > 0):
                prev = None
                for y0, (raw, ok) in zip(ys, reader):
                    flush(y0)
                    at = 0
                    if prev is not None:   # slide the rows this window row shares with the last
                        shift = y0 - prev
                        at = max(win_h - shift, 0)
                        if at:
                            strip[:, :at] = strip[:, shift:].clone()
                            valid[:at] = valid[shift:].clone()
                    prev = y0
                    raw_t = torch.from_numpy(raw).to(device)
                    ok_t = torch.from_numpy(ok).to(device)
                    n = ok_t.shape[0]
                    valid[at:at + n, :width] = ok_t
                    for band, norm in enumerate(self.norms):
                        strip[band, at:at + n, :width] = normalize_tensor(norm, raw_t[band], ok_t)
                    tiles = torch.stack([strip[:, :, x0:x0 + win_w] for x0 in self.xs])
                    for s in range(0, len(self.xs), batch_size):
                        with _autocast(model, self.fm.precision):
                            prob = window_probabilities(model, tiles[s:s + batch_size], tta,
                                                        temperature, self.mc_samples)
                        blender.add(prob, self.xs[s:s + batch_size])
                flush(height)
            writer.close()
        finally:
            reader.close()
            writer.abort()
        return marked, total


def _autocast(model: torch.nn.Module, precision: str):
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
