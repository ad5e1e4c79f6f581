"""The `astroseg` command: utilities around the pipeline (the stages themselves run under DVC)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from astroseg import __version__
from astroseg.errors import DEBUG_ENV, run_main


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends each option with its default, unless it has none (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _check_params(args: argparse.Namespace) -> None:
    from astroseg.params import dump_params, load_params

    params = load_params(args.params)
    # --show prints YAML only, so the output can be saved and read back as a params file.
    if args.show:
        print(dump_params(params), end="")
    else:
        print(f"{args.params}: ok")


def _not_a_dataset(path: Path) -> str | None:
    """What `path` holds instead, if it is an HDF5 file but not an astroseg dataset."""
    import h5py

    from astroseg.data.dataset import open_dataset_file

    if not path.is_file():
        return None
    if not h5py.is_hdf5(path):
        return (f"{path}: not an HDF5 file, so not an astroseg dataset; `astroseg info` reads "
                "the file the prepare stage writes (data/dataset.h5)")
    with open_dataset_file(path) as f:
        if "schema_version" in f.attrs:
            return None
        found = [f"{k} {'x'.join(map(str, v.shape))} {v.dtype}" if isinstance(v, h5py.Dataset)
                 else f"group {k}/" for k, v in f.items()]
        what = "an `astroseg predict` output" if "model_sha256" in f.attrs else "an HDF5 file"
    return (f"{path}: {what}, not an astroseg dataset (no schema_version attribute); it holds "
            f"{', '.join(found) or 'nothing'}. `astroseg info` reads the file the prepare stage "
            "writes (data/dataset.h5)")


def _info(args: argparse.Namespace) -> None:
    from astroseg.data.dataset import read_attrs, split_sizes
    from astroseg.errors import DataError
    from astroseg.data.fits_io import is_fits

    path = Path(args.dataset)
    if path.is_file() and is_fits(path):
        raise DataError(f"{path}: a FITS image, not an astroseg dataset; `astroseg info` reads "
                        "the HDF5 file the prepare stage writes (data/dataset.h5)")
    problem = _not_a_dataset(path)
    if problem:
        raise DataError(problem)
    attrs = read_attrs(path)
    print(f"{args.dataset}: schema {attrs['schema_version']}, source {attrs.get('source')}, "
          f"normalization {attrs.get('normalization')}, classes {attrs.get('class_names')}"
          + (f", bands {attrs['bands']}" if attrs.get("bands") else ""))
    splits = {f.get("split") for f in attrs.get("fields", [])}
    if splits:
        print(f"  split {'by block' if 'block' in splits else 'by field'} "
              f"({len(attrs['fields'])} field(s))")
    for name, shape in split_sizes(path).items():
        print(f"  {name}: {shape[0]} images of {' x '.join(map(str, shape[1:]))}")


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _predict(args: argparse.Namespace) -> int:
    from astroseg.errors import ParamsError
    from astroseg.data.fits_io import is_fits
    from astroseg.infer.predict import check_mc_samples
    from astroseg.infer.survey import is_survey

    check_mc_samples(args.mc_samples, args.tta)
    if args.error_hdu and not args.catalog:
        raise ParamsError(f"--error-hdu {args.error_hdu}: the error plane is for the catalogue's "
                          "segment_fluxerr; give --catalog too")
    if args.batch_size < 1:
        raise ParamsError(f"--batch-size = {args.batch_size}: expected >= 1")
    if not 0 < args.threshold < 1:
        raise ParamsError(f"--threshold = {args.threshold}: expected between 0 and 1")
    if args.workers < 1:
        raise ParamsError(f"--workers = {args.workers}: expected >= 1")
    from astroseg.models.checkpoint import lock_mismatch

    mismatch = lock_mismatch(args.model)
    if mismatch and os.environ.get("RANK", "0") == "0":   # once under torchrun
        print(f"warning: {mismatch}", file=sys.stderr)
    if args.band:
        return _predict_bands(args)
    if not args.input:
        raise ParamsError("no input: give an image or HDF5 file (or --band NAME=FILE per band)")
    if is_survey(args.input, args.output):
        _check_window(args)
        return _predict_survey(args)
    if args.workers > 1:
        raise ParamsError(f"--workers = {args.workers} with one input file and -o a file: "
                          "nothing to share out (give several inputs and -o a directory)")
    source = args.input[0]
    if is_fits(source):
        _check_window(args)
        return _predict_fits(args, source)
    fits_only = _fits_only(args)
    if fits_only:
        raise ParamsError(f"{fits_only[0]} applies to FITS input; {source} is read as HDF5 "
                          "(already normalised cut-outs)")
    from astroseg.infer.predict import predict_h5

    n = predict_h5(source, args.output, args.model, args.device, args.batch_size,
                   args.threshold, args.tta, normalize=args.normalize,
                   calibration=not args.no_calibration, mc_samples=args.mc_samples,
                   notify=_note)
    std = " and std" if args.mc_samples else ""
    print(f"{args.output}: probabilities{std} and labels for {n} images")
    return 0


def _predict_fits(args: argparse.Namespace, source: str) -> int:
    from astroseg.errors import ParamsError
    from astroseg.infer.catalog import catalog_format, check_error_hdu, write_catalog
    from astroseg.infer.predict import calibration_note, check_output
    from astroseg.infer.predict_fits import load_fits_model, segment_fits

    catalog = args.catalog
    if catalog:
        catalog_format(catalog)   # checked before the work, not after
        if os.path.abspath(catalog) == os.path.abspath(args.output):
            raise ParamsError(f"--catalog {catalog}: is the -o output; give it another name")
        check_output(catalog, [("input", source), ("output", args.output),
                               ("model", args.model), ("bad-pixel map", args.bad_pixels)],
                     "--catalog")
        check_error_hdu(source, args.error_hdu)
    fm = load_fits_model(args.model, args.device, args.precision, args.window, args.overlap,
                         args.bad_pixels, notify=_note, calibration=not args.no_calibration)
    r = segment_fits(fm, source, args.output, args.batch_size, args.threshold, args.hdu,
                     args.tta, args.bad_pixel_hdu, args.bad_pixels, progress=True,
                     mc_samples=args.mc_samples)
    print(f"{args.output}: probability and mask of {source} ({r.height}x{r.width}, "
          f"{r.windows} windows, {r.normalization} normalisation, {r.precision}; "
          f"{r.sources} sources in LABELS)")
    if catalog:
        n = write_catalog(source, args.output, catalog, fm.meta, args.hdu, args.bad_pixel_hdu,
                          args.bad_pixels, args.error_hdu)
        print(f"{catalog}: catalogue of {n} sources")
    # After the work, so that an error is the only line on stderr.
    note = calibration_note(fm.path, fm.temperature, not args.no_calibration)
    if note:
        _note(note)
    return 0


def _predict_bands(args: argparse.Namespace) -> int:
    import glob

    from astroseg.data.band_files import field_name, find_band_files
    from astroseg.errors import DataError, ParamsError
    from astroseg.infer.predict_fits import check_bands, load_fits_model, segment_fits

    bad = next((b for b in args.band if "=" not in b), None)
    if bad is not None:
        raise ParamsError(f"--band {bad}: expected NAME=FILE (or NAME=GLOB), e.g. F606W=a.fits")
    if args.input:
        raise ParamsError(f"{args.input[0]}: with --band, every image comes as --band "
                          "NAME=FILE; give no other input")
    others = [o for o, v in (("--catalog", args.catalog), ("--workers", args.workers > 1)) if v]
    if others:
        raise ParamsError(f"{others[0]} is not supported with --band yet: segment the bands, "
                          "then run it on the output")
    _check_window(args)
    pairs = [b.partition("=")[::2] for b in args.band]
    if not any(glob.has_magic(f) for _, f in pairs):
        # One file per band, named on the command line: a field by position, whatever the names.
        names = [n for n, _ in pairs]
        fields = {field_name(pairs[0][1], names[0]): [Path(f) for _, f in pairs]}
    else:
        names, fields = find_band_files("", tuple(args.band), key="--band")
    fm = load_fits_model(args.model, args.device, args.precision, args.window, args.overlap,
                         args.bad_pixels, notify=_note, calibration=not args.no_calibration)
    check_bands(names, fm.meta, str(fm.path))
    to_dir = len(fields) > 1 or args.output.endswith(("/", os.sep)) or Path(args.output).is_dir()
    if to_dir:
        Path(args.output).mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, paths in fields.items():
        out = Path(args.output) / f"{name}.fits" if to_dir else Path(args.output)
        try:
            r = segment_fits(fm, paths, out, args.batch_size, args.threshold, args.hdu, args.tta,
                             args.bad_pixel_hdu, args.bad_pixels, progress=True,
                             mc_samples=args.mc_samples, bands=names)
        except DataError as exc:
            if not to_dir:
                raise
            failed += 1
            print(f"error: field {name}: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"{out}: probability and mask of field {name}, bands {', '.join(names)} "
              f"({r.height}x{r.width}, {r.windows} windows; {r.sources} sources in LABELS)")
    if to_dir:
        print(f"{args.output}: {len(fields) - failed} field(s) segmented, {failed} failed")
    return 1 if failed else 0


def _check_window(args: argparse.Namespace) -> None:
    from astroseg.errors import ParamsError

    if args.window < 1:
        raise ParamsError(f"--window = {args.window}: expected >= 1")


def _fits_only(args: argparse.Namespace) -> list[str]:
    return [o for o, v in (("--bad-pixel-hdu", args.bad_pixel_hdu),
                           ("--bad-pixels", args.bad_pixels), ("--hdu", args.hdu),
                           ("--catalog", args.catalog), ("--error-hdu", args.error_hdu)) if v]


def _predict_survey(args: argparse.Namespace) -> int:
    import signal

    from tqdm import tqdm

    from astroseg.data.fits_io import is_fits
    from astroseg.errors import ParamsError
    from astroseg.infer.survey import SUMMARY, Settings, expand_inputs, run_survey

    fits_only = _fits_only(args)
    if fits_only and not any(is_fits(p) for p in expand_inputs(args.input)):
        raise ParamsError(f"{fits_only[0]} applies to FITS input; none of the inputs is FITS")
    if args.catalog:
        from astroseg.infer.catalog import FORMATS

        if args.catalog not in FORMATS:
            raise ParamsError(f"--catalog {args.catalog}: with an output directory, --catalog "
                              f"takes a format, {' or '.join(FORMATS)}; each FITS input X gets "
                              "OUTDIR/X.cat.<format> beside OUTDIR/X.fits")
    settings = Settings(Path(args.model), args.device, args.batch_size, args.threshold,
                        args.window, args.overlap, args.hdu, args.bad_pixel_hdu, args.bad_pixels,
                        args.precision, args.tta, args.normalize, not args.no_calibration,
                        args.mc_samples, args.catalog, args.error_hdu)
    # Lines go through tqdm.write so they do not tear the progress bar.
    try:
        rows = run_survey(args.input, args.output, settings, args.workers, progress=True,
                          notify=lambda m: tqdm.write(f"note: {m}", file=sys.stderr),
                          report=lambda r: tqdm.write(f"error: {r.error}", file=sys.stderr))
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"{signal.Signals(signum).name}: stopped; the outputs written are complete, and "
              "the same command again does only the rest", file=sys.stderr, flush=True)
        return 128 + signum
    if int(os.environ.get("RANK", 0)) == 0:
        counts = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
        print(f"{args.output}: {counts['ok']} segmented, {counts['skipped']} up to date "
              f"(skipped), {counts['failed']} failed, of {len(rows)} inputs; "
              f"{Path(args.output) / SUMMARY}")
    return 1 if any(r.status == "failed" for r in rows) else 0


def _make_sky(args: argparse.Namespace) -> None:
    from astroseg.errors import ParamsError
    from astroseg.data.sky import write_sky
    from astroseg.params import RealisticParams, parse_section

    if args.fields < 1 or args.size < 32:
        raise ParamsError("--fields must be >= 1 and --size >= 32")
    realistic = None
    if args.sky == "realistic":
        realistic = parse_section(RealisticParams, _key_values(args.set, "--set"),
                                  "data.realistic")
    elif args.set:
        raise ParamsError("--set changes data.realistic: give --sky realistic too")
    paths = write_sky(args.outdir, args.fields, args.size, args.seed, overwrite=args.overwrite,
                      realistic=realistic)
    print(f"{args.outdir}: wrote {len(paths)} fields of {args.size}x{args.size} "
          f"({args.sky} sky; images/*.fits, masks/*.fits)")


def _key_values(items: list[str], option: str) -> dict[str, object]:
    """KEY=VALUE strings as a mapping, each value read as YAML (`fwhm=[1.5,3]` is a list)."""
    import yaml
    from astroseg.errors import ParamsError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"{option} {item!r}: expected KEY=VALUE, e.g. fwhm=[1.5,3.0]")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ParamsError(f"{option} {item!r}: the value is not YAML") from None
    return out


def _label(args: argparse.Namespace) -> int:
    from astroseg.data.fits_io import parse_hdu
    from astroseg.data.labeling import LabelSettings, label_file, plan
    from astroseg.errors import describe
    from astroseg.infer.survey import expand_inputs

    settings = LabelSettings(args.nsigma, args.npixels, args.fwhm, args.box, args.deblend,
                             parse_hdu(args.hdu), parse_hdu(args.bad_pixel_hdu))
    settings.check()
    outdir = Path(args.output)
    pairs = plan(expand_inputs(args.input, outdir), outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    failed = sources = 0
    for path, out in pairs:
        try:
            r = label_file(path, out, settings, args.overwrite)
        except Exception as exc:   # one file's failure, or surprise, must not stop the others
            failed += 1
            # An OS error names its own file (a full disk: the mask being written).
            message = describe(exc)
            named = message.startswith(str(path)) or isinstance(exc, OSError) and exc.filename
            print(f"error: {message if named else f'{path}: {message}'}", file=sys.stderr,
                  flush=True)
            continue
        sources += r.n_sources
        note = "" if r.background == "2d" else " (global background: smaller than 2 boxes)"
        print(f"{path} -> {out}: {r.n_sources} sources, {100 * r.source_fraction:.1f}% of the "
              f"valid pixels{note}", flush=True)
    print(f"{outdir}: {len(pairs) - failed} labelled ({sources} sources), {failed} failed, of "
          f"{len(pairs)} images")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `astroseg` command."""
    parser = argparse.ArgumentParser(prog="astroseg", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"astroseg {__version__}")
    # --debug is accepted before or after the command: a parent of every sub-parser.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    parser.add_argument("--debug", action="store_true", default=False,
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-params", parents=[debug], help="validate a params file without running anything",
                           formatter_class=_HelpFormatter)
    check.add_argument("params", nargs="?", default="params.yaml", help="params file to check")
    check.add_argument("--show", action="store_true", help="print the params with every default "
                       "filled in (YAML), instead of 'ok'")
    check.set_defaults(func=_check_params)
    info = sub.add_parser("info", parents=[debug], help="summarise a dataset HDF5 file",
                          formatter_class=_HelpFormatter)
    info.add_argument("dataset", nargs="?", default="data/dataset.h5",
                      help="dataset file written by the prepare stage")
    info.set_defaults(func=_info)
    pred = sub.add_parser("predict", parents=[debug], help="segment HDF5 stacks of cut-outs or FITS images, one "
                          "file or a whole survey",
                          formatter_class=_HelpFormatter,
                          description="IN.h5 holds 'images' (N, H, W) normalised like training (or raw, "
                          "with --normalize); "
                          "a FITS image of any size is normalised as the model was trained and "
                          "segmented with blended sliding windows, keeping its WCS. "
                          "One input and -o FILE writes FILE. Several inputs, a glob, an @LIST, "
                          "or -o naming an existing directory or ending in '/' write OUTDIR/"
                          "<stem>.fits (FITS inputs) or <stem>.h5 (others) per input and "
                          "OUTDIR/summary.csv; outputs already made by the same model file and "
                          "settings are skipped, a failed file does not stop the others (exit "
                          "status 1 at the end). An output never replaces an input.")
    pred.add_argument("input", nargs="*", help="HDF5 file with a dataset 'images', or a FITS "
                      "image; or several, globs (quoted: expanded by astroseg, ** included), "
                      "@LIST files (one path or glob a line, # comments; relative to the list's "
                      "directory)")
    pred.add_argument("-o", "--output", required=True, help="HDF5 or FITS file to write, or the "
                      "OUTDIR of a survey (see above)")
    pred.add_argument("--band", action="append", metavar="NAME=FILE", help="a model trained on "
                      "several bands: one FITS file per band, in the model's band order (repeat "
                      "the option); FILE may be a glob, the bands' files then pair up by field "
                      "name (file name without the band) and OUTDIR/<field>.fits is written per "
                      "field")
    pred.add_argument("--workers", type=int, default=1, metavar="N", help="survey: CPU "
                      "processes, each with cores / N torch threads (under torchrun: one per "
                      "rank, keep 1)")
    pred.add_argument("--model", default="models/model.pt", help="checkpoint of the train stage")
    pred.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="auto = cuda if available, else cpu")
    pred.add_argument("--batch-size", type=int, default=8, help="images (or windows) per forward "
                      "pass")
    pred.add_argument("--threshold", type=float, default=0.5,
                      help="probability at or above which a pixel is a source in the mask "
                      "(binary models; a multi-class model's mask is the most probable class)")
    pred.add_argument("--window", type=int, default=256, help="FITS: window side (pixels), "
                      "rounded up to a multiple of the model's stride")
    pred.add_argument("--overlap", type=int, default=32, help="FITS: window overlap (pixels)")
    pred.add_argument("--hdu", default=None, metavar="HDU", help="FITS: image HDU index, "
                      "EXTNAME or EXTNAME,EXTVER like SCI,2 (default: the model's data.fits.hdu, else the first HDU with an "
                      "image; '' = the first HDU with an image)")
    pred.add_argument("--bad-pixel-hdu", default=None, metavar="HDU", help="FITS: HDU of the "
                      "same file flagging bad pixels, nonzero = bad, e.g. DQ; or NAME=0 for a "
                      "weight map, 0 = bad, e.g. WHT=0 (default: the model's "
                      "data.fits.bad_pixel_hdu; '' = none)")
    pred.add_argument("--bad-pixels", default=None, metavar="MAP", help="FITS: bad-pixel map file "
                      "of the image's size, nonzero = bad (default: none)")
    pred.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                      help="FITS: auto = bf16 autocast where the device supports it natively")
    pred.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations of "
                      "every input (test-time augmentation: better edges, 8x the compute)")
    pred.add_argument("--normalize", action="store_true", help="HDF5: the images are raw pixels; "
                      "apply the model's training normalisation to each first (FITS input is "
                      "always normalised)")
    pred.add_argument("--mc-samples", type=int, default=0, metavar="N", help="Monte Carlo "
                      "dropout: N >= 2 stochastic passes; the probability is their mean and "
                      "their standard deviation is written (FITS: HDU STD, HDF5: dataset std); "
                      "0 = off. Not with --tta")
    pred.add_argument("--no-calibration", action="store_true", help="do not divide the logits "
                      "by the temperature the evaluate stage fitted for this model "
                      "(calibration.json beside it), applied by default when it is there")
    pred.add_argument("--catalog", default=None, metavar="CAT", help="FITS: write a source "
                      "catalogue (photutils, one row per LABELS source): CAT.ecsv or CAT.fits; "
                      "with -o OUTDIR the format, ecsv or fits: OUTDIR/<stem>.cat.<format>")
    pred.add_argument("--error-hdu", default=None, metavar="HDU", help="FITS, with --catalog: "
                      "HDU of the input holding each pixel's 1-sigma error (e.g. ERR), for "
                      "segment_fluxerr")
    pred.set_defaults(func=_predict)
    sky = sub.add_parser("make-sky", parents=[debug], help="write example survey fields (FITS with WCS, BLANK "
                         "pixels, BSCALE) and their masks, for the FITS workflow",
                         formatter_class=_HelpFormatter)
    sky.add_argument("outdir", help="directory to write images/ and masks/ into")
    sky.add_argument("--fields", type=int, default=6, help="number of fields")
    sky.add_argument("--size", type=int, default=512, help="side of each field (pixels)")
    sky.add_argument("--seed", type=int, default=0, help="random seed")
    sky.add_argument("--overwrite", action="store_true", help="replace the fields an earlier "
                     "make-sky wrote there (field_*.fits) instead of refusing")
    sky.add_argument("--sky", choices=("seed", "realistic"), default="seed", help="seed: the "
                     "notebook's galaxies in counts; realistic: a survey frame (PSF, Sérsic "
                     "galaxies, stars, sky and noise in counts; masks hold the classes)")
    sky.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="with --sky realistic: a data.realistic param, e.g. --set "
                     "fwhm=[1.5,2.5] --set sky=[10,100] for space-like frames")
    sky.set_defaults(func=_make_sky)
    lab = sub.add_parser("label", parents=[debug], help="bootstrap masks for images without any: a photutils "
                         "segmentation map per image, SExtractor-style",
                         formatter_class=_HelpFormatter,
                         description="Each image gets MASKDIR/<stem>.fits: an int32 "
                         "segmentation map (0 = sky, 1..N = sources) with the image's celestial "
                         "WCS, from photutils: a 2-D background and RMS (Background2D; global "
                         "statistics for an image under two boxes on a side), Gaussian "
                         "smoothing, then detect_sources at NSIGMA x the local RMS. Invalid "
                         "pixels (NaN, BLANK, bad-pixel flags) are never labelled. Use them with "
                         "data.fits.masks: 'MASKDIR/*.fits'. A model trained on them learns "
                         "photutils' labels, not the true extent of the sources. A failed file "
                         "does not stop the others (exit status 1 at the end).")
    lab.add_argument("input", nargs="+", help="FITS (or PNG) images; globs (quoted: expanded "
                     "by astroseg, ** included) and @LIST files (one path or glob a line)")
    lab.add_argument("-o", "--output", required=True, metavar="MASKDIR",
                     help="directory for the masks (created if missing)")
    lab.add_argument("--nsigma", type=float, default=1.5, help="detection threshold, x the "
                     "background RMS, on the smoothed image (SExtractor's DETECT_THRESH)")
    lab.add_argument("--npixels", type=int, default=5, help="minimum source area in pixels "
                     "(SExtractor's DETECT_MINAREA)")
    lab.add_argument("--fwhm", type=float, default=3.0, help="FWHM of the Gaussian smoothing "
                     "kernel (pixels)")
    lab.add_argument("--box", type=int, default=64, help="background box side (pixels), "
                     "SExtractor's BACK_SIZE")
    lab.add_argument("--deblend", action="store_true", help="split touching sources "
                     "(photutils deblend_sources); the binary mask stays the same")
    lab.add_argument("--hdu", default=None, metavar="HDU", help="image HDU index, EXTNAME or "
                     "EXTNAME,EXTVER (default: the first HDU with an image)")
    lab.add_argument("--bad-pixel-hdu", default=None, metavar="HDU", help="HDU of the same file "
                     "flagging bad pixels, nonzero = bad, e.g. DQ; or NAME=0 for a weight map, "
                     "0 = bad, e.g. WHT=0 for a drizzled image (default: none)")
    lab.add_argument("--overwrite", action="store_true", help="replace masks already in "
                     "MASKDIR (never an input)")
    lab.set_defaults(func=_label)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `astroseg` console script."""
    args = build_parser().parse_args(argv)
    if args.debug:   # in the environment, so that worker processes see it too
        os.environ[DEBUG_ENV] = "1"
    status = 0

    def call() -> None:
        nonlocal status
        status = args.func(args) or 0
    return run_main(call) or status


if __name__ == "__main__":
    sys.exit(main())
