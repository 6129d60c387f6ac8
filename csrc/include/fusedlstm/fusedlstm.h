// fusedlstm public C API: fused LSTM forward and backward-through-time (BPTT).
//
// Framework-free: raw pointers, int64 sizes and strides (counted in elements,
// not bytes), a status code out. Python bindings, and anyone embedding the
// kernels, go through these entry points only.
//
// Math (PyTorch-compatible, gate order i, f, g, o):
//   gates = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh            [B, 4H]
//   i, f, o = sigmoid(gates[i|f|o]);  g = tanh(gates[g])
//   c_t = f * c_{t-1} + i * g;        h_t = o * tanh(c_t)
//
// Threading: a call may use up to fl_get_num_threads() threads; calls from
// several host threads at once are serialised on the shared thread pool.
#ifndef FUSEDLSTM_FUSEDLSTM_H_
#define FUSEDLSTM_FUSEDLSTM_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fl_status {
  FL_OK = 0,
  FL_INVALID_ARGUMENT = 1,  // message from fl_last_error()
  FL_OUT_OF_MEMORY = 2,
  FL_INTERNAL_ERROR = 3,
} fl_status;

typedef enum fl_dtype { FL_FLOAT32 = 0, FL_FLOAT64 = 1 } fl_dtype;

typedef enum fl_mode {
  FL_MANY_TO_MANY = 0,  // x [T,B,I] -> y [T,B,H]
  FL_MANY_TO_ONE = 1,   // x [T,B,I] -> h_n, c_n only (y is h_n)
  FL_ONE_TO_MANY = 2,   // x [B,I], T = steps -> y [T,B,H]
} fl_mode;

typedef enum fl_feed {
  FL_FEED_REPEAT = 0,  // one_to_many: x is the input of every step
  FL_FEED_FIRST = 1,   // one_to_many: x at step 0, zero input afterwards
  FL_FEED_OUTPUT = 2,  // one_to_many: x at step 0, then x_t = h_{t-1} (I == H)
} fl_feed;

// Saved activations of a training forward, consumed by fl_lstm_backward.
// Opaque; owns copies of everything backward reads (x, weights, states), so
// the caller may reuse or free its own arrays after the forward returns.
typedef struct fl_training_state fl_training_state;

// All pointers are to arrays of `dtype` unless stated otherwise.
typedef struct fl_forward_params {
  fl_dtype dtype;
  fl_mode mode;
  fl_feed feed;        // used by FL_ONE_TO_MANY only
  int64_t T, B, I, H;  // steps, batch, input size, hidden size; all >= 1

  // x: FL_MANY_TO_*: element (t, b, k) at x[t*x_stride_t + b*x_stride_b + k];
  //    FL_ONE_TO_MANY: element (b, k) at x[b*x_stride_b + k] (x_stride_t unused).
  const void* x;
  int64_t x_stride_t, x_stride_b;
  const void* w_ih;  // [4H, I] row-major, rows i|f|g|o (nn.LSTM weight_ih_l0)
  const void* w_hh;  // [4H, H] row-major (weight_hh_l0)
  const void* b_ih;  // [4H] or NULL (zero)
  const void* b_hh;  // [4H] or NULL (zero)
  const void* h0;    // [B, H] row-major or NULL (zero)
  const void* c0;    // [B, H] row-major or NULL (zero)
  // [B] int64, 1 <= lengths[b] <= T, or NULL (all T). FL_MANY_TO_* only.
  // Sequence b ends after lengths[b] steps (pack_padded_sequence semantics).
  const int64_t* lengths;

  // Outputs. y: [T,B,H] with element (t, b, u) at y[t*y_stride_t + b*y_stride_b + u];
  // NULL allowed (FL_MANY_TO_ONE never writes y). Rows of padded steps
  // (t >= lengths[b]) are set to zero.
  void* y;
  int64_t y_stride_t, y_stride_b;
  void* h_n;  // [B, H] row-major, required: state after each sequence's last step
  void* c_n;  // [B, H] row-major, required

  // Training: when non-NULL, *state_out receives the saved activations
  // (free with fl_training_state_free).
  fl_training_state** state_out;
} fl_forward_params;

typedef struct fl_backward_params {
  const fl_training_state* state;
  // Upstream gradients, each NULL = zero.
  // dy: FL_MANY_TO_MANY / FL_ONE_TO_MANY: [T,B,H] with strides below;
  //     FL_MANY_TO_ONE: [B,H] row-major (gradient of the last hidden state).
  const void* dy;
  int64_t dy_stride_t, dy_stride_b;
  const void* dh_n;  // [B, H] row-major
  const void* dc_n;  // [B, H] row-major

  // Gradients out (each required unless noted):
  // dx: FL_MANY_TO_*: [T,B,I] with strides below (zero at padded steps);
  //     FL_ONE_TO_MANY: [B,I] at dx[b*dx_stride_b + k].
  void* dx;
  int64_t dx_stride_t, dx_stride_b;
  void* dh0;    // [B, H] row-major
  void* dc0;    // [B, H] row-major
  void* dw_ih;  // [4H, I] row-major
  void* dw_hh;  // [4H, H] row-major
  void* db;     // [4H] or NULL: gradient of b_ih and of b_hh (they are equal)
} fl_backward_params;

// Single step, one-to-one: (h, c) -> (h_new, c_new). No packing, no saved state.
typedef struct fl_cell_params {
  fl_dtype dtype;
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
} fl_cell_params;

fl_status fl_lstm_forward(const fl_forward_params* params);
fl_status fl_lstm_backward(const fl_backward_params* params);
fl_status fl_lstm_cell(const fl_cell_params* params);
void fl_training_state_free(fl_training_state* state);
// Bytes held by a training state (saved activations and copies).
int64_t fl_training_state_bytes(const fl_training_state* state);

// Message for the last failed call on this thread ("" when none).
const char* fl_last_error(void);

// Threads: default from the environment variable FUSEDLSTM_NUM_THREADS, else
// the number of CPUs this process may run on.
void fl_set_num_threads(int n);
int fl_get_num_threads(void);

// SIMD paths. Names: "avx512", "avx2", "generic". The default is the best
// one the CPU supports, or FUSEDLSTM_ISA when set to a supported name.
// fl_available_isas writes a comma-separated list of supported names, best first.
const char* fl_get_isa(void);
fl_status fl_set_isa(const char* name);
const char* fl_available_isas(void);

#ifdef __cplusplus
}
#endif

#endif  // FUSEDLSTM_FUSEDLSTM_H_
