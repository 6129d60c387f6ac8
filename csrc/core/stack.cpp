// Layer-stack driver (see stack.h). The reserve holds, in order, the reserve
// of every cell (l*D + d) and then the input of every layer l >= 1 (the
// masked, concatenated outputs of layer l-1), which backward needs for dW_ih.
#include "core/stack.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/checked_size.h"
#include "core/interrupt.h"
#include "cpu/buffer.h"
#include "cpu/dispatch.h"
#include "cpu/lstm_cpu.h"

namespace fusedlstm {

namespace {

// Sizes checked (checked_size.h): the C API builds one to check the shapes
// before anything runs.
struct StackGeometry {
  int64_t L, D, Hout, elem, cell_bytes, input_bytes, total_bytes;
  explicit StackGeometry(const fl_stack_params& p)
      : L(p.num_layers),
        D(p.num_directions),
        Hout(p.proj_size > 0 ? p.proj_size : p.H),
        elem(p.dtype == FL_FLOAT64 ? 8 : 4),
        cell_bytes(cpu::reserve_bytes(p.dtype, p.T, p.B, p.H, p.proj_size)),
        input_bytes(checked_sum("reserve layer input bytes",
                                {checked_round_up("reserve layer input T*B*D*Hout*elem",
                                                  checked_bytes("reserve layer input T*B*D*Hout*elem",
                                                                {p.T, p.B, D, Hout, elem}),
                                                  64),
                                 64})),
        total_bytes(checked_sum("stack reserve bytes",
                                {checked_bytes("stack reserve of the cells num_layers*num_directions*cell bytes",
                                               {L, D, cell_bytes}),
                                 checked_bytes("stack reserve of the layer inputs (num_layers-1)*input bytes",
                                               {L - 1, input_bytes})})) {}
  int64_t total() const { return total_bytes; }
  int64_t width() const { return D * Hout; }  // input width of layers >= 1
  int64_t cell_offset(int64_t l, int64_t d) const { return (l * D + d) * cell_bytes; }
  int64_t input_offset(int64_t l) const { return L * D * cell_bytes + (l - 1) * input_bytes; }  // l >= 1
};

unsigned char* align64(unsigned char* p) {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(p) + 63) / 64 * 64);
}

// Host arrays of the driver (inference's layer outputs, backward's gradient
// buffers): the CPU backend's recycled 64-byte-aligned workspaces, so large
// ones are not page-faulted afresh on every call.
using HostArray = cpu::Buffer<unsigned char>;

template <class T>
void multiply_mask(T* a, const void* mask, int64_t n) {
  const T* m = static_cast<const T*>(mask);
  for (int64_t i = 0; i < n; ++i) a[i] *= m[i];
}

// dst[t, b, :] += src[t, b, :] (src contiguous [T, B, n]).
template <class T>
void add_into(void* dst, int64_t stride_t, int64_t stride_b, const void* src, int64_t steps, int64_t B, int64_t n) {
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t b = 0; b < B; ++b) {
      T* row = d + t * stride_t + b * stride_b;
      const T* srow = s + (t * B + b) * n;
      for (int64_t k = 0; k < n; ++k) row[k] += srow[k];
    }
}

// Both directions of a layer at once, one thread each, instead of one after
// the other on every thread: worth it while a step is too small to split
// well across threads. Measured (bench/NOTES.md, change 7; 2 threads, T=100,
// sequential/together time): B=1 H=64 1.72, H=128 1.13, H=192 1.04,
// H=256 0.95, H=1024 0.64; B=4 H=128 1.07; B=16 H=128 0.91.
bool directions_together(const fl_stack_params& p, const StackGeometry& sg) {
  const int threads = cpu::num_threads();
  if (sg.D != 2 || threads < 2) return false;
  if (const char* force = std::getenv("FUSEDLSTM_DIRECTIONS")) {  // tuning and tests
    if (std::strcmp(force, "together") == 0) return true;
    if (std::strcmp(force, "sequential") == 0) return false;
  }
  const double flops_per_step = 8.0 * double(p.B) * double(p.H) * double(sg.Hout);  // work, not a size: never wraps
  return flops_per_step < double(1 << 19);
}

// Runs run_direction(d) for every direction d of a layer: both at once, or
// one after the other.
template <class Fn>
void for_each_direction(const fl_stack_params& p, const StackGeometry& sg, const Fn& run_direction) {
  if (directions_together(p, sg)) {
    CallDecision* call = current_call();
    cpu::run_pair([&](int d) {
      const FollowCall follow(call);  // the pool thread running d = 1 stops with the caller
      run_direction(d);
    });
  } else {
    for (int64_t d = 0; d < sg.D; ++d) run_direction(d);
  }
}

// The single-direction problem of cell (l, d), reading layer input `in`.
fl_forward_params cell_params(const fl_stack_params& p, const StackGeometry& sg, int64_t l, int64_t d,
                              const void* in, int64_t in_stride_t, int64_t in_stride_b) {
  const int64_t idx = l * sg.D + d;
  const int64_t bh = p.B * sg.Hout * sg.elem, bc = p.B * p.H * sg.elem;
  fl_forward_params f{};
  f.dtype = p.dtype;
  f.mode = FL_MANY_TO_MANY;
  f.T = p.T, f.B = p.B, f.I = l == 0 ? p.I : sg.width(), f.H = p.H;
  f.proj_size = p.proj_size;
  f.reverse = int(d);
  f.x = in;
  f.x_stride_t = in_stride_t, f.x_stride_b = in_stride_b;
  f.w_ih = p.w_ih[idx];
  f.w_hh = p.w_hh[idx];
  f.w_hr = p.proj_size > 0 ? p.w_hr[idx] : nullptr;
  f.b_ih = p.b_ih ? p.b_ih[idx] : nullptr;
  f.b_hh = p.b_hh ? p.b_hh[idx] : nullptr;
  f.h0 = p.h0 ? static_cast<const unsigned char*>(p.h0) + idx * bh : nullptr;
  f.c0 = p.c0 ? static_cast<const unsigned char*>(p.c0) + idx * bc : nullptr;
  f.lengths = p.lengths;
  f.h_n = p.h_n ? static_cast<unsigned char*>(p.h_n) + idx * bh : nullptr;  // NULL in backward
  f.c_n = p.c_n ? static_cast<unsigned char*>(p.c_n) + idx * bc : nullptr;
  return f;
}

const void* mask_of_layer(const fl_stack_params& p, const StackGeometry& sg, int64_t l) {  // l >= 1
  if (!p.dropout_mask) return nullptr;
  return static_cast<const unsigned char*>(p.dropout_mask) + (l - 1) * p.T * p.B * sg.width() * sg.elem;
}

template <class T>
void forward_typed(const fl_stack_params& p, void* reserve) {
  const StackGeometry sg(p);
  const bool training = reserve != nullptr;
  unsigned char* res = static_cast<unsigned char*>(reserve);
  const int64_t n_in = p.T * p.B * sg.width();
  // Inference: layer outputs alternate between two host arrays.
  HostArray scratch[2];
  if (!training && sg.L > 1)
    for (auto& s : scratch) s = HostArray(n_in * sg.elem, false, "a layer output of the stack (inference)");

  const void* in = p.x;
  int64_t in_st = p.x_stride_t, in_sb = p.x_stride_b;
  for (int64_t l = 0; l < sg.L; ++l) {
    const bool last = l == sg.L - 1;
    unsigned char* out = nullptr;
    int64_t out_st = 0, out_sb = 0;
    if (last) {
      out = static_cast<unsigned char*>(p.y);
      out_st = p.y_stride_t, out_sb = p.y_stride_b;
    } else {
      if (training) {
        unsigned char* region = res + sg.input_offset(l + 1);
        std::memset(region, 0, size_t(sg.input_bytes));  // slack and padding: defined bytes
        out = align64(region);
      } else {
        out = scratch[l % 2].data();
      }
      out_st = p.B * sg.width(), out_sb = sg.width();
    }
    auto run_direction = [&](int64_t d) {
      fl_forward_params f = cell_params(p, sg, l, d, in, in_st, in_sb);
      if (out) {
        f.y = out + d * sg.Hout * sg.elem;
        f.y_stride_t = out_st, f.y_stride_b = out_sb;
      } else {
        f.mode = FL_MANY_TO_ONE;
      }
      cpu::forward(f, training ? res + sg.cell_offset(l, d) : nullptr);
    };
    for_each_direction(p, sg, run_direction);
    if (!last) {
      if (const void* mask = mask_of_layer(p, sg, l + 1)) multiply_mask<T>(reinterpret_cast<T*>(out), mask, n_in);
      in = out;
      in_st = out_st, in_sb = out_sb;
    }
  }
}

template <class T>
void backward_typed(const fl_stack_params& p, const void* reserve, const fl_stack_grads& g) {
  const StackGeometry sg(p);
  const unsigned char* res = static_cast<const unsigned char*>(reserve);
  const int64_t n_in = p.T * p.B * sg.width();
  const int64_t bh = p.B * sg.Hout * sg.elem, bc = p.B * p.H * sg.elem;
  // Gradient of the current layer's output: the caller's dy for the last
  // layer, then the masked gradient of the input of the layer above.
  const void* dy = g.dy;
  int64_t dy_st = g.dy_stride_t, dy_sb = g.dy_stride_b;
  HostArray d_in[2], d_other;
  for (int64_t l = sg.L - 1; l >= 0; --l) {
    const void* in = l == 0 ? p.x : align64(const_cast<unsigned char*>(res) + sg.input_offset(l));
    const int64_t in_st = l == 0 ? p.x_stride_t : p.B * sg.width(), in_sb = l == 0 ? p.x_stride_b : sg.width();
    const int64_t in_width = l == 0 ? p.I : sg.width();
    // dX of this layer: the caller's dx for layer 0, else a host array.
    void* dx;
    int64_t dx_st, dx_sb;
    if (l == 0) {
      dx = g.dx, dx_st = g.dx_stride_t, dx_sb = g.dx_stride_b;
    } else {
      if (!d_in[l % 2].data()) d_in[l % 2] = HostArray(n_in * sg.elem, false, "the gradient of a layer's output");
      dx = d_in[l % 2].data(), dx_st = p.B * sg.width(), dx_sb = sg.width();
    }
    auto run_direction = [&](int64_t d) {
      const int64_t idx = l * sg.D + d;
      fl_forward_params f = cell_params(p, sg, l, d, in, in_st, in_sb);
      fl_backward_params b{};
      if (dy) {
        b.dy = static_cast<const unsigned char*>(dy) + d * sg.Hout * sg.elem;
        b.dy_stride_t = dy_st, b.dy_stride_b = dy_sb;
      }
      b.dh_n = g.dh_n ? static_cast<const unsigned char*>(g.dh_n) + idx * bh : nullptr;
      b.dc_n = g.dc_n ? static_cast<const unsigned char*>(g.dc_n) + idx * bc : nullptr;
      if (d == 0) {
        b.dx = dx, b.dx_stride_t = dx_st, b.dx_stride_b = dx_sb;
      } else {  // both directions read the same input: their dx add up
        b.dx = d_other.data(), b.dx_stride_t = p.B * in_width, b.dx_stride_b = in_width;
      }
      b.dh0 = static_cast<unsigned char*>(g.dh0) + idx * bh;
      b.dc0 = static_cast<unsigned char*>(g.dc0) + idx * bc;
      b.dw_ih = g.dw_ih[idx];
      b.dw_hh = g.dw_hh[idx];
      b.db = g.db ? g.db[idx] : nullptr;
      b.dw_hr = p.proj_size > 0 ? g.dw_hr[idx] : nullptr;
      cpu::backward(f, res + sg.cell_offset(l, d), b);
    };
    if (sg.D == 2 && !d_other.data())
      d_other = HostArray(p.T * p.B * std::max(p.I, sg.width()) * sg.elem, false, "the reverse direction's dx");
    for_each_direction(p, sg, run_direction);
    if (sg.D == 2) add_into<T>(dx, dx_st, dx_sb, d_other.data(), p.T, p.B, in_width);
    if (l > 0) {
      if (const void* mask = mask_of_layer(p, sg, l)) multiply_mask<T>(static_cast<T*>(dx), mask, n_in);
      dy = dx, dy_st = dx_st, dy_sb = dx_sb;
    }
  }
}

}  // namespace

int64_t stack_reserve_bytes(const fl_stack_params& p) { return StackGeometry(p).total(); }

void stack_forward(const fl_stack_params& p, void* reserve) {
  const CallScope call;
  if (p.dtype == FL_FLOAT32) forward_typed<float>(p, reserve);
  else forward_typed<double>(p, reserve);
}

void stack_backward(const fl_stack_params& p, const void* reserve, const fl_stack_grads& g) {
  const CallScope call;
  if (p.dtype == FL_FLOAT32) backward_typed<float>(p, reserve, g);
  else backward_typed<double>(p, reserve, g);
}

}  // namespace fusedlstm
