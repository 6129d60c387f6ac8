// The C API: checks what the backends assume, turns exceptions into status
// codes, and dispatches to the backend (only the CPU one so far).
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/interrupt.h"
#include "core/stack.h"
#include "core/status.h"
#include "cpu/buffer.h"
#include "cpu/dispatch.h"
#include "cpu/lstm_cpu.h"
#include "cpu/thread_pool.h"
#include "fusedlstm/fusedlstm.h"

// A training forward of the functional API: owns copies of every input the
// backward reads (so the caller may change or free its arrays) and the
// reserve the forward filled.
// Its blocks come from the CPU backend's recycled workspaces (fresh
// multi-megabyte allocations would be page-faulted on every call).
struct fl_training_state {
  using Bytes = fusedlstm::cpu::Buffer<unsigned char>;
  fl_forward_params params{};  // inputs point into the copies below
  std::vector<Bytes> copies;
  int64_t copied_bytes = 0;
  Bytes reserve;
  int64_t reserve_bytes = 0;

  unsigned char* add_copy(int64_t bytes) {
    copies.emplace_back(bytes);
    copied_bytes += bytes;
    return copies.back().data();
  }
  const void* keep(const void* src, int64_t bytes) {
    if (!src) return nullptr;
    unsigned char* dst = add_copy(bytes);
    std::memcpy(dst, src, size_t(bytes));
    return dst;
  }
};

namespace {

thread_local std::string last_error;

using fusedlstm::InvalidArgument;
using fusedlstm::require;

template <class Fn>
fl_status guarded(Fn&& fn) {
  return fusedlstm::guarded(last_error, fn, [](const std::exception&) { return FL_INTERNAL_ERROR; });
}

void check_dtype(fl_dtype d) { require(d == FL_FLOAT32 || d == FL_FLOAT64, "dtype must be FL_FLOAT32 or FL_FLOAT64"); }

int64_t elem_size(fl_dtype d) { return d == FL_FLOAT64 ? 8 : 4; }

void check_lengths(const int64_t* lengths, int64_t B, int64_t T) {
  if (!lengths) return;
  for (int64_t b = 0; b < B; ++b)
    require(lengths[b] >= 1 && lengths[b] <= T,
            "lengths[" + std::to_string(b) + "] = " + std::to_string(lengths[b]) + " is outside [1, T = " +
                std::to_string(T) + "]");
}

void check_projection(int64_t proj_size, int64_t H) {
  require(proj_size >= 0 && proj_size < H, "proj_size must be 0 or in [1, H)");
}

void check_single(const fl_forward_params& p) {
  check_dtype(p.dtype);
  require(p.mode == FL_MANY_TO_MANY || p.mode == FL_MANY_TO_ONE || p.mode == FL_ONE_TO_MANY,
          "mode must be FL_MANY_TO_MANY, FL_MANY_TO_ONE or FL_ONE_TO_MANY");
  require(p.T >= 1 && p.B >= 1 && p.I >= 1 && p.H >= 1, "T, B, I and H must all be >= 1");
  require(p.x && p.w_ih && p.w_hh && p.h_n && p.c_n, "x, w_ih, w_hh, h_n and c_n are required");
  check_projection(p.proj_size, p.H);
  require(p.proj_size == 0 || p.w_hr, "w_hr is required with a projection");
  const int64_t Hout = p.proj_size > 0 ? p.proj_size : p.H;
  if (p.mode == FL_ONE_TO_MANY) {
    require(p.feed == FL_FEED_REPEAT || p.feed == FL_FEED_FIRST || p.feed == FL_FEED_OUTPUT,
            "feed must be FL_FEED_REPEAT, FL_FEED_FIRST or FL_FEED_OUTPUT");
    require(p.feed != FL_FEED_OUTPUT || p.I == Hout, "feed FL_FEED_OUTPUT needs I == Hout");
    require(p.lengths == nullptr, "lengths is only for FL_MANY_TO_MANY and FL_MANY_TO_ONE");
    require(!p.reverse, "reverse is only for FL_MANY_TO_MANY and FL_MANY_TO_ONE");
  }
  check_lengths(p.lengths, p.B, p.T);
}

void check_stack(const fl_stack_params& p, bool forward) {
  check_dtype(p.dtype);
  require(p.T >= 1 && p.B >= 1 && p.I >= 1 && p.H >= 1, "T, B, I and H must all be >= 1");
  require(p.num_layers >= 1, "num_layers must be >= 1");
  require(p.num_directions == 1 || p.num_directions == 2, "num_directions must be 1 or 2");
  check_projection(p.proj_size, p.H);
  require(p.x && p.w_ih && p.w_hh, "x, w_ih and w_hh are required");
  require(!forward || (p.h_n && p.c_n), "h_n and c_n are required");
  require(p.proj_size == 0 || p.w_hr, "w_hr is required with a projection");
  for (int64_t i = 0; i < p.num_layers * p.num_directions; ++i) {
    require(p.w_ih[i] && p.w_hh[i], "w_ih[" + std::to_string(i) + "] and w_hh[" + std::to_string(i) + "] are required");
    require(p.proj_size == 0 || p.w_hr[i], "w_hr[" + std::to_string(i) + "] is required");
  }
  check_lengths(p.lengths, p.B, p.T);
}

}  // namespace

extern "C" {

fl_status fl_lstm_forward(const fl_forward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    check_single(*p);
    if (p->state_out) *p->state_out = nullptr;
    if (!p->state_out) {
      fusedlstm::cpu::forward(*p, nullptr);
      return;
    }
    auto st = std::make_unique<fl_training_state>();
    fl_forward_params& f = st->params;
    f = *p;
    f.state_out = nullptr;
    f.y = f.h_n = f.c_n = nullptr;
    const int64_t e = elem_size(p->dtype), Hout = p->proj_size > 0 ? p->proj_size : p->H;
    // x, copied contiguous: [T, B, I], or one_to_many's [B, I].
    const bool one_to_many = p->mode == FL_ONE_TO_MANY;
    const int64_t steps = one_to_many ? 1 : p->T;
    unsigned char* x = st->add_copy(steps * p->B * p->I * e);
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t b = 0; b < p->B; ++b)
        std::memcpy(x + (t * p->B + b) * p->I * e,
                    static_cast<const unsigned char*>(p->x) + (t * p->x_stride_t + b * p->x_stride_b) * e,
                    size_t(p->I * e));
    f.x = x;
    f.x_stride_t = p->B * p->I, f.x_stride_b = p->I;
    f.w_ih = st->keep(p->w_ih, 4 * p->H * p->I * e);
    f.w_hh = st->keep(p->w_hh, 4 * p->H * Hout * e);
    f.w_hr = p->proj_size > 0 ? st->keep(p->w_hr, p->proj_size * p->H * e) : nullptr;
    f.b_ih = f.b_hh = nullptr;  // backward does not read biases
    f.h0 = st->keep(p->h0, p->B * Hout * e);
    f.c0 = st->keep(p->c0, p->B * p->H * e);
    f.lengths = static_cast<const int64_t*>(st->keep(p->lengths, p->B * int64_t(sizeof(int64_t))));
    st->reserve_bytes = fusedlstm::cpu::reserve_bytes(p->dtype, p->T, p->B, p->H, p->proj_size);
    st->reserve = fl_training_state::Bytes(st->reserve_bytes);
    fusedlstm::cpu::forward(*p, st->reserve.data());
    *p->state_out = st.release();
  });
}

fl_status fl_lstm_backward(const fl_backward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    require(p->state != nullptr, "state is NULL: run the forward with state_out set");
    require(p->dx && p->dh0 && p->dc0 && p->dw_ih && p->dw_hh, "dx, dh0, dc0, dw_ih and dw_hh are required");
    require(p->state->params.proj_size == 0 || p->dw_hr, "dw_hr is required with a projection");
    fusedlstm::cpu::backward(p->state->params, p->state->reserve.data(), *p);
  });
}

fl_status fl_lstm_cell(const fl_cell_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    check_dtype(p->dtype);
    require(p->B >= 1 && p->I >= 1 && p->H >= 1, "B, I and H must all be >= 1");
    require(p->x && p->h && p->c && p->w_ih && p->w_hh && p->h_new && p->c_new,
            "x, h, c, w_ih, w_hh, h_new and c_new are required");
    fusedlstm::cpu::cell(*p);
  });
}

fl_status fl_lstm_cell_backward(const fl_cell_backward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    check_dtype(p->dtype);
    require(p->B >= 1 && p->I >= 1 && p->H >= 1, "B, I and H must all be >= 1");
    require(p->x && p->h && p->c && p->w_ih && p->w_hh && p->acts && p->c_new,
            "x, h, c, w_ih, w_hh, acts and c_new are required");
    require(p->dx && p->dh && p->dc && p->dw_ih && p->dw_hh, "dx, dh, dc, dw_ih and dw_hh are required");
    fusedlstm::cpu::cell_backward(*p);
  });
}

void fl_training_state_free(fl_training_state* state) { delete state; }

int64_t fl_training_state_bytes(const fl_training_state* state) {
  return state ? state->copied_bytes + state->reserve_bytes : 0;
}

int64_t fl_lstm_stack_reserve_bytes(const fl_stack_params* p) {
  return p ? fusedlstm::stack_reserve_bytes(*p) : 0;
}

fl_status fl_lstm_stack_forward(const fl_stack_params* p, void* reserve, int64_t reserve_bytes) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    check_stack(*p, true);
    if (reserve) {
      const int64_t need = fusedlstm::stack_reserve_bytes(*p);
      require(reserve_bytes >= need, "reserve holds " + std::to_string(reserve_bytes) + " bytes; these shapes need " +
                                         std::to_string(need));
    }
    fusedlstm::stack_forward(*p, reserve);
  });
}

fl_status fl_lstm_stack_backward(const fl_stack_params* p, const void* reserve, int64_t reserve_bytes,
                                 const fl_stack_grads* g) {
  return guarded([&] {
    require(p != nullptr && g != nullptr, "params or grads is NULL");
    check_stack(*p, false);
    require(reserve != nullptr, "reserve is NULL: run the forward with a reserve");
    require(reserve_bytes >= fusedlstm::stack_reserve_bytes(*p), "reserve is smaller than these shapes need");
    require(g->dx && g->dh0 && g->dc0 && g->dw_ih && g->dw_hh, "dx, dh0, dc0, dw_ih and dw_hh are required");
    require(p->proj_size == 0 || g->dw_hr, "dw_hr is required with a projection");
    fusedlstm::stack_backward(*p, reserve, *g);
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

}  // extern "C"
