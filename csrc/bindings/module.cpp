// pybind11 module fusedlstm._core: thin. The Python layer (fusedlstm/api.py)
// has already checked shapes and dtypes and made every array the layout
// given here; this file only fills the C params, releases the GIL around the
// kernels, and turns a failed status into a Python exception.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

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
  if (status == FL_OUT_OF_MEMORY) {  // MemoryError, with what was being allocated and how many bytes
    PyErr_SetString(PyExc_MemoryError, msg.c_str());
    throw py::error_already_set();
  }
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
          const py::array& c_new, const py::object& acts) {
  fl_cell_params p{};
  p.dtype = dtype_of(x);
  p.B = x.shape(0), p.I = x.shape(1), p.H = h.shape(1);
  p.x = x.data(), p.h = h.data(), p.c = c.data();
  p.w_ih = w_ih.data(), p.w_hh = w_hh.data();
  p.b_ih = ptr(b_ih), p.b_hh = ptr(b_hh);
  p.h_new = mut_ptr(h_new), p.c_new = mut_ptr(c_new);
  p.acts = mut_ptr(acts);
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_cell(&p);
  }
  check(status);
}

void cell_backward(const py::array& x, const py::array& h, const py::array& c, const py::array& w_ih,
                   const py::array& w_hh, const py::array& acts, const py::array& c_new, const py::object& dh_new,
                   const py::object& dc_new, const py::array& dx, const py::array& dh, const py::array& dc,
                   const py::array& dw_ih, const py::array& dw_hh, const py::object& db) {
  fl_cell_backward_params p{};
  p.dtype = dtype_of(x);
  p.B = x.shape(0), p.I = x.shape(1), p.H = h.shape(1);
  p.x = x.data(), p.h = h.data(), p.c = c.data(), p.w_ih = w_ih.data(), p.w_hh = w_hh.data();
  p.acts = acts.data(), p.c_new = c_new.data();
  p.dh_new = ptr(dh_new), p.dc_new = ptr(dc_new);
  p.dx = mut_ptr(dx), p.dh = mut_ptr(dh), p.dc = mut_ptr(dc);
  p.dw_ih = mut_ptr(dw_ih), p.dw_hh = mut_ptr(dw_hh), p.db = mut_ptr(db);
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_cell_backward(&p);
  }
  check(status);
}

// ---- layer stacks. Arrays arrive in the layout fl_stack_params documents;
// 3-D ones ([T, B, K], last axis contiguous) give their strides here.
int64_t stride_of(const py::array& a, int axis) { return a.strides(axis) / a.itemsize(); }

// The weights of every cell, each (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None).
struct CellPointers {
  std::vector<const void*> w_ih, w_hh, b_ih, b_hh, w_hr;
  explicit CellPointers(const py::list& cells) {
    for (const auto& item : cells) {
      const auto c = py::cast<py::tuple>(item);
      w_ih.push_back(ptr(c[0]));
      w_hh.push_back(ptr(c[1]));
      b_ih.push_back(ptr(c[2]));
      b_hh.push_back(ptr(c[3]));
      w_hr.push_back(ptr(c[4]));
    }
  }
};

fl_stack_params stack_params(const py::array& x, const CellPointers& cells, const py::object& h0,
                             const py::object& c0, const py::object& lengths, const py::object& mask,
                             int64_t num_layers, int64_t num_directions, int64_t proj_size, int64_t H) {
  fl_stack_params p{};
  p.dtype = dtype_of(x);
  p.T = x.shape(0), p.B = x.shape(1), p.I = x.shape(2), p.H = H;
  p.proj_size = proj_size;
  p.num_layers = num_layers, p.num_directions = num_directions;
  p.x = x.data();
  p.x_stride_t = stride_of(x, 0), p.x_stride_b = stride_of(x, 1);
  p.lengths = static_cast<const int64_t*>(ptr(lengths));
  p.w_ih = cells.w_ih.data(), p.w_hh = cells.w_hh.data();
  p.b_ih = cells.b_ih.data(), p.b_hh = cells.b_hh.data(), p.w_hr = cells.w_hr.data();
  p.h0 = ptr(h0), p.c0 = ptr(c0);
  p.dropout_mask = ptr(mask);
  return p;
}

int64_t stack_reserve_bytes(bool float64, int64_t T, int64_t B, int64_t H, int64_t proj_size,
                            int64_t num_layers, int64_t num_directions) {
  fl_stack_params p{};
  p.dtype = float64 ? FL_FLOAT64 : FL_FLOAT32;
  p.T = T, p.B = B, p.H = H, p.proj_size = proj_size;
  p.num_layers = num_layers, p.num_directions = num_directions;
  return fl_lstm_stack_reserve_bytes(&p);
}

void stack_forward(const py::array& x, const py::list& cells, const py::object& h0, const py::object& c0,
                   const py::object& lengths, const py::object& mask, int64_t num_layers,
                   int64_t num_directions, int64_t proj_size, int64_t H, const py::object& y,
                   const py::array& h_n, const py::array& c_n, const py::object& reserve) {
  const CellPointers w(cells);
  fl_stack_params p = stack_params(x, w, h0, c0, lengths, mask, num_layers, num_directions, proj_size, H);
  if (!y.is_none()) {
    const auto ya = py::cast<py::array>(y);
    p.y = mut_ptr(ya);
    p.y_stride_t = stride_of(ya, 0), p.y_stride_b = stride_of(ya, 1);
  }
  p.h_n = mut_ptr(h_n), p.c_n = mut_ptr(c_n);
  void* res = mut_ptr(reserve);
  const int64_t res_bytes = reserve.is_none() ? 0 : int64_t(py::cast<py::array>(reserve).nbytes());
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_stack_forward(&p, res, res_bytes);
  }
  check(status);
}

void stack_backward(const py::array& x, const py::list& cells, const py::object& h0, const py::object& c0,
                    const py::object& lengths, const py::object& mask, int64_t num_layers,
                    int64_t num_directions, int64_t proj_size, int64_t H, const py::array& reserve,
                    const py::object& dy, const py::object& dh_n, const py::object& dc_n, const py::array& dx,
                    const py::array& dh0, const py::array& dc0, const py::list& cell_grads) {
  const CellPointers w(cells);
  const fl_stack_params p = stack_params(x, w, h0, c0, lengths, mask, num_layers, num_directions, proj_size, H);
  std::vector<void*> dw_ih, dw_hh, db, dw_hr;
  for (const auto& item : cell_grads) {  // (dw_ih, dw_hh, db | None, dw_hr | None)
    const auto c = py::cast<py::tuple>(item);
    dw_ih.push_back(mut_ptr(c[0]));
    dw_hh.push_back(mut_ptr(c[1]));
    db.push_back(mut_ptr(c[2]));
    dw_hr.push_back(mut_ptr(c[3]));
  }
  fl_stack_grads g{};
  if (!dy.is_none()) {
    const auto a = py::cast<py::array>(dy);
    g.dy = a.data();
    g.dy_stride_t = stride_of(a, 0), g.dy_stride_b = stride_of(a, 1);
  }
  g.dh_n = ptr(dh_n), g.dc_n = ptr(dc_n);
  g.dx = mut_ptr(dx);
  g.dx_stride_t = stride_of(dx, 0), g.dx_stride_b = stride_of(dx, 1);
  g.dh0 = mut_ptr(dh0), g.dc0 = mut_ptr(dc0);
  g.dw_ih = dw_ih.data(), g.dw_hh = dw_hh.data(), g.db = db.data(), g.dw_hr = dw_hr.data();
  const void* res = reserve.data();
  const int64_t res_bytes = int64_t(reserve.nbytes());  // touches Python objects: before releasing the GIL
  fl_status status;
  {
    py::gil_scoped_release release;
    status = fl_lstm_stack_backward(&p, res, res_bytes, &g);
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
  m.def("cell", &cell, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("h_new"), py::arg("c_new"), py::arg("acts") = py::none());
  m.def("cell_backward", &cell_backward);
  m.def("stack_reserve_bytes", &stack_reserve_bytes);
  m.def("stack_forward", &stack_forward);
  m.def("stack_backward", &stack_backward);
  m.def("set_num_threads", &fl_set_num_threads);
  m.def("get_num_threads", &fl_get_num_threads);
  m.def("use_openmp", [](bool on) { return fl_use_openmp(on) != 0; });
  m.def("using_openmp", [] { return fl_using_openmp() != 0; });
  m.def("limit_threads_on_this_thread", &fl_limit_threads_on_this_thread);
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
