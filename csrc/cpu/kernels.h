// The CPU kernel interface: what each SIMD translation unit (kernels_avx512.cpp,
// kernels_avx2.cpp, kernels_generic.cpp) implements, and the table through
// which the driver (lstm_cpu.cpp) calls the one chosen at run time.
//
// Layout vocabulary (W = SIMD width in elements of the dtype, P = 4 * W):
// - Hidden units are padded to Hp = roundup(H, W) and split into blocks of W.
// - "Gate-interleaved" columns (4*Hp of them): block j, gate q (i,f,g,o),
//   lane l is column j*P + q*W + l, i.e. hidden unit j*W + l of gate q. One
//   P-wide panel then holds all four gates of one block, so a step computes
//   i, f, g, o of W units together and applies the cell update in registers.
// - A "panel" operand B[K, N] is stored as ceil(N / P) column strips of width
//   P: strip p starts at b + p*b_panel_stride and its row k at + k*ldb.
//   Columns past N inside the last strip must be readable (the packers
//   zero-pad them); they are computed and never stored.
#ifndef FUSEDLSTM_CPU_KERNELS_H_
#define FUSEDLSTM_CPU_KERNELS_H_

#include <cstdint>

namespace fusedlstm {
namespace cpu {

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

// One forward step for hidden blocks [block_begin, block_end), rows [0, rows).
// Rows are batch rows in the driver's (length-sorted) order.
template <class T>
struct FwdStepArgs {
  int64_t rows;
  int64_t H;                 // valid hidden units (stores to y stop there)
  int64_t K;                 // recurrent state width: H, or the projection size
  const T* w;                // W_hh panels, K rows each: block j at w + j*K*P, ld P
  const T* h_prev;           // [rows, >= K] recurrent state h_{t-1}, row stride ld_h_prev
  int64_t ld_h_prev;
  const T* c_prev;           // [rows, Hp], row stride ld_c_prev (may equal c_out)
  int64_t ld_c_prev;
  const T* gx;               // [rows, 4Hp] interleaved input term + both biases; ld_gx may be 0
  int64_t ld_gx;
  T* h_out;                  // [rows, Hp] o * tanh(c_t) (h_t itself unless projected)
  int64_t ld_h_out;
  T* c_out;                  // [rows, Hp]
  int64_t ld_c_out;
  T* acts;                   // [rows, 4Hp] interleaved i,f,g,o activations, or nullptr
  int64_t ld_acts;
  T* y;                      // or nullptr: row r's H values go to y + y_row_offset[r]
  const int64_t* y_row_offset;
};

// One fused backward step t for output hidden-unit groups [group_begin,
// group_end); a group is 4 blocks (P units). For each row r < rows:
//   dh = (r < rec_rows ? A[r] W : dh_init[r]) + dy_t[r]
// then the cell backward gives dG_t[r] and dc_{t-1}[r] (in place in dc).
// Without projection A = dG_{t+1} and W = W_hh (K = 4Hp); with projection
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
  const T* acts;             // [rows, 4Hp] saved activations of step t
  int64_t ld_acts;
  const T* c;                // [rows, Hp] c_t
  int64_t ld_c;
  const T* c_prev;           // [rows, Hp] c_{t-1}
  int64_t ld_c_prev;
  T* dc;                     // [rows, Hp] in: dc_t, out: dc_{t-1}
  int64_t ld_dc;
  T* dg;                     // [rows, 4Hp] out: dG_t
  int64_t ld_dg;
};

// lstm_cell on unpacked row-major weights, hidden units [unit_begin, unit_end).
template <class T>
struct CellArgs {
  int64_t B, I, H;
  const T* x;      // [B, I]
  const T* h;      // [B, H]
  const T* c;      // [B, H]
  const T* w_ih;   // [4H, I]
  const T* w_hh;   // [4H, H]
  const T* bias;   // [4H] (b_ih + b_hh) or nullptr
  T* h_new;        // [B, H]
  T* c_new;        // [B, H]
  T* acts;         // [B, 4H] activations i|f|g|o (plain gate-major rows), or nullptr
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

template <class T>
struct TypedKernels {
  int width;  // W for this dtype
  void (*gemm)(const GemmArgs<T>& args, int tid, int nthreads);
  void (*fwd_step)(const FwdStepArgs<T>& args, int64_t block_begin, int64_t block_end);
  void (*bwd_step)(const BwdStepArgs<T>& args, int64_t group_begin, int64_t group_end);
  void (*cell)(const CellArgs<T>& args, int64_t unit_begin, int64_t unit_end);
  void (*combine)(const CombineArgs<T>& args, int64_t col_begin, int64_t col_end);
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
};

// Each returns its table; only call one the CPU supports (see dispatch.cpp).
const KernelTable& kernels_generic();
#if defined(FUSEDLSTM_HAVE_X86_KERNELS)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_KERNELS_H_
