#!/usr/bin/env bash
# The one script for a GPU machine (no network needed): build, a smoke run of
# each CUDA path under a timeout (a hung persistent kernel must not eat the
# lease: if one hangs or fails, the later steps run the fallback path only),
# the CUDA tests, the benchmark vs torch.nn.LSTM (cuDNN), a host-overhead probe
# (bench/dev/host_overhead.py, not yet run on a GPU), then
# compute-sanitizer memcheck + racecheck on a small case. Every step has its
# own timeout (T_BUILD=200, T_SMOKE=45 per path, T_TESTS=150, T_BENCH=150 with
# BUDGET=120 s inside it, T_HOST=60, T_SAN=75 per tool), about 12 minutes if
# every step hits it; typically 4 (the H100 runs of 2026-11-27: 2-3.5). Logs
# go to $OUT (default /tmp/fusedlstm_gpu). Exit status: non-zero if the build,
# a smoke run, a test or a sanitizer run failed.
#
#   bash bench/gpu_check.sh            # full
#   QUICK=1 bash bench/gpu_check.sh    # short benchmark grid
#   PROFILE=1 SAN_TOOLS=memcheck bash bench/gpu_check.sh   # + ncu, memcheck only
source "$(dirname "$0")/gpu_common.sh"

step "build (pip install --no-build-isolation .)"
if ! timeout "${T_BUILD:-200}" "$PY" -m pip install --no-build-isolation --no-deps -v . \
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

PATHS="fallback"
for path in persistent fallback; do
  step "smoke: $path path"
  (cd /tmp && timeout "${T_SMOKE:-45}" "$PY" "$REPO/bench/dev/sanitizer_case.py" "$path" >>"$OUT/smoke.log" 2>&1)
  rc=$?
  if [ $rc = 0 ]; then
    tail -1 "$OUT/smoke.log"
    [ "$path" = persistent ] && PATHS="persistent,fallback"
  else
    tail -15 "$OUT/smoke.log"; fail "smoke run of the $path path (rc $rc; 124 = timed out)"
  fi
done
TEST_FILTER=()
if [ "$PATHS" = fallback ]; then
  echo "the persistent path failed its smoke run: tests and benchmark run the fallback only"
  export FUSEDLSTM_CUDA_PATH=fallback
  TEST_FILTER=(-k "not persistent and not auto_path")
fi

step "CUDA tests"
if (cd /tmp && timeout "${T_TESTS:-150}" "$PY" -m pytest -q -p no:cacheprovider --maxfail=40 -rfEs "${TEST_FILTER[@]}" \
      "$REPO/tests/test_cuda.py" "$REPO/tests/test_torch_cuda.py" \
      >"$OUT/tests.log" 2>&1); then
  tail -3 "$OUT/tests.log"
else
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-300 | head -30; tail -3 "$OUT/tests.log"
  fail "CUDA tests (log: $OUT/tests.log)"
fi

step "benchmark vs torch.nn.LSTM"
BUDGET=${BUDGET:-120}
QARG=""
[ "${QUICK:-0}" = 1 ] && QARG="--quick"
(cd /tmp && timeout "${T_BENCH:-150}" "$PY" "$REPO/bench/bench_gpu.py" $QARG --budget "$BUDGET" --paths "$PATHS" \
   --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1) || fail "benchmark"
grep -E "^T=|FAILED|skipped" "$OUT/bench.log" | cut -c1-200 | tail -5

step "host overhead per call (bench/dev/host_overhead.py)"
(cd /tmp && timeout "${T_HOST:-60}" "$PY" "$REPO/bench/dev/host_overhead.py" 2>&1) || fail "host_overhead.py"

# PROFILE=1: Nsight Compute on the persistent kernels (stall reasons), clocks
# left as found (--clock-control none).
if [ "${PROFILE:-0}" = 1 ] && [ "$PATHS" != fallback ]; then
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for shape in "1 256" "1 1024" "16 512"; do
    step "ncu: persistent kernels, B H = $shape"
    (cd /tmp && timeout "${T_NCU:-90}" "$NCU" --clock-control none --kernel-name regex:persistent_ --launch-skip 2 \
       --launch-count 2 --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
       "$PY" "$REPO/bench/dev/profile_persistent.py" $shape >>"$OUT/ncu.txt" 2>&1) || fail "ncu $shape"
    grep -E "persistent_(fwd|bwd)_kernel|Duration|Warp Cycles Per Issued|Compute \(SM\) Throughput|stalled" \
      "$OUT/ncu.txt" | cut -c1-220 | tail -14
  done
fi

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in ${SAN_TOOLS:-memcheck racecheck}; do
  step "compute-sanitizer --tool $tool ($PATHS)"
  if [ -z "$SAN" ]; then echo "compute-sanitizer not found: skipped"; break; fi
  if ! (cd /tmp && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${T_SAN:-75}" "$SAN" --tool "$tool" --error-exitcode 9 \
        "$PY" "$REPO/bench/dev/sanitizer_case.py" ${PATHS//,/ } >"$OUT/sanitizer_$tool.log" 2>&1); then
    grep -v "^=========     " "$OUT/sanitizer_$tool.log" | head -25
    fail "compute-sanitizer $tool (log: $OUT/sanitizer_$tool.log)"
  else
    tail -2 "$OUT/sanitizer_$tool.log"
  fi
done

# The benchmark's table last: the device tool returns the end of the output.
step "benchmark table"
sed -n '/^ms per call/,$p' "$OUT/bench.log"
step "done: status $status (logs in $OUT)"
exit $status
