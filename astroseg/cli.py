"""The `astroseg` command: utilities around the pipeline (the stages themselves run under DVC)."""

from __future__ import annotations

import argparse
import sys

from astroseg import __version__
from astroseg.errors import run_main


def _check_params(args: argparse.Namespace) -> None:
    from astroseg.params import load_params

    load_params(args.params)
    print(f"{args.params}: ok")


def _info(args: argparse.Namespace) -> None:
    from astroseg.dataset import read_attrs, split_sizes

    attrs = read_attrs(args.dataset)
    print(f"{args.dataset}: schema {attrs['schema_version']}, source {attrs.get('source')}, "
          f"normalization {attrs.get('normalization')}, classes {attrs.get('class_names')}")
    for name, shape in split_sizes(args.dataset).items():
        print(f"  {name}: {shape[0]} images of {' x '.join(map(str, shape[1:]))}")


def _predict(args: argparse.Namespace) -> None:
    from astroseg.errors import ParamsError
    from astroseg.fits_io import is_fits, parse_hdu

    if args.batch_size < 1:
        raise ParamsError(f"--batch-size = {args.batch_size}: expected >= 1")
    if not 0 < args.threshold < 1:
        raise ParamsError(f"--threshold = {args.threshold}: expected between 0 and 1")
    if is_fits(args.input):
        from astroseg.predict_fits import predict_fits

        if args.window < 1:
            raise ParamsError(f"--window = {args.window}: expected >= 1")
        r = predict_fits(args.input, args.output, args.model, args.device, args.batch_size,
                         args.threshold, args.window, args.overlap, parse_hdu(args.hdu),
                         args.precision, args.tta)
        print(f"{args.output}: probability and mask of {args.input} ({r.height}x{r.width}, "
              f"{r.windows} windows, {r.normalization} normalisation, {r.precision})")
        return
    from astroseg.predict import predict_h5

    n = predict_h5(args.input, args.output, args.model, args.device, args.batch_size,
                   args.threshold, args.tta)
    print(f"{args.output}: probabilities and masks for {n} images")


def _make_sky(args: argparse.Namespace) -> None:
    from astroseg.errors import ParamsError
    from astroseg.sky import write_sky

    if args.fields < 1 or args.size < 32:
        raise ParamsError("--fields must be >= 1 and --size >= 32")
    paths = write_sky(args.outdir, args.fields, args.size, args.seed)
    print(f"{args.outdir}: wrote {len(paths)} fields of {args.size}x{args.size} "
          f"(images/*.fits, masks/*.fits)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `astroseg` command."""
    parser = argparse.ArgumentParser(prog="astroseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"astroseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-params", help="validate a params file without running anything")
    check.add_argument("params", nargs="?", default="params.yaml")
    check.set_defaults(func=_check_params)
    info = sub.add_parser("info", help="summarise a dataset HDF5 file")
    info.add_argument("dataset", nargs="?", default="data/dataset.h5")
    info.set_defaults(func=_info)
    pred = sub.add_parser("predict", help="segment an HDF5 stack of cut-outs or a FITS image",
                          description="IN.h5 holds 'images' (N, H, W) normalised like training; "
                          "a FITS image of any size is normalised as the model was trained and "
                          "segmented with blended sliding windows, keeping its WCS.")
    pred.add_argument("input", help="HDF5 file with a dataset 'images', or a FITS image")
    pred.add_argument("-o", "--output", required=True, help="HDF5 or FITS file to write")
    pred.add_argument("--model", default="models/model.pt")
    pred.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    pred.add_argument("--batch-size", type=int, default=8)
    pred.add_argument("--threshold", type=float, default=0.5)
    pred.add_argument("--window", type=int, default=256, help="FITS: window side (pixels)")
    pred.add_argument("--overlap", type=int, default=32, help="FITS: window overlap (pixels)")
    pred.add_argument("--hdu", default=None, help="FITS: image HDU index or EXTNAME "
                      "(default: the first HDU with an image)")
    pred.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                      help="FITS: auto = bf16 autocast where the device supports it natively")
    pred.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations of "
                      "every input (test-time augmentation: better edges, 8x the compute)")
    pred.set_defaults(func=_predict)
    sky = sub.add_parser("make-sky", help="write example survey fields (FITS with WCS, BLANK "
                         "pixels, BSCALE) and their masks, for the FITS workflow")
    sky.add_argument("outdir")
    sky.add_argument("--fields", type=int, default=6)
    sky.add_argument("--size", type=int, default=512)
    sky.add_argument("--seed", type=int, default=0)
    sky.set_defaults(func=_make_sky)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `astroseg` console script."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
