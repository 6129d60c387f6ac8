// AVX-512F vector types. Include only from a translation unit compiled with
// AVX-512 flags, inside that unit's ISA namespace.
#include <immintrin.h>
#include <cmath>

struct VecF {
  using T = float;
  static constexpr int width = 16;
  __m512 v;
  VecF() = default;
  VecF(__m512 x) : v(x) {}
  VecF(float s) : v(_mm512_set1_ps(s)) {}
  FL_INLINE static VecF load(const float* p) { return _mm512_loadu_ps(p); }
  // 16 floats at src rounded to bfloat16 (to nearest even, NaN kept a quiet
  // NaN: core/bf16.h's float_to_bf16, lane by lane) at dst.
  FL_INLINE static void to_bf16(const float* src, uint16_t* dst) {
    __m512i b = _mm512_loadu_si512(src);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    b = _mm512_mask_or_epi32(b, nan, b, _mm512_set1_epi32(0x00400000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    b = _mm512_mask_add_epi32(b, ~nan, b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));  // NaN: truncated
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16)));
  }
  // 16 bfloat16 pairs widened: even = elements 0, 2, .., odd = 1, 3, ..
  FL_INLINE static void load_bf16_pairs(const uint16_t* p, VecF& even, VecF& odd) {
    const __m512i v = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
  }
  float hsum() const { return _mm512_reduce_add_ps(v); }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static VecF load_partial(const float* p, int n) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
  }
  void store_partial(float* p, int n) const {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
  }
  VecF keep_first(int n) const { return _mm512_maskz_mov_ps((__mmask16)((1u << n) - 1u), v); }
};
FL_INLINE VecF operator+(VecF a, VecF b) { return _mm512_add_ps(a.v, b.v); }
FL_INLINE VecF operator-(VecF a, VecF b) { return _mm512_sub_ps(a.v, b.v); }
FL_INLINE VecF operator*(VecF a, VecF b) { return _mm512_mul_ps(a.v, b.v); }
FL_INLINE VecF operator/(VecF a, VecF b) { return _mm512_div_ps(a.v, b.v); }
FL_INLINE VecF fma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
FL_INLINE VecF vmin(VecF a, VecF b) { return _mm512_min_ps(a.v, b.v); }
FL_INLINE VecF vmax(VecF a, VecF b) { return _mm512_max_ps(a.v, b.v); }
FL_INLINE VecF vabs(VecF a) {
  return _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(a.v), _mm512_set1_epi32(0x7fffffff)));
}
FL_INLINE VecF vcopysign(VecF mag, VecF sign) {
  const __m512i m = _mm512_set1_epi32(0x7fffffff);
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(m, _mm512_castps_si512(mag.v),
                                                       _mm512_castps_si512(sign.v), 0xca));
}
FL_INLINE VecF vround(VecF a) {
  return _mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
FL_INLINE VecF vpow2n(VecF n) {  // 2^n for integral n in [-126, 127]
  const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}
FL_INLINE VecF vselect_lt(VecF a, VecF b, VecF x, VecF y) {  // a < b ? x : y
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v);
}

struct VecD {
  using T = double;
  static constexpr int width = 8;
  __m512d v;
  VecD() = default;
  VecD(__m512d x) : v(x) {}
  VecD(double s) : v(_mm512_set1_pd(s)) {}
  FL_INLINE static VecD load(const double* p) { return _mm512_loadu_pd(p); }
  double hsum() const { return _mm512_reduce_add_pd(v); }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  static VecD load_partial(const double* p, int n) {
    return _mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1u), p);
  }
  void store_partial(double* p, int n) const {
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1u), v);
  }
  VecD keep_first(int n) const { return _mm512_maskz_mov_pd((__mmask8)((1u << n) - 1u), v); }
};
FL_INLINE VecD operator+(VecD a, VecD b) { return _mm512_add_pd(a.v, b.v); }
FL_INLINE VecD operator-(VecD a, VecD b) { return _mm512_sub_pd(a.v, b.v); }
FL_INLINE VecD operator*(VecD a, VecD b) { return _mm512_mul_pd(a.v, b.v); }
FL_INLINE VecD fma(VecD a, VecD b, VecD c) { return _mm512_fmadd_pd(a.v, b.v, c.v); }

#include "vec_math.h"
#include "vec_double_lanes.h"
