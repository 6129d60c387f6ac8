// The C API (fusedlstm.h): checks every argument once, for every backend,
// turns exceptions into status codes, and dispatches to the backend of the
// call's device (capi/backends.h).
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "capi/backends.h"
#include "core/arg_checks.h"
#include "core/backend_call.h"
#include "core/checked_size.h"
#include "core/interrupt.h"
#include "core/stack.h"
#include "core/status.h"
#include "cpu/dispatch.h"
#include "cpu/thread_pool.h"
#include "fusedlstm/fusedlstm.h"
#include "fusedlstm/fusedlstm_cuda.h"

// A training forward of the functional API: owns copies (on the forward's
// device) of every input the backward reads, so the caller may change or
// free its arrays, and the reserve the forward filled.
struct fl_training_state {
  const fl_backend_ops* ops = nullptr;
  fl_forward_params params{};  // inputs point into the copies below
  std::vector<fusedlstm::DeviceBuffer> copies;
  int64_t copied_bytes = 0;
  fusedlstm::DeviceBuffer reserve;

  // bytes: checked by the caller (check_single); what names the copy.
  unsigned char* add_copy(int64_t bytes, const char* what) {
    copies.emplace_back(*ops, params.device, bytes, what);
    copied_bytes += bytes;
    return copies.back().data();
  }
  // A dense array of n elements of elem bytes (NULL stays NULL).
  const void* keep(const void* src, int64_t n, int64_t elem, const char* what) {
    if (!src) return nullptr;
    unsigned char* dst = add_copy(n * elem, what);
    copy_rows(dst, 0, 0, src, 0, 0, 1, 1, n, elem);
    return dst;
  }
  // T x B rows of n elements (elem bytes each: copied bitwise).
  void copy_rows(void* dst, int64_t dst_st, int64_t dst_sb, const void* src, int64_t src_st, int64_t src_sb,
                 int64_t T, int64_t B, int64_t n, int64_t elem) {
    const fl_dtype as = elem == 8 ? FL_FLOAT64 : elem == 4 ? FL_FLOAT32 : FL_FLOAT16;
    fusedlstm::check(*ops, ops->rows(&params.device, as, FL_ROWS_COPY, dst, dst_st, dst_sb, src, src_st, src_sb, T,
                                     B, n));
  }
  // CUDA: later frees go after the work of the last call that used the state.
  void used_on(void* stream) {
    params.device.stream = stream;
    for (auto& c : copies) c.set_stream(stream);
    reserve.set_stream(stream);
  }
};

namespace {

thread_local std::string last_error;

using fusedlstm::backend_for;
using fusedlstm::check_sequence_shape;
using fusedlstm::checked_bytes;
using fusedlstm::checked_element_size;
using fusedlstm::checked_extent;
using fusedlstm::checked_product;
using fusedlstm::require;
using fusedlstm::require_positive;

template <class Fn>
fl_status guarded(Fn&& fn) {
  return fusedlstm::guarded(last_error, fn, [](const std::exception&) { return FL_INTERNAL_ERROR; });
}

// Host lengths only (the CPU): on CUDA they are device memory the host never
// reads, clamped by the kernels (fusedlstm.h).
void check_lengths(const fl_device& device, const int64_t* lengths, int64_t B, int64_t T) {
  if (!lengths || fusedlstm::raw_enum(device.type) != FL_DEVICE_CPU) return;
  for (int64_t b = 0; b < B; ++b)
    require(lengths[b] >= 1 && lengths[b] <= T,
            "lengths[" + std::to_string(b) + "] = " + std::to_string(lengths[b]) + " is outside [1, T = " +
                std::to_string(T) + "]");
}

void check_projection(int64_t proj_size, int64_t H) {
  require(proj_size >= 0 && proj_size < H,
          "proj_size = " + std::to_string(proj_size) + " must be 0 or in [1, H = " + std::to_string(H) + ")");
}

// Byte sizes of the arrays of a single-direction forward (checked).
struct ForwardSizes {
  int64_t elem, Hout, x_steps;  // x_steps: T, or 1 for one_to_many's [B, I]
  int64_t w_ih, w_hh, w_hr, h0, c0;
  bool lstm;
};

ForwardSizes check_single(const fl_forward_params& p) {
  ForwardSizes s{};
  s.elem = checked_element_size(p.dtype);
  require_positive("H", p.H);
  check_projection(p.proj_size, p.H);
  const int64_t G = fusedlstm::checked_cell_gates(p.cell, p.proj_size);
  s.lstm = G == 4;
  s.Hout = p.proj_size > 0 ? p.proj_size : p.H;
  check_sequence_shape(p, s.Hout, s.elem);
  require(p.x && p.w_ih && p.w_hh && p.h_n, "x, w_ih, w_hh and h_n are required");
  require(!s.lstm || p.c_n, "c_n is required for the LSTM");
  require(p.proj_size == 0 || p.w_hr, "w_hr is required with a projection");
  if (p.mode == FL_ONE_TO_MANY) {
    require(p.feed != FL_FEED_OUTPUT || p.I == s.Hout, "feed FL_FEED_OUTPUT needs I == Hout");
    require(p.lengths == nullptr, "lengths is only for FL_MANY_TO_MANY and FL_MANY_TO_ONE");
    require(!p.reverse, "reverse is only for FL_MANY_TO_MANY and FL_MANY_TO_ONE");
  }
  s.x_steps = p.mode == FL_ONE_TO_MANY ? 1 : p.T;
  checked_bytes("T*B*I*elem", {s.x_steps, p.B, p.I, s.elem});
  // Element counts, each checked in bytes too.
  const auto elements = [&](const char* what, int64_t a, int64_t b, int64_t c) {
    checked_bytes(what, {a, b, c, s.elem});
    return a * b * c;
  };
  s.w_ih = elements("w_ih G*H*I*elem", G, p.H, p.I);
  s.w_hh = elements("w_hh G*H*Hout*elem", G, p.H, s.Hout);
  s.w_hr = elements("w_hr R*H*elem", 1, p.proj_size, p.H);
  s.h0 = elements("h0 B*Hout*elem", 1, p.B, s.Hout);
  s.c0 = s.lstm ? elements("c0 B*H*elem", 1, p.B, p.H) : 0;
  checked_bytes("lengths B*8", {p.B, int64_t(sizeof(int64_t))});
  check_lengths(p.device, p.lengths, p.B, p.T);
  return s;
}

// The fields the reserve size reads (see fl_lstm_stack_reserve_bytes).
void check_stack_shape(const fl_stack_params& p) {
  checked_element_size(p.dtype);
  require_positive("T", p.T);
  require_positive("B", p.B);
  require_positive("H", p.H);
  require_positive("num_layers", p.num_layers);
  require(p.num_directions == 1 || p.num_directions == 2,
          "num_directions = " + std::to_string(p.num_directions) + " must be 1 or 2");
  check_projection(p.proj_size, p.H);
  fusedlstm::checked_cell_gates(p.cell, p.proj_size);
  checked_product("num_layers*num_directions", {p.num_layers, p.num_directions});
}

void check_stack(const fl_backend_ops& ops, const fl_stack_params& p, bool forward) {
  check_stack_shape(p);
  require_positive("I", p.I);
  const int64_t elem = checked_element_size(p.dtype), L = p.num_layers, D = p.num_directions;
  const int64_t Hout = p.proj_size > 0 ? p.proj_size : p.H, width = checked_product("D*Hout", {D, Hout});
  require(p.x && p.w_ih && p.w_hh, "x, w_ih and w_hh are required");
  const bool lstm = p.cell == FL_CELL_LSTM;  // checked by check_stack_shape
  require(!forward || p.h_n, "h_n is required");
  require(!forward || !lstm || p.c_n, "c_n is required for the LSTM");
  require(p.proj_size == 0 || p.w_hr, "w_hr is required with a projection");
  checked_extent("x extent (T-1)*|x_stride_t| + (B-1)*|x_stride_b| + I", p.T, p.x_stride_t, p.B, p.x_stride_b, p.I,
                 elem);
  if (p.y)
    checked_extent("y extent (T-1)*|y_stride_t| + (B-1)*|y_stride_b| + D*Hout", p.T, p.y_stride_t, p.B, p.y_stride_b,
                   width, elem);
  checked_bytes("h_n num_layers*num_directions*B*Hout*elem", {L, D, p.B, Hout, elem});
  checked_bytes("c_n num_layers*num_directions*B*H*elem", {L, D, p.B, p.H, elem});
  checked_bytes("layer inputs and dropout_mask (num_layers-1)*T*B*D*Hout*elem", {L - 1, p.T, p.B, width, elem});
  checked_bytes("T*B*max(I, D*Hout)*elem", {p.T, p.B, std::max(p.I, width), elem});
  checked_bytes("w_ih 4*H*max(I, D*Hout)*elem", {4, p.H, std::max(p.I, width), elem});
  checked_bytes("w_hh 4*H*Hout*elem", {4, p.H, Hout, elem});
  fusedlstm::stack_reserve_bytes(ops, p);  // checked: throws for shapes whose reserve overflows
  for (int64_t i = 0; i < L * D; ++i) {  // the caller's host arrays hold L*D pointers
    require(p.w_ih[i] && p.w_hh[i], "w_ih[" + std::to_string(i) + "] and w_hh[" + std::to_string(i) + "] are required");
    require(p.proj_size == 0 || p.w_hr[i], "w_hr[" + std::to_string(i) + "] is required");
  }
  check_lengths(p.device, p.lengths, p.B, p.T);
}

void check_reserve(const fl_backend_ops& ops, const fl_stack_params& p, const void* reserve, int64_t reserve_bytes) {
  const int64_t need = fusedlstm::stack_reserve_bytes(ops, p);
  require(reserve_bytes >= need, "reserve_bytes = " + std::to_string(reserve_bytes) +
                                     " is smaller than these shapes need (" + std::to_string(need) + ")");
  require(p.device.type == FL_DEVICE_CPU || reinterpret_cast<uintptr_t>(reserve) % 256 == 0,
          "reserve must be 256-byte aligned on CUDA");
}

}  // namespace

extern "C" {

fl_status fl_lstm_forward(const fl_forward_params* p) {
  // *state_out is NULL on every failure: cleared first, set last.
  if (p && p->state_out) *p->state_out = nullptr;
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    const fl_backend_ops& ops = backend_for(p->device);
    const ForwardSizes sz = check_single(*p);
    if (!p->state_out) {
      fusedlstm::check(ops, ops.forward(p, nullptr));
      return;
    }
    auto st = std::make_unique<fl_training_state>();
    st->ops = &ops;
    fl_forward_params& f = st->params;
    f = *p;
    f.state_out = nullptr;
    f.y = f.h_n = f.c_n = nullptr;
    const int64_t e = sz.elem, B = p->B, I = p->I;
    // x, copied contiguous: [T, B, I], or one_to_many's [B, I]. Offsets are
    // within the extents check_single bounded.
    unsigned char* x = st->add_copy(sz.x_steps * B * I * e, "the training state's copy of x");
    st->copy_rows(x, B * I, I, p->x, p->x_stride_t, p->x_stride_b, sz.x_steps, B, I, e);
    f.x = x;
    f.x_stride_t = B * I, f.x_stride_b = I;
    f.w_ih = st->keep(p->w_ih, sz.w_ih, e, "the training state's copy of w_ih");
    f.w_hh = st->keep(p->w_hh, sz.w_hh, e, "the training state's copy of w_hh");
    f.w_hr = p->proj_size > 0 ? st->keep(p->w_hr, sz.w_hr, e, "the training state's copy of w_hr") : nullptr;
    f.b_ih = f.b_hh = nullptr;  // backward does not read biases
    f.h0 = st->keep(p->h0, sz.h0, e, "the training state's copy of h0");
    f.c0 = sz.lstm ? st->keep(p->c0, sz.c0, e, "the training state's copy of c0") : nullptr;
    f.lengths = static_cast<const int64_t*>(st->keep(p->lengths, B, 8, "the training state's copy of lengths"));
    const int64_t reserve_bytes = ops.cell_reserve_bytes(p->cell, p->dtype, p->T, B, p->H, p->proj_size);
    if (reserve_bytes < 0) fusedlstm::check(ops, FL_INVALID_ARGUMENT);
    st->reserve = fusedlstm::DeviceBuffer(ops, p->device, reserve_bytes, "the training state's saved activations");
    fusedlstm::check(ops, ops.forward(p, st->reserve.data()));
    *p->state_out = st.release();
  });
}

fl_status fl_lstm_backward(const fl_backward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    require(p->state != nullptr, "state is NULL: run the forward with state_out set");
    fl_training_state& st = *const_cast<fl_training_state*>(p->state);
    const fl_forward_params& f = st.params;  // checked by the forward
    require(fusedlstm::raw_enum(p->device.type) == fusedlstm::raw_enum(f.device.type) &&
                p->device.index == f.device.index,
            "device (type " + std::to_string(fusedlstm::raw_enum(p->device.type)) + ", index " +
                std::to_string(p->device.index) + ") is not the device of the forward that made the state");
    backend_for(p->device);  // checks the stream field on the CPU
    require(p->dx && p->dh0 && p->dw_ih && p->dw_hh, "dx, dh0, dw_ih and dw_hh are required");
    require(f.cell != FL_CELL_LSTM || p->dc0, "dc0 is required for the LSTM");
    require(f.proj_size == 0 || p->dw_hr, "dw_hr is required with a projection");
    const int64_t elem = fusedlstm::element_size(f.dtype), Hout = f.proj_size > 0 ? f.proj_size : f.H;
    checked_extent("dx extent (T-1)*|dx_stride_t| + (B-1)*|dx_stride_b| + I", f.mode == FL_ONE_TO_MANY ? 1 : f.T,
                   p->dx_stride_t, f.B, p->dx_stride_b, f.I, elem);
    if (p->dy && f.mode != FL_MANY_TO_ONE)
      checked_extent("dy extent (T-1)*|dy_stride_t| + (B-1)*|dy_stride_b| + Hout", f.T, p->dy_stride_t, f.B,
                     p->dy_stride_b, Hout, elem);
    fl_forward_params inputs = f;
    inputs.device.stream = p->device.stream;
    st.used_on(p->device.stream);
    fusedlstm::check(*st.ops, st.ops->backward(&inputs, st.reserve.data(), p));
  });
}

fl_status fl_lstm_cell(const fl_cell_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    fusedlstm::check_cell_sizes(checked_element_size(p->dtype), p->B, p->I, p->H);
    const fl_backend_ops& ops = backend_for(p->device);
    const bool lstm = fusedlstm::checked_cell_gates(p->cell, 0) == 4;
    require(p->x && p->h && p->w_ih && p->w_hh && p->h_new, "x, h, w_ih, w_hh and h_new are required");
    require(!lstm || (p->c && p->c_new), "c and c_new are required for the LSTM");
    fusedlstm::check(ops, ops.cell(p));
  });
}

fl_status fl_lstm_cell_backward(const fl_cell_backward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    fusedlstm::check_cell_sizes(checked_element_size(p->dtype), p->B, p->I, p->H);
    const fl_backend_ops& ops = backend_for(p->device);
    const bool lstm = fusedlstm::checked_cell_gates(p->cell, 0) == 4;
    require(p->x && p->h && p->w_ih && p->w_hh && p->acts, "x, h, w_ih, w_hh and acts are required");
    require(p->dx && p->dh && p->dw_ih && p->dw_hh, "dx, dh, dw_ih and dw_hh are required");
    require(!lstm || (p->c && p->c_new && p->dc), "c, c_new and dc are required for the LSTM");
    fusedlstm::check(ops, ops.cell_backward(p));
  });
}

void fl_training_state_free(fl_training_state* state) { delete state; }

int64_t fl_training_state_bytes(const fl_training_state* state) {
  return state ? state->copied_bytes + state->reserve.bytes() : 0;
}

int64_t fl_lstm_stack_reserve_bytes(const fl_stack_params* p) {
  int64_t bytes = -1;
  const fl_status status = guarded([&] {
    require(p != nullptr, "params is NULL");
    check_stack_shape(*p);
    bytes = fusedlstm::stack_reserve_bytes(backend_for(p->device), *p);
  });
  return status == FL_OK ? bytes : -1;
}

fl_status fl_lstm_stack_forward(const fl_stack_params* p, void* reserve, int64_t reserve_bytes) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    const fl_backend_ops& ops = backend_for(p->device);
    check_stack(ops, *p, true);
    if (reserve) check_reserve(ops, *p, reserve, reserve_bytes);
    fusedlstm::stack_forward(ops, *p, reserve);
  });
}

fl_status fl_lstm_stack_backward(const fl_stack_params* p, const void* reserve, int64_t reserve_bytes,
                                 const fl_stack_grads* g) {
  return guarded([&] {
    require(p != nullptr && g != nullptr, "params or grads is NULL");
    const fl_backend_ops& ops = backend_for(p->device);
    check_stack(ops, *p, false);
    require(reserve != nullptr, "reserve is NULL: run the forward with a reserve");
    check_reserve(ops, *p, reserve, reserve_bytes);
    require(g->dx && g->dh0 && g->dw_ih && g->dw_hh, "dx, dh0, dw_ih and dw_hh are required");
    require(p->cell != FL_CELL_LSTM || g->dc0, "dc0 is required for the LSTM");
    require(p->proj_size == 0 || g->dw_hr, "dw_hr is required with a projection");
    const int64_t elem = fusedlstm::element_size(p->dtype), Hout = p->proj_size > 0 ? p->proj_size : p->H;
    checked_extent("dx extent (T-1)*|dx_stride_t| + (B-1)*|dx_stride_b| + I", p->T, g->dx_stride_t, p->B,
                   g->dx_stride_b, p->I, elem);
    if (g->dy)
      checked_extent("dy extent (T-1)*|dy_stride_t| + (B-1)*|dy_stride_b| + D*Hout", p->T, g->dy_stride_t, p->B,
                     g->dy_stride_b, p->num_directions * Hout, elem);
    fusedlstm::stack_backward(ops, *p, reserve, *g);
  });
}

const char* fl_last_error(void) { return last_error.c_str(); }

void fl_set_num_threads(int n) { fusedlstm::cpu::set_num_threads(n); }
int fl_get_num_threads(void) { return fusedlstm::cpu::num_threads(); }
int fl_use_openmp(int on) { return fusedlstm::cpu::ThreadPool::use_openmp(on != 0) ? 1 : 0; }
int fl_using_openmp(void) { return fusedlstm::cpu::ThreadPool::using_openmp() ? 1 : 0; }
int fl_limit_threads_on_this_thread(int n) { return fusedlstm::cpu::set_thread_limit(n); }
void fl_set_interrupt_check(int (*fn)(void*), void* ctx) { fusedlstm::set_interrupt_check(fn, ctx); }

const char* fl_get_isa(void) { return fusedlstm::cpu::active_kernels().name; }

fl_status fl_set_isa(const char* name) {
  return guarded([&] {
    require(name != nullptr, "name is NULL");
    require(fusedlstm::cpu::select_kernels(name),
            std::string("ISA '") + name + "' is unknown or not supported by this CPU; supported: " +
                fl_available_isas());
  });
}

const char* fl_available_isas(void) {
  static const std::string names = [] {
    std::string s;
    for (const auto* t : fusedlstm::cpu::supported_kernels()) {
      if (!s.empty()) s += ',';
      s += t->name;
    }
    return s;
  }();
  return names.c_str();
}

// ---- fusedlstm_cuda.h: forwarded to the CUDA backend when it loads.

int fl_cuda_device_count(const char** why) {
  static thread_local std::string reason;
  const fl_backend_ops* ops = fusedlstm::cuda_backend(&reason);
  if (!ops) {
    if (why) *why = reason.c_str();
    return 0;
  }
  return ops->device_count(why);
}

const char* fl_cuda_backend_name(void) {
  const fl_backend_ops* ops = fusedlstm::cuda_backend(nullptr);
  return ops ? ops->name : "";
}

int fl_cuda_backend_host_memory(void) {
  const fl_backend_ops* ops = fusedlstm::cuda_backend(nullptr);
  return ops ? ops->host_memory : 0;
}

static const char* cuda_info(const char* key) {
  const fl_backend_ops* ops = fusedlstm::cuda_backend(nullptr);
  const char* v = ops ? ops->info(key) : nullptr;
  return v ? v : "";
}

const char* fl_cuda_build_archs(void) { return cuda_info("build_archs"); }
const char* fl_cuda_path(void) { return cuda_info("path"); }
const char* fl_cuda_last_forward_path(void) { return cuda_info("last_forward_path"); }
const char* fl_cuda_last_backward_path(void) { return cuda_info("last_backward_path"); }

}  // extern "C"
