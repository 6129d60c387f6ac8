// Force-included (g++ -include) when csrc/cuda/*.cu are compiled as host C++
// for the CPU emulation (FUSEDLSTM_CUDA_EMULATE): the real CUDA headers for the
// types, the built-in index variables, and two kinds of launch:
//  - fl_emu::launch: every (block, thread) in turn, for kernels without
//    barriers or warp exchanges (a serial order is a valid schedule for them);
//  - fl_emu::launch_cooperative: every thread of the grid is a fiber
//    (ucontext), so __syncthreads, the grid barrier and warp shuffles really
//    wait for the other threads; dynamic shared memory is per block and starts
//    as 0xFF bytes (NaN), like the emulated device allocations.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

extern thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

namespace fl_emu {
template <class Fn>
void launch(unsigned blocks, unsigned threads, Fn&& fn) {
  gridDim = dim3(blocks), blockDim = dim3(threads);
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t) {
      blockIdx = dim3(b), threadIdx = dim3(t);
      fn();
    }
}

// Runs fn as every thread of a grid of fibers; returns when all have ended.
// Throws std::runtime_error on a deadlock (threads waiting at barriers that
// can never complete).
void launch_cooperative(unsigned blocks, unsigned threads, size_t smem_bytes, std::function<void()> fn);
void sync_block();  // __syncthreads()
void sync_grid();   // cooperative_groups::this_grid().sync()
unsigned char* dynamic_smem();
// Warp exchange: every lane of the warp publishes `bytes` of `in`, waits for
// the others, then reads lane (lane ^ xor_mask)'s value into `out`.
void warp_exchange_xor(const void* in, void* out, size_t bytes, int xor_mask);

template <class T>
T shfl_xor(T v, int mask) {
  T out;
  warp_exchange_xor(&v, &out, sizeof(T), mask);
  return out;
}
}  // namespace fl_emu

// Device built-ins the kernels use, as host functions.
#define __syncthreads() ::fl_emu::sync_block()
#undef __launch_bounds__
#define __launch_bounds__(...)
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  return ::fl_emu::shfl_xor(v, mask);
}
template <class T>
T __ldcg(const T* p) {
  return *p;
}
template <class T>
void __stcg(T* p, T v) {
  *p = v;
}
