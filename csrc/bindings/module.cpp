// pybind11 module fusedlstm._core: thin. The Python layer (fusedlstm/api.py)
// has already checked shapes and dtypes and made every array the layout
// given here; this file only fills the C params, releases the GIL around the
// kernels, and turns a failed status into a Python exception.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "fusedlstm/fusedlstm.h"

namespace py = pybind11;

namespace {

// Owns the saved activations of a training forward.
struct TrainingState {
  fl_training_state* state = nullptr;
  ~TrainingState() { fl_training_state_free(state); }
};

const void* ptr(const py::object& a) { return a.is_none() ? nullptr : py::cast<py::array>(a).data(); }
void* mut_ptr(const py::object& a) {
  return a.is_none() ? nullptr : py::cast<py::array>(a).mutable_data();
}

void check(fl_status status) {
  if (status == FL_OK) return;
  const std::string msg = fl_last_error();
  if (status == FL_INVALID_ARGUMENT) throw py::value_error(msg);
  if (status == FL_OUT_OF_MEMORY) throw std::bad_alloc();
  throw std::runtime_error("fusedlstm internal error: " + msg);
}

fl_dtype dtype_of(const py::array& a) {
  // equal(), not is(): an unpickled array carries its own dtype instance.
  if (a.dtype().equal(py::dtype::of<float>())) return FL_FLOAT32;
  if (a.dtype().equal(py::dtype::of<double>())) return FL_FLOAT64;
  throw py::type_error("internal: unsupported dtype reached the core");
}

std::shared_ptr<TrainingState> forward(const py::array& x, const py::array& w_ih, const py::array& w_hh,
                                       const py::object& b_ih, const py::object& b_hh, const py::object& h0,
                                       const py::object& c0, int mode, int feed, int64_t T, int64_t B,
                                       int64_t I, int64_t H, const py::object& lengths, int64_t x_stride_t,
                                       int64_t x_stride_b, const py::object& y, int64_t y_stride_t,
                                       int64_t y_stride_b, const py::array& h_n, const py::array& c_n,
                                       bool training) {
  fl_forward_params p{};
  p.dtype = dtype_of(x);
  p.mode = static_cast<fl_mode>(mode);
  p.feed = static_cast<fl_feed>(feed);
  p.T = T, p.B = B, p.I = I, p.H = H;
  p.x = x.data();
  p.x_stride_t = x_stride_t, p.x_stride_b = x_stride_b;
  p.w_ih = w_ih.data(), p.w_hh = w_hh.data();
  p.b_ih = ptr(b_ih), p.b_hh = ptr(b_hh), p.h0 = ptr(h0), p.c0 = ptr(c0);
  p.lengths = static_cast<const int64_t*>(ptr(lengths));
  p.y = mut_ptr(y);
  p.y_stride_t = y_stride_t, p.y_stride_b = y_stride_b;
  p.h_n = mut_ptr(h_n), p.c_n = mut_ptr(c_n);
  auto state = training ? std::make_shared<TrainingState>() : nullptr;
  p.state_out = training ? &state->state : nullptr;
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_forward(&p);
  }
  check(status);
  return state;
}

void backward(const TrainingState& state, const py::object& dy, int64_t dy_stride_t, int64_t dy_stride_b,
              const py::object& dh_n, const py::object& dc_n, const py::array& dx, int64_t dx_stride_t,
              int64_t dx_stride_b, const py::array& dh0, const py::array& dc0, const py::array& dw_ih,
              const py::array& dw_hh, const py::object& db) {
  fl_backward_params p{};
  p.state = state.state;
  p.dy = ptr(dy);
  p.dy_stride_t = dy_stride_t, p.dy_stride_b = dy_stride_b;
  p.dh_n = ptr(dh_n), p.dc_n = ptr(dc_n);
  p.dx = mut_ptr(dx);
  p.dx_stride_t = dx_stride_t, p.dx_stride_b = dx_stride_b;
  p.dh0 = mut_ptr(dh0), p.dc0 = mut_ptr(dc0);
  p.dw_ih = mut_ptr(dw_ih), p.dw_hh = mut_ptr(dw_hh);
  p.db = mut_ptr(db);
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_backward(&p);
  }
  check(status);
}

void cell(const py::array& x, const py::array& h, const py::array& c, const py::array& w_ih,
          const py::array& w_hh, const py::object& b_ih, const py::object& b_hh, const py::array& h_new,
          const py::array& c_new) {
  fl_cell_params p{};
  p.dtype = dtype_of(x);
  p.B = x.shape(0), p.I = x.shape(1), p.H = h.shape(1);
  p.x = x.data(), p.h = h.data(), p.c = c.data();
  p.w_ih = w_ih.data(), p.w_hh = w_hh.data();
  p.b_ih = ptr(b_ih), p.b_hh = ptr(b_hh);
  p.h_new = mut_ptr(h_new), p.c_new = mut_ptr(c_new);
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_cell(&p);
  }
  check(status);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedlstm compiled core (internal; use the fusedlstm package)";
  py::class_<TrainingState, std::shared_ptr<TrainingState>>(m, "TrainingState")
      .def_property_readonly("nbytes", [](const TrainingState& s) { return fl_training_state_bytes(s.state); });
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("cell", &cell);
  m.def("set_num_threads", &fl_set_num_threads);
  m.def("get_num_threads", &fl_get_num_threads);
  m.def("get_isa", [] { return std::string(fl_get_isa()); });
  m.def("set_isa", [](const std::string& name) { check(fl_set_isa(name.c_str())); });
  m.def("available_isas", [] { return std::string(fl_available_isas()); });
  m.attr("MANY_TO_MANY") = int(FL_MANY_TO_MANY);
  m.attr("MANY_TO_ONE") = int(FL_MANY_TO_ONE);
  m.attr("ONE_TO_MANY") = int(FL_ONE_TO_MANY);
  m.attr("FEED_REPEAT") = int(FL_FEED_REPEAT);
  m.attr("FEED_FIRST") = int(FL_FEED_FIRST);
  m.attr("FEED_OUTPUT") = int(FL_FEED_OUTPUT);
}
