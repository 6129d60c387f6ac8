// The cell math of every recurrent cell (LSTM, GRU, Elman RNN), written once
// for every backend.
//
// Templates over a number-like type N: float, double, or a SIMD vector type
// with +, -, * and the overloads act_sigmoid(N) / act_tanh(N) found by
// argument-dependent lookup (the CPU vector types define theirs next to
// their class). Backward derivatives come from the saved activations:
// sigmoid' = s (1 - s), tanh' = 1 - t^2.
#ifndef FUSEDLSTM_CORE_GATE_MATH_H_
#define FUSEDLSTM_CORE_GATE_MATH_H_

#include <cmath>

#if defined(__CUDACC__)
#define FL_HOST_DEVICE __host__ __device__
#else
#define FL_HOST_DEVICE
#endif

// The cell math sits in the innermost loops of every kernel: always inline
// it (GCC otherwise gives up on large kernels and passes vectors through memory).
#if defined(__CUDACC__)
#define FL_INLINE __forceinline__
#elif defined(__GNUC__)
#define FL_INLINE inline __attribute__((always_inline))
#else
#define FL_INLINE inline
#endif

namespace fusedlstm {

FL_HOST_DEVICE FL_INLINE float act_sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
FL_HOST_DEVICE FL_INLINE double act_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
FL_HOST_DEVICE FL_INLINE float act_tanh(float x) { return std::tanh(x); }
FL_HOST_DEVICE FL_INLINE double act_tanh(double x) { return std::tanh(x); }

// Activations of one step for one group of hidden units.
template <class N>
struct GateActs {
  N i, f, g, o;
};

// Forward cell. pre_* are the gate pre-activations (both GEMM terms and both
// biases already summed). Returns the activations (saved for backward in
// training); writes the new cell and hidden state.
template <class N>
FL_HOST_DEVICE FL_INLINE GateActs<N> cell_forward(N pre_i, N pre_f, N pre_g, N pre_o, N c_prev,
                                               N& c_new, N& h_new) {
  GateActs<N> a;
  a.i = act_sigmoid(pre_i);
  a.f = act_sigmoid(pre_f);
  a.g = act_tanh(pre_g);
  a.o = act_sigmoid(pre_o);
  c_new = a.f * c_prev + a.i * a.g;
  h_new = a.o * act_tanh(c_new);
  return a;
}

// Gradients of the gate pre-activations for one group of hidden units.
template <class N>
struct GateGrads {
  N i, f, g, o;
};

// Backward cell. dh: total gradient reaching h_t (from y_t and from step t+1);
// dc: gradient reaching c_t from step t+1 (or from c_n). Returns the gradients
// of the gate pre-activations; writes dc_prev (the gradient reaching c_{t-1}).
template <class N>
FL_HOST_DEVICE FL_INLINE GateGrads<N> cell_backward(const GateActs<N>& a, N c, N c_prev, N dh, N dc,
                                                 N& dc_prev) {
  const N one = N(1);
  const N tc = act_tanh(c);
  const N dc_total = dc + dh * a.o * (one - tc * tc);
  GateGrads<N> d;
  d.o = dh * tc * a.o * (one - a.o);
  d.i = dc_total * a.g * a.i * (one - a.i);
  d.f = dc_total * c_prev * a.f * (one - a.f);
  d.g = dc_total * a.i * (one - a.g * a.g);
  dc_prev = dc_total * a.f;
  return d;
}

// ---------------------------------------------------------------- GRU
// nn.GRU's cell, gate order r, z, n, the reset gate applied after the
// recurrent product (ONNX linear_before_reset = 1, cuDNN's GRU):
//   r = sigmoid(pre_r), z = sigmoid(pre_z), n = tanh(xn + r * hn)
//   h_new = (1 - z) * n + z * h_prev
// pre_r, pre_z: both GEMM terms and both biases; xn = x W_in^T + b_in;
// hn = h_prev W_hn^T + b_hn (kept apart: r multiplies it alone).
template <class N>
struct GruActs {
  N r, z, n, hn;  // saved for backward (hn: dr needs it)
};

template <class N>
FL_HOST_DEVICE FL_INLINE GruActs<N> gru_forward(N pre_r, N pre_z, N xn, N hn, N h_prev, N& h_new) {
  GruActs<N> a;
  a.r = act_sigmoid(pre_r);
  a.z = act_sigmoid(pre_z);
  a.n = act_tanh(xn + a.r * hn);
  a.hn = hn;
  h_new = a.n + a.z * (h_prev - a.n);
  return a;
}

// Gradients of the pre-activations: r and z (the same on both GEMM sides),
// the recurrent n term hn (dW_hn, db_hn, and h through W_hn) and the input
// n term xn (dW_in, db_in, x).
template <class N>
struct GruGrads {
  N r, z, hn, xn;
};

// dh: total gradient reaching h_new. Writes the part of dh_prev that does not
// go through the weights (dh * z); the rest is dG W_hh.
template <class N>
FL_HOST_DEVICE FL_INLINE GruGrads<N> gru_backward(const GruActs<N>& a, N h_prev, N dh, N& dh_prev_direct) {
  const N one = N(1);
  const N dpre_n = dh * (one - a.z) * (one - a.n * a.n);
  GruGrads<N> d;
  d.xn = dpre_n;
  d.hn = dpre_n * a.r;
  d.r = dpre_n * a.hn * a.r * (one - a.r);
  d.z = dh * (h_prev - a.n) * a.z * (one - a.z);
  dh_prev_direct = dh * a.z;
  return d;
}

// ---------------------------------------------------------- Elman RNN
// h_new = act(pre), act = tanh or relu; backward from the saved h_new
// (tanh' = 1 - h^2; relu' = 1 where h > 0, else 0, as torch).
FL_HOST_DEVICE FL_INLINE float act_relu(float x) { return x < 0.0f ? 0.0f : x; }  // NaN stays NaN
FL_HOST_DEVICE FL_INLINE double act_relu(double x) { return x < 0.0 ? 0.0 : x; }
FL_HOST_DEVICE FL_INLINE float relu_backward(float h, float dh) { return h > 0.0f ? dh : 0.0f; }
FL_HOST_DEVICE FL_INLINE double relu_backward(double h, double dh) { return h > 0.0 ? dh : 0.0; }

template <bool kRelu, class N>
FL_HOST_DEVICE FL_INLINE N rnn_forward(N pre) {
  if constexpr (kRelu) return act_relu(pre);
  else return act_tanh(pre);
}

template <bool kRelu, class N>
FL_HOST_DEVICE FL_INLINE N rnn_backward(N h, N dh) {
  if constexpr (kRelu) return relu_backward(h, dh);
  else return dh * (N(1) - h * h);
}

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_GATE_MATH_H_
