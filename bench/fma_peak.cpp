// Peak FMA throughput of this machine, for putting GFLOP/s in context.
// Build: g++ -O2 -mavx2 -mfma -pthread bench/fma_peak.cpp -o /tmp/fma_peak
// (add -mavx512f -DUSE_AVX512 for 512-bit FMAs). Prints GFLOP/s for 1..N threads.
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

static double run(long iters) {
#ifdef USE_AVX512
  __m512 a[12], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (auto& v : a) v = _mm512_set1_ps(1.0f);
  for (long i = 0; i < iters; ++i)
    for (auto& v : a) v = _mm512_fmadd_ps(v, b, c);
  float s = 0;
  for (auto& v : a) s += _mm512_reduce_add_ps(v);
  return s + 0.0 * 16;
#else
  __m256 a[12], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (auto& v : a) v = _mm256_set1_ps(1.0f);
  for (long i = 0; i < iters; ++i)
    for (auto& v : a) v = _mm256_fmadd_ps(v, b, c);
  alignas(32) float out[8];
  _mm256_store_ps(out, a[0]);
  return out[0];
#endif
}

int main() {
  const long iters = 200000000;
#ifdef USE_AVX512
  const double flops_per_iter = 12 * 16 * 2;
#else
  const double flops_per_iter = 12 * 8 * 2;
#endif
  const unsigned n = std::thread::hardware_concurrency();
  for (unsigned t = 1; t <= n; ++t) {
    std::vector<std::thread> th;
    std::vector<double> sink(t);
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < t; ++i) th.emplace_back([&, i] { sink[i] = run(iters); });
    for (auto& x : th) x.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%u thread(s): %.1f GFLOP/s (sink %g)\n", t, t * iters * flops_per_iter / s / 1e9, sink[0]);
  }
}
