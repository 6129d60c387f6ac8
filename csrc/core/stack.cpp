// Layer-stack driver (see stack.h), on any backend through its table. The reserve holds, in order, the reserve
// of every cell (l*D + d) and then the input of every layer l >= 1 (the
// masked, concatenated outputs of layer l-1), which backward needs for dW_ih.
#include "core/stack.h"

#include <algorithm>
#include <cstdint>

#include <string>

#include "core/arg_checks.h"
#include "core/backend_call.h"
#include "core/checked_size.h"
#include "core/interrupt.h"
#include "core/status.h"

namespace fusedlstm {

namespace {

int64_t cell_reserve_bytes(const fl_backend_ops& ops, const fl_stack_params& p) {
  const int64_t bytes = ops.cell_reserve_bytes(p.cell, p.dtype, p.T, p.B, p.H, p.proj_size);
  if (bytes < 0) check(ops, FL_INVALID_ARGUMENT);
  return bytes;
}

// Sizes checked (checked_size.h): the C API builds one to check the shapes
// before anything runs.
struct StackGeometry {
  int64_t L, D, Hout, elem, cell_bytes, input_bytes, total_bytes;
  StackGeometry(const fl_backend_ops& ops, const fl_stack_params& p)
      : L(p.num_layers),
        D(p.num_directions),
        Hout(p.proj_size > 0 ? p.proj_size : p.H),
        elem(element_size(p.dtype)),
        cell_bytes(cell_reserve_bytes(ops, p)),
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

// A [T, B, n] contiguous array: the stride of t and of b, in elements.
struct Rows {
  int64_t st, sb;
};

// dst[t, b, :] (op)= src[t, b, :] over T x B rows of n elements, on the backend.
void rows(const fl_backend_ops& ops, const fl_stack_params& p, fl_rows_op op, void* dst, Rows d, const void* src,
          Rows s, int64_t n) {
  check(ops, ops.rows(&p.device, p.dtype, op, dst, d.st, d.sb, src, s.st, s.sb, p.T, p.B, n));
}

// Runs run_direction(d) for every direction d of a layer, as the backend
// schedules them (the CPU may run two at once; a failure stops the layer).
template <class Fn>
void for_each_direction(const fl_backend_ops& ops, const fl_stack_params& p, const StackGeometry& sg,
                        const Fn& run_direction) {
  struct Ctx {
    const Fn* fn;
    std::string error[2];  // each direction's message (they may run at once)
  } ctx{&run_direction, {}};
  auto run = [](void* c, int64_t d) -> fl_status {
    auto* x = static_cast<Ctx*>(c);
    return guarded(x->error[d], [&] { (*x->fn)(d); }, [](const std::exception&) { return FL_INTERNAL_ERROR; });
  };
  const fl_status status = ops.for_each_direction(&p, sg.D, run, &ctx);
  if (status == FL_OK) return;
  // The message is a direction's own when run failed, else the backend's.
  for (const std::string& e : ctx.error)
    if (!e.empty()) throw BackendError(status, e);
  check(ops, status);
}

// The single-direction problem of cell (l, d), reading layer input `in`.
fl_forward_params cell_params(const fl_stack_params& p, const StackGeometry& sg, int64_t l, int64_t d,
                              const void* in, int64_t in_stride_t, int64_t in_stride_b) {
  const int64_t idx = l * sg.D + d;
  const int64_t bh = p.B * sg.Hout * sg.elem, bc = p.B * p.H * sg.elem;
  const bool lstm = p.cell == FL_CELL_LSTM;
  fl_forward_params f{};
  f.dtype = p.dtype;
  f.cell = p.cell;
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
  f.c0 = lstm && p.c0 ? static_cast<const unsigned char*>(p.c0) + idx * bc : nullptr;
  f.lengths = p.lengths;
  f.h_n = p.h_n ? static_cast<unsigned char*>(p.h_n) + idx * bh : nullptr;  // NULL in backward
  f.c_n = lstm && p.c_n ? static_cast<unsigned char*>(p.c_n) + idx * bc : nullptr;
  f.device = p.device;  // the device index, stream and math flags (allow_tf32, allow_bf16) of every layer
  return f;
}

const void* mask_of_layer(const fl_stack_params& p, const StackGeometry& sg, int64_t l) {  // l >= 1
  if (!p.dropout_mask) return nullptr;
  return static_cast<const unsigned char*>(p.dropout_mask) + (l - 1) * p.T * p.B * sg.width() * sg.elem;
}

void forward_impl(const fl_backend_ops& ops, const fl_stack_params& p, void* reserve) {
  const StackGeometry sg(ops, p);
  const bool training = reserve != nullptr;
  unsigned char* res = static_cast<unsigned char*>(reserve);
  const Rows layer_rows{p.B * sg.width(), sg.width()};
  // Inference: layer outputs alternate between two workspaces.
  DeviceBuffer scratch[2];
  if (!training && sg.L > 1)
    for (auto& s : scratch)
      s = DeviceBuffer(ops, p.device, p.T * p.B * sg.width() * sg.elem, "a layer output of the stack (inference)");

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
        check(ops, ops.fill_zero(&p.device, region, sg.input_bytes));  // slack and padding: defined bytes
        out = align64(region);
      } else {
        out = scratch[l % 2].data();
      }
      out_st = layer_rows.st, out_sb = layer_rows.sb;
    }
    auto run_direction = [&](int64_t d) {
      fl_forward_params f = cell_params(p, sg, l, d, in, in_st, in_sb);
      if (out) {
        f.y = out + d * sg.Hout * sg.elem;
        f.y_stride_t = out_st, f.y_stride_b = out_sb;
      } else {
        f.mode = FL_MANY_TO_ONE;
      }
      check(ops, ops.forward(&f, training ? res + sg.cell_offset(l, d) : nullptr));
    };
    for_each_direction(ops, p, sg, run_direction);
    if (!last) {
      if (const void* mask = mask_of_layer(p, sg, l + 1))
        rows(ops, p, FL_ROWS_MULTIPLY, out, layer_rows, mask, layer_rows, sg.width());
      in = out;
      in_st = out_st, in_sb = out_sb;
    }
  }
}

void backward_impl(const fl_backend_ops& ops, const fl_stack_params& p, const void* reserve, const fl_stack_grads& g) {
  const StackGeometry sg(ops, p);
  const unsigned char* res = static_cast<const unsigned char*>(reserve);
  const Rows layer_rows{p.B * sg.width(), sg.width()};
  const int64_t n_in = p.T * p.B * sg.width();
  const int64_t bh = p.B * sg.Hout * sg.elem, bc = p.B * p.H * sg.elem;
  // Gradient of the current layer's output: the caller's dy for the last
  // layer, then the masked gradient of the input of the layer above.
  const void* dy = g.dy;
  int64_t dy_st = g.dy_stride_t, dy_sb = g.dy_stride_b;
  DeviceBuffer d_in[2], d_other;
  for (int64_t l = sg.L - 1; l >= 0; --l) {
    const void* in = l == 0 ? p.x : align64(const_cast<unsigned char*>(res) + sg.input_offset(l));
    const int64_t in_st = l == 0 ? p.x_stride_t : layer_rows.st, in_sb = l == 0 ? p.x_stride_b : layer_rows.sb;
    const int64_t in_width = l == 0 ? p.I : sg.width();
    // dX of this layer: the caller's dx for layer 0, else a workspace.
    void* dx;
    int64_t dx_st, dx_sb;
    if (l == 0) {
      dx = g.dx, dx_st = g.dx_stride_t, dx_sb = g.dx_stride_b;
    } else {
      if (!d_in[l % 2].data())
        d_in[l % 2] = DeviceBuffer(ops, p.device, n_in * sg.elem, "the gradient of a layer's output");
      dx = d_in[l % 2].data(), dx_st = layer_rows.st, dx_sb = layer_rows.sb;
    }
    const Rows other_rows{p.B * in_width, in_width};
    auto run_direction = [&](int64_t d) {
      const int64_t idx = l * sg.D + d;
      fl_forward_params f = cell_params(p, sg, l, d, in, in_st, in_sb);
      fl_backward_params b{};
      b.device = p.device;
      if (dy) {
        b.dy = static_cast<const unsigned char*>(dy) + d * sg.Hout * sg.elem;
        b.dy_stride_t = dy_st, b.dy_stride_b = dy_sb;
      }
      b.dh_n = g.dh_n ? static_cast<const unsigned char*>(g.dh_n) + idx * bh : nullptr;
      const bool lstm = p.cell == FL_CELL_LSTM;
      b.dc_n = lstm && g.dc_n ? static_cast<const unsigned char*>(g.dc_n) + idx * bc : nullptr;
      if (d == 0) {
        b.dx = dx, b.dx_stride_t = dx_st, b.dx_stride_b = dx_sb;
      } else {  // both directions read the same input: their dx add up
        b.dx = d_other.data(), b.dx_stride_t = other_rows.st, b.dx_stride_b = other_rows.sb;
      }
      b.dh0 = static_cast<unsigned char*>(g.dh0) + idx * bh;
      b.dc0 = lstm ? static_cast<unsigned char*>(g.dc0) + idx * bc : nullptr;
      b.dw_ih = g.dw_ih[idx];
      b.dw_hh = g.dw_hh[idx];
      b.db = g.db ? g.db[idx] : nullptr;
      b.db_hh = g.db_hh ? g.db_hh[idx] : nullptr;
      b.dw_hr = p.proj_size > 0 ? g.dw_hr[idx] : nullptr;
      check(ops, ops.backward(&f, res + sg.cell_offset(l, d), &b));
    };
    if (sg.D == 2 && !d_other.data())
      d_other = DeviceBuffer(ops, p.device, p.T * p.B * std::max(p.I, sg.width()) * sg.elem,
                             "the reverse direction's dx");
    for_each_direction(ops, p, sg, run_direction);
    if (sg.D == 2) rows(ops, p, FL_ROWS_ADD, dx, {dx_st, dx_sb}, d_other.data(), other_rows, in_width);
    if (l > 0) {
      if (const void* mask = mask_of_layer(p, sg, l))
        rows(ops, p, FL_ROWS_MULTIPLY, dx, layer_rows, mask, layer_rows, sg.width());
      dy = dx, dy_st = dx_st, dy_sb = dx_sb;
    }
  }
}

}  // namespace

int64_t stack_reserve_bytes(const fl_backend_ops& ops, const fl_stack_params& p) {
  return StackGeometry(ops, p).total();
}

void stack_forward(const fl_backend_ops& ops, const fl_stack_params& p, void* reserve) {
  const CallScope call;
  forward_impl(ops, p, reserve);
}

void stack_backward(const fl_backend_ops& ops, const fl_stack_params& p, const void* reserve,
                    const fl_stack_grads& g) {
  const CallScope call;
  backward_impl(ops, p, reserve, g);
}

}  // namespace fusedlstm
