"""prepare: params `data.*` -> data/dataset.h5 (train/val/test splits, synthetic or from FITS)."""

import sys
import time

import numpy as np

from astroseg.data.dataset import SPLITS, DatasetWriter
from astroseg.data.fits_source import write_fits_dataset
from astroseg.data.parallel import resolve_workers
from astroseg.data.realistic import render as render_realistic
from astroseg.data.synthetic import generate
from astroseg.errors import run_main
from astroseg.params import DataParams, load_params

OUT = "data/dataset.h5"


def prepare_synthetic(p: DataParams) -> dict[str, int]:
    """Render the synthetic splits chunk by chunk, in `data.workers` processes, into OUT."""
    attrs = {"source": p.source, "class_names": p.class_names(),
             "normalization": p.normalize, "params": p.record(),
             **({"bands": list(p.bands.names)} if p.bands.names else {})}
    sizes = dict(zip(SPLITS, (p.n_train, p.n_val, p.n_test)))
    with DatasetWriter(OUT, attrs) as out:
        writers = {}
        renderer = render_realistic if p.sky == "realistic" else None
        for split, chunk in generate(p, sizes, resolve_workers(p.workers), renderer):
            if split not in writers:
                # The truth of every galaxy too: (N, K) rows, K the most galaxies an image has.
                dtypes = {**{k: v.dtype for k, v in chunk.meta.items()},
                          **{k: np.dtype((np.float32, v.shape[1:])) for k, v in chunk.objects.items()}}
                writers[split] = out.split(split, sizes[split], (p.height, p.width), dtypes,
                                           bands=max(1, len(p.bands.names)))
            writers[split].write(chunk.start, chunk.images, chunk.masks,
                                 {**chunk.meta, **chunk.objects})
    return sizes


def main() -> None:
    p = load_params().data
    t0 = time.perf_counter()
    sizes = write_fits_dataset(OUT, p) if p.source == "fits" else prepare_synthetic(p)
    counts = ", ".join(f"{k} {v}" for k, v in sizes.items())
    print(f"prepare: wrote {OUT} from {p.source} data ({counts} images) "
          f"in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(run_main(main))
