// The C API: checks what the backends assume, turns exceptions into status
// codes, and dispatches to the backend (only the CPU one so far).
#include <new>
#include <stdexcept>
#include <string>

#include "cpu/dispatch.h"
#include "cpu/lstm_cpu.h"
#include "fusedlstm/fusedlstm.h"

struct fl_training_state {
  fusedlstm::cpu::SavedForwardPtr cpu;
};

namespace {

thread_local std::string last_error;

struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void require(bool ok, const std::string& what) {
  if (!ok) throw InvalidArgument(what);
}

template <class Fn>
fl_status guarded(Fn&& fn) {
  try {
    fn();
    last_error.clear();
    return FL_OK;
  } catch (const InvalidArgument& e) {
    last_error = e.what();
    return FL_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory allocating a workspace";
    return FL_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    last_error = e.what();
    return FL_INTERNAL_ERROR;
  } catch (...) {
    last_error = "unknown internal error";
    return FL_INTERNAL_ERROR;
  }
}

void check_dtype(fl_dtype d) { require(d == FL_FLOAT32 || d == FL_FLOAT64, "dtype must be FL_FLOAT32 or FL_FLOAT64"); }

}  // namespace

extern "C" {

fl_status fl_lstm_forward(const fl_forward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    check_dtype(p->dtype);
    require(p->mode == FL_MANY_TO_MANY || p->mode == FL_MANY_TO_ONE || p->mode == FL_ONE_TO_MANY,
            "mode must be FL_MANY_TO_MANY, FL_MANY_TO_ONE or FL_ONE_TO_MANY");
    require(p->T >= 1 && p->B >= 1 && p->I >= 1 && p->H >= 1, "T, B, I and H must all be >= 1");
    require(p->x && p->w_ih && p->w_hh && p->h_n && p->c_n, "x, w_ih, w_hh, h_n and c_n are required");
    if (p->mode == FL_ONE_TO_MANY) {
      require(p->feed == FL_FEED_REPEAT || p->feed == FL_FEED_FIRST || p->feed == FL_FEED_OUTPUT,
              "feed must be FL_FEED_REPEAT, FL_FEED_FIRST or FL_FEED_OUTPUT");
      require(p->feed != FL_FEED_OUTPUT || p->I == p->H, "feed FL_FEED_OUTPUT needs I == H");
      require(p->lengths == nullptr, "lengths is only for FL_MANY_TO_MANY and FL_MANY_TO_ONE");
    }
    if (p->lengths)
      for (int64_t b = 0; b < p->B; ++b)
        require(p->lengths[b] >= 1 && p->lengths[b] <= p->T,
                "lengths[" + std::to_string(b) + "] = " + std::to_string(p->lengths[b]) +
                    " is outside [1, T = " + std::to_string(p->T) + "]");
    if (p->state_out) *p->state_out = nullptr;
    fusedlstm::cpu::SavedForwardPtr saved;
    fusedlstm::cpu::forward(*p, p->state_out ? &saved : nullptr);
    if (p->state_out) *p->state_out = new fl_training_state{std::move(saved)};
  });
}

fl_status fl_lstm_backward(const fl_backward_params* p) {
  return guarded([&] {
    require(p != nullptr, "params is NULL");
    require(p->state && p->state->cpu, "state is NULL: run the forward with state_out set");
    require(p->dx && p->dh0 && p->dc0 && p->dw_ih && p->dw_hh, "dx, dh0, dc0, dw_ih and dw_hh are required");
    fusedlstm::cpu::backward(*p->state->cpu, *p);
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

void fl_training_state_free(fl_training_state* state) { delete state; }

int64_t fl_training_state_bytes(const fl_training_state* state) {
  return (state && state->cpu) ? fusedlstm::cpu::saved_bytes(*state->cpu) : 0;
}

const char* fl_last_error(void) { return last_error.c_str(); }

void fl_set_num_threads(int n) { fusedlstm::cpu::set_num_threads(n); }
int fl_get_num_threads(void) { return fusedlstm::cpu::num_threads(); }

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
