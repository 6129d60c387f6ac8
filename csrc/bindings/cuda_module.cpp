// pybind11 module fusedlstm._cuda: thin, like _core. The Python layer
// (fusedlstm/_cuda_dispatch.py) has checked shapes, dtypes and devices and
// passes raw device pointers (ints), strides in elements, the device ordinal
// and the stream handle; this file fills the C params, releases the GIL and
// turns a failed status into a Python exception (RuntimeError for CUDA /
// cuBLAS failures, with the call, file and line in the message).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // host lengths arrive as a Python list

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "status_to_python.h"
#include "fusedlstm/fusedlstm_cuda.h"

namespace py = pybind11;

namespace {

struct TrainingState {
  fl_cuda_training_state* state = nullptr;
  ~TrainingState() { fl_cuda_training_state_free(state); }
};

template <class T = void>
T* p(std::uintptr_t v) {
  return reinterpret_cast<T*>(v);
}

void check(fl_status status) {
  fusedlstm_bindings::raise_for_status(status, fl_cuda_last_error(), "fusedlstm CUDA error: ");
}

std::shared_ptr<TrainingState> forward(int dtype, bool allow_tf32, int device, std::uintptr_t stream, int mode,
                                       int feed, int64_t T, int64_t B, int64_t I, int64_t H, std::uintptr_t x,
                                       int64_t x_st, int64_t x_sb, std::uintptr_t w_ih, std::uintptr_t w_hh,
                                       std::uintptr_t b_ih, std::uintptr_t b_hh, std::uintptr_t h0,
                                       std::uintptr_t c0, const py::object& lengths, std::uintptr_t y,
                                       int64_t y_st, int64_t y_sb, std::uintptr_t h_n, std::uintptr_t c_n,
                                       bool training) {
  fl_cuda_forward_params q{};
  fusedlstm_bindings::store_enum(q.dtype, dtype);
  q.allow_tf32 = allow_tf32;
  q.device = device;
  q.stream = p(stream);
  fusedlstm_bindings::store_enum(q.mode, mode);
  fusedlstm_bindings::store_enum(q.feed, feed);
  q.T = T, q.B = B, q.I = I, q.H = H;
  q.x = p(x), q.x_stride_t = x_st, q.x_stride_b = x_sb;
  q.w_ih = p(w_ih), q.w_hh = p(w_hh), q.b_ih = p(b_ih), q.b_hh = p(b_hh), q.h0 = p(h0), q.c0 = p(c0);
  std::vector<int64_t> lens;
  if (!lengths.is_none()) {
    lens = py::cast<std::vector<int64_t>>(lengths);
    if (static_cast<int64_t>(lens.size()) != B) throw py::value_error("lengths must have B entries");
    q.lengths = lens.data();
  }
  q.y = p(y), q.y_stride_t = y_st, q.y_stride_b = y_sb;
  q.h_n = p(h_n), q.c_n = p(c_n);
  auto state = training ? std::make_shared<TrainingState>() : nullptr;
  q.state_out = training ? &state->state : nullptr;
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_cuda_lstm_forward(&q);
  }
  check(status);
  return state;
}

void backward(const TrainingState& state, std::uintptr_t stream, std::uintptr_t dy, int64_t dy_st, int64_t dy_sb,
              std::uintptr_t dh_n, std::uintptr_t dc_n, std::uintptr_t dx, int64_t dx_st, int64_t dx_sb,
              std::uintptr_t dh0, std::uintptr_t dc0, std::uintptr_t dw_ih, std::uintptr_t dw_hh,
              std::uintptr_t db) {
  fl_cuda_backward_params q{};
  q.state = state.state;
  q.stream = p(stream);
  q.dy = p(dy), q.dy_stride_t = dy_st, q.dy_stride_b = dy_sb;
  q.dh_n = p(dh_n), q.dc_n = p(dc_n);
  q.dx = p(dx), q.dx_stride_t = dx_st, q.dx_stride_b = dx_sb;
  q.dh0 = p(dh0), q.dc0 = p(dc0), q.dw_ih = p(dw_ih), q.dw_hh = p(dw_hh), q.db = p(db);
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_cuda_lstm_backward(&q);
  }
  check(status);
}

void cell(int dtype, bool allow_tf32, int device, std::uintptr_t stream, int64_t B, int64_t I, int64_t H,
          std::uintptr_t x, std::uintptr_t h, std::uintptr_t c, std::uintptr_t w_ih, std::uintptr_t w_hh,
          std::uintptr_t b_ih, std::uintptr_t b_hh, std::uintptr_t h_new, std::uintptr_t c_new) {
  fl_cuda_cell_params q{};
  fusedlstm_bindings::store_enum(q.dtype, dtype);
  q.allow_tf32 = allow_tf32;
  q.device = device;
  q.stream = p(stream);
  q.B = B, q.I = I, q.H = H;
  q.x = p(x), q.h = p(h), q.c = p(c), q.w_ih = p(w_ih), q.w_hh = p(w_hh), q.b_ih = p(b_ih), q.b_hh = p(b_hh);
  q.h_new = p(h_new), q.c_new = p(c_new);
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_cuda_lstm_cell(&q);
  }
  check(status);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fusedlstm CUDA backend (internal; use the fusedlstm package)";
  py::class_<TrainingState, std::shared_ptr<TrainingState>>(m, "TrainingState")
      .def_property_readonly("nbytes",
                             [](const TrainingState& s) { return fl_cuda_training_state_bytes(s.state); });
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("cell", &cell);
  m.def("device_count", [] {
    const char* why = nullptr;
    const int n = fl_cuda_device_count(&why);
    return py::make_tuple(n, std::string(why ? why : ""));
  });
  m.def("build_archs", [] { return std::string(fl_cuda_build_archs()); });
  m.def("path", [] { return std::string(fl_cuda_path()); });
  m.def("last_forward_path", [] { return std::string(fl_cuda_last_forward_path()); });
  m.def("last_backward_path", [] { return std::string(fl_cuda_last_backward_path()); });
  m.attr("FLOAT32") = int(FL_CUDA_FLOAT32);
  m.attr("FLOAT64") = int(FL_CUDA_FLOAT64);
  m.attr("FLOAT16") = int(FL_CUDA_FLOAT16);
  m.attr("BFLOAT16") = int(FL_CUDA_BFLOAT16);
}
