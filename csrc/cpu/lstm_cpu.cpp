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
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <numeric>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace fusedlstm {
namespace cpu {

namespace {

// Large workspaces come back for the next call instead of going to the OS:
// a fresh multi-megabyte allocation is mmapped and every page faulted and
// zeroed on first touch, which cost more than packing the weights at B = 1.
// Blocks of at least kMinCached bytes are kept, kMaxCachedTotal at most.
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // leaked: used until exit
    return *cache;
  }
  void* take(size_t bytes, size_t* capacity) {
    if (bytes >= kMinCached) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        *capacity = it->first;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    *capacity = bytes;
    return std::aligned_alloc(64, bytes);
  }
  void give(void* p, size_t capacity) {
    if (capacity >= kMinCached) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + capacity <= kMaxCachedTotal) {
        free_.emplace(capacity, p);
        cached_ += capacity;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr size_t kMinCached = size_t(1) << 20;
  static constexpr size_t kMaxCachedTotal = size_t(256) << 20;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// 64-byte aligned, uninitialised (or zeroed) storage.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n, bool zero = false) : n_(n) {
    if (n <= 0) return;
    const size_t bytes = (size_t(n) * sizeof(T) + 63) / 64 * 64;
    p_ = static_cast<T*>(BlockCache::instance().take(bytes, &capacity_));
    if (!p_) throw std::bad_alloc();
    if (zero) std::memset(p_, 0, bytes);
  }
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_), capacity_(o.capacity_) { o.p_ = nullptr, o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(capacity_, o.capacity_);
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (p_) BlockCache::instance().give(p_, capacity_);
  }
  T* data() const { return p_; }
  int64_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
  size_t capacity_ = 0;
};

constexpr int kMaxWidth = 16;  // widest SIMD vector, in elements, of any kernel table

// Padded sizes and the gate-interleaved column map (see kernels.h).
struct Geometry {
  int64_t W, P, H, Hp, n_blocks, G4, n_groups;
  Geometry(int64_t hidden, int width)
      : W(width), P(4 * int64_t(width)), H(hidden), Hp((hidden + width - 1) / width * width),
        n_blocks(Hp / width), G4(4 * Hp), n_groups((n_blocks + 3) / 4) {
    if (width > kMaxWidth) throw std::logic_error("SIMD width above kMaxWidth");
  }
  // Column of gate q (0..3 = i,f,g,o), hidden unit u.
  int64_t col(int64_t q, int64_t u) const { return (u / W) * P + q * W + u % W; }
  // Inverse: column -> gate and unit.
  int64_t gate_of(int64_t c) const { return (c % P) / W; }
  int64_t unit_of(int64_t c) const { return (c / P) * W + c % W; }
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

// Runs fn(begin, end) over [0, n) on up to `threads` pool threads.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  const int nth = int(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  ThreadPool::instance().run(nth, [&](int tid, int nt) {
    int64_t b, e;
    split_range(n, tid, nt, b, e);
    if (b < e) fn(b, e);
  });
}

// Forward panels of a gate matrix w [4H, K] (rows q*H + u): panel j holds the
// four gates of hidden block j as a [K, P] slice; padded units are zero.
// Reads the W source rows of one gate in step (few streams for the
// prefetchers) and writes each W-wide run of a panel row whole.
template <class T>
Buffer<T> pack_gate_panels(const T* w, int64_t K, const Geometry& g, int threads) {
  Buffer<T> out(g.n_blocks * K * g.P);
  T* o = out.data();
  constexpr int64_t kTile = 64;
  parallel_for(g.n_blocks * 4, threads, [&](int64_t i0, int64_t i1) {
    const T* rows[kMaxWidth] = {};
    T tile[kMaxWidth][kTile + 1];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t j = i / 4, q = i % 4;
      const int64_t valid = std::min(g.W, g.H - j * g.W);
      for (int64_t l = 0; l < valid; ++l) rows[l] = w + (q * g.H + j * g.W + l) * K;
      // Source rows are K apart (often a multiple of 4 KiB, the same L1
      // set): copy a kTile-wide strip of each into a padded tile first.
      for (int64_t k0 = 0; k0 < K; k0 += kTile) {
        const int64_t kn = std::min(kTile, K - k0);
        for (int64_t l = 0; l < valid; ++l) std::memcpy(tile[l], rows[l] + k0, size_t(kn) * sizeof(T));
        T* dst = o + (j * K + k0) * g.P + q * g.W;
        for (int64_t k = 0; k < kn; ++k, dst += g.P) {
          for (int64_t l = 0; l < valid; ++l) dst[l] = tile[l][k];
          for (int64_t l = valid; l < g.W; ++l) dst[l] = T(0);
        }
      }
    }
  });
  return out;
}

// Panels of w^T for w [4H, N]: K = 4Hp gate-interleaved rows, N columns in
// strips of P; element (k, n) = w[q*H + u, n] with (q, u) the gate and unit
// of column k; zero for padded units and for n >= N.
template <class T>
Buffer<T> pack_transposed_panels(const T* w, int64_t N, const Geometry& g, int threads) {
  const int64_t n_panels = (N + g.P - 1) / g.P;
  Buffer<T> out(n_panels * g.G4 * g.P);
  T* o = out.data();
  parallel_for(g.G4, threads, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t u = g.unit_of(k);
      const T* src = u < g.H ? w + (g.gate_of(k) * g.H + u) * N : nullptr;
      for (int64_t p = 0; p < n_panels; ++p) {
        T* dst = o + (p * g.G4 + k) * g.P;
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

// The inverse of the gate interleaving for a [K, 4Hp] matrix:
// dst[(q*H + u) * K + k] = src[k * ld_src + col(q, u)], dst in nn.LSTM's
// [4H, K] layout. Each (gate, block) is a [K, W] strip of src: one cache
// line per source row, read once (rows ld_src apart share L1 sets, so no
// line may wait for reuse), turned through a padded tile into W rows of dst.
template <class T>
void unpack_gate_columns(const T* src, int64_t ld_src, int64_t K, const Geometry& g, T* dst, int threads) {
  constexpr int64_t kTile = 64;
  parallel_for(4 * g.n_blocks, threads, [&](int64_t i0, int64_t i1) {
    T tile[kMaxWidth][kTile + 1];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t q = i % 4, j = i / 4;
      const int64_t valid = std::min(g.W, g.H - j * g.W);
      const T* strip = src + j * g.P + q * g.W;
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

template <class T>
void run_gemm(const TypedKernels<T>& kern, const GemmArgs<T>& args, int threads) {
  if (args.M <= 0 || args.N <= 0) return;
  ThreadPool::instance().run(threads, [&](int tid, int n) { kern.gemm(args, tid, n); });
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
  const int64_t flops_per_step = 2 * rows * cols * K;
  int n = num_threads();
  if (flops_per_step < (int64_t(1) << 17)) n = 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(n, units_of_work)));
}

}  // namespace

template <class T>
struct Saved {
  const KernelTable* table = nullptr;  // backward must use the same layout
  fl_mode mode = FL_MANY_TO_MANY;
  fl_feed feed = FL_FEED_REPEAT;
  int64_t steps = 0, B = 0, I = 0, H = 0;
  BatchOrder order{0, 0, nullptr};
  Buffer<T> x;       // [total, I] packed rows (one_to_many: [B, I])
  // Weights as backward reads them (packed here, so the caller may change
  // its arrays after the forward): W^T panels of W_hh, of W_ih (for dx) and,
  // for feed="output", of W_ih + W_hh.
  Buffer<T> wt_hh, wt_ih, wt_sum;
  Buffer<T> h0, c0;  // [B, Hp] sorted rows
  Buffer<T> acts;    // [total, 4Hp] activations i,f,g,o, interleaved
  Buffer<T> h, c;    // [total, Hp] h_t, c_t

  int64_t bytes() const {
    return int64_t(sizeof(T)) * (x.size() + wt_hh.size() + wt_ih.size() + wt_sum.size() + h0.size() +
                                 c0.size() + acts.size() + h.size() + c.size());
  }
};

struct SavedForward {
  fl_dtype dtype;
  std::unique_ptr<Saved<float>> f32;
  std::unique_ptr<Saved<double>> f64;
};

void SavedForwardDeleter::operator()(SavedForward* s) const { delete s; }

int64_t saved_bytes(const SavedForward& s) { return s.f32 ? s.f32->bytes() : s.f64->bytes(); }

namespace {

template <class T>
std::unique_ptr<Saved<T>>& saved_slot(SavedForward& s);
template <>
std::unique_ptr<Saved<float>>& saved_slot<float>(SavedForward& s) {
  return s.f32;
}
template <>
std::unique_ptr<Saved<double>>& saved_slot<double>(SavedForward& s) {
  return s.f64;
}

template <class T>
void forward_typed(const fl_forward_params& p, SavedForwardPtr* saved_out) {
  const KernelTable& table = active_kernels();
  const TypedKernels<T>& kern = typed<T>(table);
  const int threads = num_threads();
  const int64_t T_ = p.T, B = p.B, I = p.I, H = p.H;
  const Geometry g(H, kern.width);
  const bool training = saved_out != nullptr;
  const bool one_to_many = p.mode == FL_ONE_TO_MANY;
  const T* x = static_cast<const T*>(p.x);
  const T* w_ih = static_cast<const T*>(p.w_ih);
  const T* w_hh = static_cast<const T*>(p.w_hh);

  auto sv = std::make_unique<Saved<T>>();
  Saved<T>& S = *sv;
  S.table = &table;
  S.mode = p.mode;
  S.feed = p.feed;
  S.steps = T_, S.B = B, S.I = I, S.H = H;
  S.order = BatchOrder(T_, B, one_to_many ? nullptr : p.lengths);
  const BatchOrder& ord = S.order;

  // Both biases folded into one interleaved row.
  Buffer<T> bias(g.G4, true);
  for (int64_t q = 0; q < 4; ++q)
    for (int64_t u = 0; u < H; ++u) {
      T v = T(0);
      if (p.b_ih) v += static_cast<const T*>(p.b_ih)[q * H + u];
      if (p.b_hh) v += static_cast<const T*>(p.b_hh)[q * H + u];
      bias.data()[g.col(q, u)] = v;
    }

  // Input rows of the projection GEMM: every (step, running row), or the B
  // rows of one_to_many's single input. Training copies them (packed), which
  // backward needs anyway.
  const int64_t proj_rows = one_to_many ? B : ord.total;
  std::vector<const T*> x_rows(proj_rows);
  if (one_to_many) {
    for (int64_t r = 0; r < B; ++r) x_rows[r] = x + r * p.x_stride_b;
  } else {
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t r = 0; r < ord.nact[t]; ++r)
        x_rows[ord.off[t] + r] = x + t * p.x_stride_t + ord.perm[r] * p.x_stride_b;
  }
  if (training) {
    S.x = Buffer<T>(proj_rows * I);
    for (int64_t i = 0; i < proj_rows; ++i) {
      std::memcpy(S.x.data() + i * I, x_rows[i], size_t(I) * sizeof(T));
      x_rows[i] = S.x.data() + i * I;
    }
    S.wt_hh = pack_transposed_panels(w_hh, H, g, threads);
    S.wt_ih = pack_transposed_panels(w_ih, I, g, threads);
  }

  // The input term is computed a chunk of steps at a time, just before those
  // steps run: memory for it is O(chunk * B * 4H), not O(T * B * 4H), and it
  // is still in cache when the steps read it. A chunk holds at least
  // projection_chunk_rows() rows, so each GEMM stays large.
  const Buffer<T> wih_panels = pack_gate_panels(w_ih, I, g, threads);
  int64_t chunk_steps = T_;
  if (!one_to_many)
    chunk_steps = std::min<int64_t>(T_, std::max<int64_t>(1, (projection_chunk_rows() + B - 1) / B));
  int64_t gx_rows = proj_rows;
  if (!one_to_many) {
    gx_rows = 0;
    for (int64_t t0 = 0; t0 < T_; t0 += chunk_steps)
      gx_rows = std::max(gx_rows, ord.off[std::min(T_, t0 + chunk_steps)] - ord.off[t0]);
  }
  Buffer<T> gx(gx_rows * g.G4);
  std::vector<T*> gx_rows_ptr(gx_rows);
  for (int64_t i = 0; i < gx_rows; ++i) gx_rows_ptr[i] = gx.data() + i * g.G4;
  // Input term of packed rows [row0, row0 + rows) into gx rows [0, rows).
  auto project = [&](int64_t row0, int64_t rows) {
    GemmArgs<T> a{rows, g.G4, I, x_rows.data() + row0, wih_panels.data(), g.P, I * g.P,
                  gx_rows_ptr.data(), bias.data(), false};
    run_gemm(kern, a, threads);
  };
  if (one_to_many) project(0, proj_rows);

  const Buffer<T> whh_panels = pack_gate_panels(w_hh, H, g, threads);
  Buffer<T> wsum_panels;  // feed="output": steps >= 1 see x_t = h_{t-1}
  if (one_to_many && p.feed == FL_FEED_OUTPUT) {
    Buffer<T> wsum(4 * H * H);
    for (int64_t i = 0; i < 4 * H * H; ++i) wsum.data()[i] = w_ih[i] + w_hh[i];
    wsum_panels = pack_gate_panels(wsum.data(), H, g, threads);
    if (training) S.wt_sum = pack_transposed_panels(wsum.data(), H, g, threads);
  }

  // Initial states, rows in sorted order, padded units zero.
  Buffer<T> h0(B * g.Hp, true), c0(B * g.Hp, true);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t b = ord.perm[r];
    if (p.h0) std::memcpy(h0.data() + r * g.Hp, static_cast<const T*>(p.h0) + b * H, size_t(H) * sizeof(T));
    if (p.c0) std::memcpy(c0.data() + r * g.Hp, static_cast<const T*>(p.c0) + b * H, size_t(H) * sizeof(T));
  }

  // Inference keeps two h buffers and c in place; training keeps every step.
  Buffer<T> h_other;
  if (training) {
    S.acts = Buffer<T>(ord.total * g.G4);
    S.h = Buffer<T>(ord.total * g.Hp);
    S.c = Buffer<T>(ord.total * g.Hp);
  } else {
    h_other = Buffer<T>(B * g.Hp, true);
  }

  T* y = (p.mode != FL_MANY_TO_ONE) ? static_cast<T*>(p.y) : nullptr;
  std::vector<int64_t> y_row_offset(B);
  for (int64_t r = 0; r < B; ++r) y_row_offset[r] = ord.perm[r] * p.y_stride_b;
  if (y && p.lengths && !one_to_many)
    for (int64_t r = 0; r < B; ++r)
      for (int64_t t = ord.len[r]; t < T_; ++t)
        std::memset(y + t * p.y_stride_t + y_row_offset[r], 0, size_t(H) * sizeof(T));

  const int nth = recurrent_threads(B, g.G4, H, g.n_blocks);
  SpinBarrier barrier(nth);
  for (int64_t t_begin = 0; t_begin < T_; t_begin += chunk_steps) {
    const int64_t t_end = std::min(T_, t_begin + chunk_steps);
    if (!one_to_many) project(ord.off[t_begin], ord.off[t_end] - ord.off[t_begin]);
    ThreadPool::instance().run(nth, [&](int tid, int n) {
      int64_t j0, j1;
      split_range(g.n_blocks, tid, n, j0, j1);
      for (int64_t t = t_begin; t < t_end; ++t) {
        FwdStepArgs<T> s;
        s.rows = ord.nact[t];
        s.H = H;
        s.w = (t >= 1 && wsum_panels.data()) ? wsum_panels.data() : whh_panels.data();
        if (training) {
          s.h_prev = t == 0 ? h0.data() : S.h.data() + ord.off[t - 1] * g.Hp;
          s.c_prev = t == 0 ? c0.data() : S.c.data() + ord.off[t - 1] * g.Hp;
          s.h_out = S.h.data() + ord.off[t] * g.Hp;
          s.c_out = S.c.data() + ord.off[t] * g.Hp;
          s.acts = S.acts.data() + ord.off[t] * g.G4;
        } else {
          s.h_prev = (t % 2 == 0) ? h0.data() : h_other.data();
          s.h_out = (t % 2 == 0) ? h_other.data() : h0.data();
          s.c_prev = c0.data();
          s.c_out = c0.data();
          s.acts = nullptr;
        }
        s.ld_h_prev = s.ld_c_prev = s.ld_h_out = s.ld_c_out = g.Hp;
        s.ld_acts = g.G4;
        if (!one_to_many) {
          s.gx = gx.data() + (ord.off[t] - ord.off[t_begin]) * g.G4;
          s.ld_gx = g.G4;
        } else if (p.feed == FL_FEED_REPEAT || t == 0) {
          s.gx = gx.data();
          s.ld_gx = g.G4;
        } else {  // zero input (first) or h_{t-1} through wsum (output): biases only
          s.gx = bias.data();
          s.ld_gx = 0;
        }
        s.y = y ? y + t * p.y_stride_t : nullptr;
        s.y_row_offset = y_row_offset.data();
        if (j0 < j1) kern.fwd_step(s, j0, j1);
        barrier.wait(tid);
      }
    });
  }

  // Final states: each row's state after its last step.
  T* h_n = static_cast<T*>(p.h_n);
  T* c_n = static_cast<T*>(p.c_n);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t b = ord.perm[r], L = ord.len[r];
    const T *hs, *cs;
    if (training) {
      hs = S.h.data() + (ord.off[L - 1] + r) * g.Hp;
      cs = S.c.data() + (ord.off[L - 1] + r) * g.Hp;
    } else {
      hs = (L % 2 == 0 ? h0.data() : h_other.data()) + r * g.Hp;
      cs = c0.data() + r * g.Hp;
    }
    std::memcpy(h_n + b * H, hs, size_t(H) * sizeof(T));
    std::memcpy(c_n + b * H, cs, size_t(H) * sizeof(T));
  }

  if (training) {
    S.h0 = std::move(h0);
    S.c0 = std::move(c0);
    saved_out->reset(new SavedForward{p.dtype, nullptr, nullptr});
    saved_slot<T>(**saved_out) = std::move(sv);
  }
}

template <class T>
void backward_typed(const Saved<T>& S, const fl_backward_params& p) {
  const TypedKernels<T>& kern = typed<T>(*S.table);
  const int threads = num_threads();
  const int64_t T_ = S.steps, B = S.B, I = S.I, H = S.H;
  const Geometry g(H, kern.width);
  const BatchOrder& ord = S.order;
  const bool one_to_many = S.mode == FL_ONE_TO_MANY;
  const bool feed_output = one_to_many && S.feed == FL_FEED_OUTPUT;
  const T* dy = static_cast<const T*>(p.dy);

  const Buffer<T>& wt_hh = S.wt_hh;
  const Buffer<T>& wt_ih = S.wt_ih;
  const Buffer<T>& wt_sum = S.wt_sum;
  // Gradients entering each row at its last step: dh_n (plus dy for
  // many_to_one, whose y is that last state) and dc_n.
  Buffer<T> dh_init(B * g.Hp, true), dc(B * g.Hp, true);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t b = ord.perm[r];
    T* dh = dh_init.data() + r * g.Hp;
    if (p.dh_n)
      for (int64_t u = 0; u < H; ++u) dh[u] += static_cast<const T*>(p.dh_n)[b * H + u];
    if (dy && S.mode == FL_MANY_TO_ONE)
      for (int64_t u = 0; u < H; ++u) dh[u] += dy[b * H + u];
    if (p.dc_n) std::memcpy(dc.data() + r * g.Hp, static_cast<const T*>(p.dc_n) + b * H, size_t(H) * sizeof(T));
  }
  const bool dy_per_step = dy && S.mode != FL_MANY_TO_ONE;
  std::vector<int64_t> dy_row_offset(B);
  for (int64_t r = 0; r < B; ++r) dy_row_offset[r] = ord.perm[r] * p.dy_stride_b;

  Buffer<T> dg(ord.total * g.G4);
  const int nth = recurrent_threads(B, g.G4, H, g.n_groups);
  SpinBarrier barrier(nth);
  ThreadPool::instance().run(nth, [&](int tid, int n) {
    int64_t q0, q1;
    split_range(g.n_groups, tid, n, q0, q1);
    for (int64_t t = T_ - 1; t >= 0; --t) {
      BwdStepArgs<T> s;
      s.rows = ord.nact[t];
      s.rec_rows = ord.nact[t + 1];
      s.H = H;
      s.Hp = g.Hp;
      s.wt = feed_output ? wt_sum.data() : wt_hh.data();  // the weights of step t + 1 >= 1
      s.dg_next = dg.data() + ord.off[t + 1] * g.G4;
      s.ld_dg_next = g.G4;
      s.dh_init = dh_init.data();
      s.ld_dh_init = g.Hp;
      s.dy = dy_per_step ? dy + t * p.dy_stride_t : nullptr;
      s.dy_row_offset = dy_row_offset.data();
      s.acts = S.acts.data() + ord.off[t] * g.G4;
      s.ld_acts = g.G4;
      s.c = S.c.data() + ord.off[t] * g.Hp;
      s.ld_c = g.Hp;
      s.c_prev = t == 0 ? S.c0.data() : S.c.data() + ord.off[t - 1] * g.Hp;
      s.ld_c_prev = g.Hp;
      s.dc = dc.data();
      s.ld_dc = g.Hp;
      s.dg = dg.data() + ord.off[t] * g.G4;
      s.ld_dg = g.G4;
      if (q0 < q1) kern.bwd_step(s, q0, q1);
      barrier.wait(tid);
    }
  });

  std::vector<const T*> dg_rows(ord.total);
  for (int64_t i = 0; i < ord.total; ++i) dg_rows[i] = dg.data() + i * g.G4;

  // dh0 = dG_0 W_hh (step 0 always sees W_hh); dc0 from the loop.
  {
    std::vector<T*> c_rows(B);
    for (int64_t r = 0; r < B; ++r) c_rows[r] = static_cast<T*>(p.dh0) + ord.perm[r] * H;
    GemmArgs<T> a{B, H, g.G4, dg_rows.data(), wt_hh.data(), g.P, g.G4 * g.P, c_rows.data(), nullptr, false};
    run_gemm(kern, a, threads);
    for (int64_t r = 0; r < B; ++r)
      std::memcpy(static_cast<T*>(p.dc0) + ord.perm[r] * H, dc.data() + r * g.Hp, size_t(H) * sizeof(T));
  }

  // db: column sums of dG (accumulated in double, see sum_rows).
  Buffer<T> db_il(g.G4);
  sum_rows(dg.data(), ord.total, g.G4, g.W, db_il.data(), threads);

  // dW_hh^T [H, 4Hp] = Hprev^T dG, Hprev = h_{t-1} of every packed row.
  const int64_t G4 = g.G4;
  std::vector<const T*> hprev_rows(ord.total);
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t r = 0; r < ord.nact[t]; ++r)
      hprev_rows[ord.off[t] + r] =
          t == 0 ? S.h0.data() + r * g.Hp : S.h.data() + (ord.off[t - 1] + r) * g.Hp;
  Buffer<T> hprev_t(H * ord.total);
  transpose_rows(hprev_rows, H, hprev_t.data(), threads);
  Buffer<T> dwhh_t(H * G4);
  auto weight_gemm = [&](const T* a_t, int64_t lda, int64_t M, int64_t K, const T* b, T* out, bool accumulate) {
    std::vector<const T*> a_rows(M);
    std::vector<T*> c_rows(M);
    for (int64_t m = 0; m < M; ++m) {
      a_rows[m] = a_t + m * lda;
      c_rows[m] = out + m * G4;
    }
    GemmArgs<T> a{M, G4, K, a_rows.data(), b, G4, g.P, c_rows.data(), nullptr, accumulate};
    run_gemm(kern, a, threads);
  };
  weight_gemm(hprev_t.data(), ord.total, H, ord.total, dg.data(), dwhh_t.data(), false);

  // dW_ih^T [I, 4Hp] and dx, by how x entered the steps.
  Buffer<T> dwih_t(I * G4);
  T* dx = static_cast<T*>(p.dx);
  auto dx_gemm = [&](const T* const* rows, int64_t M, T* const* out_rows) {
    GemmArgs<T> a{M, I, G4, rows, wt_ih.data(), g.P, G4 * g.P, out_rows, nullptr, false};
    run_gemm(kern, a, threads);
  };
  if (!one_to_many) {
    Buffer<T> x_t(I * ord.total);
    std::vector<const T*> x_rows(ord.total);
    for (int64_t i = 0; i < ord.total; ++i) x_rows[i] = S.x.data() + i * I;
    transpose_rows(x_rows, I, x_t.data(), threads);
    weight_gemm(x_t.data(), ord.total, I, ord.total, dg.data(), dwih_t.data(), false);
    std::vector<T*> out_rows(ord.total);
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t r = 0; r < ord.nact[t]; ++r)
        out_rows[ord.off[t] + r] = dx + t * p.dx_stride_t + ord.perm[r] * p.dx_stride_b;
    for (int64_t r = 0; r < B; ++r)  // padded steps get zero
      for (int64_t t = ord.len[r]; t < T_; ++t)
        std::memset(dx + t * p.dx_stride_t + ord.perm[r] * p.dx_stride_b, 0, size_t(I) * sizeof(T));
    dx_gemm(dg_rows.data(), ord.total, out_rows.data());
  } else {
    Buffer<T> x_t(I * B);
    std::vector<const T*> x_rows(B);
    for (int64_t r = 0; r < B; ++r) x_rows[r] = S.x.data() + r * I;
    transpose_rows(x_rows, I, x_t.data(), threads);
    // The gate gradient that reaches x: summed over steps (repeat) or step 0's.
    Buffer<T> dg_x;
    const T* dgx = dg.data();
    if (S.feed == FL_FEED_REPEAT) {
      dg_x = Buffer<T>(B * G4);
      sum_rows(dg.data(), T_, B * G4, g.W, dg_x.data(), threads);  // sum over steps
      dgx = dg_x.data();
    }
    weight_gemm(x_t.data(), B, I, B, dgx, dwih_t.data(), false);
    if (feed_output && T_ > 1)  // x_t = h_{t-1} for t >= 1 also goes through W_ih
      weight_gemm(hprev_t.data() + B, ord.total, H, ord.total - B, dg.data() + B * G4, dwih_t.data(), true);
    std::vector<const T*> rows(B);
    std::vector<T*> out_rows(B);
    for (int64_t r = 0; r < B; ++r) {
      rows[r] = dgx + r * G4;
      out_rows[r] = dx + r * p.dx_stride_b;
    }
    dx_gemm(rows.data(), B, out_rows.data());
  }

  // Back from interleaved columns to nn.LSTM's [4H, K] row layout.
  unpack_gate_columns(dwih_t.data(), G4, I, g, static_cast<T*>(p.dw_ih), threads);
  unpack_gate_columns(dwhh_t.data(), G4, H, g, static_cast<T*>(p.dw_hh), threads);
  if (p.db) {
    T* db = static_cast<T*>(p.db);
    for (int64_t row = 0; row < 4 * H; ++row) db[row] = db_il.data()[g.col(row / H, row % H)];
  }
}

// From this many rows on, packing the weights once and running the GEMM
// tiles beats reading every weight row once per batch row (measured at
// H = 256: B = 4 61 vs 102 us, B = 16 231 vs 206 us, B = 64 841 vs 471 us).
constexpr int64_t kCellPackedMinRows = 16;

template <class T>
void cell_typed(const fl_cell_params& p) {
  if (p.B >= kCellPackedMinRows) {  // one step of the sequence path
    fl_forward_params f{};
    f.dtype = p.dtype;
    f.mode = FL_MANY_TO_MANY;
    f.T = 1, f.B = p.B, f.I = p.I, f.H = p.H;
    f.x = p.x;
    f.x_stride_t = p.B * p.I, f.x_stride_b = p.I;
    f.w_ih = p.w_ih, f.w_hh = p.w_hh, f.b_ih = p.b_ih, f.b_hh = p.b_hh;
    f.h0 = p.h, f.c0 = p.c;
    f.h_n = p.h_new, f.c_n = p.c_new;
    forward_typed<T>(f, nullptr);
    return;
  }
  const TypedKernels<T>& kern = typed<T>(active_kernels());
  const int64_t H = p.H;
  Buffer<T> bias;
  if (p.b_ih || p.b_hh) {
    bias = Buffer<T>(4 * H, true);
    for (int64_t i = 0; i < 4 * H; ++i) {
      if (p.b_ih) bias.data()[i] += static_cast<const T*>(p.b_ih)[i];
      if (p.b_hh) bias.data()[i] += static_cast<const T*>(p.b_hh)[i];
    }
  }
  CellArgs<T> a{p.B,
                p.I,
                H,
                static_cast<const T*>(p.x),
                static_cast<const T*>(p.h),
                static_cast<const T*>(p.c),
                static_cast<const T*>(p.w_ih),
                static_cast<const T*>(p.w_hh),
                bias.data(),
                static_cast<T*>(p.h_new),
                static_cast<T*>(p.c_new)};
  // Threads split hidden units in whole vectors; worth it once the weights
  // no longer stream from one core's cache quickly.
  const int64_t n_vec = (H + kern.width - 1) / kern.width;
  const int64_t macs = p.B * 4 * H * (p.I + H);
  const int nth = macs >= (int64_t(1) << 20) ? num_threads() : 1;
  parallel_for(n_vec, nth, [&](int64_t v0, int64_t v1) {
    kern.cell(a, v0 * kern.width, std::min<int64_t>(H, v1 * kern.width));
  });
}

}  // namespace

void forward(const fl_forward_params& p, SavedForwardPtr* saved) {
  if (p.dtype == FL_FLOAT32) forward_typed<float>(p, saved);
  else forward_typed<double>(p, saved);
}

void backward(const SavedForward& s, const fl_backward_params& p) {
  if (s.f32) backward_typed<float>(*s.f32, p);
  else backward_typed<double>(*s.f64, p);
}

void cell(const fl_cell_params& p) {
  if (p.dtype == FL_FLOAT32) cell_typed<float>(p);
  else cell_typed<double>(p);
}

}  // namespace cpu
}  // namespace fusedlstm
