#!/usr/bin/env bash
# Issue 11 on a GPU machine, one run (no network needed; python3 with a CUDA
# torch, scikit-build-core, pybind11, cmake, ninja and the CUDA toolkit):
#   1. build:  pip install --no-build-isolation . with FUSEDLSTM_CUDA=on
#   2. tests:  pytest -q tests (the whole suite; with a GPU the "cuda" cases of
#              the torch module, the CUDA-only tests of tests/test_torch_cuda.py
#              and the NCCL DDP test run instead of skipping)
#   3. bench:  bench/bench_torch_train.py --device cuda --kernel: training step
#              and no_grad forward of fusedlstm.torch.LSTM vs nn.LSTM (cuDNN), the
#              same kernels through _core, in fp32 / tf32 / bf16 / fp16
# Every step has its own timeout (T_BUILD=200, T_TESTS=210, T_BENCH=100 s:
# at most about 8.5 minutes, typically less). Logs and raw JSON go to $OUT
# (default /tmp/fusedlstm_gpu); the bench JSON is also copied to
# bench/results/issue11_<card>_<date>.json (keep it: commit it from there, or
# from $OUT when this ran on a lent machine). Exit status: non-zero if the
# build, a test or the bench failed.
#
#   bash bench/gpu_issue11.sh
#   PRECISIONS=fp32,bf16 T_TESTS=120 bash bench/gpu_issue11.sh
source "$(dirname "$0")/gpu_common.sh"

CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'nogpu')" 2>/dev/null \
       | tr 'A-Z' 'a-z' | sed -e 's/nvidia//' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')
CARD=${CARD:-unknown}
STAMP=$(date -u +%Y-%m-%d)
echo "card: $CARD"

step "build (pip install --no-build-isolation . , FUSEDLSTM_CUDA=on)"
if ! timeout "${T_BUILD:-200}" "$PY" -m pip install --no-build-isolation --no-deps -v . \
     -Ccmake.define.FUSEDLSTM_CUDA=on >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "FAILED: build (log: $OUT/build.log)"
  exit 1
fi
grep -iE "fusedlstm: CUDA" "$OUT/build.log" | head -3
(cd /tmp && "$PY" - <<'EOF') || { echo "FAILED: the CUDA backend is unusable after the build"; exit 1; }
from fusedlstm import _core
n, why = _core.cuda_device_count()
print("cuda_device_count:", n, why, "| backend:", _core.cuda_info("backend"), "| archs:", _core.cuda_info("build_archs"),
      "| library:", _core.cuda_info("path"))
assert n >= 1 and not _core.cuda_backend_host_memory(), "no real CUDA backend"
import torch, fusedlstm.torch as ft
m = ft.LSTM(8, 16, num_layers=2, bidirectional=True).cuda()
x = torch.randn(5, 3, 8, device="cuda", requires_grad=True)
y, _ = m(x)
y.sum().backward()
torch.cuda.synchronize()
print("smoke: fusedlstm.torch.LSTM forward+backward on", torch.cuda.get_device_name(), "ok; path",
      _core.cuda_info("last_forward_path"), "/", _core.cuda_info("last_backward_path"))
EOF

step "tests (pytest -q tests, GPU cases enabled)"
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/fusedlstm_inductor.XXXX)  # fresh: a cache of an older op schema misleads
if (cd /tmp && timeout "${T_TESTS:-210}" "$PY" -m pytest -q -p no:cacheprovider --maxfail=60 -rfEs --continue-on-collection-errors "$REPO/tests" \
      --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1); then
  tail -3 "$OUT/tests.log"
else
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-300 | head -40; tail -3 "$OUT/tests.log"
  fail "tests (log: $OUT/tests.log; 124 in the log's absence = timed out)"
fi
echo "GPU cases that ran: $(grep -cE 'testcase .*name="[^"]*(cuda|nccl)[^"]*"' "$OUT/tests.xml" 2>/dev/null || echo '?')" \
     "(see tests.xml); skipped ones:"
grep -E "^SKIPPED" "$OUT/tests.log" | grep -viE "emulat|float16 / bfloat16 run in float32" | cut -c1-200 | head -8

step "bench: fusedlstm.torch.LSTM vs nn.LSTM (cuDNN) on CUDA"
JSON="$OUT/bench_torch_train_issue11_${CARD}_${STAMP}.json"
(cd /tmp && timeout "${T_BENCH:-100}" "$PY" "$REPO/bench/bench_torch_train.py" --device cuda --kernel \
   --precisions "${PRECISIONS:-fp32,tf32,bf16,fp16}" --min-time "${MIN_TIME:-0.08}" --max-wait 0 \
   --json "$JSON" >"$OUT/bench.log" 2>"$OUT/bench.err") || fail "bench (log: $OUT/bench.log, $OUT/bench.err)"
tail -5 "$OUT/bench.err"
if [ -f "$JSON" ]; then
  mkdir -p "$REPO/bench/results"
  cp "$JSON" "$REPO/bench/results/issue11_${CARD}_${STAMP}.json" && echo "raw JSON: $JSON and bench/results/issue11_${CARD}_${STAMP}.json"
  "$PY" - "$JSON" <<'EOF' || true
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
train = [r for r in rows if r["mode"] == "train"]
slow = [f"{r['label']} {r['precision']} {r['speedup']:.2f}x" for r in train if r["speedup"] < 1]
front = [f"{r['label']} {r['precision']} {r['mode']} {r['module_kernel_ms']:.3f} vs {r['core_ms']:.3f} ms"
         for r in rows if r.get("front_end_ok") is False]
functional = [f"{r['label']} {r['precision']} {r['mode']} {r['module_kernel_ms']:.3f} vs {r['kernel_ms']:.3f} ms"
              for r in rows if r.get("functional_api_ok") is False]
packed = [f"{r['label']} {r['precision']} {r['speedup']:.2f}x" for r in train if r["packed"] and r["speedup"] < 2]
bad = [r["label"] for r in rows if not r["check"].startswith("ok")]
print(f"targets: training step slower than nn.LSTM in {len(slow)}/{len(train)}: {slow}")
print(f"         module above 1.05 x kernels + 20 us in {len(front)}/{len(rows)}: {front}")
print(f"         module above 1.05 x functional API + 20 us in {len(functional)}: {functional}")
print(f"         packed training below 2x nn.LSTM: {packed}")
print(f"         failed correctness checks: {bad}")
EOF
fi

# The bench tables last: the device tool returns the end of the output.
step "bench tables"
sed -n '/^## cuda/,$p' "$OUT/bench.log"
step "done: status $status (logs in $OUT)"
exit $status
