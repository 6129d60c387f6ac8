// CPU driver: workspaces, weight packing, batch ordering, and the parallel
// regions that run the kernels of the chosen SIMD table.
//
// Forward:  one GEMM computes the input term of every (step, row) into Gx
//           (gate-interleaved, both biases folded in); then one parallel
//           region runs the T steps, each thread owning a range of hidden
//           blocks of the packed W_hh and meeting the others at a spin
//           barrier after every step.
// Backward: one region runs the reverse-time loop; each step fuses
//           dh = dG_{t+1} W_hh (from W_hh^T panels) with the cell backward,
//           one barrier per step. dW_ih, dW_hh, db and dx follow as
//           whole-sequence GEMMs over the saved dG.
// Lengths:  rows are sorted by decreasing length, so the rows still running
//           at step t are a prefix [0, nact[t]); finished rows cost nothing,
//           and per-step buffers hold only those rows ("packed" layout, as in
//           torch's PackedSequence).
#include "cpu/lstm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <numeric>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/checked_size.h"
#include "core/gate_math.h"
#include "core/interrupt.h"
#include "core/status.h"
#include "cpu/buffer.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace fusedlstm {
namespace cpu {

using fusedlstm::InvalidArgument;

namespace {

constexpr int kMaxWidth = 16;  // widest SIMD vector, in elements, of any kernel table

// Padded sizes and the gate-interleaved column map of a cell (see kernels.h).
struct Geometry {
  int64_t W, P, G, U, PS, A, H, Hp, n_blocks, n_panels, Gc, n_groups;
  Geometry(int cell, int64_t hidden, int width)
      : W(width), P(4 * int64_t(width)), G(cell_shape(cell).gates), U(cell_shape(cell).blocks_per_panel),
        PS(G * U * W), A(cell_shape(cell).saved), H(hidden), Hp((hidden + width - 1) / width * width),
        n_blocks(Hp / width), n_panels((n_blocks + U - 1) / U), Gc(n_panels * PS), n_groups((n_blocks + 3) / 4) {
    if (width > kMaxWidth) throw std::logic_error("SIMD width above kMaxWidth");
  }
  // Column of gate q, hidden unit u.
  int64_t col(int64_t q, int64_t u) const {
    const int64_t b = u / W;
    return (b / U) * PS + (b % U) * G * W + q * W + u % W;
  }
  // Inverse: column -> gate and unit (units >= Hp past the RNN's last block).
  int64_t gate_of(int64_t c) const { return (c % PS) % (G * W) / W; }
  int64_t unit_of(int64_t c) const { return ((c / PS) * U + (c % PS) / (G * W)) * W + c % W; }
  // Saved activations: [A*Hp] per row, A per block.
  int64_t ld_acts() const { return A * Hp; }
};

// Rows in order of decreasing length; nact[t] rows run at step t (nact[T] = 0);
// row r of step t sits at packed index off[t] + r.
struct BatchOrder {
  std::vector<int64_t> perm, len, nact, off;
  int64_t total = 0;
  BatchOrder(int64_t T, int64_t B, const int64_t* lengths) : perm(B), len(B), nact(T + 1), off(T + 1) {
    std::iota(perm.begin(), perm.end(), int64_t(0));
    if (lengths)
      std::stable_sort(perm.begin(), perm.end(),
                       [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    for (int64_t r = 0; r < B; ++r) len[r] = lengths ? lengths[perm[r]] : T;
    int64_t running = B;
    for (int64_t t = 0; t <= T; ++t) {
      while (running > 0 && len[running - 1] <= t) --running;
      nact[t] = running;
      off[t] = total;
      if (t < T) total += running;
    }
  }
  // Time index of packed step t of sorted row r: the reverse direction runs
  // each sequence from its own last step back to step 0.
  int64_t time_of(int64_t t, int64_t r, bool reverse) const { return reverse ? len[r] - 1 - t : t; }
  // Element offset of every packed (step, row) in a [T, B, *] array.
  std::vector<int64_t> offsets(int64_t stride_t, int64_t stride_b, bool reverse) const {
    std::vector<int64_t> out(total);
    for (int64_t t = 0; t + 1 < int64_t(nact.size()); ++t)
      for (int64_t r = 0; r < nact[t]; ++r) out[off[t] + r] = time_of(t, r, reverse) * stride_t + perm[r] * stride_b;
    return out;
  }
};

template <class T>
const TypedKernels<T>& typed(const KernelTable& table);
template <>
const TypedKernels<float>& typed<float>(const KernelTable& table) {
  return table.f32;
}
template <>
const TypedKernels<double>& typed<double>(const KernelTable& table) {
  return table.f64;
}

// Splits [0, n) evenly: the part of thread tid of nthreads.
inline void split_range(int64_t n, int tid, int nthreads, int64_t& begin, int64_t& end) {
  begin = n * tid / nthreads;
  end = n * (tid + 1) / nthreads;
}

// Runs fn(begin, end) over [0, n) on up to `threads` pool threads, then
// lets an interrupt stop the call (see core/interrupt.h).
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  const int nth = int(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  ThreadPool::instance().run(nth, [&](int tid, int nt) {
    int64_t b, e;
    split_range(n, tid, nt, b, e);
    if (b < e) fn(b, e);
  });
  throw_if_interrupted();
}

// Leaves a parallel step loop early, every thread at the same step, when
// the call is interrupted: tid 0 (the calling thread) polls before a
// barrier, every thread reads the decision after that barrier. The decision
// carries its step, as a fast tid 0 may poll the next step before a slow
// thread has read this one. After the region, throw_if_interrupted() on the
// calling thread raises it.
class TeamStop {
 public:
  void poll(int tid, int64_t step) {
    if (tid == 0 && interrupt_requested()) at_.store(step, std::memory_order_relaxed);
  }
  bool now(int64_t step) const { return at_.load(std::memory_order_relaxed) <= step; }

 private:
  std::atomic<int64_t> at_{INT64_MAX};
};

// Panels of a gate matrix w [G*H, K] (rows q*H + u), for the recurrent
// steps (gemm_layout false: panel j holds every gate of the units of step
// panel j as a [K, PS] slice) or for the GEMMs (true: strips of [K, P] over
// the Gc interleaved columns). Padded units are zero. Reads the source rows
// of one (gate, block) run at a time (few streams for the prefetchers) and
// writes each W-wide run of a panel row whole.
template <class T>
Buffer<T> pack_gate_panels(const T* w, int64_t K, const Geometry& g, int threads, bool gemm_layout = false) {
  const int64_t width = gemm_layout ? g.P : g.PS;
  const int64_t n_panels = gemm_layout ? (g.Gc + g.P - 1) / g.P : g.n_panels;
  Buffer<T> out(n_panels * K * width, gemm_layout && g.Gc % g.P != 0);  // strip columns past Gc: zero
  T* o = out.data();
  constexpr int64_t kTile = 64;
  const int64_t n_runs = g.n_panels * g.U * g.G;  // (block, gate) runs, blocks past Hp included (zero)
  parallel_for(n_runs, threads, [&](int64_t i0, int64_t i1) {
    const T* rows[kMaxWidth] = {};
    T tile[kMaxWidth][kTile + 1];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / g.G, q = i % g.G;
      const int64_t valid = std::max<int64_t>(0, std::min(g.W, g.H - b * g.W));
      for (int64_t l = 0; l < valid; ++l) rows[l] = w + (q * g.H + b * g.W + l) * K;
      const int64_t c = g.col(q, b * g.W);
      T* run = gemm_layout ? o + (c / g.P) * K * g.P + c % g.P : o + (c / g.PS) * K * g.PS + c % g.PS;
      // Source rows are K apart (often a multiple of 4 KiB, the same L1
      // set): copy a kTile-wide strip of each into a padded tile first.
      for (int64_t k0 = 0; k0 < K; k0 += kTile) {
        const int64_t kn = std::min(kTile, K - k0);
        for (int64_t l = 0; l < valid; ++l) std::memcpy(tile[l], rows[l] + k0, size_t(kn) * sizeof(T));
        T* dst = run + k0 * width;
        for (int64_t k = 0; k < kn; ++k, dst += width) {
          for (int64_t l = 0; l < valid; ++l) dst[l] = tile[l][k];
          for (int64_t l = valid; l < g.W; ++l) dst[l] = T(0);
        }
      }
    }
  });
  return out;
}

// Panels of w^T for w [G*H, N]: K = Gc gate-interleaved rows, N columns in
// strips of P; element (k, n) = w[q*H + u, n] with (q, u) the gate and unit
// of column k; zero for padded units and for n >= N.
template <class T>
Buffer<T> pack_transposed_panels(const T* w, int64_t N, const Geometry& g, int threads) {
  const int64_t n_panels = (N + g.P - 1) / g.P;
  Buffer<T> out(n_panels * g.Gc * g.P);
  T* o = out.data();
  parallel_for(g.Gc, threads, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t u = g.unit_of(k);
      const T* src = u < g.H ? w + (g.gate_of(k) * g.H + u) * N : nullptr;
      for (int64_t p = 0; p < n_panels; ++p) {
        T* dst = o + (p * g.Gc + k) * g.P;
        for (int64_t c = 0; c < g.P; ++c) {
          const int64_t n = p * g.P + c;
          dst[c] = (src && n < N) ? src[n] : T(0);
        }
      }
    }
  });
  return out;
}

// dst[c * n_rows + r] = src_rows[r][c] for c < n_cols: a blocked transpose.
template <class T>
void transpose_rows(const std::vector<const T*>& src_rows, int64_t n_cols, T* dst, int threads) {
  const int64_t n_rows = int64_t(src_rows.size());
  constexpr int64_t kTile = 32;
  parallel_for((n_cols + kTile - 1) / kTile, threads, [&](int64_t cb0, int64_t cb1) {
    for (int64_t c0 = cb0 * kTile; c0 < std::min(n_cols, cb1 * kTile); c0 += kTile)
      for (int64_t r0 = 0; r0 < n_rows; r0 += kTile) {
        const int64_t c_end = std::min(n_cols, c0 + kTile), r_end = std::min(n_rows, r0 + kTile);
        for (int64_t c = c0; c < c_end; ++c)
          for (int64_t r = r0; r < r_end; ++r) dst[c * n_rows + r] = src_rows[r][c];
      }
  });
}

// The inverse of the gate interleaving for a [K, Gc] matrix:
// dst[(q*H + u) * K + k] = src[k * ld_src + col(q, u)], dst in nn.LSTM's
// [G*H, K] layout. Each (gate, block) is a [K, W] strip of src: one cache
// line per source row, read once (rows ld_src apart share L1 sets, so no
// line may wait for reuse), turned through a padded tile into W rows of dst.
template <class T>
void unpack_gate_columns(const T* src, int64_t ld_src, int64_t K, const Geometry& g, T* dst, int threads) {
  constexpr int64_t kTile = 64;
  parallel_for(g.G * g.n_blocks, threads, [&](int64_t i0, int64_t i1) {
    T tile[kMaxWidth][kTile + 1];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t q = i % g.G, j = i / g.G;
      const int64_t valid = std::min(g.W, g.H - j * g.W);
      const T* strip = src + g.col(q, j * g.W);
      for (int64_t k0 = 0; k0 < K; k0 += kTile) {
        const int64_t kn = std::min(kTile, K - k0);
        for (int64_t k = 0; k < kn; ++k) {
          const T* s = strip + (k0 + k) * ld_src;
          for (int64_t l = 0; l < g.W; ++l) tile[l][k] = s[l];
        }
        for (int64_t l = 0; l < valid; ++l)
          std::memcpy(dst + (q * g.H + j * g.W + l) * K + k0, tile[l], size_t(kn) * sizeof(T));
      }
    }
  });
}

// out[c] = sum over r < n_rows of src[r * n_cols + c]. Long sums (over every
// step and row) are accumulated in double, so float32 results keep about one
// rounding error however long the sequence.
template <class T>
void sum_rows(const T* src, int64_t n_rows, int64_t n_cols, int64_t col_align, T* out, int threads) {
  const int64_t n_chunks = (n_cols + col_align - 1) / col_align;
  Buffer<double> acc(n_cols, true);
  parallel_for(n_chunks, threads, [&](int64_t c0, int64_t c1) {
    const int64_t begin = c0 * col_align, end = std::min(n_cols, c1 * col_align);
    double* a = acc.data();
    for (int64_t r = 0; r < n_rows; ++r) {
      const T* row = src + r * n_cols;
      for (int64_t c = begin; c < end; ++c) a[c] += double(row[c]);
    }
    for (int64_t c = begin; c < end; ++c) out[c] = T(a[c]);
  });
}

// A GEMM runs as regions of about gemm_piece_flops() each, with an
// interrupt poll after each: its rows in pieces of kGemmRowPiece, or its K
// range in pieces of kGemmKBlock. Piece bounds keep the kernels' blocking
// (kernels.h), so the pieces give the same result as one region, bit for bit.
constexpr int64_t kGemmKPiece = kGemmKBlock;

// About 10-50 ms of work; FUSEDLSTM_GEMM_PIECE_FLOPS overrides it (tests).
double gemm_piece_flops() {
  static const double flops = [] {
    const char* env = std::getenv("FUSEDLSTM_GEMM_PIECE_FLOPS");
    const double v = env ? std::atof(env) : 0.0;
    return v >= 1 ? v : double(int64_t(1) << 30);
  }();
  return flops;
}

template <class T>
void run_gemm(const TypedKernels<T>& kern, const GemmArgs<T>& args, int threads) {
  if (args.M <= 0 || args.N <= 0) return;
  auto region = [&](const GemmArgs<T>& a) {
    ThreadPool::instance().run(threads, [&](int tid, int n) { kern.gemm(a, tid, n); });
    throw_if_interrupted();
  };
  const double pieces = 2.0 * double(args.M) * double(args.N) * double(args.K) / gemm_piece_flops();
  if (args.M >= args.K && args.M >= 2 * kGemmRowPiece && pieces >= 2) {
    const int64_t step = std::max<int64_t>(kGemmRowPiece, int64_t(double(args.M) / pieces) / kGemmRowPiece * kGemmRowPiece);
    for (int64_t m0 = 0; m0 < args.M; m0 += step) {
      GemmArgs<T> a = args;
      a.M = std::min(step, args.M - m0);
      a.a_rows += m0;
      a.c_rows += m0;
      region(a);
    }
  } else if (args.K >= 2 * kGemmKPiece && pieces >= 2) {
    const int64_t step = std::max<int64_t>(kGemmKPiece, int64_t(double(args.K) / pieces) / kGemmKPiece * kGemmKPiece);
    std::vector<const T*> a_rows(args.M);
    for (int64_t k0 = 0; k0 < args.K; k0 += step) {
      for (int64_t m = 0; m < args.M; ++m) a_rows[m] = args.a_rows[m] + k0;
      GemmArgs<T> a = args;
      a.K = std::min(step, args.K - k0);
      a.a_rows = a_rows.data();
      a.b = args.b + k0 * args.ldb;
      if (k0 > 0) a.c_init = nullptr, a.accumulate = true;  // C holds the sum of the pieces before
      region(a);
    }
  } else {
    region(args);
  }
}

// Rows (steps x batch) of input term computed per chunk; FUSEDLSTM_PROJECTION_CHUNK_ROWS
// overrides it (for tests and tuning).
int64_t projection_chunk_rows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("FUSEDLSTM_PROJECTION_CHUNK_ROWS");
    const long long v = env ? std::atoll(env) : 0;
    return v >= 1 ? int64_t(v) : int64_t(4096);
  }();
  return rows;
}

// Thread count for the recurrence: each step ends at a barrier, which costs
// about a microsecond with two threads; below that much work per thread one
// thread is faster.
int recurrent_threads(int64_t rows, int64_t cols, int64_t K, int64_t units_of_work) {
  const double flops_per_step = 2.0 * double(rows) * double(cols) * double(K);  // work, not a size: never wraps
  int n = num_threads();
  if (flops_per_step < double(1 << 17)) n = 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(n, units_of_work)));
}

// Panels of a row-major-or-not matrix B[K, N], element (k, n) at
// src[k * stride_k + n * stride_n]: ceil(N / P) strips of [K, P], strip p at
// + p*K*P, zero past N. Used for the projection weights in both directions.
template <class T>
Buffer<T> pack_panels(const T* src, int64_t K, int64_t N, int64_t stride_k, int64_t stride_n, int64_t P) {
  const int64_t n_panels = (N + P - 1) / P;
  Buffer<T> out(n_panels * K * P);
  for (int64_t p = 0; p < n_panels; ++p)
    for (int64_t k = 0; k < K; ++k) {
      T* dst = out.data() + (p * K + k) * P;
      for (int64_t c = 0; c < P; ++c) {
        const int64_t n = p * P + c;
        dst[c] = n < N ? src[k * stride_k + n * stride_n] : T(0);
      }
    }
  return out;
}

// bfloat16 pair panels (kernels.h) of n consecutive float32 panels [K, width].
Buffer<uint16_t> to_bf16_pairs(const float* panels, int64_t n, int64_t K, int64_t width, int threads) {
  const int64_t K2 = (K + 1) / 2;
  Buffer<uint16_t> out(n * K2 * 2 * width);
  parallel_for(n * K2, threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t kk = i % K2;
      const float* even = panels + (i / K2) * K * width + 2 * kk * width;
      const float* odd = 2 * kk + 1 < K ? even + width : nullptr;
      uint16_t* dst = out.data() + i * 2 * width;
      for (int64_t c = 0; c < width; ++c) {
        dst[2 * c] = float_to_bf16(even[c]);
        dst[2 * c + 1] = odd ? float_to_bf16(odd[c]) : uint16_t(0);
      }
    }
  });
  return out;
}

// Rows m < M of row(m) (K float32 values each) rounded to bfloat16, ld
// apart, zero from K to ld.
template <class RowOf>
Buffer<uint16_t> bf16_rows(const Bf16Kernels& kern, int64_t M, int64_t K, int64_t ld, int threads, RowOf&& row) {
  Buffer<uint16_t> out(M * ld, true);
  parallel_for(M, threads, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) kern.to_bf16(row(m), out.data() + m * ld, K);
  });
  return out;
}

// B[K, N] (row k at b + k*ldb) as the bfloat16 GEMM's pair panels: strips of
// P columns, [ceil(K/2), 2P] each, zero past K and N.
Buffer<uint16_t> bf16_pair_strips(const float* b, int64_t K, int64_t N, int64_t ldb, int64_t P, int threads) {
  const int64_t K2 = (K + 1) / 2, n_strips = (N + P - 1) / P;
  Buffer<uint16_t> out(n_strips * K2 * 2 * P);
  parallel_for(n_strips * K2, threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t p = i / K2, kk = i % K2, cols = std::min(P, N - p * P);
      uint16_t* dst = out.data() + i * 2 * P;
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t k = 2 * kk + j;
        const float* src = k < K ? b + k * ldb + p * P : nullptr;
        for (int64_t c = 0; c < P; ++c) dst[2 * c + j] = (src && c < cols) ? float_to_bf16(src[c]) : uint16_t(0);
      }
    }
  });
  return out;
}

// The bfloat16 GEMM in regions of whole row pieces, an interrupt poll after each.
void run_gemm_bf16(const Bf16Kernels& kern, const GemmBf16Args& args, int threads) {
  if (args.M <= 0 || args.N <= 0) return;
  const double pieces = 2.0 * double(args.M) * double(args.N) * double(args.K) / gemm_piece_flops();
  int64_t step = args.M;
  if (args.M >= 2 * kGemmRowPiece && pieces >= 2)
    step = std::max<int64_t>(kGemmRowPiece, int64_t(double(args.M) / pieces) / kGemmRowPiece * kGemmRowPiece);
  for (int64_t m0 = 0; m0 < args.M; m0 += step) {
    GemmBf16Args a = args;
    a.M = std::min(step, args.M - m0);
    a.a_rows += m0;
    a.c_rows += m0;
    ThreadPool::instance().run(threads, [&](int tid, int n) { kern.gemm(a, tid, n); });
    throw_if_interrupted();
  }
}

// The reserve of one direction (see reserve_bytes): a header naming the
// kernel table that wrote it, then per (step, row) slot the activations,
// c_t, the recurrent state h_t and, with projection, m_t = o * tanh(c_t).
// Region sizes use the widest SIMD width of the dtype, so they do not depend
// on the path; leading dimensions are those of the path that runs.
constexpr int64_t kReserveHeaderBytes = 256;
constexpr uint64_t kReserveMagic = 0x6d74736c64657375ull;  // "usedlstm"

struct ReserveHeader {
  uint64_t magic;
  char isa[24];
  int64_t dtype, T, B, H, R, cell;
};

// Checked (checked_size.h): an impossible T, B, H throws InvalidArgument
// naming the region.
struct ReserveLayout {
  int64_t acts, c, h, m, end;  // byte offsets from the aligned base
  ReserveLayout(int cell, int64_t elem, int64_t T, int64_t B, int64_t H, int64_t R) {
    const int64_t wb = 64 / elem;  // widest vector of this dtype, in elements
    const int64_t hp = checked_round_up("H rounded up to the vector width", H, wb);
    int64_t at = kReserveHeaderBytes;
    auto region = [&](const char* what, int64_t gates, int64_t width) {
      const int64_t start = at;
      const int64_t bytes = checked_round_up(what, checked_bytes(what, {T, B, gates, width, elem}), 64);
      at = checked_sum("reserve bytes", {at, bytes});
      return start;
    };
    acts = region("reserve activations T*B*A*Hp*elem", cell_shape(cell).saved, hp);
    c = cell == kLstm ? region("reserve cell states T*B*Hp*elem", 1, hp) : at;
    h = region("reserve hidden states T*B*Hout*elem", 1, R > 0 ? R : hp);
    m = R > 0 ? region("reserve projection inputs T*B*roundup(H, 4*w)*elem", 1,
                       checked_round_up("H rounded up to 4 vectors", H, 4 * wb))
              : at;
    end = at;
  }
};

template <class T>
T* aligned_base(void* reserve) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(reserve);
  return reinterpret_cast<T*>((a + 63) / 64 * 64);
}

}  // namespace

int64_t reserve_bytes(fl_cell_kind cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H, int64_t R) {
  const int64_t elem = dtype == FL_FLOAT64 ? 8 : 4;
  return checked_sum("reserve bytes", {64, ReserveLayout(cell, elem, T, B, H, R).end});  // 64: room to align the base
}

namespace {

// Where one direction's saved activations live inside its reserve.
template <class T>
struct SavedViews {
  T *acts = nullptr, *c = nullptr, *h = nullptr, *m = nullptr;
  SavedViews() = default;
  SavedViews(int cell, void* reserve, int64_t T_, int64_t B, int64_t H, int64_t R) {
    unsigned char* base = aligned_base<unsigned char>(reserve);
    const ReserveLayout lay(cell, sizeof(T), T_, B, H, R);
    acts = reinterpret_cast<T*>(base + lay.acts);
    c = reinterpret_cast<T*>(base + lay.c);
    h = reinterpret_cast<T*>(base + lay.h);
    m = R > 0 ? reinterpret_cast<T*>(base + lay.m) : nullptr;
  }
};

// The kernel table a reserve was written with; backward must read it with
// the same layout.
const KernelTable& reserve_table(const void* reserve, int cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H,
                                 int64_t R) {
  const ReserveHeader* h = aligned_base<const ReserveHeader>(const_cast<void*>(reserve));
  if (h->magic != kReserveMagic || h->dtype != dtype || h->T != T || h->B != B || h->H != H || h->R != R ||
      h->cell != cell)
    throw InvalidArgument("the reserve was not written by a training forward of this cell with these sizes");
  for (const KernelTable* t : supported_kernels())
    if (std::strncmp(t->name, h->isa, sizeof(h->isa)) == 0) return *t;
  throw InvalidArgument("the reserve was written by an unknown SIMD path");
}

// src [B, n] row-major (or NULL: zeros) with its rows in the order of `ord`,
// each padded with zeros to ld.
template <class T>
Buffer<T> sorted_rows(const T* src, const BatchOrder& ord, int64_t n, int64_t ld) {
  const int64_t B = int64_t(ord.perm.size());
  Buffer<T> out(B * ld, true);
  if (src)
    for (int64_t r = 0; r < B; ++r) std::memcpy(out.data() + r * ld, src + ord.perm[r] * n, size_t(n) * sizeof(T));
  return out;
}

// bf16: the GEMM operands (x, W_ih, W_hh, h_{t-1}) rounded to bfloat16 and
// the bfloat16 kernels run them (float32 only; see forward_bf16_operands).
template <class T>
void forward_typed(const fl_forward_params& p, void* reserve, bool bf16 = false) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if (bf16 && !std::is_same_v<T, float>) throw std::logic_error("bfloat16 operands on a float64 call");
  const KernelTable& table = active_kernels();
  const TypedKernels<T>& kern = typed<T>(table);
  const int threads = num_threads();
  const int64_t T_ = p.T, B = p.B, I = p.I, H = p.H, R = p.proj_size;
  const bool proj = R > 0;
  const int64_t Ks = proj ? R : H;  // width of the recurrent state h
  const int cell = int(p.cell);
  const bool lstm = cell == kLstm, gru = cell == kGru;
  const Geometry g(cell, H, kern.width);
  const int64_t ld_state = proj ? R : g.Hp;
  const int64_t ld_m = g.n_groups * g.P;  // m rows hold whole panels (a GEMM operand in backward)
  const bool training = reserve != nullptr;
  const bool one_to_many = p.mode == FL_ONE_TO_MANY;
  const T* x = static_cast<const T*>(p.x);
  const T* w_ih = static_cast<const T*>(p.w_ih);
  const T* w_hh = static_cast<const T*>(p.w_hh);

  const BatchOrder ord(T_, B, one_to_many ? nullptr : p.lengths);

  SavedViews<T> S;
  if (training) {
    S = SavedViews<T>(cell, reserve, T_, B, H, R);
    unsigned char* base = aligned_base<unsigned char>(reserve);
    std::memset(reserve, 0, size_t(base - static_cast<unsigned char*>(reserve)));
    std::memset(base, 0, kReserveHeaderBytes);
    ReserveHeader hdr{};
    hdr.magic = kReserveMagic;
    std::strncpy(hdr.isa, table.name, sizeof(hdr.isa) - 1);
    hdr.dtype = p.dtype, hdr.T = T_, hdr.B = B, hdr.H = H, hdr.R = R, hdr.cell = cell;
    std::memcpy(base, &hdr, sizeof(hdr));
    // Slots past the rows that run (lengths) are never written: zero them,
    // so the reserve's content is a function of the inputs alone.
    const ReserveLayout lay(cell, sizeof(T), T_, B, H, R);
    unsigned char* reserve_end = static_cast<unsigned char*>(reserve) + 64 + lay.end;  // see reserve_bytes
    std::memset(base + lay.end, 0, size_t(reserve_end - (base + lay.end)));
    auto zero_tail = [&](T* region, int64_t ld, int64_t region_end) {
      unsigned char* from = reinterpret_cast<unsigned char*>(region + ord.total * ld);
      std::memset(from, 0, size_t(base + region_end - from));
    };
    zero_tail(S.acts, g.ld_acts(), lay.c);
    if (lstm) zero_tail(S.c, g.Hp, lay.h);
    zero_tail(S.h, ld_state, lay.m);
    if (proj) {
      zero_tail(S.m, ld_m, lay.end);
      for (int64_t i = 0; i < ord.total; ++i)  // m columns past Hp are not written by the step
        std::memset(S.m + i * ld_m + g.Hp, 0, size_t(ld_m - g.Hp) * sizeof(T));
    }
  }

  // Both biases folded into one interleaved row (the GEMM's c_init, whole
  // strips long), but for the GRU's b_hn, which sits inside r * (...).
  Buffer<T> bias((g.Gc + g.P - 1) / g.P * g.P, true), bias_hn;
  if (gru) bias_hn = Buffer<T>(g.Hp, true);
  for (int64_t q = 0; q < g.G; ++q)
    for (int64_t u = 0; u < H; ++u) {
      T v = p.b_ih ? static_cast<const T*>(p.b_ih)[q * H + u] : T(0);
      const T vh = p.b_hh ? static_cast<const T*>(p.b_hh)[q * H + u] : T(0);
      if (gru && q == 2) bias_hn.data()[u] = vh;
      else v += vh;
      bias.data()[g.col(q, u)] = v;
    }

  // Input rows of the projection GEMM: every (step, running row), or the B
  // rows of one_to_many's single input.
  const int64_t proj_rows = one_to_many ? B : ord.total;
  std::vector<const T*> x_rows(proj_rows);
  if (one_to_many) {
    for (int64_t r = 0; r < B; ++r) x_rows[r] = x + r * p.x_stride_b;
  } else {
    const std::vector<int64_t> at = ord.offsets(p.x_stride_t, p.x_stride_b, p.reverse);
    for (int64_t i = 0; i < proj_rows; ++i) x_rows[i] = x + at[i];
  }

  // The input term is computed a chunk of steps at a time, just before those
  // steps run: memory for it is O(chunk * B * 4H), not O(T * B * 4H), and it
  // is still in cache when the steps read it. A chunk holds at least
  // projection_chunk_rows() rows, so each GEMM stays large.
  const Buffer<T> wih_panels = pack_gate_panels(w_ih, I, g, threads, true);
  // The bfloat16 path: pair panels of the weights, and x rounded a chunk at a time.
  const int64_t n_strips = (g.Gc + g.P - 1) / g.P;
  Buffer<uint16_t> wih_pairs, x_bf16;
  std::vector<const uint16_t*> x_bf16_rows;
  const int64_t ld_x_bf16 = (I + 1) / 2 * 2;
  if constexpr (std::is_same_v<T, float>)
    if (bf16) wih_pairs = to_bf16_pairs(wih_panels.data(), n_strips, I, g.P, threads);
  int64_t chunk_steps = T_;
  if (!one_to_many)
    chunk_steps = std::min<int64_t>(T_, std::max<int64_t>(1, (projection_chunk_rows() + B - 1) / B));
  int64_t gx_rows = proj_rows;
  if (!one_to_many) {
    gx_rows = 0;
    for (int64_t t0 = 0; t0 < T_; t0 += chunk_steps)
      gx_rows = std::max(gx_rows, ord.off[std::min(T_, t0 + chunk_steps)] - ord.off[t0]);
  }
  Buffer<T> gx(gx_rows * g.Gc);
  std::vector<T*> gx_rows_ptr(gx_rows);
  for (int64_t i = 0; i < gx_rows; ++i) gx_rows_ptr[i] = gx.data() + i * g.Gc;
  // Input term of packed rows [row0, row0 + rows) into gx rows [0, rows).
  auto project = [&](int64_t row0, int64_t rows) {
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {
        if (!x_bf16.data()) {
          x_bf16 = Buffer<uint16_t>(gx_rows * ld_x_bf16, true);
          x_bf16_rows.resize(gx_rows);
          for (int64_t i = 0; i < gx_rows; ++i) x_bf16_rows[i] = x_bf16.data() + i * ld_x_bf16;
        }
        parallel_for(rows, threads, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) table.bf16.to_bf16(x_rows[row0 + r], x_bf16.data() + r * ld_x_bf16, I);
        });
        GemmBf16Args a{rows, g.Gc, I, x_bf16_rows.data(), wih_pairs.data(), 2 * g.P, ld_x_bf16 * g.P,
                       gx_rows_ptr.data(), bias.data(), false};
        run_gemm_bf16(table.bf16, a, threads);
        return;
      }
    }
    GemmArgs<T> a{rows, g.Gc, I, x_rows.data() + row0, wih_panels.data(), g.P, I * g.P,
                  gx_rows_ptr.data(), bias.data(), false};
    run_gemm(kern, a, threads);
  };
  if (one_to_many) project(0, proj_rows);

  const Buffer<T> whh_panels = pack_gate_panels(w_hh, Ks, g, threads);
  // feed="output": steps >= 1 see x_t = h_{t-1}, through W_ih + W_hh; the
  // GRU's n gate keeps W_hn and W_in apart (kGruFedBack: four vectors a
  // block, r and z summed, hn, xn: the LSTM's panel shape).
  Buffer<T> wsum_panels;
  const bool fed_back = one_to_many && p.feed == FL_FEED_OUTPUT;
  if (fed_back && !bf16) {  // (bf16 stacks them instead, below)
    const int64_t n = g.G * H * Ks;
    Buffer<T> wsum(gru ? 4 * H * Ks : n);
    for (int64_t i = 0; i < n; ++i) wsum.data()[i] = w_ih[i] + w_hh[i];
    if (gru) {
      std::memcpy(wsum.data() + 2 * H * Ks, w_hh + 2 * H * Ks, size_t(H * Ks) * sizeof(T));
      std::memcpy(wsum.data() + 3 * H * Ks, w_ih + 2 * H * Ks, size_t(H * Ks) * sizeof(T));
    }
    wsum_panels = pack_gate_panels(wsum.data(), Ks, gru ? Geometry(kLstm, H, kern.width) : g, threads);
  }
  // The bfloat16 step panels ([K, PS] panels as pairs) and each thread's h_{t-1}
  // scratch. feed="output"'s steps t >= 1 do not round W_ih + W_hh (a second
  // rounding of the weights): they stack the two along K, [W_ih | W_hh] against
  // [h_{t-1} | h_{t-1}] (the GRU's four-vector blocks: r, z [W_i | W_h], hn
  // [0 | W_hn], xn [W_in | 0]), twice the products of one sum.
  Buffer<uint16_t> whh_pairs, wstack_pairs, h_bf16;
  const int64_t ld_h_bf16 = ((fed_back ? 2 : 1) * Ks + 31) / 32 * 32;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      whh_pairs = to_bf16_pairs(whh_panels.data(), g.n_panels, Ks, g.PS, threads);
      if (fed_back) {
        const int64_t blocks = gru ? 4 : g.G;  // gate blocks of H rows
        Buffer<T> wstack(blocks * H * 2 * Ks, true);
        for (int64_t q = 0; q < blocks; ++q) {
          const int64_t qi = gru && q == 3 ? 2 : q;  // the GRU's xn block takes W_in
          for (int64_t u = 0; u < H; ++u) {
            T* row = wstack.data() + (q * H + u) * 2 * Ks;
            if (!(gru && q == 2)) std::memcpy(row, w_ih + (qi * H + u) * Ks, size_t(Ks) * sizeof(T));
            if (!(gru && q == 3)) std::memcpy(row + Ks, w_hh + (qi * H + u) * Ks, size_t(Ks) * sizeof(T));
          }
        }
        const Geometry gs = gru ? Geometry(kLstm, H, kern.width) : g;
        const Buffer<T> panels = pack_gate_panels(wstack.data(), 2 * Ks, gs, threads);
        wstack_pairs = to_bf16_pairs(panels.data(), gs.n_panels, 2 * Ks, gs.PS, threads);
      }
    }
  }
  // Projection h_t = m_t W_hr^T as a GEMM operand B[H, R].
  Buffer<T> whr_panels;
  if (proj) whr_panels = pack_panels(static_cast<const T*>(p.w_hr), H, R, 1, H, g.P);

  // Initial states, rows in sorted order, padded units zero.
  Buffer<T> h0 = sorted_rows(static_cast<const T*>(p.h0), ord, Ks, ld_state);
  Buffer<T> c0 = sorted_rows(lstm ? static_cast<const T*>(p.c0) : nullptr, ord, H, g.Hp);

  // Inference keeps two h buffers and c in place; training keeps every step.
  Buffer<T> h_other, m_buf;
  if (!training) h_other = Buffer<T>(B * ld_state, true);
  if (proj && !training) m_buf = Buffer<T>(B * ld_m, true);
  // Row pointers of the projection GEMM: m rows in, state rows out.
  std::vector<const T*> m_rows;
  std::vector<T*> state_rows[2];
  if (proj) {
    const int64_t n = training ? ord.total : B;
    m_rows.resize(n);
    for (int64_t i = 0; i < n; ++i) m_rows[i] = (training ? S.m : m_buf.data()) + i * ld_m;
    if (training) {
      state_rows[0].resize(n);
      for (int64_t i = 0; i < n; ++i) state_rows[0][i] = S.h + i * ld_state;
    } else {
      for (int k = 0; k < 2; ++k) {
        state_rows[k].resize(B);
        for (int64_t r = 0; r < B; ++r) state_rows[k][r] = (k == 0 ? h0.data() : h_other.data()) + r * ld_state;
      }
    }
  }

  T* y = (p.mode != FL_MANY_TO_ONE) ? static_cast<T*>(p.y) : nullptr;
  std::vector<int64_t> y_offset;  // of each packed (step, row)
  if (y) {
    y_offset = ord.offsets(p.y_stride_t, p.y_stride_b, p.reverse);
    if (p.lengths && !one_to_many)
      for (int64_t r = 0; r < B; ++r)
        for (int64_t t = ord.len[r]; t < T_; ++t)
          std::memset(y + t * p.y_stride_t + ord.perm[r] * p.y_stride_b, 0, size_t(Ks) * sizeof(T));
  }

  const int nth = recurrent_threads(B, g.Gc, Ks, g.n_panels);
  if (bf16) h_bf16 = Buffer<uint16_t>(int64_t(nth) * B * ld_h_bf16, true);
  SpinBarrier barrier(nth);
  TeamStop stop;
  for (int64_t t_begin = 0; t_begin < T_; t_begin += chunk_steps) {
    const int64_t t_end = std::min(T_, t_begin + chunk_steps);
    if (!one_to_many) project(ord.off[t_begin], ord.off[t_end] - ord.off[t_begin]);
    ThreadPool::instance().run(nth, [&](int tid, int n) {
      int64_t j0, j1;
      split_range(g.n_panels, tid, n, j0, j1);
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t rows = ord.nact[t];
        FwdStepArgs<T> s;
        s.rows = rows;
        s.H = H;
        s.K = Ks;
        s.Hp = g.Hp;
        s.bias_hn = gru ? bias_hn.data() : nullptr;
        s.w = (t >= 1 && wsum_panels.data()) ? wsum_panels.data() : whh_panels.data();
        T* state_out;
        if (training) {
          s.h_prev = t == 0 ? h0.data() : S.h + ord.off[t - 1] * ld_state;
          s.c_prev = t == 0 ? c0.data() : S.c + ord.off[t - 1] * g.Hp;
          state_out = S.h + ord.off[t] * ld_state;
          s.c_out = S.c + ord.off[t] * g.Hp;
          s.acts = g.A ? S.acts + ord.off[t] * g.ld_acts() : nullptr;
        } else {
          s.h_prev = (t % 2 == 0) ? h0.data() : h_other.data();
          state_out = (t % 2 == 0) ? h_other.data() : h0.data();
          s.c_prev = c0.data();
          s.c_out = c0.data();
          s.acts = nullptr;
        }
        s.ld_h_prev = ld_state;
        s.ld_c_prev = s.ld_c_out = g.Hp;
        s.ld_acts = g.ld_acts();
        if (proj) {
          s.h_out = training ? S.m + ord.off[t] * ld_m : m_buf.data();
          s.ld_h_out = ld_m;
        } else {
          s.h_out = state_out;
          s.ld_h_out = ld_state;
        }
        if (!one_to_many) {
          s.gx = gx.data() + (ord.off[t] - ord.off[t_begin]) * g.Gc;
          s.ld_gx = g.Gc;
        } else if (p.feed == FL_FEED_REPEAT || t == 0) {
          s.gx = gx.data();
          s.ld_gx = g.Gc;
        } else {  // zero input (first) or h_{t-1} through wsum (output): biases only
          s.gx = bias.data();
          s.ld_gx = 0;
        }
        s.y = (y && !proj) ? y : nullptr;
        s.y_row_offset = y ? y_offset.data() + ord.off[t] : nullptr;
        const int step_kind = gru && fed_back && t >= 1 ? int(kGruFedBack) : cell;
        const bool bf16_step = bf16;
        if (bf16_step) {
          const bool stacked = fed_back && t >= 1;
          s.w_bf16 = stacked ? wstack_pairs.data() : whh_pairs.data();
          s.h_repeats = stacked ? 2 : 1;
          s.h_bf16 = h_bf16.data() + tid * B * ld_h_bf16;
          s.ld_h_bf16 = ld_h_bf16;
        }
        if (j0 < j1) {
          if constexpr (std::is_same_v<T, float>)
            if (bf16_step) table.bf16.fwd_step[step_kind](s, j0, j1);
          if (!bf16_step) kern.fwd_step[step_kind](s, j0, j1);
        }
        stop.poll(tid, t);
        barrier.wait(tid);
        if (stop.now(t)) break;
        if (proj) {
          // h_t = m_t W_hr^T: every m_t column is needed, hence the barrier above.
          const int64_t m0 = training ? ord.off[t] : 0;
          T* const* out_rows = training ? state_rows[0].data() + ord.off[t] : state_rows[t % 2 == 0 ? 1 : 0].data();
          GemmArgs<T> a{rows, R, H, m_rows.data() + m0, whr_panels.data(), g.P, H * g.P, out_rows, nullptr, false};
          kern.gemm(a, tid, n);
          barrier.wait(tid);
          if (y) {  // rows of h_t nobody writes before two more barriers
            int64_t r0, r1;
            split_range(rows, tid, n, r0, r1);
            for (int64_t r = r0; r < r1; ++r)
              std::memcpy(y + y_offset[ord.off[t] + r], out_rows[r], size_t(R) * sizeof(T));
          }
        }
      }
    });
    throw_if_interrupted();
  }

  // Final states: each row's state after its last step.
  T* h_n = static_cast<T*>(p.h_n);
  T* c_n = static_cast<T*>(p.c_n);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t b = ord.perm[r], L = ord.len[r];
    const T *hs, *cs;
    if (training) {
      hs = S.h + (ord.off[L - 1] + r) * ld_state;
      cs = S.c + (ord.off[L - 1] + r) * g.Hp;
    } else {
      hs = (L % 2 == 0 ? h0.data() : h_other.data()) + r * ld_state;
      cs = c0.data() + r * g.Hp;
    }
    std::memcpy(h_n + b * Ks, hs, size_t(Ks) * sizeof(T));
    if (lstm) std::memcpy(c_n + b * H, cs, size_t(H) * sizeof(T));
  }
}

// bf16: the GEMMs and the recurrent products take their operands rounded to
// bfloat16 (float32 only), but for the projection's (kept float32).
template <class T>
void backward_typed(const fl_forward_params& fp, const void* reserve, const fl_backward_params& p, bool bf16 = false) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if (bf16 && !std::is_same_v<T, float>) throw std::logic_error("bfloat16 operands on a float64 call");
  const int64_t T_ = fp.T, B = fp.B, I = fp.I, H = fp.H, R = fp.proj_size;
  const int cell = int(fp.cell);
  const bool lstm = cell == kLstm, gru = cell == kGru;
  const KernelTable& table = reserve_table(reserve, cell, fp.dtype, T_, B, H, R);
  const TypedKernels<T>& kern = typed<T>(table);
  const int threads = num_threads();
  const bool proj = R > 0;
  const int64_t Ks = proj ? R : H;
  const Geometry g(cell, H, kern.width);
  const int64_t ld_state = proj ? R : g.Hp;
  const int64_t ld_m = g.n_groups * g.P;
  const int64_t Gc = g.Gc;
  const bool one_to_many = fp.mode == FL_ONE_TO_MANY;
  const bool feed_output = one_to_many && fp.feed == FL_FEED_OUTPUT;
  const BatchOrder ord(T_, B, one_to_many ? nullptr : fp.lengths);
  const SavedViews<T> S(cell, const_cast<void*>(reserve), T_, B, H, R);
  const T* x = static_cast<const T*>(fp.x);
  const T* w_ih = static_cast<const T*>(fp.w_ih);
  const T* w_hh = static_cast<const T*>(fp.w_hh);
  const T* dy = static_cast<const T*>(p.dy);

  // W^T panels: of W_hh (dh and dh0), W_ih (dx) and, for feed="output", W_ih + W_hh.
  const Buffer<T> wt_hh = pack_transposed_panels(w_hh, Ks, g, threads);
  const Buffer<T> wt_ih = pack_transposed_panels(w_ih, I, g, threads);
  Buffer<T> wt_sum;
  if (feed_output) {
    Buffer<T> wsum(g.G * H * Ks);
    for (int64_t i = 0; i < g.G * H * Ks; ++i) wsum.data()[i] = w_ih[i] + w_hh[i];
    if (gru) std::memcpy(wsum.data() + 2 * H * Ks, w_hh + 2 * H * Ks, size_t(H * Ks) * sizeof(T));  // n: W_hn
    wt_sum = pack_transposed_panels(wsum.data(), Ks, g, threads);
  }
  // The bfloat16 path: pair panels of W_ih^T and W_hh^T, and each thread's
  // dG_{t+1} scratch. Float32 steps with projection (dh_t goes through W_hr)
  // and with feed="output" (W_ih + W_hh: see forward_typed).
  const bool bf16_steps = bf16 && !proj;
  // feed="output" (x_{t+1} = h_t): dh_t = dG_{t+1} W_hh + dGx_{t+1} W_ih, the two
  // products of one sum stacked along K, [dG | dGx] against [W_hh^T ; W_ih^T]
  // (dGx: the input side's gate gradient, the GRU's n gate differs), their
  // rows rounded by all threads into one buffer before each step.
  const bool bf16_stacked = bf16_steps && feed_output;
  Buffer<uint16_t> wt_hh_pairs, wt_ih_pairs, wt_stack_pairs, dg_scratch, dg_stacked;
  const int64_t ld_dg_bf16 = (Gc + 31) / 32 * 32;
  if (bf16) {
    auto pairs_of = [&](const Buffer<T>& panels) {
      if constexpr (std::is_same_v<T, float>)
        return to_bf16_pairs(panels.data(), panels.size() / (Gc * g.P), Gc, g.P, threads);
      return Buffer<uint16_t>();
    };
    wt_ih_pairs = pairs_of(wt_ih);
    wt_hh_pairs = pairs_of(wt_hh);
    if constexpr (std::is_same_v<T, float>) {
      if (bf16_stacked) {  // I == Ks: both have ceil(Ks / P) groups of [Gc, P]
        const int64_t groups = wt_hh.size() / (Gc * g.P);
        Buffer<T> stack(groups * 2 * Gc * g.P);
        for (int64_t q = 0; q < groups; ++q) {
          std::memcpy(stack.data() + q * 2 * Gc * g.P, wt_hh.data() + q * Gc * g.P, size_t(Gc * g.P) * sizeof(T));
          std::memcpy(stack.data() + (q * 2 + 1) * Gc * g.P, wt_ih.data() + q * Gc * g.P,
                      size_t(Gc * g.P) * sizeof(T));
        }
        wt_stack_pairs = to_bf16_pairs(stack.data(), groups, 2 * Gc, g.P, threads);
        dg_stacked = Buffer<uint16_t>(B * 2 * Gc, true);
      }
    }
  }
  // The GRU's W_in as [H, Ks] panels: x_t = h_{t-1} reaches the n gate's
  // input side too (feed output), dh_{t-1} += dxn_t W_in.
  Buffer<T> wt_in;
  if (feed_output && gru) wt_in = pack_panels(w_ih + 2 * H * Ks, H, Ks, Ks, 1, g.P);
  // dm = dh W_hr as panels of W_hr [R, H] in hidden-unit groups.
  Buffer<T> whr_panels;
  if (proj) whr_panels = pack_panels(static_cast<const T*>(fp.w_hr), R, H, H, 1, g.P);

  // Initial states in sorted row order (the forward read the same).
  const Buffer<T> h0 = sorted_rows(static_cast<const T*>(fp.h0), ord, Ks, ld_state);
  const Buffer<T> c0 = sorted_rows(lstm ? static_cast<const T*>(fp.c0) : nullptr, ord, H, g.Hp);

  // Gradients entering each row at its last step: dh_n (plus dy for
  // many_to_one, whose y is that last state) and dc_n. The GRU's dc carries
  // dh_t * z_t, the part of dh_{t-1} outside the weights; zero at first.
  Buffer<T> dh_init(B * ld_state, true), dc(B * g.Hp, true);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t b = ord.perm[r];
    T* dh = dh_init.data() + r * ld_state;
    if (p.dh_n)
      for (int64_t u = 0; u < Ks; ++u) dh[u] += static_cast<const T*>(p.dh_n)[b * Ks + u];
    if (dy && fp.mode == FL_MANY_TO_ONE)
      for (int64_t u = 0; u < Ks; ++u) dh[u] += dy[b * Ks + u];
    if (lstm && p.dc_n)
      std::memcpy(dc.data() + r * g.Hp, static_cast<const T*>(p.dc_n) + b * H, size_t(H) * sizeof(T));
  }
  const bool dy_per_step = dy && fp.mode != FL_MANY_TO_ONE;
  std::vector<int64_t> dy_offset;  // of each packed (step, row)
  if (dy_per_step) dy_offset = ord.offsets(p.dy_stride_t, p.dy_stride_b, fp.reverse);

  // dG of every (step, row) [total, Gc], the recurrent side's for the GRU
  // (its n gate: hn's); the GRU's input side differs in the n gate only,
  // kept apart in dgx_n [total, Hp]. The GEMMs read dG in P-wide strips:
  // a slack of P zeros after the last row keeps the last strip in bounds.
  // The RNN's last step panel may hold blocks past Hp: their columns are
  // never written by the steps but read (times zero weights) by the GEMMs,
  // so they start as zeros.
  const bool unwritten_columns = Gc != g.G * g.Hp;
  Buffer<T> dg(ord.total * Gc + g.P, unwritten_columns);
  if (!unwritten_columns) std::memset(dg.data() + ord.total * Gc, 0, size_t(g.P) * sizeof(T));
  std::vector<const T*> dg_rows(ord.total);
  for (int64_t i = 0; i < ord.total; ++i) dg_rows[i] = dg.data() + i * Gc;
  Buffer<T> dgx_n;
  if (gru) dgx_n = Buffer<T>(ord.total * g.Hp);
  // With projection, dh_t of every (step, row) [total, R]: the recurrence
  // goes through it, and dW_hr sums dh_t^T m_t.
  Buffer<T> dh_all;
  std::vector<T*> dh_rows;
  if (proj) {
    dh_all = Buffer<T>(ord.total * R);
    dh_rows.resize(ord.total);
    for (int64_t i = 0; i < ord.total; ++i) dh_rows[i] = dh_all.data() + i * R;
  }

  const int nth = recurrent_threads(B, Gc, Ks, g.n_groups);
  if (bf16_steps) dg_scratch = Buffer<uint16_t>(int64_t(nth) * B * ld_dg_bf16, true);
  // With projection, dh_t += dG_{t+1} W_hh is a GEMM inside the loop: its A rows
  // rounded into one shared buffer (each thread a share, before a barrier).
  const bool bf16_proj_steps = bf16 && proj && !feed_output;
  Buffer<uint16_t> dg16;
  std::vector<uint16_t*> dg16_rows;
  if (bf16_proj_steps) {
    dg16 = Buffer<uint16_t>(B * Gc, true);
    for (int64_t r = 0; r < B; ++r) dg16_rows.push_back(dg16.data() + r * Gc);
  }
  SpinBarrier barrier(nth);
  TeamStop stop;
  ThreadPool::instance().run(nth, [&](int tid, int n) {
    int64_t q0, q1;
    split_range(g.n_groups, tid, n, q0, q1);
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const int64_t rows = ord.nact[t], rec_rows = ord.nact[t + 1];
      BwdStepArgs<T> s;
      if (bf16_steps) {
        s.wt_bf16 = wt_hh_pairs.data();
        s.dg_bf16 = dg_scratch.data() + tid * B * ld_dg_bf16;
        s.ld_dg_bf16 = ld_dg_bf16;
      }
      if constexpr (std::is_same_v<T, float>) {
        if (bf16_stacked) {  // [dG_{t+1} | dGx_{t+1}] rounded, this thread's share of the rows
          int64_t a0, a1;
          split_range(rec_rows, tid, n, a0, a1);
          for (int64_t r = a0; r < a1; ++r) {
            const int64_t i = ord.off[t + 1] + r;
            uint16_t* row = dg_stacked.data() + r * 2 * Gc;
            table.bf16.to_bf16(dg.data() + i * Gc, row, Gc);
            std::memcpy(row + Gc, row, size_t(Gc) * sizeof(uint16_t));
            if (gru)
              for (int64_t j = 0; j < g.n_blocks; ++j)
                table.bf16.to_bf16(dgx_n.data() + i * g.Hp + j * g.W, row + Gc + g.col(2, j * g.W), g.W);
          }
          barrier.wait(tid);
          s.wt_bf16 = wt_stack_pairs.data();
          s.dg_bf16 = dg_stacked.data();
          s.ld_dg_bf16 = 2 * Gc;
          s.dg_bf16_ready = true;
        }
      }
      s.rows = rows;
      s.rec_rows = rec_rows;
      s.H = H;
      s.Hp = g.Hp;
      s.dy_row_offset = dy_per_step ? dy_offset.data() + ord.off[t] : nullptr;
      s.acts = g.A ? S.acts + ord.off[t] * g.ld_acts() : nullptr;
      s.ld_acts = g.ld_acts();
      if (lstm) {
        s.c = S.c + ord.off[t] * g.Hp;
        s.ld_c = g.Hp;
        s.c_prev = t == 0 ? c0.data() : S.c + ord.off[t - 1] * g.Hp;
        s.ld_c_prev = g.Hp;
      } else {  // the RNN reads h_t, the GRU h_{t-1}
        s.c = S.h + ord.off[t] * ld_state;
        s.ld_c = ld_state;
        s.c_prev = t == 0 ? h0.data() : S.h + ord.off[t - 1] * ld_state;
        s.ld_c_prev = ld_state;
      }
      s.dc = dc.data();
      s.ld_dc = g.Hp;
      s.dg = dg.data() + ord.off[t] * Gc;
      s.ld_dg = Gc;
      s.dgx_n = gru ? dgx_n.data() + ord.off[t] * g.Hp : nullptr;
      s.ld_dgx_n = g.Hp;
      s.wt2 = nullptr;
      if (wt_in.data() && !bf16_stacked) {
        s.a2 = dgx_n.data() + ord.off[t + 1] * g.Hp;
        s.ld_a2 = g.Hp;
        s.K2 = H;
        s.wt2 = wt_in.data();
      }
      if (!proj) {
        s.K = bf16_stacked ? 2 * Gc : Gc;
        s.wt = feed_output ? wt_sum.data() : wt_hh.data();  // the weights of step t + 1 >= 1
        s.dg_next = dg.data() + ord.off[t + 1] * Gc;
        s.ld_dg_next = Gc;
        s.dh_init = dh_init.data();
        s.ld_dh_init = ld_state;
        s.dy = dy_per_step ? dy : nullptr;
      } else {
        // dh_t = dy_t + (dG_{t+1} W_hh, or dh_n where the row ends at t) ...
        int64_t r0, r1;
        split_range(rows, tid, n, r0, r1);
        for (int64_t r = r0; r < r1; ++r) {
          T* d = dh_rows[ord.off[t] + r];
          const T* init = r >= rec_rows ? dh_init.data() + r * ld_state : nullptr;
          const T* dyr = dy_per_step ? dy + dy_offset[ord.off[t] + r] : nullptr;
          for (int64_t u = 0; u < R; ++u) d[u] = (init ? init[u] : T(0)) + (dyr ? dyr[u] : T(0));
        }
        if constexpr (std::is_same_v<T, float>) {
          if (bf16_proj_steps) {  // this thread's share of the rows of dG_{t+1}, rounded
            int64_t a0, a1;
            split_range(rec_rows, tid, n, a0, a1);
            for (int64_t r = a0; r < a1; ++r) table.bf16.to_bf16(dg_rows[ord.off[t + 1] + r], dg16_rows[r], Gc);
          }
        }
        barrier.wait(tid);
        if (rec_rows > 0) {
          if constexpr (std::is_same_v<T, float>) {
            if (bf16_proj_steps) {
              GemmBf16Args a{rec_rows, R, Gc, dg16_rows.data(), wt_hh_pairs.data(), 2 * g.P, Gc * g.P,
                             dh_rows.data() + ord.off[t], nullptr, true};
              table.bf16.gemm(a, tid, n);
            }
          }
          if (!bf16_proj_steps) {
            GemmArgs<T> a{rec_rows, R, Gc, dg_rows.data() + ord.off[t + 1],
                          feed_output ? wt_sum.data() : wt_hh.data(), g.P, Gc * g.P,
                          dh_rows.data() + ord.off[t], nullptr, true};
            kern.gemm(a, tid, n);
          }
        }
        barrier.wait(tid);
        // ... then dm_t = dh_t W_hr feeds the cell backward.
        s.rec_rows = rows;
        s.K = R;
        s.wt = whr_panels.data();
        s.dg_next = dh_all.data() + ord.off[t] * R;
        s.ld_dg_next = R;
        s.dh_init = nullptr;
        s.ld_dh_init = 0;
        s.dy = nullptr;
        s.dy_row_offset = nullptr;
      }
      if (q0 < q1) {
        if constexpr (std::is_same_v<T, float>)
          if (bf16_steps) table.bf16.bwd_step[cell](s, q0, q1);
        if (!bf16_steps) kern.bwd_step[cell](s, q0, q1);
      }
      stop.poll(tid, T_ - t);
      barrier.wait(tid);
      if (stop.now(T_ - t)) break;
    }
  });
  throw_if_interrupted();

  // dh0 = dG_0 W_hh (step 0 always sees W_hh), plus the GRU's carried
  // dh_0 z_0 (added to the finished sum, see cell_backward_typed); dc0 from
  // the loop.
  {
    std::vector<T*> c_rows(B);
    for (int64_t r = 0; r < B; ++r) c_rows[r] = static_cast<T*>(p.dh0) + ord.perm[r] * Ks;
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {
        const Buffer<uint16_t> a16 = bf16_rows(table.bf16, B, Gc, Gc, threads, [&](int64_t r) { return dg_rows[r]; });
        std::vector<const uint16_t*> rows16(B);
        for (int64_t r = 0; r < B; ++r) rows16[r] = a16.data() + r * Gc;
        GemmBf16Args a{B, Ks, Gc, rows16.data(), wt_hh_pairs.data(), 2 * g.P, Gc * g.P, c_rows.data(), nullptr, false};
        run_gemm_bf16(table.bf16, a, threads);
      }
    }
    if (!bf16) {
      GemmArgs<T> a{B, Ks, Gc, dg_rows.data(), wt_hh.data(), g.P, Gc * g.P, c_rows.data(), nullptr, false};
      run_gemm(kern, a, threads);
    }
    if (gru)
      for (int64_t r = 0; r < B; ++r)
        for (int64_t u = 0; u < H; ++u) c_rows[r][u] += dc.data()[r * g.Hp + u];
    if (lstm)
      for (int64_t r = 0; r < B; ++r)
        std::memcpy(static_cast<T*>(p.dc0) + ord.perm[r] * H, dc.data() + r * g.Hp, size_t(H) * sizeof(T));
  }

  // db_hh: column sums of dG (accumulated in double, see sum_rows).
  Buffer<T> db_il(Gc);
  sum_rows(dg.data(), ord.total, Gc, g.W, db_il.data(), threads);

  // The input side's dG: the GRU's differs from the recurrent side's in the
  // n gate. Built in place once dW_hh and db_hh have read dG (below).
  auto input_side = [&] {
    if (!gru) return;
    parallel_for(ord.total, threads, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < g.n_blocks; ++j)
          std::memcpy(dg.data() + i * Gc + g.col(2, j * g.W), dgx_n.data() + i * g.Hp + j * g.W,
                      size_t(g.W) * sizeof(T));
    });
  };

  // dW_hh^T [Ks, 4Hp] = Hprev^T dG, Hprev = h_{t-1} of every packed row.
  std::vector<const T*> hprev_rows(ord.total);
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t r = 0; r < ord.nact[t]; ++r)
      hprev_rows[ord.off[t] + r] = t == 0 ? h0.data() + r * ld_state : S.h + (ord.off[t - 1] + r) * ld_state;
  Buffer<T> hprev_t(Ks * ord.total);
  transpose_rows(hprev_rows, Ks, hprev_t.data(), threads);
  Buffer<T> dwhh_t(Ks * Gc);
  auto weight_gemm = [&](const T* a_t, int64_t lda, int64_t M, int64_t K, const T* b, T* out, bool accumulate) {
    std::vector<const T*> a_rows(M);
    std::vector<T*> c_rows(M);
    for (int64_t m = 0; m < M; ++m) {
      a_rows[m] = a_t + m * lda;
      c_rows[m] = out + m * Gc;
    }
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {
        const int64_t ld = (K + 1) / 2 * 2;
        const Buffer<uint16_t> a16 = bf16_rows(table.bf16, M, K, ld, threads, [&](int64_t m) { return a_rows[m]; });
        const Buffer<uint16_t> b16 = bf16_pair_strips(b, K, Gc, Gc, g.P, threads);
        std::vector<const uint16_t*> rows16(M);
        for (int64_t m = 0; m < M; ++m) rows16[m] = a16.data() + m * ld;
        GemmBf16Args a{M, Gc, K, rows16.data(), b16.data(), 2 * g.P, ld * g.P, c_rows.data(), nullptr, accumulate};
        run_gemm_bf16(table.bf16, a, threads);
        return;
      }
    }
    GemmArgs<T> a{M, Gc, K, a_rows.data(), b, Gc, g.P, c_rows.data(), nullptr, accumulate};
    run_gemm(kern, a, threads);
  };
  weight_gemm(hprev_t.data(), ord.total, Ks, ord.total, dg.data(), dwhh_t.data(), false);
  input_side();
  Buffer<T> db_ih_il;  // the GRU's db_ih (the others: db_il)
  if (gru) {
    db_ih_il = Buffer<T>(Gc);
    sum_rows(dg.data(), ord.total, Gc, g.W, db_ih_il.data(), threads);
  }

  // dW_hr [R, H] = sum over (step, row) of dh_t^T m_t.
  if (proj) {
    Buffer<T> dh_t(R * ord.total);
    std::vector<const T*> rows(ord.total);
    for (int64_t i = 0; i < ord.total; ++i) rows[i] = dh_rows[i];
    transpose_rows(rows, R, dh_t.data(), threads);
    std::vector<const T*> a_rows(R);
    std::vector<T*> c_rows(R);
    for (int64_t k = 0; k < R; ++k) {
      a_rows[k] = dh_t.data() + k * ord.total;
      c_rows[k] = static_cast<T*>(p.dw_hr) + k * H;
    }
    GemmArgs<T> a{R, H, ord.total, a_rows.data(), S.m, ld_m, g.P, c_rows.data(), nullptr, false};
    run_gemm(kern, a, threads);
  }

  // dW_ih^T [I, 4Hp] and dx, by how x entered the steps.
  Buffer<T> dwih_t(I * Gc);
  T* dx = static_cast<T*>(p.dx);
  auto dx_gemm = [&](const T* const* rows, int64_t M, T* const* out_rows) {
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {
        const Buffer<uint16_t> a16 = bf16_rows(table.bf16, M, Gc, Gc, threads, [&](int64_t m) { return rows[m]; });
        std::vector<const uint16_t*> rows16(M);
        for (int64_t m = 0; m < M; ++m) rows16[m] = a16.data() + m * Gc;
        GemmBf16Args a{M, I, Gc, rows16.data(), wt_ih_pairs.data(), 2 * g.P, Gc * g.P, out_rows, nullptr, false};
        run_gemm_bf16(table.bf16, a, threads);
        return;
      }
    }
    GemmArgs<T> a{M, I, Gc, rows, wt_ih.data(), g.P, Gc * g.P, out_rows, nullptr, false};
    run_gemm(kern, a, threads);
  };
  if (!one_to_many) {
    Buffer<T> x_t(I * ord.total);
    std::vector<const T*> x_rows(ord.total);
    std::vector<T*> out_rows(ord.total);
    const std::vector<int64_t> x_at = ord.offsets(fp.x_stride_t, fp.x_stride_b, fp.reverse);
    const std::vector<int64_t> dx_at = ord.offsets(p.dx_stride_t, p.dx_stride_b, fp.reverse);
    for (int64_t i = 0; i < ord.total; ++i) {
      x_rows[i] = x + x_at[i];
      out_rows[i] = dx + dx_at[i];
    }
    transpose_rows(x_rows, I, x_t.data(), threads);
    weight_gemm(x_t.data(), ord.total, I, ord.total, dg.data(), dwih_t.data(), false);
    for (int64_t r = 0; r < B; ++r)  // padded steps get zero
      for (int64_t t = ord.len[r]; t < T_; ++t)
        std::memset(dx + t * p.dx_stride_t + ord.perm[r] * p.dx_stride_b, 0, size_t(I) * sizeof(T));
    dx_gemm(dg_rows.data(), ord.total, out_rows.data());
  } else {
    Buffer<T> x_t(I * B);
    std::vector<const T*> x_rows(B);
    for (int64_t r = 0; r < B; ++r) x_rows[r] = x + r * fp.x_stride_b;
    transpose_rows(x_rows, I, x_t.data(), threads);
    // The gate gradient that reaches x: summed over steps (repeat) or step 0's.
    // bfloat16 repeat: the products of every step (x^T dG_t, dG_t W_ih), summed
    // after: rounding the sum of the dG_t would round another operand.
    Buffer<T> dg_x;
    const T* dgx = dg.data();
    if (bf16 && fp.feed == FL_FEED_REPEAT) {
      Buffer<T> x_tiled(I * ord.total);  // x^T beside itself T times: [I, T*B]
      parallel_for(I, threads, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k)
          for (int64_t t = 0; t < T_; ++t)
            std::memcpy(x_tiled.data() + k * ord.total + t * B, x_t.data() + k * B, size_t(B) * sizeof(T));
      });
      weight_gemm(x_tiled.data(), ord.total, I, ord.total, dg.data(), dwih_t.data(), false);
      Buffer<T> dx_steps(ord.total * I);
      std::vector<T*> step_rows(ord.total);
      for (int64_t i = 0; i < ord.total; ++i) step_rows[i] = dx_steps.data() + i * I;
      dx_gemm(dg_rows.data(), ord.total, step_rows.data());
      Buffer<T> dx_sum(B * I);
      sum_rows(dx_steps.data(), T_, B * I, 1, dx_sum.data(), threads);  // over steps
      for (int64_t r = 0; r < B; ++r)
        std::memcpy(dx + r * p.dx_stride_b, dx_sum.data() + r * I, size_t(I) * sizeof(T));
    } else if (fp.feed == FL_FEED_REPEAT) {
      dg_x = Buffer<T>(B * Gc + g.P);
      std::memset(dg_x.data() + B * Gc, 0, size_t(g.P) * sizeof(T));
      sum_rows(dg.data(), T_, B * Gc, g.W, dg_x.data(), threads);  // sum over steps
      dgx = dg_x.data();
    }
    if (!(bf16 && fp.feed == FL_FEED_REPEAT)) {
      weight_gemm(x_t.data(), B, I, B, dgx, dwih_t.data(), false);
      if (feed_output && T_ > 1)  // x_t = h_{t-1} for t >= 1 also goes through W_ih
        weight_gemm(hprev_t.data() + B, ord.total, Ks, ord.total - B, dg.data() + B * Gc, dwih_t.data(), true);
      std::vector<const T*> rows(B);
      std::vector<T*> out_rows(B);
      for (int64_t r = 0; r < B; ++r) {
        rows[r] = dgx + r * Gc;
        out_rows[r] = dx + r * p.dx_stride_b;
      }
      dx_gemm(rows.data(), B, out_rows.data());
    }
  }

  // Back from interleaved columns to nn.LSTM's [4H, K] row layout.
  unpack_gate_columns(dwih_t.data(), Gc, I, g, static_cast<T*>(p.dw_ih), threads);
  unpack_gate_columns(dwhh_t.data(), Gc, Ks, g, static_cast<T*>(p.dw_hh), threads);
  auto unpack_bias = [&](const T* il, void* out) {
    if (!out) return;
    T* db = static_cast<T*>(out);
    for (int64_t row = 0; row < g.G * H; ++row) db[row] = il[g.col(row / H, row % H)];
  };
  unpack_bias(gru ? db_ih_il.data() : db_il.data(), p.db);
  unpack_bias(db_il.data(), p.db_hh);
}

// From this many rows on, packing the weights once and running the GEMM
// tiles beats reading every weight row once per batch row (measured at
// H = 256: B = 4 61 vs 102 us, B = 16 231 vs 206 us, B = 64 841 vs 471 us).
constexpr int64_t kCellPackedMinRows = 16;



}  // namespace

fl_forward_params one_step(const fl_cell_params& p) {
  fl_forward_params f{};
  f.dtype = p.dtype;
  f.cell = p.cell;
  f.mode = FL_MANY_TO_MANY;
  f.T = 1, f.B = p.B, f.I = p.I, f.H = p.H;
  f.x = p.x;
  f.x_stride_t = p.B * p.I, f.x_stride_b = p.I;
  f.w_ih = p.w_ih, f.w_hh = p.w_hh, f.b_ih = p.b_ih, f.b_hh = p.b_hh;
  f.h0 = p.h, f.c0 = p.c;
  f.h_n = p.h_new, f.c_n = p.c_new;
  f.device = p.device;
  return f;
}

namespace {

template <class T>
void cell_typed(const fl_cell_params& p) {
  const int cell = int(p.cell);
  const bool lstm = cell == kLstm, gru = cell == kGru;
  if (p.B >= kCellPackedMinRows && !p.acts) {  // one step of the sequence path (keeps no activations)
    forward_typed<T>(one_step(p), nullptr);
    return;
  }
  const TypedKernels<T>& kern = typed<T>(active_kernels());
  const int64_t H = p.H, G = cell_shape(cell).gates;
  // Both biases folded, but for the GRU's b_hn (inside r * (...)).
  Buffer<T> bias, bias_hn;
  if (p.b_ih || p.b_hh) {
    bias = Buffer<T>(G * H, true);
    for (int64_t i = 0; i < G * H; ++i) {
      if (p.b_ih) bias.data()[i] += static_cast<const T*>(p.b_ih)[i];
      if (p.b_hh && !(gru && i >= 2 * H)) bias.data()[i] += static_cast<const T*>(p.b_hh)[i];
    }
    if (gru && p.b_hh) {
      bias_hn = Buffer<T>(H);
      std::memcpy(bias_hn.data(), static_cast<const T*>(p.b_hh) + 2 * H, size_t(H) * sizeof(T));
    }
  }
  CellArgs<T> a{p.B,
                p.I,
                H,
                static_cast<const T*>(p.x),
                static_cast<const T*>(p.h),
                lstm ? static_cast<const T*>(p.c) : nullptr,
                static_cast<const T*>(p.w_ih),
                static_cast<const T*>(p.w_hh),
                bias.data(),
                bias_hn.data(),
                static_cast<T*>(p.h_new),
                lstm ? static_cast<T*>(p.c_new) : nullptr,
                static_cast<T*>(p.acts)};
  // Threads split hidden units in whole vectors; worth it once the weights
  // no longer stream from one core's cache quickly.
  const int64_t n_vec = (H + kern.width - 1) / kern.width;
  const double macs = double(G) * double(p.B) * double(H) * (double(p.I) + double(H));
  const int nth = macs >= double(1 << 20) ? num_threads() : 1;
  parallel_for(n_vec, nth, [&](int64_t v0, int64_t v1) {
    kern.cell[cell](a, v0 * kern.width, std::min<int64_t>(H, v1 * kern.width));
  });
}

// Backward of one cell step: dG per (row, unit) from the saved activations
// (gate_math.h), then dx = dGx W_ih, dh = dGh W_hh (+ the GRU's dh z) and
// the weight gradients as row combinations; weights are read as given (no
// packing), as in the forward. dGx and dGh (the gradients of the input and
// recurrent terms) differ only in the GRU's n gate.
template <class T>
void cell_backward_typed(const fl_cell_backward_params& p) {
  const TypedKernels<T>& kern = typed<T>(active_kernels());
  const int cell = int(p.cell);
  const bool gru = cell == kGru;
  const int64_t B = p.B, I = p.I, H = p.H, G = cell_shape(cell).gates * H, A = cell_step_saved(cell);
  const T* acts = static_cast<const T*>(p.acts);
  const T* h = static_cast<const T*>(p.h);
  const T* dh_new = static_cast<const T*>(p.dh_new);
  Buffer<T> dgh(B * G), dgx;
  if (gru) dgx = Buffer<T>(B * G);
  Buffer<T> direct(B * H, true);  // the GRU's dh_new * z
  for (int64_t b = 0; b < B; ++b)
    for (int64_t u = 0; u < H; ++u) {
      const T* a = acts + b * A * H + u;
      const int64_t k = b * H + u;
      const T dh = dh_new ? dh_new[k] : T(0);
      T* g = dgh.data() + b * G + u;
      if (cell == kLstm) {
        const GateActs<T> act{a[0], a[H], a[2 * H], a[3 * H]};
        const T* c = static_cast<const T*>(p.c);
        const T* c_new = static_cast<const T*>(p.c_new);
        const T* dc_new = static_cast<const T*>(p.dc_new);
        T dc_prev;
        const GateGrads<T> d = cell_backward(act, c_new[k], c[k], dh, dc_new ? dc_new[k] : T(0), dc_prev);
        static_cast<T*>(p.dc)[k] = dc_prev;
        g[0] = d.i, g[H] = d.f, g[2 * H] = d.g, g[3 * H] = d.o;
      } else if (gru) {
        const GruActs<T> act{a[0], a[H], a[2 * H], a[3 * H]};
        const GruGrads<T> d = gru_backward(act, h[k], dh, direct.data()[k]);
        g[0] = d.r, g[H] = d.z, g[2 * H] = d.hn;
        T* gx = dgx.data() + b * G + u;
        gx[0] = d.r, gx[H] = d.z, gx[2 * H] = d.xn;
      } else {
        // The RNN saves h_new: act' from it.
        g[0] = cell == kRnnRelu ? rnn_backward<true>(a[0], dh) : rnn_backward<false>(a[0], dh);
      }
    }
  const T* dg_x = gru ? dgx.data() : dgh.data();
  const int threads = double(G) * (double(I) + double(H)) * double(B) >= double(1 << 18) ? num_threads() : 1;
  const T* x = static_cast<const T*>(p.x);
  const T* w_ih = static_cast<const T*>(p.w_ih);
  const T* w_hh = static_cast<const T*>(p.w_hh);
  T* dw_ih = static_cast<T*>(p.dw_ih);
  T* dw_hh = static_cast<T*>(p.dw_hh);
  T* dh_out = static_cast<T*>(p.dh);
  // dx[b] = dGx[b] W_ih, dh[b] = dGh[b] W_hh (+ direct): threads split the columns.
  auto by_columns = [&](int64_t n_cols, auto&& fn) {
    parallel_for((n_cols + kMaxWidth - 1) / kMaxWidth, threads, [&](int64_t v0, int64_t v1) {
      fn(v0 * kMaxWidth, std::min(n_cols, v1 * kMaxWidth));
    });
  };
  for (int64_t b = 0; b < B; ++b) {
    by_columns(I, [&](int64_t k0, int64_t k1) {
      kern.combine({G, dg_x + b * G, 1, w_ih, I, static_cast<T*>(p.dx) + b * I, false}, k0, k1);
    });
    by_columns(H, [&](int64_t k0, int64_t k1) {
      kern.combine({G, dgh.data() + b * G, 1, w_hh, H, dh_out + b * H, false}, k0, k1);
    });
    // The GRU's dh_new z joins the sum of the rows last (added first, every
    // row's term would round at its size).
    if (gru)
      for (int64_t u = 0; u < H; ++u) dh_out[b * H + u] += direct.data()[b * H + u];
  }
  // dW_ih[r] = sum_b dGx[b, r] x[b], dW_hh[r] = sum_b dGh[b, r] h[b]: threads split the rows.
  parallel_for(G, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      kern.combine({B, dg_x + r, G, x, I, dw_ih + r * I, false}, 0, I);
      kern.combine({B, dgh.data() + r, G, h, H, dw_hh + r * H, false}, 0, H);
    }
  });
  auto column_sums = [&](const T* dg, void* out) {
    if (!out) return;
    T* db = static_cast<T*>(out);
    for (int64_t r = 0; r < G; ++r) {
      T sum = T(0);
      for (int64_t b = 0; b < B; ++b) sum += dg[b * G + r];
      db[r] = sum;
    }
  };
  column_sums(dg_x, p.db);
  column_sums(dgh.data(), p.db_hh);
}

}  // namespace

void cell_backward(const fl_cell_backward_params& p) {
  if (p.dtype == FL_FLOAT32) cell_backward_typed<float>(p);
  else cell_backward_typed<double>(p);
}

void forward_bf16_operands(const fl_forward_params& p, void* reserve) {
  if (p.dtype != FL_FLOAT32) throw std::logic_error("bfloat16 operands need float32 arrays");
  const CallScope call;
  forward_typed<float>(p, reserve, true);
}

void backward_bf16_operands(const fl_forward_params& fp, const void* reserve, const fl_backward_params& p) {
  if (fp.dtype != FL_FLOAT32) throw std::logic_error("bfloat16 operands need float32 arrays");
  const CallScope call;
  backward_typed<float>(fp, reserve, p, true);
}

void forward(const fl_forward_params& p, void* reserve) {
  const CallScope call;
  if (p.dtype == FL_FLOAT32) forward_typed<float>(p, reserve);
  else forward_typed<double>(p, reserve);
}

void backward(const fl_forward_params& fp, const void* reserve, const fl_backward_params& p) {
  const CallScope call;
  if (fp.dtype == FL_FLOAT32) backward_typed<float>(fp, reserve, p);
  else backward_typed<double>(fp, reserve, p);
}

void cell(const fl_cell_params& p) {
  if (p.dtype == FL_FLOAT32) cell_typed<float>(p);
  else cell_typed<double>(p);
}

}  // namespace cpu
}  // namespace fusedlstm
