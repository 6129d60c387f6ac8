// Internal interface of the CUDA backend (csrc/cuda/): the kernels and
// drivers of lstm_cuda.cu, called by the backend table (backend_cuda.cu)
// after the C API checked the arguments. Everything throws (CudaError,
// InvalidArgument); the table turns that into a status and a message.
#ifndef FUSEDLSTM_CUDA_LSTM_CUDA_H_
#define FUSEDLSTM_CUDA_LSTM_CUDA_H_

#include <cstdint>

#include "core/backend.h"
#include "fusedlstm/fusedlstm.h"

namespace fusedlstm::cuda {

// Bytes of one direction's reserve of the cell (the "CUDA:" closed form of
// fusedlstm.h); InvalidArgument naming the term that overflows.
int64_t reserve_bytes(fl_cell_kind cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H, int64_t proj_size);
// reserve: NULL (inference) or reserve_bytes(...) bytes, 256-byte aligned.
void forward(const fl_forward_params& params, void* reserve);
void backward(const fl_forward_params& params, const void* reserve, const fl_backward_params& grads);
void cell(const fl_cell_params& params);
void cell_backward(const fl_cell_backward_params& params);
void rows(const fl_device& device, fl_dtype dtype, fl_rows_op op, void* dst, int64_t dst_st, int64_t dst_sb,
          const void* src, int64_t src_st, int64_t src_sb, int64_t T, int64_t B, int64_t n);
// "persistent" or "fallback": the recurrence the last forward / backward on
// this thread ran ("none" before the first).
const char* last_forward_path();
const char* last_backward_path();
// FUSEDLSTM_CUDA_PATH as the calls read it: "auto", "fallback" or "persistent".
const char* path_setting();

}  // namespace fusedlstm::cuda

#endif  // FUSEDLSTM_CUDA_LSTM_CUDA_H_
