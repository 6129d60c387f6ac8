// AVX2 + FMA vector types. Include only from a translation unit compiled with
// -mavx2 -mfma, inside that unit's ISA namespace.
#include <immintrin.h>
#include <cmath>

FL_INLINE __m256i avx2_lane_mask(int n) {  // lanes [0, n) set, 32-bit lanes
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
FL_INLINE __m256i avx2_lane_mask_pd(int n) {  // lanes [0, n) set, 64-bit lanes
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

struct VecF {
  using T = float;
  static constexpr int width = 8;
  __m256 v;
  VecF() = default;
  VecF(__m256 x) : v(x) {}
  VecF(float s) : v(_mm256_set1_ps(s)) {}
  FL_INLINE static VecF load(const float* p) { return _mm256_loadu_ps(p); }
  // 8 floats at src rounded to bfloat16 (to nearest even, NaN kept a quiet
  // NaN: core/bf16.h's float_to_bf16, lane by lane) at dst.
  FL_INLINE static void to_bf16(const float* src, uint16_t* dst) {
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f800000));  // mag < 2^31: signed compare is exact
    b = _mm256_or_si256(b, _mm256_and_si256(nan, _mm256_set1_epi32(0x00400000)));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i inc = _mm256_andnot_si256(nan, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));  // NaN: truncated
    b = _mm256_srli_epi32(_mm256_add_epi32(b, inc), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), packed);
  }
  // 8 bfloat16 pairs widened: even = elements 0, 2, .., odd = 1, 3, ..
  FL_INLINE static void load_bf16_pairs(const uint16_t* p, VecF& even, VecF& odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xffff0000u))));
  }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static VecF load_partial(const float* p, int n) { return _mm256_maskload_ps(p, avx2_lane_mask(n)); }
  void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, avx2_lane_mask(n), v); }
  VecF keep_first(int n) const { return _mm256_and_ps(v, _mm256_castsi256_ps(avx2_lane_mask(n))); }
};
FL_INLINE VecF operator+(VecF a, VecF b) { return _mm256_add_ps(a.v, b.v); }
FL_INLINE VecF operator-(VecF a, VecF b) { return _mm256_sub_ps(a.v, b.v); }
FL_INLINE VecF operator*(VecF a, VecF b) { return _mm256_mul_ps(a.v, b.v); }
FL_INLINE VecF operator/(VecF a, VecF b) { return _mm256_div_ps(a.v, b.v); }
FL_INLINE VecF fma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
FL_INLINE VecF vmin(VecF a, VecF b) { return _mm256_min_ps(a.v, b.v); }
FL_INLINE VecF vmax(VecF a, VecF b) { return _mm256_max_ps(a.v, b.v); }
FL_INLINE VecF vabs(VecF a) {
  return _mm256_and_ps(a.v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
}
FL_INLINE VecF vcopysign(VecF mag, VecF sign) {
  const __m256 sign_bit = _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)));
  return _mm256_or_ps(_mm256_andnot_ps(sign_bit, mag.v), _mm256_and_ps(sign_bit, sign.v));
}
FL_INLINE VecF vround(VecF a) { return _mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
FL_INLINE VecF vpow2n(VecF n) {  // 2^n for integral n in [-126, 127]
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
FL_INLINE VecF vselect_lt(VecF a, VecF b, VecF x, VecF y) {  // a < b ? x : y
  return _mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ));
}

struct VecD {
  using T = double;
  static constexpr int width = 4;
  __m256d v;
  VecD() = default;
  VecD(__m256d x) : v(x) {}
  VecD(double s) : v(_mm256_set1_pd(s)) {}
  FL_INLINE static VecD load(const double* p) { return _mm256_loadu_pd(p); }
  double hsum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  static VecD load_partial(const double* p, int n) { return _mm256_maskload_pd(p, avx2_lane_mask_pd(n)); }
  void store_partial(double* p, int n) const { _mm256_maskstore_pd(p, avx2_lane_mask_pd(n), v); }
  VecD keep_first(int n) const { return _mm256_and_pd(v, _mm256_castsi256_pd(avx2_lane_mask_pd(n))); }
};
FL_INLINE VecD operator+(VecD a, VecD b) { return _mm256_add_pd(a.v, b.v); }
FL_INLINE VecD operator-(VecD a, VecD b) { return _mm256_sub_pd(a.v, b.v); }
FL_INLINE VecD operator*(VecD a, VecD b) { return _mm256_mul_pd(a.v, b.v); }
FL_INLINE VecD fma(VecD a, VecD b, VecD c) { return _mm256_fmadd_pd(a.v, b.v, c.v); }

#include "vec_math.h"
#include "vec_double_lanes.h"
