// fusedlstm CUDA addendum: the few functions only the CUDA backend has. The
// LSTM entry points themselves are those of fusedlstm.h, with
// params.device.type = FL_DEVICE_CUDA.
//
// What is particular to CUDA (beyond the "CUDA:" notes of fusedlstm.h):
//   - every array is device memory of device.index, lengths included (int64,
//     read only by kernels, clamped to [1, T]: no host synchronisation);
//   - all work goes on device.stream; no call synchronises the host or the
//     device (no copy to the host, no cudaStreamSynchronize), workspaces are
//     allocated and freed stream-ordered on that stream;
//   - sizes: every GEMM dimension and leading dimension, and T*B*A*H (A = 4
//     for the LSTM and GRU, 1 for the RNN), must be < 2^31 (cuBLAS takes
//     int): FL_INVALID_ARGUMENT naming the size;
//   - float16 / bfloat16 store h, the weights and the gradients in that
//     format; gate math, the cell state and the GEMM accumulation are float32
//     (float64 for FL_FLOAT64); float32 uses TF32 only with allow_tf32;
//   - a failed CUDA or cuBLAS call returns FL_INTERNAL_ERROR (FL_OUT_OF_MEMORY
//     when device memory runs out) with fl_last_error naming the call, its
//     error string, file and line.
//
// Recurrence paths (FUSEDLSTM_CUDA_PATH, read at every call): "fallback"
// (cuBLAS GEMMs per step and a fused pointwise kernel; every size and
// feature), "persistent" (one cooperative kernel for all steps, W_hh held in
// shared memory, wherever it fits), or "auto" / unset (persistent where it
// fits and each SM's share of a step is small). The persistent kernels cover
// both directions of the LSTM without a projection, not one_to_many with
// FL_FEED_OUTPUT: proj_size > 0, feed output and every cell but the LSTM
// always run the fallback. Any other value:
// FL_INVALID_ARGUMENT (at the next forward or backward).
#ifndef FUSEDLSTM_FUSEDLSTM_CUDA_H_
#define FUSEDLSTM_FUSEDLSTM_CUDA_H_

#include "fusedlstm/fusedlstm.h"

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable CUDA devices; 0 when the backend library, the driver or a
// device is missing (the reason then in *why, valid until the next call on
// this thread, when why is non-NULL). Never fails.
int fl_cuda_device_count(const char** why);
// "cuda", "cuda-emulated" (the CPU emulation, tests/emu/), or "" when the
// backend library does not load.
const char* fl_cuda_backend_name(void);
// 1 when the loaded backend's device memory is host memory (the emulation).
int fl_cuda_backend_host_memory(void);
// "80-real,90-real,90-virtual" etc.: what the backend library compiled.
const char* fl_cuda_build_archs(void);
// The recurrence policy (FUSEDLSTM_CUDA_PATH: "auto", "persistent",
// "fallback") and what the last forward / backward on this thread ran
// ("persistent", "fallback" or "none"); "" without the backend.
const char* fl_cuda_path(void);
const char* fl_cuda_last_forward_path(void);
const char* fl_cuda_last_backward_path(void);

#ifdef __cplusplus
}
#endif

#endif  // FUSEDLSTM_FUSEDLSTM_CUDA_H_
