// The backend interface: what a backend (csrc/cpu/, csrc/cuda/) implements
// and the C API (csrc/capi/) and the layer-stack driver (core/stack.cpp) call.
// A plain C table of functions, because the CUDA backend lives in its own
// shared library (libfusedlstm_cuda.so, loaded at run time) and no C++
// exception or type may cross that boundary.
//
// Every function that can fail returns an fl_status and leaves its message
// for last_error() (thread-local). The C API has already checked what
// fusedlstm.h promises to check (sizes, enums, NULLs, overflow, extents)
// before any of these runs; a backend checks only its own limits (its
// workspaces, cuBLAS's int dimensions) and, on the CPU, the lengths values.
#ifndef FUSEDLSTM_CORE_BACKEND_H_
#define FUSEDLSTM_CORE_BACKEND_H_

#include <stdint.h>

#include "fusedlstm/fusedlstm.h"

#ifdef __cplusplus
extern "C" {
#endif

// Version of this table; a library built against another is refused.
#define FL_BACKEND_ABI 3  // 3: fl_device.allow_bf16

typedef enum fl_rows_op {
  FL_ROWS_COPY = 0,      // dst = src
  FL_ROWS_ADD = 1,       // dst += src
  FL_ROWS_MULTIPLY = 2,  // dst *= src
} fl_rows_op;

typedef struct fl_backend_ops {
  int abi;           // FL_BACKEND_ABI
  const char* name;  // "cpu", "cuda", "cuda-emulated"
  // Nonzero when the backend's "device" memory is host memory (the CPU and
  // the CPU emulation of the CUDA backend): the bindings may pass host arrays.
  int host_memory;

  // Bytes of the reserve one direction's training forward fills and its
  // backward reads (fusedlstm.h gives the closed form); -1 with a message
  // when a term overflows int64 or the backend does not run the cell.
  int64_t (*cell_reserve_bytes)(fl_cell_kind cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H,
                                int64_t proj_size);
  // One direction (params->reverse), any mode and feed. reserve: NULL for
  // inference, else cell_reserve_bytes bytes (256-byte aligned) to fill.
  // params->state_out is ignored (the C API owns training states).
  fl_status (*forward)(const fl_forward_params* params, void* reserve);
  // params: the inputs of the forward that filled reserve. grads->state and
  // grads->device.stream aside, only the gradient fields are read.
  fl_status (*backward)(const fl_forward_params* params, const void* reserve, const fl_backward_params* grads);
  fl_status (*cell)(const fl_cell_params* params);
  fl_status (*cell_backward)(const fl_cell_backward_params* params);

  // Memory on `device` (CUDA: stream-ordered on device->stream). alloc sets
  // *out to NULL and returns FL_OUT_OF_MEMORY naming `what` when it fails.
  fl_status (*alloc)(const fl_device* device, int64_t bytes, const char* what, void** out);
  void (*release)(const fl_device* device, void* ptr);  // ptr from alloc, or NULL
  fl_status (*fill_zero)(const fl_device* device, void* dst, int64_t bytes);
  // Over T x B rows of n elements of dtype: row (t, b) of dst at
  // dst + t*dst_st + b*dst_sb, of src at src + t*src_st + b*src_sb (elements).
  fl_status (*rows)(const fl_device* device, fl_dtype dtype, fl_rows_op op, void* dst, int64_t dst_st,
                    int64_t dst_sb, const void* src, int64_t src_st, int64_t src_sb, int64_t T, int64_t B,
                    int64_t n);
  // Calls run(ctx, d) for d = 0 .. D-1 (the directions of one layer), in any
  // order or at once; returns the first failure. The CPU runs two small
  // directions on two threads at once; CUDA one after the other.
  fl_status (*for_each_direction)(const fl_stack_params* params, int64_t D, fl_status (*run)(void* ctx, int64_t d),
                                  void* ctx);
  const char* (*last_error)(void);

  // CUDA only (NULL on the CPU): see fusedlstm_cuda.h.
  int (*device_count)(const char** why);
  // "build_archs", "path", "last_forward_path", "last_backward_path"; NULL for other keys.
  const char* (*info)(const char* key);
} fl_backend_ops;

// Exported by libfusedlstm_cuda.so: its table, or NULL when built for another abi.
typedef const fl_backend_ops* (*fl_cuda_backend_entry)(int abi);
#define FL_CUDA_BACKEND_ENTRY "fusedlstm_cuda_backend_ops"

#ifdef __cplusplus
}
#endif

#endif  // FUSEDLSTM_CORE_BACKEND_H_
