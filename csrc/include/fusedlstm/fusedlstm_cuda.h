// fusedlstm CUDA C API: the same LSTM forward / BPTT / cell as fusedlstm.h,
// on device memory of one NVIDIA GPU.
//
// Math, gate order (i, f, g, o), weight layout (nn.LSTM's), modes, feeds,
// lengths semantics and the backward contract are those of fusedlstm.h; this
// header only says what differs:
//   - every array pointer is a DEVICE pointer on `device` (the CUDA ordinal),
//     except `lengths` (host memory, read during the call);
//   - all work is enqueued on `stream` (a cudaStream_t passed as void*; NULL is
//     the legacy default stream). No call synchronizes the device or the host;
//     outputs are ready when the stream reaches them. Workspaces are allocated
//     and freed stream-ordered (cudaMallocAsync / cudaFreeAsync on `stream`);
//   - dtypes add bfloat16 and float16 storage: the GEMMs accumulate in float32
//     and the cell state and gate math run in float32 (float64 for FL_CUDA_FLOAT64);
//   - allow_tf32 != 0 lets float32 GEMMs use TF32 tensor cores (about 10 mantissa
//     bits for the products); 0 = strict float32 (CUBLAS_COMPUTE_32F_PEDANTIC).
//
// Sizes: T*B*4H and every GEMM dimension must be < 2^31 (cuBLAS takes int).
// Arguments are checked as in fusedlstm.h ("Errors"): NULL pointers, enum
// values, sizes below 1 and products that overflow are FL_INVALID_ARGUMENT
// naming the argument; *state_out is NULL after any failure.
// Errors: a failed CUDA or cuBLAS call returns FL_INTERNAL_ERROR with a message
// (fl_cuda_last_error) naming the call, its error string, file and line.
#ifndef FUSEDLSTM_FUSEDLSTM_CUDA_H_
#define FUSEDLSTM_FUSEDLSTM_CUDA_H_

#include <stdint.h>

#include "fusedlstm/fusedlstm.h"  // fl_status, fl_mode, fl_feed

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fl_cuda_dtype {
  FL_CUDA_FLOAT32 = 0,
  FL_CUDA_FLOAT64 = 1,
  FL_CUDA_FLOAT16 = 2,   // IEEE half storage, float32 math
  FL_CUDA_BFLOAT16 = 3,  // bfloat16 storage, float32 math
} fl_cuda_dtype;

// Saved activations of a training forward; opaque. Owns device copies of
// everything backward reads (x, weights, h0/c0), so the caller may reuse its
// arrays after the forward. Device memory is freed stream-ordered on the
// stream of the last call that used the state: keep that stream alive while
// the state lives (torch's and CuPy's pooled streams always are).
typedef struct fl_cuda_training_state fl_cuda_training_state;

// All array pointers: device memory of `dtype` unless stated otherwise. Rows
// are contiguous along the innermost axis; strides are in elements.
typedef struct fl_cuda_forward_params {
  fl_cuda_dtype dtype;
  int allow_tf32;      // float32 only; ignored otherwise
  int device;          // CUDA device ordinal of every pointer
  void* stream;        // cudaStream_t
  fl_mode mode;
  fl_feed feed;        // FL_ONE_TO_MANY only
  int64_t T, B, I, H;  // all >= 1

  // x: FL_MANY_TO_*: (t, b, k) at x[t*x_stride_t + b*x_stride_b + k];
  //    FL_ONE_TO_MANY: (b, k) at x[b*x_stride_b + k].
  const void* x;
  int64_t x_stride_t, x_stride_b;
  const void* w_ih;  // [4H, I] row-major, gate rows i|f|g|o
  const void* w_hh;  // [4H, H] row-major
  const void* b_ih;  // [4H] or NULL
  const void* b_hh;  // [4H] or NULL
  const void* h0;    // [B, H] row-major or NULL (zero)
  const void* c0;    // [B, H] row-major or NULL (zero)
  // HOST memory: [B] int64 in [1, T], or NULL (all T). FL_MANY_TO_* only.
  // (A caller holding lengths on the device copies them to the host first,
  // which waits for the stream: the Python layer documents that sync.)
  const int64_t* lengths;

  // y: [T, B, H], (t, b, u) at y[t*y_stride_t + b*y_stride_b + u]; NULL allowed
  // (FL_MANY_TO_ONE never writes it). Padded steps (t >= lengths[b]) are zero.
  void* y;
  int64_t y_stride_t, y_stride_b;
  void* h_n;  // [B, H] row-major, required
  void* c_n;  // [B, H] row-major, required
  fl_cuda_training_state** state_out;  // non-NULL: training, receives the saved state
} fl_cuda_forward_params;

typedef struct fl_cuda_backward_params {
  const fl_cuda_training_state* state;
  void* stream;  // may differ from the forward's: the backward waits for the forward's work
  // Upstream gradients, device, NULL = zero. dy: [T,B,H] with strides (FL_MANY_TO_MANY,
  // FL_ONE_TO_MANY; padded steps ignored) or [B,H] row-major (FL_MANY_TO_ONE).
  const void* dy;
  int64_t dy_stride_t, dy_stride_b;
  const void* dh_n;  // [B, H] row-major
  const void* dc_n;  // [B, H] row-major
  // Gradients out, device, all required except db.
  // dx: FL_MANY_TO_*: [T,B,I] with strides (zero at padded steps); FL_ONE_TO_MANY: [B,I]
  // at dx[b*dx_stride_b + k].
  void* dx;
  int64_t dx_stride_t, dx_stride_b;
  void* dh0;    // [B, H] row-major
  void* dc0;    // [B, H] row-major
  void* dw_ih;  // [4H, I] row-major
  void* dw_hh;  // [4H, H] row-major
  void* db;     // [4H] or NULL (the gradient of b_ih and of b_hh; they are equal)
} fl_cuda_backward_params;

typedef struct fl_cuda_cell_params {
  fl_cuda_dtype dtype;
  int allow_tf32;
  int device;
  void* stream;
  int64_t B, I, H;
  const void* x;     // [B, I] row-major
  const void* h;     // [B, H] row-major
  const void* c;     // [B, H] row-major
  const void* w_ih;  // [4H, I] row-major
  const void* w_hh;  // [4H, H] row-major
  const void* b_ih;  // [4H] or NULL
  const void* b_hh;  // [4H] or NULL
  void* h_new;       // [B, H] row-major; may not alias the inputs
  void* c_new;       // [B, H] row-major; may not alias the inputs
} fl_cuda_cell_params;

fl_status fl_cuda_lstm_forward(const fl_cuda_forward_params* params);
fl_status fl_cuda_lstm_backward(const fl_cuda_backward_params* params);
fl_status fl_cuda_lstm_cell(const fl_cuda_cell_params* params);
void fl_cuda_training_state_free(fl_cuda_training_state* state);
int64_t fl_cuda_training_state_bytes(const fl_cuda_training_state* state);

// Message of the last failed fl_cuda_* call on this thread ("" when none).
const char* fl_cuda_last_error(void);

// Number of usable CUDA devices; 0 when there is no driver or no device (the
// reason then in *why, a static string, when why is non-NULL). Never fails.
int fl_cuda_device_count(const char** why);
// "80-real;90-real;90-virtual" etc.: what this build compiled.
const char* fl_cuda_build_archs(void);
// Recurrence selection, from the environment variable FUSEDLSTM_CUDA_PATH
// (read at every call; forward and backward choose independently):
//   "persistent": one cooperative launch for many steps; each CTA keeps its
//     W_hh slice (all four gates of its hidden units; W_hh columns in
//     backward) in shared memory and the CTAs meet at one grid barrier per
//     step. Used where it fits (W_hh slice in shared memory, all CTAs
//     co-resident, not feed FL_FEED_OUTPUT); elsewhere the fallback runs.
//   "fallback": per step a cuBLAS GEMM + one fused pointwise kernel; works
//     for every size.
//   "auto" (default, also unset): "persistent" where it fits and each CTA's
//   share of a step, B * ceil(H / #SMs) * H, is at most 32768 (measured
//   crossover on an H100), else "fallback".
// Neither has run on a GPU yet (bench/NOTES_CUDA.md). fl_cuda_path() returns
// the setting: "auto", "persistent" or "fallback".
const char* fl_cuda_path(void);
// "persistent" or "fallback": what the last forward / backward on this
// thread ran ("none" before any).
const char* fl_cuda_last_forward_path(void);
const char* fl_cuda_last_backward_path(void);

#ifdef __cplusplus
}
#endif

#endif  // FUSEDLSTM_FUSEDLSTM_CUDA_H_
