// Portable vector types: fixed-size arrays the compiler may auto-vectorise
// with whatever the baseline target has (SSE2 on x86-64, NEON on aarch64).
// Activations go through libm lane by lane.
#include <cmath>

template <class T_, int W>
struct VecArr {
  using T = T_;
  static constexpr int width = W;
  T v[W];
  VecArr() = default;
  VecArr(T s) {
    for (int l = 0; l < W; ++l) v[l] = s;
  }
  static VecArr load(const T* p) {
    VecArr r;
    for (int l = 0; l < W; ++l) r.v[l] = p[l];
    return r;
  }
  void store(T* p) const {
    for (int l = 0; l < W; ++l) p[l] = v[l];
  }
  // W floats at src rounded to bfloat16 (float only) at dst.
  static void to_bf16(const T* src, uint16_t* dst) {
    for (int l = 0; l < W; ++l) dst[l] = float_to_bf16(src[l]);
  }
  // W bfloat16 pairs widened (float only): even = elements 0, 2, .., odd = 1, 3, ..
  static void load_bf16_pairs(const uint16_t* p, VecArr& even, VecArr& odd) {
    for (int l = 0; l < W; ++l) {
      even.v[l] = bf16_to_float(p[2 * l]);
      odd.v[l] = bf16_to_float(p[2 * l + 1]);
    }
  }
  T hsum() const {
    T s = v[0];
    for (int l = 1; l < W; ++l) s += v[l];
    return s;
  }
  static VecArr load_partial(const T* p, int n) {
    VecArr r(T(0));
    for (int l = 0; l < n; ++l) r.v[l] = p[l];
    return r;
  }
  void store_partial(T* p, int n) const {
    for (int l = 0; l < n; ++l) p[l] = v[l];
  }
  VecArr keep_first(int n) const {
    VecArr r(T(0));
    for (int l = 0; l < n; ++l) r.v[l] = v[l];
    return r;
  }
};
#define FL_GENERIC_BINOP(OP)                                              \
  template <class T, int W>                                               \
  inline VecArr<T, W> operator OP(const VecArr<T, W>& a, const VecArr<T, W>& b) { \
    VecArr<T, W> r;                                                       \
    for (int l = 0; l < W; ++l) r.v[l] = a.v[l] OP b.v[l];                \
    return r;                                                             \
  }
FL_GENERIC_BINOP(+)
FL_GENERIC_BINOP(-)
FL_GENERIC_BINOP(*)
#undef FL_GENERIC_BINOP
// Plain multiply-add (not std::fma: without hardware FMA that is a slow libm call).
template <class T, int W>
FL_INLINE VecArr<T, W> fma(const VecArr<T, W>& a, const VecArr<T, W>& b, const VecArr<T, W>& c) {
  VecArr<T, W> r;
  for (int l = 0; l < W; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
  return r;
}
template <class T, int W>
FL_INLINE VecArr<T, W> act_sigmoid(const VecArr<T, W>& x) {
  VecArr<T, W> r;
  for (int l = 0; l < W; ++l) r.v[l] = T(1) / (T(1) + std::exp(-x.v[l]));
  return r;
}
template <class T, int W>
FL_INLINE VecArr<T, W> act_tanh(const VecArr<T, W>& x) {
  VecArr<T, W> r;
  for (int l = 0; l < W; ++l) r.v[l] = std::tanh(x.v[l]);
  return r;
}
using VecF = VecArr<float, 4>;
using VecD = VecArr<double, 4>;
