// The CPU kernel interface: what each SIMD translation unit (kernels_avx512.cpp,
// kernels_avx2.cpp, kernels_generic.cpp) implements, and the table through
// which the driver (lstm_cpu.cpp) calls the one chosen at run time.
//
// Layout vocabulary (W = SIMD width in elements of the dtype, P = 4 * W):
// - Hidden units are padded to Hp = roundup(H, W) and split into blocks of W.
// - A cell has G gates (LSTM 4: i,f,g,o; GRU 3: r,z,n; RNN 1). A step panel
//   holds U blocks (LSTM, GRU 1; RNN 4) of all G gates: NQ = G*U vectors,
//   PS = NQ*W columns, so a step computes every gate of its units together
//   and applies the cell update in registers.
// - "Gate-interleaved" columns (Gc = n_panels*PS of them): block b, gate q,
//   lane l is column (b/U)*PS + (b%U)*G*W + q*W + l. For the LSTM that is
//   block j at j*P + q*W; for the RNN it is unit u at column u.
// - A "panel" operand B[K, N] is stored as ceil(N / P) column strips of width
//   P: strip p starts at b + p*b_panel_stride and its row k at + k*ldb.
//   Columns past N inside the last strip must be readable (the packers
//   zero-pad them); they are computed and never stored.
#ifndef FUSEDLSTM_CPU_KERNELS_H_
#define FUSEDLSTM_CPU_KERNELS_H_

#include <cstdint>

namespace fusedlstm {
namespace cpu {

// fl_cell_kind's values, and one internal variant: the GRU's steps t >= 1
// of one_to_many with feed output (x_t = h_{t-1}), whose step panels hold
// four vectors per block: r and z of W_ih + W_hh, hn of W_hn, xn of W_in
// (x_t enters n outside r * (...), so it cannot be summed into W_hn).
enum CellKind : int { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3, kGruFedBack = 4 };
constexpr int kCellKinds = 5;

// Gates G, blocks per step panel U, saved activations per unit A.
struct CellShape {
  int gates, blocks_per_panel, saved;
};
constexpr CellShape cell_shape(int cell) {
  return cell == kLstm ? CellShape{4, 1, 4} : (cell == kGru || cell == kGruFedBack) ? CellShape{3, 1, 4}
                                                                                    : CellShape{1, 4, 0};
}
// Values per unit that the single-step API saves (fl_cell_params.acts): the
// sequence's, and the RNN's h_new (which the sequence finds in its states).
constexpr int cell_step_saved(int cell) { return cell_shape(cell).saved ? cell_shape(cell).saved : 1; }

// C[M, N] (+)= c_init + A[M, K] B[K, N]. Called by every thread of a parallel
// region with its (tid, nthreads); threads split rows or panels, never K,
// so the result does not depend on the thread count.
template <class T>
struct GemmArgs {
  int64_t M, N, K;
  const T* const* a_rows;  // [M] row pointers; row m holds A[m, 0:K] contiguously
  const T* b;              // panel operand B[K, N], see above
  int64_t ldb, b_panel_stride;
  T* const* c_rows;        // [M] row pointers; row m receives C[m, 0:N]
  const T* c_init;         // [roundup(N, P)] added to every row, or nullptr
  bool accumulate;         // add to the existing C instead of overwriting it
};

// One forward step for step panels [panel_begin, panel_end), rows [0, rows).
// Rows are batch rows in the driver's (length-sorted) order.
template <class T>
struct FwdStepArgs {
  int64_t rows;
  int64_t H;                 // valid hidden units (stores to y stop there)
  int64_t K;                 // recurrent state width: H, or the projection size
  int64_t Hp;                // padded units (blocks past Hp in the RNN's last panel are not stored)
  const T* w;                // W_hh step panels, K rows each: panel j at w + j*K*PS, ld PS
  const T* h_prev;           // [rows, >= K] recurrent state h_{t-1}, row stride ld_h_prev
  int64_t ld_h_prev;
  const T* c_prev;           // LSTM: [rows, Hp], row stride ld_c_prev (may equal c_out)
  int64_t ld_c_prev;
  // [rows, Gc] interleaved input term + biases (GRU: the n gate's holds b_in
  // only); ld_gx may be 0
  const T* gx;
  int64_t ld_gx;
  const T* bias_hn;          // GRU: [Hp] b_hn (inside r * (...)), or nullptr (zero)
  T* h_out;                  // [rows, Hp] the new state (LSTM: o * tanh(c_t), projected after)
  int64_t ld_h_out;
  T* c_out;                  // LSTM: [rows, Hp]
  int64_t ld_c_out;
  T* acts;                   // [rows, A*Hp] saved activations (A per block, see CellShape), or nullptr
  int64_t ld_acts;
  T* y;                      // or nullptr: row r's H values go to y + y_row_offset[r]
  const int64_t* y_row_offset;
  // The bfloat16 step kernels only (Bf16Kernels): w_bf16 replaces w, as
  // bfloat16 pair panels (see Bf16Kernels) of h_repeats*K rows; h_bf16 is the
  // calling thread's scratch of [rows, ld_h_bf16 >= roundup(h_repeats*K, 2)]
  // bfloat16, which the step fills with h_{t-1} rounded to bfloat16,
  // h_repeats times side by side (2: W_ih and W_hh stacked along K for
  // feed="output", where x_t = h_{t-1}).
  const uint16_t* w_bf16 = nullptr;
  uint16_t* h_bf16 = nullptr;
  int64_t ld_h_bf16 = 0;
  int64_t h_repeats = 1;
};

// One fused backward step t for output hidden-unit groups [group_begin,
// group_end); a group is 4 blocks (P units). For each row r < rows:
//   dh = (r < rec_rows ? A[r] W : dh_init[r]) + dy_t[r]  (GRU: + dc[r])
// then the cell backward gives dG_t[r] and, in place in dc, dc_{t-1}[r]
// (LSTM) or dh_t * z (GRU: the part of dh_{t-1} outside the weights).
// Without projection A = dG_{t+1} and W = W_hh (K = Gc); with projection
// A = dh_t (the gradient of the projected state) and W = W_hr (K = proj size).
template <class T>
struct BwdStepArgs {
  int64_t rows, rec_rows;
  int64_t H, Hp;
  int64_t K;                 // columns of A, rows of each W panel
  const T* wt;               // panels of W as [K, Hp]: group q at wt + q*K*P, ld P
  const T* dg_next;          // [rec_rows, K] A, row stride ld_dg_next
  int64_t ld_dg_next;
  const T* dh_init;          // [rows, Hp]: dh of rows whose sequence ends at t
  int64_t ld_dh_init;
  const T* dy;               // or nullptr: row r's H values at dy + dy_row_offset[r]
  const int64_t* dy_row_offset;
  const T* acts;             // [rows, A*Hp] saved activations of step t
  int64_t ld_acts;
  const T* c;                // LSTM: [rows, Hp] c_t; RNN: h_t
  int64_t ld_c;
  const T* c_prev;           // LSTM: [rows, Hp] c_{t-1}; GRU: h_{t-1}
  int64_t ld_c_prev;
  T* dc;                     // LSTM, GRU: [rows, Hp] in: dc_t (GRU: dh_{t+1} z_{t+1}), out: for t-1
  int64_t ld_dc;
  T* dg;                     // [rows, Gc] out: dG_t (GRU: the recurrent side's, hn in the n gate)
  int64_t ld_dg;
  T* dgx_n;                  // GRU: [rows, Hp] out: the n gate's input-side gradient
  int64_t ld_dgx_n;
  // Or nullptr; else recurrent rows also add A2[r] W2 to dh: the GRU with
  // feed output, A2 = the n gate's input-side gradient of step t+1
  // (row stride ld_a2, K2 columns) and W2 = W_in as [K2, Hp] panels.
  const T* a2;
  int64_t ld_a2, K2;
  const T* wt2;
  // The bfloat16 step kernels only (Bf16Kernels): wt_bf16 replaces wt, as
  // pair panels; dg_bf16 is the calling thread's scratch of [rec_rows,
  // ld_dg_bf16 >= roundup(K, 2)] bfloat16, filled with A rounded to bfloat16
  // (the A2 W2 term stays float32).
  const uint16_t* wt_bf16 = nullptr;
  uint16_t* dg_bf16 = nullptr;
  int64_t ld_dg_bf16 = 0;
  // dg_bf16 holds A already rounded (shared by the threads; then K counts its
  // columns, e.g. two stacked gate gradients, and dg_next is not read).
  bool dg_bf16_ready = false;
};

// One cell step on unpacked row-major weights, hidden units [unit_begin, unit_end).
template <class T>
struct CellArgs {
  int64_t B, I, H;
  const T* x;      // [B, I]
  const T* h;      // [B, H]
  const T* c;      // LSTM: [B, H]
  const T* w_ih;   // [G*H, I]
  const T* w_hh;   // [G*H, H]
  const T* bias;   // [G*H] (b_ih + b_hh; GRU's n row: b_in) or nullptr
  const T* bias_hn;  // GRU: [H] b_hn or nullptr
  T* h_new;        // [B, H]
  T* c_new;        // LSTM: [B, H]
  T* acts;         // [B, A*H] saved activations (plain gate-major rows), or nullptr
};

// out[k] (+)= sum over i < n_rows of coef[i * coef_stride] * rows[i * ld + k],
// for k in [col_begin, col_end): a row combination (dx = dG W, dW rows).
template <class T>
struct CombineArgs {
  int64_t n_rows;
  const T* coef;
  int64_t coef_stride;
  const T* rows;
  int64_t ld;
  T* out;
  bool accumulate;
};

// The step kernels come one per cell kind (indexed by CellKind).
template <class T>
struct TypedKernels {
  int width;  // W for this dtype
  void (*gemm)(const GemmArgs<T>& args, int tid, int nthreads);
  void (*fwd_step[kCellKinds])(const FwdStepArgs<T>& args, int64_t panel_begin, int64_t panel_end);
  void (*bwd_step[kCellKinds])(const BwdStepArgs<T>& args, int64_t group_begin, int64_t group_end);
  void (*cell[kCellKinds])(const CellArgs<T>& args, int64_t unit_begin, int64_t unit_end);
  void (*combine)(const CombineArgs<T>& args, int64_t col_begin, int64_t col_end);
};

// bfloat16-operand kernels (float32 only): products of bfloat16 operands
// accumulated in float32, the cell state and gate math in float32, as
// vdpbf16ps (and oneDNN, cuDNN) compute them. Their weights are "pair
// panels": a float32 panel [K, N] becomes [ceil(K/2), 2N] bfloat16 whose row
// kk holds, for each column n, the pair (k = 2kk, k = 2kk + 1) adjacent
// (zero past K), so one 32-bit lane holds the two products a dot
// instruction sums.
struct GemmBf16Args {
  int64_t M, N, K;                 // K: products per output (the pair rows are ceil(K/2))
  const uint16_t* const* a_rows;   // [M] rows of roundup(K, 2) bfloat16 (zero past K)
  const uint16_t* b;               // pair panels of B[K, N]: strip p at b + p*b_panel_stride
  int64_t ldb, b_panel_stride;     // ldb = 2P (a pair row), in elements
  float* const* c_rows;
  const float* c_init;             // [roundup(N, P)] or nullptr
  bool accumulate;
};
struct Bf16Kernels {
  // "emulated" (bfloat16 widened to float32 for an FMA) or "dpbf16".
  const char* dot;
  void (*gemm)(const GemmBf16Args& args, int tid, int nthreads);
  // dst[k] = src[k] rounded to bfloat16 (core/bf16.h's rounding), k < n.
  void (*to_bf16)(const float* src, uint16_t* dst, int64_t n);
  // As TypedKernels<float>::fwd_step, with FwdStepArgs::w_bf16 and h_bf16.
  void (*fwd_step[kCellKinds])(const FwdStepArgs<float>& args, int64_t panel_begin, int64_t panel_end);
  // As TypedKernels<float>::bwd_step, with BwdStepArgs::wt_bf16 and dg_bf16.
  void (*bwd_step[kCellKinds])(const BwdStepArgs<float>& args, int64_t group_begin, int64_t group_end);
};

// GEMM blocking every ISA table shares: K is summed in blocks of
// kGemmKBlock with C stored between blocks, and rows go in blocks of 40
// register tiles (240, 120 or 160 rows by ISA), each a divisor of
// kGemmRowPiece. A GEMM split at multiples of these (lstm_cpu.cpp does, to
// poll for interrupts) gives the same bits as one call.
constexpr int64_t kGemmKBlock = 256;
constexpr int64_t kGemmRowPiece = 480;

struct KernelTable {
  const char* name;
  TypedKernels<float> f32;
  TypedKernels<double> f64;
  Bf16Kernels bf16;
};

// Each returns its table; only call one the CPU supports (see dispatch.cpp).
const KernelTable& kernels_generic();
#if defined(FUSEDLSTM_HAVE_X86_KERNELS)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512_bf16();  // needs AVX512-BF16 too
#endif

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_KERNELS_H_
