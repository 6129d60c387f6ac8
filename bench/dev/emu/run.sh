#!/usr/bin/env bash
# Build and run the CPU emulation of the CUDA backend (no GPU needed):
# csrc/cuda/*.cu compiled as host C++ (FUSEDLSTM_CUDA_EMULATE) against
# cuda_emu.cpp, checked by emu_check.cpp against the CPU core.
#   bash bench/dev/emu/run.sh [seed]
# Needs g++, the CUDA headers (CUDA_HOME, default /usr/local/cuda) and the
# cuBLAS headers (toolkit or the nvidia-cublas wheel). Links no CUDA library.
set -euo pipefail
cd "$(dirname "$0")/../../.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CUBLAS_INC=$(python3 -c "import sysconfig, os; p = os.path.join(sysconfig.get_paths()['purelib'], 'nvidia', 'cu13', 'include'); print(p if os.path.isdir(p) else '')")
OUT=${OUT:-build/emu}
mkdir -p "$OUT"
FLAGS=(-std=c++20 -O2 -I"$CUDA_HOME/include" -Icsrc/include -Icsrc)
[ -n "$CUBLAS_INC" ] && FLAGS+=(-I"$CUBLAS_INC")
for f in csrc/cuda/lstm_cuda.cu csrc/cuda/capi_cuda.cu; do
  g++ -x c++ "${FLAGS[@]}" -DFUSEDLSTM_CUDA_EMULATE -include bench/dev/emu/cuda_emu.h -c "$f" -o "$OUT/$(basename "$f").o" &
done
g++ "${FLAGS[@]}" -c bench/dev/emu/cuda_emu.cpp -o "$OUT/cuda_emu.o" &
g++ "${FLAGS[@]}" -c bench/dev/emu/emu_check.cpp -o "$OUT/emu_check.o" &
if [ ! -f "$OUT/cpu/libfusedlstm_core.a" ]; then
  cmake -S . -B "$OUT/cpu" -G Ninja -DFUSEDLSTM_CUDA=off >/dev/null && cmake --build "$OUT/cpu" >/dev/null
fi
wait
g++ "$OUT"/lstm_cuda.cu.o "$OUT"/capi_cuda.cu.o "$OUT"/cuda_emu.o "$OUT"/emu_check.o "$OUT/cpu/libfusedlstm_core.a" \
  -lpthread -o "$OUT/emu_check"
"$OUT/emu_check" "$@"
