#include "cpu/bf16_io.h"

#include <cstdint>
#include <vector>

#include "core/bf16.h"
#include "cpu/buffer.h"
#include "cpu/kernels.h"
#include "cpu/lstm_cpu.h"

namespace fusedlstm {
namespace cpu {

namespace {

// float32 copies of the call's bfloat16 arrays, kept alive for the call.
class Widened {
 public:
  // T x B rows of n values (row (t, b) at src + t*st + b*sb) as a dense
  // float32 [T, B, n]; nullptr for nullptr.
  const float* rows(const void* src, int64_t T, int64_t B, int64_t n, int64_t st, int64_t sb) {
    if (!src) return nullptr;
    float* dst = add(T * B * n);
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) {
        const uint16_t* row = s + t * st + b * sb;
        float* out = dst + (t * B + b) * n;
        for (int64_t k = 0; k < n; ++k) out[k] = bf16_to_float(row[k]);
      }
    return dst;
  }
  const float* dense(const void* src, int64_t n) { return rows(src, 1, 1, n, 0, 0); }
  // Room for a float32 output of n values (nullptr when the output is absent).
  float* output(const void* dst, int64_t n) { return dst ? add(n) : nullptr; }

 private:
  float* add(int64_t n) {
    buffers_.emplace_back(n, false, "a float32 copy of a bfloat16 array");
    return buffers_.back().data();
  }
  std::vector<Buffer<float>> buffers_;
};

void narrow_rows(const float* src, void* dst, int64_t T, int64_t B, int64_t n, int64_t st, int64_t sb) {
  if (!dst) return;
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const float* row = src + (t * B + b) * n;
      uint16_t* out = d + t * st + b * sb;
      for (int64_t k = 0; k < n; ++k) out[k] = float_to_bf16(row[k]);
    }
}
void narrow(const float* src, void* dst, int64_t n) { narrow_rows(src, dst, 1, 1, n, 0, 0); }

struct Sizes {
  int64_t G, Hout;
  bool lstm;
  explicit Sizes(const fl_forward_params& p)
      : G(cell_shape(int(p.cell)).gates), Hout(p.proj_size > 0 ? p.proj_size : p.H), lstm(p.cell == FL_CELL_LSTM) {}
};

// The float32 form of a bfloat16 call's inputs (its outputs are left to the caller).
fl_forward_params widen_inputs(const fl_forward_params& p, Widened& w) {
  const Sizes z(p);
  fl_forward_params f = p;
  f.dtype = FL_FLOAT32;
  if (p.mode == FL_ONE_TO_MANY) {
    f.x = w.rows(p.x, 1, p.B, p.I, 0, p.x_stride_b);
    f.x_stride_t = 0;
  } else {
    f.x = w.rows(p.x, p.T, p.B, p.I, p.x_stride_t, p.x_stride_b);
    f.x_stride_t = p.B * p.I;
  }
  f.x_stride_b = p.I;
  f.w_ih = w.dense(p.w_ih, z.G * p.H * p.I);
  f.w_hh = w.dense(p.w_hh, z.G * p.H * z.Hout);
  f.w_hr = p.proj_size > 0 ? w.dense(p.w_hr, p.proj_size * p.H) : nullptr;
  f.b_ih = w.dense(p.b_ih, z.G * p.H);
  f.b_hh = w.dense(p.b_hh, z.G * p.H);
  f.h0 = w.dense(p.h0, p.B * z.Hout);
  f.c0 = z.lstm ? w.dense(p.c0, p.B * p.H) : nullptr;
  return f;
}

}  // namespace

void forward_bf16(const fl_forward_params& p, void* reserve) {
  const Sizes z(p);
  Widened w;
  fl_forward_params f = widen_inputs(p, w);
  const bool has_y = p.y && p.mode != FL_MANY_TO_ONE;
  f.y = has_y ? w.output(p.y, p.T * p.B * z.Hout) : nullptr;
  f.y_stride_t = p.B * z.Hout, f.y_stride_b = z.Hout;
  f.h_n = w.output(p.h_n, p.B * z.Hout);
  f.c_n = z.lstm ? w.output(p.c_n, p.B * p.H) : nullptr;
  forward_bf16_operands(f, reserve);
  if (has_y) narrow_rows(static_cast<const float*>(f.y), p.y, p.T, p.B, z.Hout, p.y_stride_t, p.y_stride_b);
  narrow(static_cast<const float*>(f.h_n), p.h_n, p.B * z.Hout);
  if (z.lstm) narrow(static_cast<const float*>(f.c_n), p.c_n, p.B * p.H);
}

void backward_bf16(const fl_forward_params& p, const void* reserve, const fl_backward_params& g) {
  const Sizes z(p);
  Widened w;
  const fl_forward_params f = widen_inputs(p, w);
  fl_backward_params d = g;
  const bool seq_dy = p.mode != FL_MANY_TO_ONE;
  d.dy = seq_dy ? w.rows(g.dy, p.T, p.B, z.Hout, g.dy_stride_t, g.dy_stride_b) : w.dense(g.dy, p.B * z.Hout);
  d.dy_stride_t = p.B * z.Hout, d.dy_stride_b = z.Hout;
  d.dh_n = w.dense(g.dh_n, p.B * z.Hout);
  d.dc_n = z.lstm ? w.dense(g.dc_n, p.B * p.H) : nullptr;
  const int64_t dx_steps = p.mode == FL_ONE_TO_MANY ? 1 : p.T;
  d.dx = w.output(g.dx, dx_steps * p.B * p.I);
  d.dx_stride_t = p.mode == FL_ONE_TO_MANY ? 0 : p.B * p.I, d.dx_stride_b = p.I;
  d.dh0 = w.output(g.dh0, p.B * z.Hout);
  d.dc0 = z.lstm ? w.output(g.dc0, p.B * p.H) : nullptr;
  d.dw_ih = w.output(g.dw_ih, z.G * p.H * p.I);
  d.dw_hh = w.output(g.dw_hh, z.G * p.H * z.Hout);
  d.db = w.output(g.db, z.G * p.H);
  d.dw_hr = p.proj_size > 0 ? w.output(g.dw_hr, p.proj_size * p.H) : nullptr;
  d.db_hh = w.output(g.db_hh, z.G * p.H);
  backward_bf16_operands(f, reserve, d);
  narrow_rows(static_cast<const float*>(d.dx), g.dx, dx_steps, p.B, p.I, g.dx_stride_t, g.dx_stride_b);
  narrow(static_cast<const float*>(d.dh0), g.dh0, p.B * z.Hout);
  if (z.lstm) narrow(static_cast<const float*>(d.dc0), g.dc0, p.B * p.H);
  narrow(static_cast<const float*>(d.dw_ih), g.dw_ih, z.G * p.H * p.I);
  narrow(static_cast<const float*>(d.dw_hh), g.dw_hh, z.G * p.H * z.Hout);
  narrow(static_cast<const float*>(d.db), g.db, z.G * p.H);
  if (p.proj_size > 0) narrow(static_cast<const float*>(d.dw_hr), g.dw_hr, p.proj_size * p.H);
  narrow(static_cast<const float*>(d.db_hh), g.db_hh, z.G * p.H);
}

void cell_bf16(const fl_cell_params& p) {
  const int64_t G = cell_shape(int(p.cell)).gates, A = cell_step_saved(int(p.cell));
  const bool lstm = p.cell == FL_CELL_LSTM;
  Widened w;
  fl_cell_params f = p;
  f.dtype = FL_FLOAT32;
  f.x = w.dense(p.x, p.B * p.I);
  f.h = w.dense(p.h, p.B * p.H);
  f.c = lstm ? w.dense(p.c, p.B * p.H) : nullptr;
  f.w_ih = w.dense(p.w_ih, G * p.H * p.I);
  f.w_hh = w.dense(p.w_hh, G * p.H * p.H);
  f.b_ih = w.dense(p.b_ih, G * p.H);
  f.b_hh = w.dense(p.b_hh, G * p.H);
  f.h_new = w.output(p.h_new, p.B * p.H);
  f.c_new = lstm ? w.output(p.c_new, p.B * p.H) : nullptr;
  f.acts = w.output(p.acts, p.B * A * p.H);
  cell(f);
  narrow(static_cast<const float*>(f.h_new), p.h_new, p.B * p.H);
  if (lstm) narrow(static_cast<const float*>(f.c_new), p.c_new, p.B * p.H);
  if (p.acts) narrow(static_cast<const float*>(f.acts), p.acts, p.B * A * p.H);
}

void cell_bf16_operands(const fl_cell_params& p) {
  if (!p.acts) {  // one step of the sequence path: rounds exactly the products' operands
    forward_bf16_operands(one_step(p), nullptr);
    return;
  }
  // Saving activations (the step's own layout): the float32 step on rounded
  // copies of x, the weights and, but for the GRU (whose h also enters its
  // gate math, unrounded), h.
  const int64_t G = cell_shape(int(p.cell)).gates;
  std::vector<Buffer<float>> rounded;
  auto round = [&](const void* src, int64_t n) -> const void* {
    if (!src) return nullptr;
    rounded.emplace_back(n, false, "a bfloat16-rounded copy of a float32 array");
    const float* s = static_cast<const float*>(src);
    float* d = rounded.back().data();
    for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_float(float_to_bf16(s[i]));
    return d;
  };
  fl_cell_params f = p;
  f.x = round(p.x, p.B * p.I);
  if (p.cell != FL_CELL_GRU) f.h = round(p.h, p.B * p.H);
  f.w_ih = round(p.w_ih, G * p.H * p.I);
  f.w_hh = round(p.w_hh, G * p.H * p.H);
  cell(f);
}

void cell_backward_bf16(const fl_cell_backward_params& p) {
  const int64_t G = cell_shape(int(p.cell)).gates, A = cell_step_saved(int(p.cell));
  const bool lstm = p.cell == FL_CELL_LSTM;
  Widened w;
  fl_cell_backward_params f = p;
  f.dtype = FL_FLOAT32;
  f.x = w.dense(p.x, p.B * p.I);
  f.h = w.dense(p.h, p.B * p.H);
  f.c = lstm ? w.dense(p.c, p.B * p.H) : nullptr;
  f.w_ih = w.dense(p.w_ih, G * p.H * p.I);
  f.w_hh = w.dense(p.w_hh, G * p.H * p.H);
  f.acts = w.dense(p.acts, p.B * A * p.H);
  f.c_new = lstm ? w.dense(p.c_new, p.B * p.H) : nullptr;
  f.dh_new = w.dense(p.dh_new, p.B * p.H);
  f.dc_new = lstm ? w.dense(p.dc_new, p.B * p.H) : nullptr;
  f.dx = w.output(p.dx, p.B * p.I);
  f.dh = w.output(p.dh, p.B * p.H);
  f.dc = lstm ? w.output(p.dc, p.B * p.H) : nullptr;
  f.dw_ih = w.output(p.dw_ih, G * p.H * p.I);
  f.dw_hh = w.output(p.dw_hh, G * p.H * p.H);
  f.db = w.output(p.db, G * p.H);
  f.db_hh = w.output(p.db_hh, G * p.H);
  cell_backward(f);
  narrow(static_cast<const float*>(f.dx), p.dx, p.B * p.I);
  narrow(static_cast<const float*>(f.dh), p.dh, p.B * p.H);
  if (lstm) narrow(static_cast<const float*>(f.dc), p.dc, p.B * p.H);
  narrow(static_cast<const float*>(f.dw_ih), p.dw_ih, G * p.H * p.I);
  narrow(static_cast<const float*>(f.dw_hh), p.dw_hh, G * p.H * p.H);
  narrow(static_cast<const float*>(f.db), p.db, G * p.H);
  narrow(static_cast<const float*>(f.db_hh), p.db_hh, G * p.H);
}

}  // namespace cpu
}  // namespace fusedlstm
