#!/usr/bin/env bash
# Everything that needs CUDA, in one prepared run (about 5-8 minutes on one H100/H200):
#   1. tests/test_gpu.py: 16-mixed and bf16-mixed probing in a real Trainer, FSDP1
#      (FSDPStrategy) on one device, each against an fp32 CPU probe of the same weights;
#   2. the CUDA/CPU noise-equality test (tests/test_perturbations.py);
#   3. the MusicGen-small-shaped benchmark: seconds per probe of 20 clips x 6 lengths,
#      positions/s and MFU (benchmarks/bench_probe.py --gpu-shape).
# Figures go to stdout and to $OUT (default gpu-check-out/): tests.txt, bench.txt, bench.json.
#
# Usage, from the repository root of a set-up checkout (`make setup` made .venv):
#   scripts/gpu-check.sh
#   PEAK_TFLOPS=989 scripts/gpu-check.sh     # the device's dense bf16 peak, for MFU
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "gpu-check: no .venv here; run 'make setup' first (it needs the package registry)." >&2
    exit 2
fi
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export XFORMERS_MORE_DETAILS=0 PYTHONWARNINGS=ignore

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no CUDA device; run this on a GPU machine.")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

status=0
echo "== 1-2. CUDA tests (precision, FSDP1, noise equality)"
timeout 360 "$PY" -m pytest -p no:xdist -p no:cacheprovider -rA -s -q \
    tests/test_gpu.py \
    tests/test_perturbations.py::test_inject_generated_on_cpu_then_moved \
    2>&1 | tee "$OUT/tests.txt" || status=1
if grep -qE "[0-9]+ skipped" "$OUT/tests.txt"; then
    echo "gpu-check: some CUDA tests were skipped; see $OUT/tests.txt" >&2
    status=1
fi

echo "== 3. MusicGen-small-shaped benchmark (bf16, 20 clips x 6 lengths)"
timeout 300 "$PY" benchmarks/bench_probe.py --gpu-shape --device cuda \
    --skip-naive --skip-epoch --skip-growth --peak-tflops "${PEAK_TFLOPS:-989}" \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1

echo "== gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); outputs in $OUT/"
exit $status
