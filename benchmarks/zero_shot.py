"""Zero-shot agreement: `astroseg predict` with a model trained only on a simulated sky, against a
SExtractor-style segmentation of the same frames (pixel IoU of the source masks).

    .venv/bin/python benchmarks/zero_shot.py --model models/model.pt [FRAME[,HDU] ...]

The reference is SExtractor's default detection rebuilt with photutils, as in
benchmarks/label_agreement.py: background and RMS meshes of BACK_SIZE 64 (one global
3-sigma-clipped level on a frame under 128 pixels a side), the background-subtracted image
filtered with default.conv (1 2 1 / 2 4 2 / 1 2 1), and pixels above DETECT_THRESH 1.5 x the RMS
in 8-connected groups of DETECT_MINAREA 5. With no frames it uses the real images astropy
and scikit-image ship (none of them in this repo, none seen in training):
  - space: the Hubble eXtreme Deep Field (scikit-image's hubble_deep_field.jpg, 872x1000: the
    press image, so display-stretched 8-bit colour; the sum of its R, G and B, written to a
    temp FITS file) and HST WFPC2 chips (test0.fits, four 40x40 SCI extensions);
  - ground: M13 (m13.fits, 300x300), a UK Schmidt DSS plate (100x100), an Apogee CCD frame
    (sip-wcs.fits, 50x100), NGC 1316 from a photographic plate (comp.fits, 300x440);
plus any make-sky fields given on the command line. Prints one line per frame and the IoU
of the pixels pooled over each group.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import astropy
import numpy as np
import skimage
from astropy.convolution import convolve
from astropy.io import fits
from photutils.segmentation import detect_sources

from astroseg.cli import main as cli_main
from astroseg.data.fits_io import parse_hdu, read_image
from astroseg.data.labeling import background

ASTROPY = Path(astropy.__file__).parent
XDF = Path(skimage.__file__).parent / "data" / "hubble_deep_field.jpg"
SPACE = [f"{ASTROPY}/io/fits/tests/data/test0.fits,{i}" for i in (1, 2, 3, 4)]
GROUND = [f"{ASTROPY}/io/fits/hdu/compressed/tests/data/m13.fits",
          f"{ASTROPY}/wcs/tests/data/dss.14.29.56-62.41.05.fits.gz",
          f"{ASTROPY}/nddata/tests/data/sip-wcs.fits",
          f"{ASTROPY}/io/fits/tests/data/comp.fits"]
DEFAULT_CONV = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float) / 16


def sextractor_style(path: str, hdu: int | str | None) -> np.ndarray:
    """SExtractor's default detection of a frame, as a bool source mask."""
    data, valid, _ = read_image(path, hdu)
    level, rms, _ = background(data, valid, 64)
    filtered = convolve(np.where(valid, data - level, 0), DEFAULT_CONV, normalize_kernel=False)
    segm = detect_sources(filtered, 1.5 * np.broadcast_to(rms, data.shape), 5, mask=~valid)
    return np.zeros(data.shape, bool) if segm is None else segm.data > 0


def xdf_frame(tmp: Path) -> list[str]:
    """The XDF press image as a one-plane FITS frame in `tmp` (R + G + B, integers), if the
    installed scikit-image ships it."""
    if not XDF.exists():
        return []
    from skimage.io import imread
    path = tmp / "hubble_deep_field.fits"
    fits.writeto(path, imread(XDF).astype(np.int16).sum(axis=2))
    return [str(path)]


def split_frame(spec: str) -> tuple[str, str | None]:
    """FRAME or FRAME,HDU."""
    path, _, hdu = spec.partition(",")
    return path, (hdu or None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("frames", nargs="*", help="FITS frames (FRAME,HDU for an extension)")
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        groups = {"frames": args.frames} if args.frames else \
            {"space": xdf_frame(Path(tmp)) + SPACE, "ground": GROUND}
        for group, frames in groups.items():
            inter = union = 0
            for k, spec in enumerate(frames):
                path, hdu = split_frame(spec)
                out = Path(tmp) / f"{group}_{k}.fits"
                argv = ["predict", path, "-o", str(out), "--model", args.model,
                        "--window", str(args.window)] + (["--hdu", hdu] if hdu else [])
                with open(Path(tmp) / "log", "w") as log:
                    stdout, sys.stdout = sys.stdout, log
                    try:
                        status = cli_main(argv)
                    finally:
                        sys.stdout = stdout
                if status != 0:
                    print(f"{spec}: astroseg predict failed (exit {status})")
                    continue
                pred = fits.getdata(out, "MASK") > 0
                ref = sextractor_style(path, parse_hdu(hdu) if hdu else None)
                i, u = int((pred & ref).sum()), int((pred | ref).sum())
                inter, union = inter + i, union + u
                print(f"{group}: {Path(path).name}{',' + hdu if hdu else ''} "
                      f"{ref.shape[0]}x{ref.shape[1]}: reference {ref.mean():.3f}, model "
                      f"{pred.mean():.3f} of the pixels; IoU {i / max(u, 1):.3f}, precision "
                      f"{i / max(pred.sum(), 1):.3f}, recall {i / max(ref.sum(), 1):.3f}")
            print(f"{group}: pooled IoU {inter / max(union, 1):.3f}")


if __name__ == "__main__":
    main()
