// fusedlstm public C API: fused recurrent layers (LSTM, GRU, Elman RNN),
// forward and backward-through-time (BPTT).
//
// Framework-free: raw pointers, int64 sizes and strides (counted in elements,
// not bytes), a status code out. Python bindings, and anyone embedding the
// kernels, go through these entry points only.
//
// Math (PyTorch-compatible, gate order i, f, g, o):
//   gates = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh            [B, 4H]
//   i, f, o = sigmoid(gates[i|f|o]);  g = tanh(gates[g])
//   c_t = f * c_{t-1} + i * g;        h_t = o * tanh(c_t)
// With a projection (proj_size R > 0, nn.LSTM's proj_size):
//   h_t = (o * tanh(c_t)) W_hr^T                                  [B, R]
// and the recurrence, y, h0 and h_n use that R-wide h ("Hout" below is R
// with a projection, else H).
//
// Cells (the `cell` field of every params struct; zero is the LSTM). Each
// has G gates: the weights are w_ih [G*H, I], w_hh [G*H, Hout], biases
// [G*H], exactly torch's nn.LSTM / nn.GRU / nn.RNN parameters.
//   FL_CELL_LSTM (G = 4): as above.
//   FL_CELL_GRU (G = 3, gate order r, z, n, nn.GRU; ONNX linear_before_reset = 1):
//     r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
//     z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
//     n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
//     h_t = (1 - z) * n + z * h_{t-1}
//   FL_CELL_RNN_TANH, FL_CELL_RNN_RELU (G = 1, nn.RNN):
//     h_t = act(x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh or relu
// GRU and RNN have no cell state: c0, c_n, dc_n, dc0, c, c_new, dc_new, dc
// are not read or written (NULL is fine) and no projection (proj_size 0).
// Their gradients of b_ih and b_hh differ for the GRU (the n rows), hence
// the separate db_hh below. CUDA runs every cell; GRU and RNN calls always
// take its fallback path (cuBLAS GEMMs + fused pointwise kernels), even with
// FUSEDLSTM_CUDA_PATH=persistent: the persistent kernels are the LSTM's only.
//
// Backends: every params struct ends with an fl_device saying where its
// arrays live. A zero-initialised one is the CPU: host memory, the SIMD
// kernels, fusedlstm's thread pool. FL_DEVICE_CUDA runs the same entry points
// on one NVIDIA GPU (device memory, work enqueued on a stream); what differs
// there is written "CUDA:" below, and fusedlstm_cuda.h adds (never mirrors)
// the few CUDA-only functions. The CUDA backend is a separate shared library
// (libfusedlstm_cuda.so) loaded on the first CUDA call: from the environment
// variable FUSEDLSTM_CUDA_LIBRARY when set, else from the folder of the
// library or program holding this C API, else by the loader's search path.
// Without it (or without a driver or GPU) a CUDA call returns
// FL_INVALID_ARGUMENT saying why.
//
// Threading: a CPU call may use up to fl_get_num_threads() threads; calls from
// several host threads at once are serialised on the shared thread pool.
//
// Errors: every entry point checks its arguments before it allocates or
// reads anything and returns FL_INVALID_ARGUMENT with a message
// (fl_last_error) naming the argument and its value, for
//   - a NULL params struct or a required pointer that is NULL;
//   - an enum field (dtype, mode, feed) holding any other value (the field
//     is read as the int the caller stored, so any int is safe to pass);
//   - a size below 1 ("I = 0 must be >= 1");
//   - a size that cannot be represented: every product a call derives from
//     its sizes and strides (array extents (T-1)*|stride_t| + (B-1)*|stride_b|
//     + row in bytes, weights 4*H*I, the saved activations T*B*4*roundup(H,16),
//     workspaces, reserve sizes) must fit in int64 and in PTRDIFF_MAX bytes;
//     the message names the product ("T*B*I*elem = ... overflows int64").
// Strides may be zero or negative (offsets are from the pointer given). A
// size that fits but cannot be allocated returns FL_OUT_OF_MEMORY, the
// message naming what was being allocated and how many bytes.
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
  FL_INTERRUPTED = 4,  // stopped by the interrupt check (fl_set_interrupt_check)
} fl_status;

// FL_FLOAT16 (IEEE half, CUDA only) and FL_BFLOAT16 (CUDA and CPU) are
// storage types: the GEMMs take their operands in that type and accumulate
// in float32, the cell state and gate math are float32, and every array of
// the call (c0, c_n included) is of the one dtype. On the CPU a bfloat16
// call widens its arrays to float32 (exact) around the float32 driver whose
// products take bfloat16 operands: forward x W_ih and h_{t-1} W_hh (h_{t-1}
// rounded each step), backward dG_{t+1} W_hh, dG W_ih, dG^T h and dG^T x
// (dG rounded to bfloat16); the projection's products stay float32. The
// single step computes in float32 on its bfloat16 inputs. A direction's
// reserve is the float32 one (same size; a stack's adds its layer outputs,
// kept in bfloat16).
typedef enum fl_dtype { FL_FLOAT32 = 0, FL_FLOAT64 = 1, FL_FLOAT16 = 2, FL_BFLOAT16 = 3 } fl_dtype;

typedef enum fl_cell_kind {
  FL_CELL_LSTM = 0,
  FL_CELL_GRU = 1,
  FL_CELL_RNN_TANH = 2,
  FL_CELL_RNN_RELU = 3,
} fl_cell_kind;

typedef enum fl_device_type { FL_DEVICE_CPU = 0, FL_DEVICE_CUDA = 1 } fl_device_type;

// Where a call runs. Zero-initialised: the CPU.
typedef struct fl_device {
  fl_device_type type;
  int index;       // CUDA device ordinal of every pointer of the call; 0 on the CPU
  // CUDA: the cudaStream_t (as void*) every piece of work is enqueued on,
  // NULL = the legacy default stream. No call synchronises the host or the
  // device; outputs are ready when the stream reaches them; workspaces are
  // allocated and freed stream-ordered (cudaMallocAsync on this stream).
  // CPU: must be NULL.
  void* stream;
  // CUDA float32: nonzero lets the GEMMs use TF32 tensor cores (about 10
  // mantissa bits in the products); 0 = strict float32. Ignored elsewhere.
  int allow_tf32;
  // CPU float32: nonzero rounds the operands of the products to bfloat16 as
  // FL_BFLOAT16 does (see fl_dtype) and runs the bfloat16 kernels
  // (AVX512-BF16 where the CPU has it), with float32 arrays in and out (in
  // spirit torch.backends.mkldnn's fp32_precision "bf16"). Sequence calls and
  // stacks, forward and backward (a backward may set it or not whatever its
  // forward did); fl_lstm_cell rounds the operands of its two products (with
  // acts, the GRU's h stays float32: it enters the gate math too);
  // fl_lstm_cell_backward ignores it. Ignored
  // elsewhere (CUDA: see allow_tf32).
  int allow_bf16;
} fl_device;

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
// Opaque; owns copies of everything backward reads (x, weights, states) and
// the reserve the forward filled (see the layer stacks below), on the
// forward's device, so the caller may reuse or free its own arrays after the
// forward returns. CUDA: its memory is freed stream-ordered on the stream of
// the last call that used it (keep that stream alive while the state lives).
typedef struct fl_training_state fl_training_state;

// All pointers are to arrays of `dtype` unless stated otherwise.
typedef struct fl_forward_params {
  fl_dtype dtype;
  fl_mode mode;
  fl_feed feed;        // used by FL_ONE_TO_MANY only
  int64_t T, B, I, H;  // steps, batch, input size, hidden size; all >= 1
  int64_t proj_size;   // 0 (none) or R in [1, H)
  // FL_MANY_TO_*: nonzero runs each sequence backwards, from step
  // lengths[b] - 1 down to 0 (nn.LSTM's reverse direction); y stays in time order.
  int reverse;

  // x: FL_MANY_TO_*: element (t, b, k) at x[t*x_stride_t + b*x_stride_b + k];
  //    FL_ONE_TO_MANY: element (b, k) at x[b*x_stride_b + k] (x_stride_t unused).
  const void* x;
  int64_t x_stride_t, x_stride_b;
  // G = the cell's gate count (4 LSTM, 3 GRU, 1 RNN), gate-major rows.
  const void* w_ih;  // [G*H, I] row-major, rows i|f|g|o (nn.LSTM weight_ih_l0), r|z|n (nn.GRU)
  const void* w_hh;  // [G*H, Hout] row-major (weight_hh_l0)
  const void* w_hr;  // [R, H] row-major (weight_hr_l0) when proj_size > 0, else unused
  const void* b_ih;  // [G*H] or NULL (zero)
  const void* b_hh;  // [G*H] or NULL (zero)
  const void* h0;    // [B, Hout] row-major or NULL (zero)
  const void* c0;    // [B, H] row-major or NULL (zero); LSTM only
  // [B] int64, 1 <= lengths[b] <= T, or NULL (all T). FL_MANY_TO_* only.
  // Sequence b ends after lengths[b] steps (pack_padded_sequence semantics).
  // CUDA: device memory, never read by the host (no synchronisation), so not
  // checked: a value outside [1, T] is clamped to it.
  const int64_t* lengths;

  // Outputs. y: [T,B,Hout] with element (t, b, u) at y[t*y_stride_t + b*y_stride_b + u];
  // NULL allowed (FL_MANY_TO_ONE never writes y). Rows of padded steps
  // (t >= lengths[b]) are set to zero.
  void* y;
  int64_t y_stride_t, y_stride_b;
  void* h_n;  // [B, Hout] row-major, required: state after each sequence's last step
  void* c_n;  // [B, H] row-major, required for the LSTM (other cells: unused)

  // Training: when non-NULL, *state_out receives the saved activations
  // (free with fl_training_state_free); on any failure it is set to NULL.
  fl_training_state** state_out;
  fl_cell_kind cell;  // FL_CELL_LSTM (0), FL_CELL_GRU, FL_CELL_RNN_TANH, FL_CELL_RNN_RELU
  fl_device device;
} fl_forward_params;

typedef struct fl_backward_params {
  const fl_training_state* state;
  // Upstream gradients, each NULL = zero.
  // dy: FL_MANY_TO_MANY / FL_ONE_TO_MANY: [T,B,Hout] with strides below;
  //     FL_MANY_TO_ONE: [B,Hout] row-major (gradient of the last hidden state).
  const void* dy;
  int64_t dy_stride_t, dy_stride_b;
  const void* dh_n;  // [B, Hout] row-major
  const void* dc_n;  // [B, H] row-major (LSTM only)

  // Gradients out (each required unless noted):
  // dx: FL_MANY_TO_*: [T,B,I] with strides below (zero at padded steps);
  //     FL_ONE_TO_MANY: [B,I] at dx[b*dx_stride_b + k].
  void* dx;
  int64_t dx_stride_t, dx_stride_b;
  void* dh0;    // [B, Hout] row-major
  void* dc0;    // [B, H] row-major; required for the LSTM only
  void* dw_ih;  // [G*H, I] row-major
  void* dw_hh;  // [G*H, Hout] row-major
  void* db;     // [G*H] or NULL: gradient of b_ih (LSTM, RNN: also that of b_hh, they are equal)
  void* dw_hr;  // [R, H] row-major; required when proj_size > 0
  // [G*H] or NULL: gradient of b_hh. It differs from db's for the GRU (the n
  // rows: b_hn sits inside r * (...)); for the LSTM and RNN it is a copy of db.
  void* db_hh;
  // The state's device (type and index must match it); CUDA: the stream of
  // this call, which the caller orders after the forward's work.
  fl_device device;
} fl_backward_params;

// Single step, one-to-one: (h, c) -> (h_new, c_new). No packing, no saved state.
// G as in fl_forward_params; A = 4 saved values per unit for the LSTM
// (i|f|g|o) and the GRU (r|z|n|hn, hn = h W_hn^T + b_hn), 1 for the RNN (h_new).
typedef struct fl_cell_params {
  fl_dtype dtype;
  int64_t B, I, H;
  const void* x;     // [B, I] row-major
  const void* h;     // [B, H] row-major
  const void* c;     // [B, H] row-major (LSTM only)
  const void* w_ih;  // [G*H, I] row-major
  const void* w_hh;  // [G*H, H] row-major
  const void* b_ih;  // [G*H] or NULL
  const void* b_hh;  // [G*H] or NULL
  void* h_new;       // [B, H] row-major; may not alias the inputs
  void* c_new;       // [B, H] row-major; may not alias the inputs (LSTM only)
  // [B, A*H] or NULL: what the step saves for fl_lstm_cell_backward, gate-major
  // per row. Given, the step always reads the weights as they are (no
  // packing), whatever B.
  void* acts;
  fl_cell_kind cell;
  fl_device device;
} fl_cell_params;

// Backward of one fl_lstm_cell step, from the activations it saved.
// Upstream gradients NULL = zero. Reads the weights as given: it streams
// them once per row, so from B ~ 32 on the sequence API with T = 1 (packed
// GEMMs) trains one step faster.
typedef struct fl_cell_backward_params {
  fl_dtype dtype;
  int64_t B, I, H;
  const void* x;      // [B, I]  the step's inputs, as given to fl_lstm_cell
  const void* h;      // [B, H]
  const void* c;      // [B, H] (LSTM only)
  const void* w_ih;   // [G*H, I]
  const void* w_hh;   // [G*H, H]
  const void* acts;   // [B, A*H] from fl_cell_params.acts
  const void* c_new;  // [B, H]  from the forward (LSTM only)
  const void* dh_new; // [B, H] or NULL
  const void* dc_new; // [B, H] or NULL (LSTM only)
  void* dx;           // [B, I]
  void* dh;           // [B, H]
  void* dc;           // [B, H] (LSTM only)
  void* dw_ih;        // [G*H, I]
  void* dw_hh;        // [G*H, H]
  void* db;           // [G*H] or NULL (gradient of b_ih; LSTM, RNN: also that of b_hh)
  void* db_hh;        // [G*H] or NULL: gradient of b_hh (see fl_backward_params)
  fl_cell_kind cell;
  fl_device device;
} fl_cell_backward_params;

fl_status fl_lstm_forward(const fl_forward_params* params);
fl_status fl_lstm_backward(const fl_backward_params* params);
fl_status fl_lstm_cell(const fl_cell_params* params);
fl_status fl_lstm_cell_backward(const fl_cell_backward_params* params);
void fl_training_state_free(fl_training_state* state);
// Bytes held by a training state (saved activations and copies).
int64_t fl_training_state_bytes(const fl_training_state* state);

// ---------------------------------------------------------------------------
// Layer stacks (nn.LSTM's / nn.GRU's / nn.RNN's num_layers, bidirectional, proj_size, dropout), and
// training without an opaque state: the caller owns a "reserve" buffer that
// the training forward fills and the backward reads (as cuDNN's reserve
// space). Its size depends on the shapes only, so frameworks can allocate it
// from their own allocator, and keep it beside their saved tensors.
//
// Layer l (0-based) direction d (0 forward, 1 reverse) is "cell" l*D + d,
// D = num_directions. Layer 0 reads x [T,B,I]; layer l >= 1 reads
// mask[l-1] * (concatenated outputs of layer l-1) [T,B,D*Hout].
typedef struct fl_stack_params {
  fl_dtype dtype;
  int64_t T, B, I, H;
  int64_t proj_size;       // 0 or R in [1, H), for every layer
  int64_t num_layers;      // L >= 1
  int64_t num_directions;  // D: 1, or 2 (bidirectional)
  const void* x;           // [T,B,I], element (t,b,k) at x[t*x_stride_t + b*x_stride_b + k]
  int64_t x_stride_t, x_stride_b;
  const int64_t* lengths;  // [B] int64 in [1, T], or NULL (all T); CUDA: device memory, as fl_forward_params
  // Arrays of L*D pointers, one per cell (nn.LSTM's weight_ih_l{l}[_reverse] ...):
  const void* const* w_ih;  // each [G*H, I] (l = 0) or [G*H, D*Hout]
  const void* const* w_hh;  // each [G*H, Hout]
  const void* const* b_ih;  // NULL (no biases), or each [G*H] or NULL
  const void* const* b_hh;  // NULL, or each [G*H] or NULL
  const void* const* w_hr;  // each [R, H] when proj_size > 0, else unused
  const void* h0;           // [L*D, B, Hout] row-major or NULL (zero)
  const void* c0;           // [L*D, B, H] row-major or NULL (zero); LSTM only
  // NULL, or [L-1, T, B, D*Hout] row-major factors applied to the input of
  // layers 1..L-1 (dropout: 0 or 1/(1-p)); read by forward and backward.
  const void* dropout_mask;
  // Outputs of the last layer: y [T,B,D*Hout] (strided like x; NULL: not
  // written, and its gradient is not taken), h_n [L*D,B,Hout], c_n [L*D,B,H]
  // (LSTM only).
  void* y;
  int64_t y_stride_t, y_stride_b;
  void* h_n;
  void* c_n;
  fl_cell_kind cell;
  fl_device device;
} fl_stack_params;

typedef struct fl_stack_grads {
  const void* dy;  // [T,B,D*Hout] strided, or NULL (zero)
  int64_t dy_stride_t, dy_stride_b;
  const void* dh_n;  // [L*D,B,Hout] or NULL
  const void* dc_n;  // [L*D,B,H] or NULL (LSTM only)
  void* dx;          // [T,B,I] strided, required
  int64_t dx_stride_t, dx_stride_b;
  void* dh0;         // [L*D,B,Hout], required
  void* dc0;         // [L*D,B,H], required for the LSTM only
  void* const* dw_ih;  // L*D pointers, shapes as the weights, required
  void* const* dw_hh;  // required
  void* const* db;     // NULL, or L*D pointers (each NULL or [G*H]): grad of b_ih (LSTM, RNN: = grad of b_hh)
  void* const* dw_hr;  // required when proj_size > 0
  void* const* db_hh;  // NULL, or L*D pointers (each NULL or [G*H]): grad of b_hh (see fl_backward_params)
} fl_stack_grads;

// Reserve size in bytes for a training forward of these shapes (reads cell,
// dtype, T, B, H, proj_size, num_layers, num_directions, device.type). Closed
// form, for frameworks that allocate from shapes alone:
//   s = element size of dtype; S = T*B; r64(n) = roundup(n, 64)
//   CPU:  w = 64 / s; hp = roundup(H, w); A = 4 (LSTM, GRU) or 0 (RNN)
//         cell = 320 + r64(S*A*hp*s) + (LSTM ? r64(S*hp*s) : 0) + r64(S*(R ? R : hp)*s)
//                + (R ? r64(S*roundup(H, 4*w)*s) : 0)
//   CUDA: a = 8 (float64) or 4 (the math type); r256(n) = roundup(n, 256);
//         A = 4 (LSTM i|f|g|o, GRU r|z|n|hn) or 1 (RNN h_new)
//         cell = r256(S*A*H*a) + (LSTM ? r256((S+B)*H*a) : 0) + r256((S+B)*Hout*s)
//                + (R ? r256(S*H*s) : 0)
//   total = L*D*cell + (L-1)*(r64(S*D*Hout*s) + 64)
// Returns -1 (never a negative or wrapped size), with the reason in
// fl_last_error, when params is NULL, a field it reads is invalid, or the
// total (or any term of it) does not fit in int64.
int64_t fl_lstm_stack_reserve_bytes(const fl_stack_params* params);
// reserve NULL: inference. Else at least fl_lstm_stack_reserve_bytes bytes
// (any alignment on the CPU, 256-byte aligned on CUDA), every byte of which
// is written; CUDA: device memory.
fl_status fl_lstm_stack_forward(const fl_stack_params* params, void* reserve, int64_t reserve_bytes);
// params: the same inputs as the forward that filled the reserve (its
// outputs y, h_n, c_n are not read).
fl_status fl_lstm_stack_backward(const fl_stack_params* params, const void* reserve, int64_t reserve_bytes,
                                 const fl_stack_grads* grads);

// Message for the last failed call on this thread ("" when none).
const char* fl_last_error(void);

// Threads: default from the environment variable FUSEDLSTM_NUM_THREADS, else
// the number of CPUs this process may run on. n is clamped to
// [1, FL_MAX_THREADS] (so is the default): more threads than any CPU we
// target has hardware threads only slow a call down, and each one is a
// thread of the process. The Python package raises ValueError instead.
// Worker threads are started when a call first needs them; a thread that
// cannot be started (a pids or memory limit) fails that call with
// FL_INTERNAL_ERROR and a message naming the thread and the system's reason,
// and leaves the pool as it was: later calls work, with as many threads as
// the process can start.
#define FL_MAX_THREADS 1024
void fl_set_num_threads(int n);
int fl_get_num_threads(void);
// Nonzero: run parallel regions on the process's GNU OpenMP team (libgomp
// must already be loaded, e.g. by PyTorch) instead of fusedlstm's own
// threads; zero: own threads (the default). Returns 1 on success, 0 when
// libgomp's entry points are not found (nothing changes then).
int fl_use_openmp(int on);
int fl_using_openmp(void);  // 1 while regions run on the OpenMP team
// Caps the threads of calls made from the calling host thread at n (0: no
// cap) and returns the previous cap; fl_set_num_threads still sets the
// ceiling. For frameworks whose own thread setting should govern a call.
int fl_limit_threads_on_this_thread(int n);

// SIMD paths. Names: "avx512", "avx2", "generic". The default is the best
// one the CPU supports, or FUSEDLSTM_ISA when set to a supported name.
// fl_available_isas writes a comma-separated list of supported names, best first.
const char* fl_get_isa(void);
fl_status fl_set_isa(const char* name);
const char* fl_available_isas(void);

// Interrupting long calls (e.g. Ctrl-C). fn(ctx) is the interrupt check of
// the calling host thread (thread-local; fn NULL removes it). While a call
// made from that thread runs (fl_lstm_forward, fl_lstm_backward,
// fl_lstm_stack_forward, fl_lstm_stack_backward), that thread, and only
// that thread, calls fn about every 50 ms of work: between time steps and
// between pieces of the whole-sequence GEMMs (a call shorter than 50 ms
// never calls it). Nonzero stops the call: the pool's threads leave it
// together at the next step, and the call returns FL_INTERRUPTED. Its
// outputs, gradients and reserve are then partly written and must not be
// used; no training state is returned (*state_out stays NULL). fn must not
// call into fusedlstm. One time step is the finest grain: a step of more
// than 50 ms of work delays the stop by that much. The Python package
// installs, on the main thread, a check that runs Python's signal handlers,
// so Ctrl-C raises KeyboardInterrupt.
void fl_set_interrupt_check(int (*fn)(void* ctx), void* ctx);

#ifdef __cplusplus
}
#endif

#endif  // FUSEDLSTM_FUSEDLSTM_H_
