#!/usr/bin/env bash
# GPU check for the lent H100/H200 (no network, Python 3.12, torch + triton + timm preinstalled, the checkout run
# with PYTHONPATH=. and no install), in under 5 minutes:
#   1. every gpu-marked test in tests/ (python -m pytest -m gpu -q)
#   2. benchmarks/bench_aug.py (full sizes/batches, plus a kernel tile sweep at 224 px)
#   3. benchmarks/bench_step.py --batches 50, if that file exists and time is left
# Outputs (JUnit XML, logs, JSON) go under ${OUT:-benchmarks/results}.
#
# rd3fast.kernels is the top-level kernels/ folder (pyproject maps it at install time). Without an install it is
# not importable, so this script links rd3fast/kernels -> ../kernels for the run and removes the link on exit
# (only if it created it; an existing rd3fast/kernels is left alone). tests/conftest.py and bench_aug.py also
# find ./kernels on their own; the link is for anything else that imports rd3fast.kernels (bench_step.py).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}."
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-290}"

echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.cuda.is_available())"

LINKED=0
cleanup() {
    if [ "$LINKED" = 1 ] && [ -L rd3fast/kernels ]; then rm -f rd3fast/kernels; fi
}
trap cleanup EXIT
if ! "$PY" -c "import rd3fast.kernels" 2>/dev/null; then
    if [ ! -e rd3fast/kernels ]; then
        ln -sfn ../kernels rd3fast/kernels
        LINKED=1
        echo "linked rd3fast/kernels -> ../kernels for this run"
    fi
fi
"$PY" -c "import rd3fast.kernels as k; print('rd3fast.kernels from', k.__file__, '| interpreted:', k.interpreted())"

status=0
left() { echo $(( BUDGET_S - SECONDS )); }

echo "== pytest -m gpu =="
timeout 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" tests \
    2>&1 | tee "$OUT/gpu_tests.log" || status=1

echo "== bench_aug.py ($(left) s left) =="
timeout "$(( $(left) > 150 ? 150 : $(left) ))" "$PY" benchmarks/bench_aug.py --sweep --out "$OUT/bench_aug.json" \
    2>&1 | tee "$OUT/bench_aug.log" || status=1

if [ -f benchmarks/bench_step.py ]; then
    if [ "$(left)" -ge 45 ]; then
        echo "== bench_step.py --batches 50 ($(left) s left) =="
        timeout "$(left)" "$PY" benchmarks/bench_step.py --batches 50 --out "$OUT" 2>&1 | tee "$OUT/bench_step.log" \
            || status=1
    else
        echo "== bench_step.py skipped: $(left) s left of ${BUDGET_S} s =="
    fi
fi

echo "gpu_check done in ${SECONDS} s, status ${status}; outputs in $OUT"
exit "$status"
