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
    from astroseg.predict import predict_h5

    if args.batch_size < 1:
        raise ParamsError(f"--batch-size = {args.batch_size}: expected >= 1")
    if not 0 < args.threshold < 1:
        raise ParamsError(f"--threshold = {args.threshold}: expected between 0 and 1")
    n = predict_h5(args.input, args.output, args.model, args.device, args.batch_size,
                   args.threshold)
    print(f"{args.output}: probabilities and masks for {n} images")


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
    pred = sub.add_parser("predict", help="segment the 'images' (N, H, W) of an HDF5 file")
    pred.add_argument("input", help="HDF5 file with a dataset 'images', normalised like training")
    pred.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    pred.add_argument("--model", default="models/model.pt")
    pred.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    pred.add_argument("--batch-size", type=int, default=16)
    pred.add_argument("--threshold", type=float, default=0.5)
    pred.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `astroseg` console script."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
