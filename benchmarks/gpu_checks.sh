#!/usr/bin/env bash
# The GPU checks of a lent device session, in one command (see benchmarks/README.md):
#   tests/test_gpu.py, bench_gpu.py, bench_predict_fits.py --device cuda, and a survey predict
#   under torchrun. Logs go to $OUT (or ./gpu_out). Needs models/model.pt (`dvc repro train`).
# Missing packages travel as wheels in .whl/ (astropy, pyerfa, astropy-iers-data, photutils for
# the device's Python); everything else comes from the device image.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" /tmp/site
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
$PY -c "import torch, astropy, photutils; print('torch', torch.__version__, 'astropy',
astropy.__version__, 'photutils', photutils.__version__)" | tee -a "$OUT/device.txt"

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "=== $name rc=$? ($(date +%T))"
    tail -n 25 "$OUT/$name.log"
}

step test_gpu 200 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
step bench_predict_fits 100 $PY benchmarks/bench_predict_fits.py --device cuda --size 4096 \
    --repeats 3
step bench_gpu 130 $PY benchmarks/bench_gpu.py --batches 256 1024 --steps 20 \
    --compile false --precisions fp32 bf16
step bench_gpu_compile 90 $PY benchmarks/bench_gpu.py --batches 512 --steps 20 \
    --compile true --precisions bf16
# Survey predict on the GPU under torchrun: 64 FITS fields, one rank on cuda:0.
$PY -c "from astroseg.data.sky import write_sky; write_sky('/tmp/survey', n_fields=64, size=512, seed=1)"
step survey_torchrun 60 $PY -m torch.distributed.run --nproc_per_node 1 -m astroseg.cli predict \
    '/tmp/survey/images/*.fits' -o /tmp/survey_out --model models/model.pt --device cuda --batch-size 64
cp /tmp/survey_out/summary.* "$OUT/" 2>/dev/null || true
