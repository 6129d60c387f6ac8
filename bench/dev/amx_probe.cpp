// Lab probe for issue 12: the LSTM recurrent step's GEMM in bf16 on AMX vs AVX512-BF16 vs float32 AVX-512.
//
//   g++ -O2 -std=c++20 -mamx-tile -mamx-bf16 -mavx512f -mavx512bf16 -mavx512bw -mavx512vl -pthread bench/dev/amx_probe.cpp -o /tmp/amx_probe
//   /tmp/amx_probe [out.json]          (prints progress to stderr, the JSON to stdout and to out.json; ~100 s)
//   AMX_PROBE_QUICK=1 /tmp/amx_probe   (validation + few reps: a smoke test, ~20 s)
//   AMX_PROBE_SKIP_AMX=1 ...           (behave as if the tile-data permission were refused: AVX-512 variants only)
// Needs a CPU with AVX-512 BF16 (the AVX-512 variants run unconditionally); AMX runs only if the kernel grants
// XTILEDATA. A refused permission is reported (stderr and "amx_permission" in the JSON) and is not an error: the
// exit status is 0 when every variant that ran validated, 1 otherwise.
//
// Standalone: no library code, not part of the package build.
//
// Problem per step: G[B, 4H] = h[B, H] x W^T, W = W_hh [4H, H] (row n = gate column n, gate order i,f,g,o).
// Then h_next[b, j] = x / (1 + |x|), x = sum over gates g of G[b, g*H + j] (a cheap tanh-like op over all four
// gates, so every column of G feeds the next step: a real recurrence, T = 100 dependent steps per timed sequence).
//
// Variants:
//   fp32_avx512   W float32 packed [nb][k][16]; 512-bit FMA, register tile RB rows x NV zmm (the library's
//                 arithmetic class).
//   bf16_avx512   W bf16 in the AMX B-tile layout (below); vdpbf16ps, same register tile.
//   bf16_amx      W bf16 in the AMX B-tile layout; TDPBF16PS, tile config loaded once per T-step sequence.
//   bf16_amx_cfgstep  same, but ldtilecfg + tilerelease around every step (what a kernel pays if it cannot
//                 keep its tile state across steps).
//   bf16_amx_v2   B = 64 only: 4 C tiles = 4 row groups x 1 column block (amx_4x1), so each W tile is loaded
//                 once per step (v1's 2x2 loads it once per 32 rows).
//   bf16_amx_v3   v1's tiles, but h is kept in the A-tile layout (the pointwise op writes it so): every A load is
//                 one contiguous 1 KiB block (stride 64 B) instead of 16 rows 2H bytes apart.
//   bf16_amx_v4   v1 plus prefetcht0 of the W tiles kPfDist K blocks ahead.
//   bf16_amx_rowsplit  v1 kernels, 2 threads split the batch rows (B >= 32) instead of the columns: the threads
//                 share nothing, so no h exchange and no per-step barrier (each streams all of W).
// h is bf16 for the bf16 variants (rounded RNE each step), float32 for fp32; accumulation is float32 in all.
//
// Packed bf16 W (shared by AMX and AVX512-BF16): 4H/16 column blocks nb, each H/32 tiles kb of 1 KiB:
//   tile (nb, kb) at Wp + (nb * H/32 + kb) * 512 elements; row r (0..15) = K pair kb*16 + r;
//   element (r, 2j + e) = W[nb*16 + j][kb*32 + 2r + e]   (VNNI pairs: 16 rows x 64 bytes).
// So for a fixed nb the K pairs p = 0..H/2-1 are contiguous 64-byte rows: exactly a vdpbf16ps operand.
//
// AMX tiles: C (fp32 acc) 0..3, A (h rows) 4..5, B (W) 6..7.
//   B <  16: one A tile of B rows (partial tile), 1 x 2 blocking (2 C tiles).
//   B == 16: one full A tile, 1 x 2 blocking.
//   B >= 32: 2 A tiles (32 rows) x 2 B tiles -> 4 C tiles; B = 64 runs 2 such row groups.
//
// Threads: 2 threads split the 4H columns gate-interleaved (thread t owns hidden units j in its half, all four
// gates of them), so each thread computes its own slice of h_next; one spin barrier per step, h double-buffered.
//
// Validation: one step from random h, G poisoned with NaN first, every variant and thread count, against a
// float64 reference of the SAME bf16-rounded operands (must be fp32-accumulation sized, < 1e-5 of max|ref|),
// and against the float64 product of the unrounded float32 operands (shows the bf16 rounding itself).
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#define COMPILE_FLAGS "-O2 -std=c++20 -mamx-tile -mamx-bf16 -mavx512f -mavx512bf16 -mavx512bw -mavx512vl -pthread"

namespace {

constexpr int kT = 100;
constexpr long ARCH_GET_XCOMP_PERM = 0x1022;
constexpr long ARCH_REQ_XCOMP_PERM = 0x1023;
constexpr int XFEATURE_XTILEDATA = 18;

using bf16 = uint16_t;

inline bf16 f2bf(float f) {  // round to nearest even (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<bf16>(u >> 16);
}
inline float bf2f(bf16 b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class T>
T* aalloc(size_t n) {
  void* p = std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64);
  if (!p) { std::fprintf(stderr, "out of memory\n"); std::exit(1); }
  return static_cast<T*>(p);
}

void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof(s), &s);
}

// ---------------------------------------------------------------- AMX permission and tile config
bool g_amx_ok = false;
std::string g_amx_msg;

void request_amx() {
  if (std::getenv("AMX_PROBE_SKIP_AMX")) {
    g_amx_msg = "not requested (AMX_PROBE_SKIP_AMX set): AMX variants skipped";
    return;
  }
  long r = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
  if (r != 0) {
    g_amx_msg = std::string("arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) refused: ") + std::strerror(errno);
    return;
  }
  unsigned long mask = 0;
  r = syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mask);
  if (r != 0 || !(mask & (1ul << XFEATURE_XTILEDATA))) {
    g_amx_msg = "ARCH_REQ_XCOMP_PERM returned 0 but ARCH_GET_XCOMP_PERM does not show XTILEDATA";
    return;
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "granted (ARCH_GET_XCOMP_PERM mask 0x%lx)", mask);
  g_amx_msg = buf;
  g_amx_ok = true;
}

struct alignas(64) TileCfg {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileCfg) == 64);

// C tiles 0..3 and A tiles 4..5 get m rows; B tiles 6..7 are always 16 rows x 64 bytes.
TileCfg make_cfg(int m) {
  TileCfg c;
  for (int i = 0; i < 6; ++i) { c.rows[i] = static_cast<uint8_t>(m); c.colsb[i] = 64; }
  for (int i = 6; i < 8; ++i) { c.rows[i] = 16; c.colsb[i] = 64; }
  return c;
}

// ---------------------------------------------------------------- problem
struct Problem {
  int B, H;
  // originals (float32) and their bf16 rounding
  std::vector<float> W32;  // [4H, H]
  std::vector<float> h32;  // [B, H]
  bf16* Wp = nullptr;      // packed bf16 (layout above)
  float* Wf = nullptr;     // packed fp32 [nb][k][16]
  bf16* hb[2] = {};        // [B, H] bf16 ping-pong
  float* hf[2] = {};       // [B, H] fp32 ping-pong
  float* G = nullptr;      // [B, 4H]
};

void pack(Problem& p) {
  const int H = p.H, N = 4 * H, KB = H / 32;
  p.Wp = aalloc<bf16>(size_t(N) * H);
  p.Wf = aalloc<float>(size_t(N) * H);
  for (int nb = 0; nb < N / 16; ++nb)
    for (int kb = 0; kb < KB; ++kb)
      for (int r = 0; r < 16; ++r)
        for (int j = 0; j < 16; ++j)
          for (int e = 0; e < 2; ++e)
            p.Wp[(size_t(nb) * KB + kb) * 512 + r * 32 + 2 * j + e] =
                f2bf(p.W32[size_t(nb * 16 + j) * H + kb * 32 + 2 * r + e]);
  for (int nb = 0; nb < N / 16; ++nb)
    for (int k = 0; k < H; ++k)
      for (int j = 0; j < 16; ++j) p.Wf[(size_t(nb) * H + k) * 16 + j] = p.W32[size_t(nb * 16 + j) * H + k];
}

// ---------------------------------------------------------------- kernels (one column-block range [nb0, nb1))
template <int RB, int NV>
void fp32_block(const float* h, const float* Wf, float* G, int H, int r0, int nb) {
  __m512 acc[RB][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* w = Wf + size_t(nb) * H * 16;
  const size_t vs = size_t(H) * 16;
  for (int k = 0; k < H; ++k) {
    __m512 wv[NV];
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_load_ps(w + v * vs + k * 16);
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const __m512 a = _mm512_set1_ps(h[size_t(r0 + r) * H + k]);
      #pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, wv[v], acc[r][v]);
    }
  }
  const int N = 4 * H;
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(G + size_t(r0 + r) * N + (nb + v) * 16, acc[r][v]);
}

template <int RB, int NV>
void bf16_block(const bf16* h, const bf16* Wp, float* G, int H, int r0, int nb) {
  __m512 acc[RB][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const bf16* w = Wp + size_t(nb) * (H / 2) * 32;
  const size_t vs = size_t(H / 2) * 32;
  for (int pr = 0; pr < H / 2; ++pr) {
    __m512i wv[NV];
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_load_si512(w + v * vs + pr * 32);
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      int32_t pair;
      std::memcpy(&pair, h + size_t(r0 + r) * H + 2 * pr, 4);
      const __m512i a = _mm512_set1_epi32(pair);
      #pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)a, (__m512bh)wv[v]);
    }
  }
  const int N = 4 * H;
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(G + size_t(r0 + r) * N + (nb + v) * 16, acc[r][v]);
}

// AMX, 1 A tile (m rows configured) x 2 B tiles: column blocks nb, nb+1, rows r0..r0+m-1.
// A addressing: row-major h [B, H] (stride 2H bytes, K block kb at +32 elements), or, for v3, h kept in the A-tile
// layout: 16-row group rg, K block kb at (rg * H/32 + kb) * 512 elements, rows 64 bytes apart (rows padded to 16).
struct AAddr {
  bool tiled;
  int H;
  const bf16* at(const bf16* h, int r0, int kb) const {
    return tiled ? h + (size_t(r0 / 16) * (H / 32) + kb) * 512 : h + size_t(r0) * H + kb * 32;
  }
  int stride() const { return tiled ? 64 : H * 2; }
};

constexpr int kPfDist = 2;
inline void prefetch_w(const bf16* w0, const bf16* w1, int kb) {  // 16 lines per 1 KiB tile; past the end is harmless
#pragma GCC unroll 16
  for (int l = 0; l < 16; ++l) {
    _mm_prefetch(reinterpret_cast<const char*>(w0 + kb * 512 + l * 32), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w1 + kb * 512 + l * 32), _MM_HINT_T0);
  }
}

template <bool PF>  // PF (v4): prefetcht0 the two W tiles kPfDist K blocks ahead
void amx_1x2(const bf16* h, const bf16* Wp, float* G, int H, int r0, int nb, AAddr aa) {
  const int KB = H / 32, N = 4 * H;
  const bf16* w0 = Wp + size_t(nb) * KB * 512;
  const bf16* w1 = w0 + size_t(KB) * 512;
  _tile_zero(0);
  _tile_zero(1);
  for (int kb = 0; kb < KB; ++kb) {
    if (PF) prefetch_w(w0, w1, kb + kPfDist);
    _tile_loadd(4, aa.at(h, r0, kb), aa.stride());
    _tile_loadd(6, w0 + kb * 512, 64);
    _tile_loadd(7, w1 + kb * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
  }
  float* g = G + size_t(r0) * N + nb * 16;
  _tile_stored(0, g, N * 4);
  _tile_stored(1, g + 16, N * 4);
}

// AMX, 2 A tiles (16 rows each) x 2 B tiles: rows r0..r0+31, column blocks nb, nb+1.
template <bool PF>
void amx_2x2(const bf16* h, const bf16* Wp, float* G, int H, int r0, int nb, AAddr aa) {
  const int KB = H / 32, N = 4 * H;
  const bf16* w0 = Wp + size_t(nb) * KB * 512;
  const bf16* w1 = w0 + size_t(KB) * 512;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int kb = 0; kb < KB; ++kb) {
    if (PF) prefetch_w(w0, w1, kb + kPfDist);
    _tile_loadd(4, aa.at(h, r0, kb), aa.stride());
    _tile_loadd(6, w0 + kb * 512, 64);
    _tile_loadd(7, w1 + kb * 512, 64);
    _tile_loadd(5, aa.at(h, r0 + 16, kb), aa.stride());
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  float* g = G + size_t(r0) * N + nb * 16;
  _tile_stored(0, g, N * 4);
  _tile_stored(1, g + 16, N * 4);
  _tile_stored(2, g + size_t(16) * N, N * 4);
  _tile_stored(3, g + size_t(16) * N + 16, N * 4);
}

// AMX v2, 4 row groups (64 rows) x 1 B tile: each W tile is loaded once per step and used by 4 TDPBF16PS
// (v1's 2x2 streams W once per 32 rows). A tiles alternate between tile registers 4 and 5.
void amx_4x1(const bf16* h, const bf16* Wp, float* G, int H, int nb) {
  const int KB = H / 32, N = 4 * H;
  const size_t rs = size_t(16) * H;  // 16 rows of h
  const bf16* w0 = Wp + size_t(nb) * KB * 512;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int kb = 0; kb < KB; ++kb) {
    _tile_loadd(6, w0 + kb * 512, 64);
    _tile_loadd(4, h + kb * 32, H * 2);
    _tile_loadd(5, h + rs + kb * 32, H * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
    _tile_loadd(4, h + 2 * rs + kb * 32, H * 2);
    _tile_loadd(5, h + 3 * rs + kb * 32, H * 2);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(3, 5, 6);
  }
  float* g = G + nb * 16;
  _tile_stored(0, g, N * 4);
  _tile_stored(1, g + size_t(16) * N, N * 4);
  _tile_stored(2, g + size_t(32) * N, N * 4);
  _tile_stored(3, g + size_t(48) * N, N * 4);
}

enum Variant { FP32_AVX512, BF16_AVX512, BF16_AMX, BF16_AMX_CFGSTEP, BF16_AMX_V2, BF16_AMX_V3, BF16_AMX_V4, BF16_AMX_ROWSPLIT, kNumVariants };
const char* kVariantName[] = {"fp32_avx512", "bf16_avx512", "bf16_amx", "bf16_amx_cfgstep", "bf16_amx_v2", "bf16_amx_v3", "bf16_amx_v4", "bf16_amx_rowsplit"};

// GEMM for the column blocks of hidden units [j0, j1) in all four gates (j0, j1 multiples of 32), rows
// [rb, rb + B) where B = p.B, or for the row split (AMX only) B = nrows rows starting at rb.
void gemm_part(Variant v, const Problem& p, const void* hin, int j0, int j1, int rb = 0, int nrows = -1) {
  const int B = nrows < 0 ? p.B : nrows, H = p.H;
  for (int g = 0; g < 4; ++g) {
    const int nb0 = (g * H + j0) / 16, nb1 = (g * H + j1) / 16;
    if (v == FP32_AVX512 || v == BF16_AVX512) {
      const bool f = v == FP32_AVX512;
      const float* hf = static_cast<const float*>(hin);
      const bf16* hb = static_cast<const bf16*>(hin);
      if (B == 1) {
        for (int nb = nb0; nb < nb1; nb += 8)
          f ? fp32_block<1, 8>(hf, p.Wf, p.G, H, 0, nb) : bf16_block<1, 8>(hb, p.Wp, p.G, H, 0, nb);
      } else {  // B multiple of 4
        for (int nb = nb0; nb < nb1; nb += 4)
          for (int r0 = 0; r0 < B; r0 += 4)
            f ? fp32_block<4, 4>(hf, p.Wf, p.G, H, r0, nb) : bf16_block<4, 4>(hb, p.Wp, p.G, H, r0, nb);
      }
    } else {
      const bf16* hb = static_cast<const bf16*>(hin);
      const AAddr aa{v == BF16_AMX_V3, H};
      if (v == BF16_AMX_V2 && B == 64) {
        for (int nb = nb0; nb < nb1; ++nb) amx_4x1(hb, p.Wp, p.G, H, nb);
      } else if (B <= 16) {
        for (int nb = nb0; nb < nb1; nb += 2)
          v == BF16_AMX_V4 ? amx_1x2<true>(hb, p.Wp, p.G, H, rb, nb, aa) : amx_1x2<false>(hb, p.Wp, p.G, H, rb, nb, aa);
      } else {  // B multiple of 32
        for (int nb = nb0; nb < nb1; nb += 2)
          for (int r0 = rb; r0 < rb + B; r0 += 32)
            v == BF16_AMX_V4 ? amx_2x2<true>(hb, p.Wp, p.G, H, r0, nb, aa)
                             : amx_2x2<false>(hb, p.Wp, p.G, H, r0, nb, aa);
      }
    }
  }
}

// h_next[b, j] for j in [j0, j1): x / (1 + |x|), x = sum of the four gates.
void pointwise(Variant v, const Problem& p, void* hout, int j0, int j1, int rb = 0, int re = -1) {
  const int H = p.H, N = 4 * H;
  const __m512 one = _mm512_set1_ps(1.f);
  for (int b = rb; b < (re < 0 ? p.B : re); ++b) {
    const float* g = p.G + size_t(b) * N;
    for (int j = j0; j < j1; j += 16) {
      __m512 x = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(g + j), _mm512_loadu_ps(g + H + j)),
                               _mm512_add_ps(_mm512_loadu_ps(g + 2 * H + j), _mm512_loadu_ps(g + 3 * H + j)));
      __m512 y = _mm512_div_ps(x, _mm512_add_ps(one, _mm512_abs_ps(x)));
      if (v == FP32_AVX512) {
        _mm512_storeu_ps(static_cast<float*>(hout) + size_t(b) * H + j, y);
      } else {
        __m256bh yb = _mm512_cvtneps_pbh(y);
        const size_t off = v == BF16_AMX_V3 ? (size_t(b / 16) * (H / 32) + j / 32) * 512 + (b % 16) * 32 + j % 32
                                            : size_t(b) * H + j;
        std::memcpy(static_cast<bf16*>(hout) + off, &yb, 32);
      }
    }
  }
}

// ---------------------------------------------------------------- barrier
struct SpinBarrier {
  std::atomic<int> count{0};
  std::atomic<int> gen{0};
  int n = 1;
  void wait() {
    if (n == 1) return;
    const int g = gen.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count.store(0, std::memory_order_relaxed);
      gen.store(g + 1, std::memory_order_release);
    } else {
      while (gen.load(std::memory_order_acquire) == g) _mm_pause();
    }
  }
};

// ---------------------------------------------------------------- run one configuration
struct RunResult {
  double us_step = 0, us_min = 0, us_max = 0;
  int reps = 0;
  double err_same = 0, err_unrounded = 0;
  bool finite = true;
};

struct Ref {
  std::vector<double> same;       // [64, 4H] float64 of the bf16-rounded operands
  std::vector<double> unrounded;  // [64, 4H] float64 of the float32 operands
  double max_same = 0, max_unr = 0;
};

bool g_quick = false;

RunResult run_config(Variant v, Problem& p, const Ref& ref, int nthreads) {
  const int B = p.B, H = p.H, N = 4 * H;
  const bool amx = v >= BF16_AMX;
  const bool f32 = v == FP32_AVX512;
  const TileCfg cfg = make_cfg(B < 16 ? B : 16);
  SpinBarrier bar;
  bar.n = nthreads;
  std::vector<double> times;
  std::atomic<bool> stop{false};
  RunResult res;
  std::vector<float> G1(size_t(B) * N);

  auto reset_h = [&] {
    for (size_t i = 0; i < size_t(B) * H; ++i) {
      p.hf[0][i] = p.h32[i];
      const size_t b = i / H, k = i % H;
      const size_t off = v == BF16_AMX_V3 ? (b / 16 * (H / 32) + k / 32) * 512 + (b % 16) * 32 + k % 32 : i;
      p.hb[0][off] = f2bf(p.h32[i]);
    }
  };

  auto worker = [&](int tid) {
    pin(tid);
    const bool rows = v == BF16_AMX_ROWSPLIT;  // thread owns batch rows [rb, re), all columns
    const int half = rows ? H : H / nthreads;  // multiple of 32 for H >= 256 and nthreads <= 2
    const int j0 = rows ? 0 : tid * half, j1 = j0 + half;
    const int rb = rows ? tid * B / nthreads : 0, re = rows ? rb + B / nthreads : B;
    auto hin = [&](int t) -> void* { return f32 ? (void*)p.hf[t & 1] : (void*)p.hb[t & 1]; };
    // validation step
    if (tid == 0) {
      reset_h();
      for (size_t i = 0; i < size_t(B) * N; ++i) p.G[i] = NAN;
    }
    bar.wait();
    if (amx) _tile_loadconfig(&cfg);
    gemm_part(v, p, hin(0), j0, j1, rb, re - rb);
    if (amx) _tile_release();
    bar.wait();
    if (tid == 0) std::memcpy(G1.data(), p.G, G1.size() * 4);
    bar.wait();
    // timed sequences of kT dependent steps
    const double budget = g_quick ? 0.02 : 0.5;
    const int min_reps = g_quick ? 2 : 7, max_reps = g_quick ? 3 : 301;
    double spent = 0;
    for (int rep = 0;; ++rep) {
      if (tid == 0) {
        if (rep >= max_reps || (rep >= min_reps && spent > budget)) stop.store(true);
        reset_h();
      }
      bar.wait();
      if (stop.load()) break;
      const double t0 = now_s();
      if (amx && v != BF16_AMX_CFGSTEP) _tile_loadconfig(&cfg);
      for (int t = 0; t < kT; ++t) {
        if (v == BF16_AMX_CFGSTEP) _tile_loadconfig(&cfg);
        gemm_part(v, p, hin(t), j0, j1, rb, re - rb);
        if (v == BF16_AMX_CFGSTEP) _tile_release();
        pointwise(v, p, hin(t + 1), j0, j1, rb, re);
        if (!rows) bar.wait();  // h_next complete before anyone reads it; h double-buffered: one barrier per step
      }
      if (rows) bar.wait();  // row split: the threads share nothing; meet once at the end of the sequence
      if (amx && v != BF16_AMX_CFGSTEP) _tile_release();
      const double dt = now_s() - t0;
      if (tid == 0) {
        times.push_back(dt);
        spent += dt;
      }
    }
  };
  std::vector<std::thread> th;
  for (int t = 1; t < nthreads; ++t) th.emplace_back(worker, t);
  worker(0);
  for (auto& x : th) x.join();
  pin(0);

  std::sort(times.begin(), times.end());
  res.reps = static_cast<int>(times.size());
  res.us_step = times[times.size() / 2] / kT * 1e6;
  res.us_min = times.front() / kT * 1e6;
  res.us_max = times.back() / kT * 1e6;
  double es = 0, eu = 0;
  for (int b = 0; b < B; ++b)
    for (int n = 0; n < N; ++n) {
      const double g = G1[size_t(b) * N + n];
      if (!std::isfinite(g)) res.finite = false;
      es = std::max(es, std::fabs(g - ref.same[size_t(b) * N + n]));
      eu = std::max(eu, std::fabs(g - ref.unrounded[size_t(b) * N + n]));
    }
  // references over the first B rows only
  double ms = 0, mu = 0;
  for (size_t i = 0; i < size_t(B) * N; ++i) {
    ms = std::max(ms, std::fabs(ref.same[i]));
    mu = std::max(mu, std::fabs(ref.unrounded[i]));
  }
  res.err_same = res.finite ? es / ms : INFINITY;
  res.err_unrounded = res.finite ? eu / mu : INFINITY;
  return res;
}

// ---------------------------------------------------------------- peaks
template <class F>
double time_threads(int nthreads, F f) {  // f(tid) runs the loop; returns wall seconds
  SpinBarrier bar;
  bar.n = nthreads;
  double dt = 0;
  auto w = [&](int tid) {
    pin(tid);
    bar.wait();
    const double t0 = now_s();
    f(tid);
    bar.wait();
    if (tid == 0) dt = now_s() - t0;
  };
  std::vector<std::thread> th;
  for (int t = 1; t < nthreads; ++t) th.emplace_back(w, t);
  w(0);
  for (auto& x : th) x.join();
  pin(0);
  return dt;
}

float g_sink;

double fma512_peak(int nthreads) {  // GFLOP/s, 12 independent chains per thread
  const long iters = g_quick ? 2000000 : 50000000;
  const double s = time_threads(nthreads, [&](int) {
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
           a9 = a0, a10 = a0, a11 = a0;
    for (long i = 0; i < iters; ++i) {
      a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c); a2 = _mm512_fmadd_ps(a2, b, c);
      a3 = _mm512_fmadd_ps(a3, b, c); a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
      a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c); a8 = _mm512_fmadd_ps(a8, b, c);
      a9 = _mm512_fmadd_ps(a9, b, c); a10 = _mm512_fmadd_ps(a10, b, c); a11 = _mm512_fmadd_ps(a11, b, c);
      asm volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
      asm volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    g_sink += _mm512_reduce_add_ps(s);
  });
  return nthreads * iters * 12.0 * 32 / s / 1e9;
}

double dpbf16_peak(int nthreads) {  // GFLOP/s, 12 independent chains of vdpbf16ps (64 FLOP each)
  const long iters = g_quick ? 2000000 : 50000000;
  const double s = time_threads(nthreads, [&](int) {
    const __m512bh b = (__m512bh)_mm512_set1_epi32(0x3f803f80), c = (__m512bh)_mm512_set1_epi32(0x33803380);
    __m512 a0 = _mm512_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
           a9 = a0, a10 = a0, a11 = a0;
    for (long i = 0; i < iters; ++i) {
      a0 = _mm512_dpbf16_ps(a0, b, c); a1 = _mm512_dpbf16_ps(a1, b, c); a2 = _mm512_dpbf16_ps(a2, b, c);
      a3 = _mm512_dpbf16_ps(a3, b, c); a4 = _mm512_dpbf16_ps(a4, b, c); a5 = _mm512_dpbf16_ps(a5, b, c);
      a6 = _mm512_dpbf16_ps(a6, b, c); a7 = _mm512_dpbf16_ps(a7, b, c); a8 = _mm512_dpbf16_ps(a8, b, c);
      a9 = _mm512_dpbf16_ps(a9, b, c); a10 = _mm512_dpbf16_ps(a10, b, c); a11 = _mm512_dpbf16_ps(a11, b, c);
      asm volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
      asm volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    g_sink += _mm512_reduce_add_ps(s);
  });
  return nthreads * iters * 12.0 * 64 / s / 1e9;
}

// ns per TDPBF16PS with m rows configured in A and C (4 independent accumulators, operands in registers).
double amx_tdp_ns(int m, int nthreads) {
  const long iters = g_quick ? 200000 : 5000000;  // x4 instructions
  alignas(64) static bf16 buf[2][16 * 32];
  for (int i = 0; i < 16 * 32; ++i) buf[0][i] = buf[1][i] = f2bf(0.001f * (i % 7));
  const TileCfg cfg = make_cfg(m);
  const double s = time_threads(nthreads, [&](int) {
    _tile_loadconfig(&cfg);
    _tile_loadd(4, buf[0], 64);
    _tile_loadd(5, buf[1], 64);
    _tile_loadd(6, buf[0], 64);
    _tile_loadd(7, buf[1], 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (long i = 0; i < iters; ++i) {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    alignas(64) float out[16 * 16];
    _tile_stored(0, out, 64);
    g_sink += out[0];
    _tile_release();
  });
  return s / (iters * 4.0) * 1e9;
}

// ns per K-block iteration of the 2x2 recurrence kernel's body (4 tileloadd + 4 TDPBF16PS) with every operand in
// a small L1-resident buffer: separates the load->TDPBF16PS serialization on the tile registers from cache misses.
// reload = false: the same loop with the loads hoisted out (pure TDPBF16PS issue, = 4 x the peak figure).
double amx_body_ns(bool reload) {
  const long iters = g_quick ? 100000 : 2000000;
  alignas(64) static bf16 buf[4][16 * 32];
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 16 * 32; ++i) buf[t][i] = f2bf(0.001f * ((i + t) % 7));
  const TileCfg cfg = make_cfg(16);
  const double s = time_threads(1, [&](int) {
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, buf[0], 64);
    _tile_loadd(5, buf[1], 64);
    _tile_loadd(6, buf[2], 64);
    _tile_loadd(7, buf[3], 64);
    for (long i = 0; i < iters; ++i) {
      if (reload) {
        _tile_loadd(4, buf[0], 64);
        _tile_loadd(6, buf[2], 64);
        _tile_loadd(7, buf[3], 64);
        _tile_loadd(5, buf[1], 64);
      }
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    alignas(64) float out[16 * 16];
    _tile_stored(0, out, 64);
    g_sink += out[0];
    _tile_release();
  });
  return s / iters * 1e9;
}

// ns per ldtilecfg (alternating two configs so nothing can be skipped), and per ldtilecfg+tilerelease.
void amx_cfg_ns(double& cfg_ns, double& cfg_rel_ns) {
  const long iters = g_quick ? 20000 : 1000000;
  const TileCfg c1 = make_cfg(16), c2 = make_cfg(4);
  double s = time_threads(1, [&](int) {
    for (long i = 0; i < iters; ++i) {
      _tile_loadconfig(&c1);
      _tile_loadconfig(&c2);
    }
    _tile_release();
  });
  cfg_ns = s / (2.0 * iters) * 1e9;
  s = time_threads(1, [&](int) {
    for (long i = 0; i < iters; ++i) {
      _tile_loadconfig(&c1);
      _tile_zero(0);
      _tile_release();
    }
  });
  cfg_rel_ns = s / iters * 1e9;
}

// bytes/ns of tileloadd (16 x 64 B) streaming a buffer of `bytes` (L1-, L2- or L3-sized), 1 thread.
double amx_load_gbs(size_t bytes) {
  const size_t tiles = bytes / 1024;
  bf16* buf = aalloc<bf16>(bytes / 2);
  std::memset(buf, 0, bytes);
  const TileCfg cfg = make_cfg(16);
  const long passes = std::max<long>(1, (g_quick ? 20 : 2000) * (1 << 20) / long(bytes));
  const double s = time_threads(1, [&](int) {
    _tile_loadconfig(&cfg);
    for (long ps = 0; ps < passes; ++ps)
      for (size_t t = 0; t + 1 < tiles; t += 2) {
        _tile_loadd(6, buf + t * 512, 64);
        _tile_loadd(7, buf + (t + 1) * 512, 64);
      }
    _tile_release();
  });
  std::free(buf);
  return double(passes) * (tiles & ~size_t(1)) * 1024 / s / 1e9;
}

// GB/s of 512-bit loads streaming a buffer (same sizes), 1 thread: the AVX-512 kernels' W feed.
double zmm_load_gbs(size_t bytes) {
  float* buf = aalloc<float>(bytes / 4);
  std::memset(buf, 0, bytes);
  const long passes = std::max<long>(1, (g_quick ? 20 : 2000) * (1 << 20) / long(bytes));
  const size_t n = bytes / 4;
  const double s = time_threads(1, [&](int) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long ps = 0; ps < passes; ++ps)
      for (size_t i = 0; i < n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(buf + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(buf + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(buf + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(buf + i + 48));
      }
    g_sink += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  });
  std::free(buf);
  return double(passes) * bytes / s / 1e9;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "?";
}
std::string cpu_flags_of_interest() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, out;
  while (std::getline(f, line))
    if (line.rfind("flags", 0) == 0) {
      std::istringstream is(line.substr(line.find(':') + 1));
      std::string w;
      while (is >> w)
        if (w.rfind("avx512", 0) == 0 || w.rfind("amx", 0) == 0 || w == "avx2" || w == "fma" || w == "avx_vnni")
          out += (out.empty() ? "" : " ") + w;
      break;
    }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  g_quick = std::getenv("AMX_PROBE_QUICK") != nullptr;
  pin(0);
  request_amx();
  std::fprintf(stderr, "AMX tile data permission: %s\n", g_amx_msg.c_str());
  const unsigned ncpu = std::thread::hardware_concurrency();
  const int max_threads = std::min(2u, ncpu);

  std::ostringstream js;
  char b[4096];
  std::snprintf(b, sizeof b,
                "{\n  \"probe\": \"bench/dev/amx_probe.cpp\",\n  \"compile\": \"g++ %s\",\n  \"cpu_model\": \"%s\",\n"
                "  \"cpu_flags\": \"%s\",\n  \"ncpu\": %u,\n  \"T\": %d,\n  \"amx_permission\": \"%s\",\n"
                "  \"amx_ok\": %s,\n",
                COMPILE_FLAGS, cpu_model().c_str(), cpu_flags_of_interest().c_str(), ncpu, kT,
                g_amx_msg.c_str(), g_amx_ok ? "true" : "false");
  js << b;

  // ---- peaks
  js << "  \"peaks\": {\n";
  for (int t = 1; t <= max_threads; ++t) {
    const double f = fma512_peak(t), d = dpbf16_peak(t);
    std::fprintf(stderr, "peak %d thr: fma512 %.1f GFLOP/s, vdpbf16ps %.1f GFLOP/s\n", t, f, d);
    std::snprintf(b, sizeof b, "    \"fma512_gflops_%dt\": %.1f,\n    \"vdpbf16ps_gflops_%dt\": %.1f,\n", t, f, t, d);
    js << b;
  }
  if (g_amx_ok) {
    for (int t = 1; t <= max_threads; ++t)
      for (int m : {16, 8, 4, 1}) {
        const double ns = amx_tdp_ns(m, t);
        const double gf = t * 2.0 * m * 16 * 32 / ns;  // useful FLOP (m rows) per ns = GFLOP/s
        std::fprintf(stderr, "peak %d thr: TDPBF16PS m=%2d: %.2f ns/instr per thread, %.0f GFLOP/s\n", t, m, ns, gf);
        std::snprintf(b, sizeof b, "    \"tdpbf16ps_m%d_%dt\": {\"ns_per_instr\": %.3f, \"gflops\": %.1f},\n", m, t,
                      ns, gf);
        js << b;
      }
    const double body_noload = amx_body_ns(false), body_load = amx_body_ns(true);
    std::fprintf(stderr, "2x2 K-block body (4 TDPBF16PS): %.1f ns without loads, %.1f ns with 4 tileloadd from L1\n",
                 body_noload, body_load);
    std::snprintf(b, sizeof b, "    \"body2x2_ns_noload\": %.2f,\n    \"body2x2_ns_l1_loads\": %.2f,\n", body_noload,
                  body_load);
    js << b;
    double c, cr;
    amx_cfg_ns(c, cr);
    std::fprintf(stderr, "ldtilecfg %.1f ns; ldtilecfg+tilezero+tilerelease %.1f ns\n", c, cr);
    std::snprintf(b, sizeof b, "    \"ldtilecfg_ns\": %.1f,\n    \"ldtilecfg_zero_release_ns\": %.1f,\n", c, cr);
    js << b;
  }
  js << "    \"load_stream_gbs_1t\": {";
  bool first = true;
  for (size_t kib : {32, 1024, 3072, 8192, 16384}) {
    const double z = zmm_load_gbs(kib * 1024);
    const double a = g_amx_ok ? amx_load_gbs(kib * 1024) : NAN;
    std::fprintf(stderr, "stream %5zu KiB: zmm loads %.1f GB/s, tileloadd %.1f GB/s\n", kib, z, a);
    if (g_amx_ok)
      std::snprintf(b, sizeof b, "%s\"%zuKiB\": {\"zmm\": %.1f, \"tileloadd\": %.1f}", first ? "" : ", ", kib, z, a);
    else
      std::snprintf(b, sizeof b, "%s\"%zuKiB\": {\"zmm\": %.1f}", first ? "" : ", ", kib, z);
    js << b;
    first = false;
  }
  js << "}\n  },\n  \"rows\": [\n";

  // ---- recurrence grid
  bool all_ok = true;
  bool first_row = true;
  std::mt19937_64 rng(12);
  for (int H : {256, 512, 1024}) {
    const int N = 4 * H, Bmax = 64;
    Problem base;
    base.H = H;
    std::uniform_real_distribution<float> uw(-1.f, 1.f);
    base.W32.resize(size_t(N) * H);
    const float sc = 1.f / std::sqrt(float(H));
    for (auto& x : base.W32) x = uw(rng) * sc;
    base.h32.resize(size_t(Bmax) * H);
    for (auto& x : base.h32) x = uw(rng);
    pack(base);
    // float64 references for 64 rows (the B-row problems use the first B rows)
    Ref ref;
    ref.same.resize(size_t(Bmax) * N);
    ref.unrounded.resize(size_t(Bmax) * N);
    {
      std::vector<double> Wr(size_t(N) * H), Wu(size_t(N) * H), hr(size_t(Bmax) * H), hu(size_t(Bmax) * H);
      for (size_t i = 0; i < Wr.size(); ++i) { Wu[i] = base.W32[i]; Wr[i] = bf2f(f2bf(base.W32[i])); }
      for (size_t i = 0; i < hr.size(); ++i) { hu[i] = base.h32[i]; hr[i] = bf2f(f2bf(base.h32[i])); }
      for (int bb = 0; bb < Bmax; ++bb)
        for (int n = 0; n < N; ++n) {
          double s1 = 0, s2 = 0;
          const double *wr = &Wr[size_t(n) * H], *wu = &Wu[size_t(n) * H];
          const double *ar = &hr[size_t(bb) * H], *au = &hu[size_t(bb) * H];
          for (int k = 0; k < H; ++k) { s1 += ar[k] * wr[k]; s2 += au[k] * wu[k]; }
          ref.same[size_t(bb) * N + n] = s1;
          ref.unrounded[size_t(bb) * N + n] = s2;
        }
    }
    for (int B : {1, 4, 16, 32, 64}) {
      Problem p;
      p.B = B;
      p.H = H;
      p.Wp = base.Wp;
      p.Wf = base.Wf;
      p.h32.assign(base.h32.begin(), base.h32.begin() + size_t(B) * H);
      for (int i = 0; i < 2; ++i) {  // bf16 h padded to whole 16-row groups (v3's tile layout)
        p.hb[i] = aalloc<bf16>(size_t((B + 15) / 16 * 16) * H);
        std::memset(p.hb[i], 0, size_t((B + 15) / 16 * 16) * H * 2);
        p.hf[i] = aalloc<float>(size_t(B) * H);
      }
      p.G = aalloc<float>(size_t(B) * N);
      for (int vi = 0; vi < kNumVariants; ++vi) {
        const Variant v = static_cast<Variant>(vi);
        if (v >= BF16_AMX && !g_amx_ok) continue;
        if (v == BF16_AMX_V2 && B != 64) continue;  // v2 differs from v1 only at B = 64
        if (v == BF16_AMX_ROWSPLIT && B < 32) continue;  // 2 threads x whole 16-row tiles
        Ref* rp = &ref;
        Ref ref32;  // fp32 variant: its "same operands" reference is the unrounded one
        if (v == FP32_AVX512) { ref32.same = ref.unrounded; ref32.unrounded = ref.unrounded; rp = &ref32; }
        for (int nt = v == BF16_AMX_ROWSPLIT ? 2 : 1; nt <= max_threads; ++nt) {
          const RunResult r = run_config(v, p, *rp, nt);
          const double flop = 2.0 * B * N * H;
          const double gf = flop / (r.us_step * 1e3);
          const double tol = 1e-5;
          const bool ok = r.finite && r.err_same < tol;
          all_ok = all_ok && ok;
          const double wbytes = double(N) * H * (v == FP32_AVX512 ? 4 : 2);
          std::fprintf(stderr,
                       "%-17s B=%2d H=%4d thr=%d: %9.2f us/step (min %.2f max %.2f, %3d reps) %7.1f GFLOP/s  "
                       "W %5.1f MiB -> %6.1f GB/s  err(same) %.2e err(unrounded) %.2e %s\n",
                       kVariantName[v], B, H, nt, r.us_step, r.us_min, r.us_max, r.reps, gf, wbytes / (1 << 20),
                       wbytes / (r.us_step * 1e3), r.err_same, r.err_unrounded, ok ? "ok" : "FAIL");
          std::snprintf(b, sizeof b,
                        "%s    {\"variant\": \"%s\", \"B\": %d, \"H\": %d, \"threads\": %d, \"us_per_step\": %.3f, "
                        "\"us_min\": %.3f, \"us_max\": %.3f, \"reps\": %d, \"gflops\": %.1f, \"w_mib\": %.1f, "
                        "\"w_gbs\": %.1f, \"max_err_same_operands\": %.3e, \"max_err_vs_unrounded\": %.3e, "
                        "\"valid\": %s}",
                        first_row ? "" : ",\n", kVariantName[v], B, H, nt, r.us_step, r.us_min, r.us_max, r.reps, gf,
                        wbytes / (1 << 20), wbytes / (r.us_step * 1e3), r.err_same, r.err_unrounded,
                        ok ? "true" : "false");
          js << b;
          first_row = false;
        }
      }
      for (int i = 0; i < 2; ++i) { std::free(p.hb[i]); std::free(p.hf[i]); }
      std::free(p.G);
    }
    std::free(base.Wp);
    std::free(base.Wf);
  }
  js << "\n  ],\n  \"all_valid\": " << (all_ok ? "true" : "false") << "\n}\n";
  std::fputs(js.str().c_str(), stdout);
  if (argc > 1) {
    std::ofstream o(argv[1]);
    o << js.str();
  }
  std::fprintf(stderr, "sink %g\n", double(g_sink));
  return all_ok ? 0 : 1;
}
