// The CUDA C API (fusedlstm_cuda.h): argument checks, exceptions -> status
// codes with a thread-local message, device queries that never fail.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "core/arg_checks.h"
#include "core/checked_size.h"
#include "core/status.h"
#include "cuda/cuda_check.h"
#include "cuda/lstm_cuda.h"
#include "fusedlstm/fusedlstm_cuda.h"

#ifndef FUSEDLSTM_CUDA_ARCHS
#define FUSEDLSTM_CUDA_ARCHS "unknown"
#endif

struct fl_cuda_training_state {
  fusedlstm::cuda::SavedState* saved = nullptr;
};

namespace {

using fusedlstm::checked_bytes;
using fusedlstm::require;
using fusedlstm::check_cell_sizes;

thread_local std::string last_error;

template <class Fn>
fl_status guarded(Fn&& fn) {
  return fusedlstm::guarded(last_error, fn, [](const std::exception& e) {
    // cudaMallocAsync running out of device memory reads as out of memory.
    return std::strstr(e.what(), "cudaErrorMemoryAllocation") ? FL_OUT_OF_MEMORY : FL_INTERNAL_ERROR;
  });
}

// Checks dtype (read as its raw integer) and returns its element size.
int64_t checked_elem_size(const fl_cuda_dtype& dtype) {
  fusedlstm::require_enum("dtype", dtype,
                          {"FL_CUDA_FLOAT32", "FL_CUDA_FLOAT64", "FL_CUDA_FLOAT16", "FL_CUDA_BFLOAT16"});
  return dtype == FL_CUDA_FLOAT64 ? 8 : dtype == FL_CUDA_FLOAT32 ? 4 : 2;
}

void check_path() {
  const char* env = std::getenv("FUSEDLSTM_CUDA_PATH");
  require(!env || !*env || std::strcmp(env, "fallback") == 0 || std::strcmp(env, "persistent") == 0 ||
              std::strcmp(env, "auto") == 0,
          std::string("FUSEDLSTM_CUDA_PATH must be 'fallback', 'persistent' or 'auto', got '") + (env ? env : "") +
              "'");
}

}  // namespace

extern "C" {

fl_status fl_cuda_lstm_forward(const fl_cuda_forward_params* p) {
  // *state_out is NULL on every failure: cleared first, set last.
  if (p && p->state_out) *p->state_out = nullptr;
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    const int64_t elem = checked_elem_size(p->dtype);
    check_path();
    fusedlstm::check_sequence_shape(*p, p->H, elem);
    check_cell_sizes(elem, p->B, p->I, p->H);
    checked_bytes("T*B*4*H*elem (activations of every step)", {p->T, p->B, 4, p->H, elem});
    checked_bytes("T*B*I*elem", {p->T, p->B, p->I, elem});
    require(p->x && p->w_ih && p->w_hh && p->h_n && p->c_n, "x, w_ih, w_hh, h_n and c_n are required");
    require(p->device >= 0, "device = " + std::to_string(p->device) + " must be a CUDA device ordinal (>= 0)");
    if (p->mode == FL_ONE_TO_MANY) {
      require(p->feed != FL_FEED_OUTPUT || p->I == p->H, "feed FL_FEED_OUTPUT needs I == H");
      require(p->lengths == nullptr, "lengths is only for FL_MANY_TO_MANY and FL_MANY_TO_ONE");
    }
    require(p->x_stride_b >= p->I, "x_stride_b must be >= I (rows are contiguous)");
    if (p->y) require(p->y_stride_b >= p->H || p->B == 1, "y_stride_b must be >= H");
    fusedlstm::cuda::SavedState* saved = nullptr;
    fusedlstm::cuda::forward(*p, p->state_out ? &saved : nullptr);
    if (p->state_out) {
      auto* st = new (std::nothrow) fl_cuda_training_state{saved};
      if (!st) {
        fusedlstm::cuda::free_saved(saved);
        throw fusedlstm::OutOfMemory("the CUDA training state's handle", int64_t(sizeof(fl_cuda_training_state)));
      }
      *p->state_out = st;
    }
  });
}

fl_status fl_cuda_lstm_backward(const fl_cuda_backward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    require(p->state && p->state->saved, "state is NULL (run the forward with state_out)");
    require(p->dx && p->dh0 && p->dc0 && p->dw_ih && p->dw_hh, "dx, dh0, dc0, dw_ih and dw_hh are required");
    fusedlstm::cuda::backward(*p, *p->state->saved);
  });
}

fl_status fl_cuda_lstm_cell(const fl_cuda_cell_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    check_cell_sizes(checked_elem_size(p->dtype), p->B, p->I, p->H);
    require(p->x && p->h && p->c && p->w_ih && p->w_hh && p->h_new && p->c_new,
            "x, h, c, w_ih, w_hh, h_new and c_new are required");
    fusedlstm::cuda::cell(*p);
  });
}

void fl_cuda_training_state_free(fl_cuda_training_state* state) {
  if (!state) return;
  fusedlstm::cuda::free_saved(state->saved);
  delete state;
}

int64_t fl_cuda_training_state_bytes(const fl_cuda_training_state* state) {
  return state ? fusedlstm::cuda::saved_bytes(state->saved) : 0;
}

const char* fl_cuda_last_error(void) { return last_error.c_str(); }

int fl_cuda_device_count(const char** why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it; this query must leave no error behind
    if (why) *why = cudaGetErrorString(err);
    return 0;
  }
  if (why) *why = n > 0 ? "" : "no CUDA device";
  return n;
}

const char* fl_cuda_build_archs(void) { return FUSEDLSTM_CUDA_ARCHS; }

const char* fl_cuda_path(void) {
  const char* env = std::getenv("FUSEDLSTM_CUDA_PATH");
  if (env && std::strcmp(env, "persistent") == 0) return "persistent";
  if (env && std::strcmp(env, "fallback") == 0) return "fallback";
  return "auto";
}

const char* fl_cuda_last_forward_path(void) { return fusedlstm::cuda::last_forward_path(); }

const char* fl_cuda_last_backward_path(void) { return fusedlstm::cuda::last_backward_path(); }

}  // extern "C"
