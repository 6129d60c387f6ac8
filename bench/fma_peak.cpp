// Peak FMA throughput of this machine, to put GFLOP/s figures in context.
//   g++ -O2 -mavx2 -mfma -pthread bench/fma_peak.cpp -o /tmp/fma_peak            (256-bit)
//   g++ -O2 -mavx512f -DUSE_AVX512 -pthread bench/fma_peak.cpp -o /tmp/fma_peak  (512-bit)
// Twelve independent FMA chains per thread (enough to cover latency x pipes);
// prints GFLOP/s for 1..N threads.
#include <immintrin.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <thread>
#include <vector>

#ifdef USE_AVX512
using V = __m512;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
constexpr int kLanes = 16;
#else
using V = __m256;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
constexpr int kLanes = 8;
#endif

static float run(long iters) {
  const V b = SET1(0.999999f), c = SET1(1e-7f);
  V a0 = SET1(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
    a10 = a0, a11 = a0;
  for (long i = 0; i < iters; ++i) {
    a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
    a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
    a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    // Keep the compiler from merging or reordering the chains.
    asm volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
    asm volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
  }
  alignas(64) float out[kLanes];
  std::memcpy(out, &a0, sizeof(out));
  (void)a1;
  return out[0];
}

int main() {
  const long iters = 100000000;
  const double flops_per_iter = 12.0 * kLanes * 2;
  const unsigned n = std::thread::hardware_concurrency();
  for (unsigned t = 1; t <= n; ++t) {
    std::vector<std::thread> th;
    std::vector<float> sink(t);
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < t; ++i) th.emplace_back([&, i] { sink[i] = run(iters); });
    for (auto& x : th) x.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%d-bit FMA, %u thread(s): %.1f GFLOP/s\n", kLanes * 32, t,
                t * iters * flops_per_iter / s / 1e9);
  }
}
