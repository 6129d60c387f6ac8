#!/usr/bin/env bash
# The one script for a GPU machine (no network needed): build, CUDA tests,
# compute-sanitizer memcheck + racecheck on a small case, benchmark vs
# torch.nn.LSTM (cuDNN). Typically about 5 minutes; every step has its own
# timeout (T_BUILD=240, T_TESTS=180, T_SAN=120 per tool, T_BENCH=150 s; the
# benchmark also a time budget, BUDGET=110 s), so even a run where every step
# hits its timeout stays under 14 minutes. Logs go to $OUT (default
# /tmp/fusedlstm_gpu). Exit status: non-zero if the build, a test or a
# sanitizer run failed (the benchmark runs regardless, and prints its table last).
#
#   bash bench/gpu_check.sh            # full
#   QUICK=1 bash bench/gpu_check.sh    # short benchmark grid
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/fusedlstm_gpu}
mkdir -p "$OUT"
status=0
step() { echo; echo "=== $* ($(date -u +%T))"; }
fail() { echo "FAILED: $*"; status=1; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
(command -v nvcc >/dev/null && nvcc --version | tail -2) || ls -d /usr/local/cuda*/bin/nvcc 2>/dev/null
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"

step "build (pip install --no-build-isolation .)"
if ! timeout "${T_BUILD:-240}" "$PY" -m pip install --no-build-isolation --no-deps -v . \
     -Ccmake.define.FUSEDLSTM_CUDA=on -Ccmake.define.FUSEDLSTM_CUDA_VERBOSE_PTXAS=ON >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "FAILED: build (log: $OUT/build.log)"
  exit 1
fi
grep -E "fusedlstm: CUDA backend" "$OUT/build.log" | head -2
echo "ptxas: $(grep -c 'Compiling entry' "$OUT/build.log") kernel compilations; lines with spills:"
grep -E "bytes spill" "$OUT/build.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -5 || true
(cd /tmp && "$PY" -c "import fusedlstm, pprint; pprint.pprint(fusedlstm.build_info()); assert fusedlstm.cuda_available()") \
  || { echo "FAILED: CUDA unusable after the build"; exit 1; }

step "CUDA tests"
if (cd /tmp && timeout "${T_TESTS:-180}" "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" >"$OUT/tests.log" 2>&1); then
  tail -3 "$OUT/tests.log"
else
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -30; tail -3 "$OUT/tests.log"
  fail "CUDA tests (log: $OUT/tests.log)"
fi

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck; do
  step "compute-sanitizer --tool $tool"
  if [ -z "$SAN" ]; then echo "compute-sanitizer not found: skipped"; break; fi
  if ! (cd /tmp && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${T_SAN:-120}" "$SAN" --tool "$tool" --error-exitcode 9 \
        "$PY" "$REPO/bench/dev/sanitizer_case.py" >"$OUT/sanitizer_$tool.log" 2>&1); then
    tail -30 "$OUT/sanitizer_$tool.log"
    fail "compute-sanitizer $tool (log: $OUT/sanitizer_$tool.log)"
  else
    tail -2 "$OUT/sanitizer_$tool.log"
  fi
done

step "benchmark vs torch.nn.LSTM"
BUDGET=${BUDGET:-110}
QARG=""
[ "${QUICK:-0}" = 1 ] && QARG="--quick"
(cd /tmp && timeout "${T_BENCH:-150}" "$PY" "$REPO/bench/bench_gpu.py" $QARG --budget "$BUDGET" --json "$OUT/bench.json") \
  || fail "benchmark"

step "done: status $status (logs in $OUT)"
exit $status
