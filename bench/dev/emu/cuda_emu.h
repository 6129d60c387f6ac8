// Force-included (g++ -include) when csrc/cuda/*.cu are compiled as host C++
// for the CPU emulation (FUSEDLSTM_CUDA_EMULATE): the real CUDA headers for the
// types, plus the launch loop and the built-in index variables.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

namespace fl_emu {
// One launch: every (block, thread) in turn. The fallback kernels are
// elementwise (no shared memory, no barriers), so serial order is a valid schedule.
template <class Fn>
void launch(unsigned blocks, unsigned threads, Fn&& fn) {
  gridDim = dim3(blocks), blockDim = dim3(threads);
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t) {
      blockIdx = dim3(b), threadIdx = dim3(t);
      fn();
    }
}
}  // namespace fl_emu
