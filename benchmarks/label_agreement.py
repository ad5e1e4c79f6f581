"""`astroseg label` against a SExtractor-style segmentation of the same real frames: pixel IoU.

    .venv/bin/python benchmarks/label_agreement.py [FITS ...]

The reference is SExtractor's default detection, rebuilt independently with photutils:
background and RMS meshes of BACK_SIZE 64 with BACK_FILTERSIZE 3 (SExtractorBackground), the
background-subtracted image filtered with default.conv (the 3x3 kernel 1 2 1 / 2 4 2 / 1 2 1),
and pixels above DETECT_THRESH 1.5 x the RMS in groups of DETECT_MINAREA 5. `astroseg label`
runs with its defaults (a Gaussian of FWHM 3 pixels instead of default.conv). With no
arguments it uses the two real frames astropy ships for its tests (NGC 1316 from a
photographic plate, comp.fits; M13, m13.fits), which are not in this repo.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import astropy
import numpy as np
from astropy.convolution import convolve
from astropy.io import fits
from photutils.background import Background2D, SExtractorBackground
from photutils.segmentation import detect_sources

from astroseg.cli import main as cli_main
from astroseg.data.fits_io import read_image

ASTROPY = Path(astropy.__file__).parent / "io/fits"
FRAMES = [ASTROPY / "tests/data/comp.fits", ASTROPY / "hdu/compressed/tests/data/m13.fits"]
DEFAULT_CONV = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float) / 16


def sextractor_style(path: Path) -> np.ndarray:
    """SExtractor's default detection of a frame, as a bool source mask."""
    data, valid, _ = read_image(path)
    bkg = Background2D(data, 64, filter_size=3, mask=~valid, exclude_percentile=50,
                       bkg_estimator=SExtractorBackground())
    filtered = convolve(np.where(valid, data - bkg.background, 0), DEFAULT_CONV,
                        normalize_kernel=False)
    segm = detect_sources(filtered, 1.5 * bkg.background_rms, 5, mask=~valid)
    return np.zeros(data.shape, bool) if segm is None else segm.data > 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("frames", nargs="*", type=Path, default=FRAMES)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        assert cli_main(["label", *map(str, args.frames), "-o", tmp]) == 0
        for path in args.frames:
            name = path.name.split(".")[0]
            ours = fits.getdata(Path(tmp) / f"{name}.fits") > 0
            ref = sextractor_style(path)
            iou = (ours & ref).sum() / max(1, (ours | ref).sum())
            print(f"{path.name}: {ours.shape[0]}x{ours.shape[1]}, label {ours.mean():.3f} "
                  f"SExtractor-style {ref.mean():.3f} of the pixels, IoU {iou:.3f}")


if __name__ == "__main__":
    main()
