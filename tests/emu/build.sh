#!/usr/bin/env bash
# Builds the CPU emulation of the CUDA backend (no GPU, no CUDA library):
# csrc/cuda/*.cu compiled as host C++ (FUSEDLSTM_CUDA_EMULATE, with
# tests/emu/cuda_emu.h force-included) + the CPU stand-ins for the CUDA
# runtime and cuBLAS (tests/emu/cuda_emu.cpp), into
#   OUTDIR/libfusedlstm_cuda_emu.so
# which exports fusedlstm_cuda_backend_ops like libfusedlstm_cuda.so (every
# other symbol hidden). Point FUSEDLSTM_CUDA_LIBRARY at it and every
# FL_DEVICE_CUDA call runs on the CPU, host memory standing for device memory.
#   bash tests/emu/build.sh OUTDIR
# Needs g++, the CUDA headers (CUDA_HOME, default /usr/local/cuda) and the
# cuBLAS headers (the toolkit's, or the nvidia-cublas wheel of PYTHON, default
# python3).
set -euo pipefail
OUT=${1:?usage: build.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=${PYTHON:-python3}
# Every site-packages of the interpreter (a venv may see the system's too), as cmake/cuda.cmake looks.
CUBLAS_INC=$("$PY" - <<'PYEOF'
import os, site, sys, sysconfig
sites = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")] + list(getattr(site, "getsitepackages", list)()) + sys.path
for s in dict.fromkeys(sites):
    for leaf in ("cu13", "cublas"):
        inc = os.path.join(s, "nvidia", leaf, "include")
        if os.path.isfile(os.path.join(inc, "cublas_v2.h")):
            print(inc)
            sys.exit(0)
PYEOF
)
FLAGS=(-std=c++20 -O2 -g0 -fPIC -fvisibility=hidden -fvisibility-inlines-hidden
       -I"$CUDA_HOME/include" -I"$ROOT/csrc/include" -I"$ROOT/csrc")
[ -n "$CUBLAS_INC" ] && FLAGS+=(-I"$CUBLAS_INC")
pids=()
objs=()
for f in "$ROOT"/csrc/cuda/*.cu; do
  o="$OUT/$(basename "$f").o"
  g++ -x c++ "${FLAGS[@]}" -DFUSEDLSTM_CUDA_EMULATE -include "$ROOT/tests/emu/cuda_emu.h" -c "$f" -o "$o" &
  pids+=($!)
  objs+=("$o")
done
g++ "${FLAGS[@]}" -c "$ROOT/tests/emu/cuda_emu.cpp" -o "$OUT/cuda_emu.o" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
g++ -shared -Wl,-Bsymbolic -Wl,--no-undefined -Wl,--version-script="$ROOT/cmake/cuda_exports.map" "${objs[@]}" "$OUT/cuda_emu.o" -lpthread \
  -o "$OUT/libfusedlstm_cuda_emu.so"
echo "$OUT/libfusedlstm_cuda_emu.so"
