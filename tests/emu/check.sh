#!/usr/bin/env bash
# Builds the emulated CUDA backend (build.sh), the CPU library
# (libfusedlstm_core.a, cmake, FUSEDLSTM_CUDA=off) and emu_check.cpp, then runs
# emu_check through the public C API with FUSEDLSTM_CUDA_LIBRARY pointing at
# the emulated backend.
#   bash tests/emu/check.sh OUTDIR [seed]
set -euo pipefail
OUT=${1:?usage: check.sh OUTDIR [seed]}
shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
bash "$ROOT/tests/emu/build.sh" "$OUT" >/dev/null &
so_pid=$!
if [ ! -f "$OUT/cpu/build.ninja" ]; then
  cmake -S "$ROOT" -B "$OUT/cpu" -G Ninja -DFUSEDLSTM_CUDA=off -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$OUT/cpu" --target fusedlstm_core >/dev/null
g++ -std=c++20 -O2 -I"$CUDA_HOME/include" -I"$ROOT/csrc/include" "$ROOT/tests/emu/emu_check.cpp" \
  "$OUT/cpu/libfusedlstm_core.a" -ldl -lpthread -o "$OUT/emu_check"
wait "$so_pid"
FUSEDLSTM_CUDA_LIBRARY="$OUT/libfusedlstm_cuda_emu.so" "$OUT/emu_check" "$@"
