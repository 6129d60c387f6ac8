// pybind11 module fusedlstm._core: thin. The Python layer (fusedlstm/api.py,
// layers.py, torch.py) checks arguments and lays arrays out; this file fills
// the C params, releases the GIL around the kernels, and turns a failed status
// into a Python exception. It still refuses any array whose dtype, layout or
// size is not what fusedlstm.h documents for it (see the accessors below):
// the C API reads raw pointers and cannot tell.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "status_to_python.h"
#include "fusedlstm/fusedlstm.h"

namespace py = pybind11;

namespace {

// Owns the saved activations of a training forward, and remembers the
// forward's sizes so that backward can check the arrays it is given.
struct TrainingState {
  fl_training_state* state = nullptr;
  fl_dtype dtype = FL_FLOAT32;
  int mode = 0;
  int64_t T = 0, B = 0, I = 0, H = 0;
  ~TrainingState() { fl_training_state_free(state); }
};

// ---- arrays. Every array reaches the C API as a bare pointer, read in the
// layout fusedlstm.h documents: "dense" (C-contiguous) for weights, biases,
// states, masks, lengths, reserves and cell arrays; "rows" (last axis
// contiguous, the other strides passed) for x, y, dy and dx. An array with
// the right values in another layout would be read as if it were dense, a
// silently wrong answer, and a short one would be overrun; so each is checked
// here (dtype, layout, alignment, element count), never trusted.
enum class Layout { dense, rows };

std::string describe(const py::handle& h) { return py::str(h).cast<std::string>(); }

// The number of elements a shape holds; -1 ("not checked") when a size is not
// positive (the C API refuses such sizes before it reads any array).
int64_t elements(std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  for (const int64_t d : dims) {
    if (d <= 0) return -1;
    if (__builtin_mul_overflow(n, d, &n)) throw py::value_error("array sizes overflow int64");
  }
  return n;
}

py::array checked(const py::object& obj, const std::string& name, const py::dtype& dtype, int64_t count,
                  Layout layout) {
  if (!py::isinstance<py::array>(obj))  // no conversion: a temporary's pointer would dangle
    throw py::type_error(name + " must be a numpy array, got " + describe(py::type::of(obj)));
  const auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(dtype))
    throw py::type_error(name + " has dtype " + describe(a.dtype()) + " but the call works in " + describe(dtype));
  if (count >= 0 && a.size() != count)
    throw py::value_error(name + " must have " + std::to_string(count) + " elements, got " +
                          std::to_string(a.size()));
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(name + " is not aligned to its dtype");
  if (layout == Layout::dense) {
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(name + " must be C-contiguous (row-major, no gaps); make it so first "
                                   "(numpy.ascontiguousarray)");
  } else {
    const auto item = a.itemsize();
    bool ok = a.ndim() >= 1 && (a.strides(a.ndim() - 1) == item || a.shape(a.ndim() - 1) <= 1);
    for (py::ssize_t k = 0; k < a.ndim(); ++k) ok = ok && a.strides(k) % item == 0;
    if (!ok)
      throw py::value_error(name + " must have a contiguous last axis and strides that are whole elements");
  }
  return a;
}

const void* in(const py::object& obj, const std::string& name, const py::dtype& dtype, int64_t count,
               Layout layout = Layout::dense) {
  return obj.is_none() ? nullptr : checked(obj, name, dtype, count, layout).data();
}

void* writable(py::array a, const std::string& name) {
  if (!a.writeable()) throw py::value_error(name + " (an output) is read-only");
  return a.mutable_data();
}

void* out(const py::object& obj, const std::string& name, const py::dtype& dtype, int64_t count,
          Layout layout = Layout::dense) {
  return obj.is_none() ? nullptr : writable(checked(obj, name, dtype, count, layout), name);
}

int64_t stride_of(const py::array& a, int axis) { return a.strides(axis) / a.itemsize(); }

// A "rows" array of the single-layer calls, which pass its strides in
// elements: they must be the array's own, over T x B rows of K elements
// (shape (T, B, K) or (B, T, K)), or over B rows of a 2-D (B, K) array.
py::array strided_rows(const py::object& obj, const std::string& name, const py::dtype& dtype, int64_t T,
                       int64_t B, int64_t K, int64_t st, int64_t sb, bool two_d) {
  const int64_t count = two_d ? elements({B, K}) : elements({T, B, K});
  const auto a = checked(obj, name, dtype, count, Layout::rows);
  if (count < 0) return a;  // a size below 1: the C API refuses it, naming the size
  const auto is = [&](int axis, int64_t n, int64_t s) { return a.shape(axis) == n && stride_of(a, axis) == s; };
  const bool ok = two_d ? a.ndim() == 2 && is(0, B, sb)
                        : a.ndim() == 3 && ((is(0, T, st) && is(1, B, sb)) || (is(0, B, sb) && is(1, T, st)));
  if (!ok) throw py::value_error(name + ": the strides passed with it are not its own");
  return a;
}

const void* rows_in(const py::object& obj, const std::string& name, const py::dtype& dtype, int64_t T,
                    int64_t B, int64_t K, int64_t st, int64_t sb, bool two_d) {
  return obj.is_none() ? nullptr : strided_rows(obj, name, dtype, T, B, K, st, sb, two_d).data();
}

void* rows_out(const py::object& obj, const std::string& name, const py::dtype& dtype, int64_t T, int64_t B,
               int64_t K, int64_t st, int64_t sb, bool two_d) {
  return obj.is_none() ? nullptr : writable(strided_rows(obj, name, dtype, T, B, K, st, sb, two_d), name);
}

py::dtype numpy_dtype(fl_dtype d) { return d == FL_FLOAT64 ? py::dtype::of<double>() : py::dtype::of<float>(); }

void check(fl_status status) {
  fusedlstm_bindings::raise_for_status(status, fl_last_error(), "fusedlstm error: ");
}

// Runs a kernel call without the GIL, interruptible by Ctrl-C: on the main
// thread (the only one where Python runs signal handlers) the core polls
// run_signal_handlers about every 50 ms of a long call, which takes the GIL
// back for a moment. The exception a handler raises (KeyboardInterrupt)
// stops the call and is raised here; calls from other threads never take
// the GIL. The check and the core only run on this thread, so no pool
// thread ever waits for the GIL.
class InterruptibleCall {
 public:
  InterruptibleCall() : installed_(PyThread_get_thread_ident() == main_thread_id()) {
    if (installed_) fl_set_interrupt_check(&run_signal_handlers, nullptr);
  }
  ~InterruptibleCall() {
    if (installed_) fl_set_interrupt_check(nullptr, nullptr);
  }
  InterruptibleCall(const InterruptibleCall&) = delete;
  InterruptibleCall& operator=(const InterruptibleCall&) = delete;

  static unsigned long& main_thread_id() {
    static unsigned long id = 0;  // set at import
    return id;
  }

 private:
  static int run_signal_handlers(void*) {
    py::gil_scoped_acquire gil;
    return PyErr_Occurred() || PyErr_CheckSignals() != 0;  // the error stays set for without_gil
  }
  bool installed_;
};

template <class Call>
fl_status without_gil(Call&& call) {
  fl_status status;
  {
    const InterruptibleCall interruptible;
    py::gil_scoped_release release;
    status = call();
  }
  if (PyErr_Occurred()) throw py::error_already_set();  // raised by a signal handler during the call
  if (status == FL_INTERRUPTED) {  // stopped by a check without a Python error: say so all the same
    PyErr_SetString(PyExc_KeyboardInterrupt, fl_last_error());
    throw py::error_already_set();
  }
  return status;
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
  const py::dtype d = numpy_dtype(p.dtype);
  fusedlstm_bindings::store_enum(p.mode, mode);
  fusedlstm_bindings::store_enum(p.feed, feed);
  p.T = T, p.B = B, p.I = I, p.H = H;
  p.x = rows_in(x, "x", d, T, B, I, x_stride_t, x_stride_b, mode == FL_ONE_TO_MANY);
  p.x_stride_t = x_stride_t, p.x_stride_b = x_stride_b;
  p.w_ih = in(w_ih, "w_ih", d, elements({4, H, I})), p.w_hh = in(w_hh, "w_hh", d, elements({4, H, H}));
  p.b_ih = in(b_ih, "b_ih", d, elements({4, H})), p.b_hh = in(b_hh, "b_hh", d, elements({4, H}));
  p.h0 = in(h0, "h0", d, elements({B, H})), p.c0 = in(c0, "c0", d, elements({B, H}));
  p.lengths = static_cast<const int64_t*>(in(lengths, "lengths", py::dtype::of<int64_t>(), elements({B})));
  p.y = rows_out(y, "y", d, T, B, H, y_stride_t, y_stride_b, false);
  p.y_stride_t = y_stride_t, p.y_stride_b = y_stride_b;
  p.h_n = out(h_n, "h_n", d, elements({B, H})), p.c_n = out(c_n, "c_n", d, elements({B, H}));
  auto state = training ? std::make_shared<TrainingState>() : nullptr;
  if (state) state->dtype = p.dtype, state->mode = mode, state->T = T, state->B = B, state->I = I, state->H = H;
  p.state_out = training ? &state->state : nullptr;
  check(without_gil([&] { return fl_lstm_forward(&p); }));
  return state;
}

void backward(const TrainingState& state, const py::object& dy, int64_t dy_stride_t, int64_t dy_stride_b,
              const py::object& dh_n, const py::object& dc_n, const py::array& dx, int64_t dx_stride_t,
              int64_t dx_stride_b, const py::array& dh0, const py::array& dc0, const py::array& dw_ih,
              const py::array& dw_hh, const py::object& db) {
  fl_backward_params p{};
  p.state = state.state;
  const py::dtype d = numpy_dtype(state.dtype);
  const int64_t T = state.T, B = state.B, I = state.I, H = state.H;
  p.dy = state.mode == FL_MANY_TO_ONE ? in(dy, "dy", d, elements({B, H}))
                                      : rows_in(dy, "dy", d, T, B, H, dy_stride_t, dy_stride_b, false);
  p.dy_stride_t = dy_stride_t, p.dy_stride_b = dy_stride_b;
  p.dh_n = in(dh_n, "dh_n", d, elements({B, H})), p.dc_n = in(dc_n, "dc_n", d, elements({B, H}));
  p.dx = rows_out(dx, "dx", d, T, B, I, dx_stride_t, dx_stride_b, state.mode == FL_ONE_TO_MANY);
  p.dx_stride_t = dx_stride_t, p.dx_stride_b = dx_stride_b;
  p.dh0 = out(dh0, "dh0", d, elements({B, H})), p.dc0 = out(dc0, "dc0", d, elements({B, H}));
  p.dw_ih = out(dw_ih, "dw_ih", d, elements({4, H, I})), p.dw_hh = out(dw_hh, "dw_hh", d, elements({4, H, H}));
  p.db = out(db, "db", d, elements({4, H}));
  check(without_gil([&] { return fl_lstm_backward(&p); }));
}

// The sizes of a single step, from x [B, I] and h [B, H].
struct CellShape {
  int64_t B, I, H;
  CellShape(const py::array& x, const py::array& h) {
    if (x.ndim() != 2 || h.ndim() != 2) throw py::value_error("x and h must be 2-D: [B, I] and [B, H]");
    B = x.shape(0), I = x.shape(1), H = h.shape(1);
  }
  int64_t x() const { return elements({B, I}); }
  int64_t state() const { return elements({B, H}); }
  int64_t gates() const { return elements({B, 4, H}); }
  int64_t w_ih() const { return elements({4, H, I}); }
  int64_t w_hh() const { return elements({4, H, H}); }
  int64_t bias() const { return elements({4, H}); }
};

// What both cell calls read alike: dtype, sizes, x, h, c and the weights.
template <class Params>
CellShape cell_inputs(Params& p, const py::array& x, const py::array& h, const py::array& c,
                      const py::array& w_ih, const py::array& w_hh) {
  p.dtype = dtype_of(x);
  const py::dtype d = numpy_dtype(p.dtype);
  const CellShape n(x, h);
  p.B = n.B, p.I = n.I, p.H = n.H;
  p.x = in(x, "x", d, n.x()), p.h = in(h, "h", d, n.state()), p.c = in(c, "c", d, n.state());
  p.w_ih = in(w_ih, "w_ih", d, n.w_ih()), p.w_hh = in(w_hh, "w_hh", d, n.w_hh());
  return n;
}

void cell(const py::array& x, const py::array& h, const py::array& c, const py::array& w_ih,
          const py::array& w_hh, const py::object& b_ih, const py::object& b_hh, const py::array& h_new,
          const py::array& c_new, const py::object& acts) {
  fl_cell_params p{};
  const CellShape n = cell_inputs(p, x, h, c, w_ih, w_hh);
  const py::dtype d = numpy_dtype(p.dtype);
  p.b_ih = in(b_ih, "b_ih", d, n.bias()), p.b_hh = in(b_hh, "b_hh", d, n.bias());
  p.h_new = out(h_new, "h_new", d, n.state()), p.c_new = out(c_new, "c_new", d, n.state());
  p.acts = out(acts, "acts", d, n.gates());
  check(without_gil([&] { return fl_lstm_cell(&p); }));
}

void cell_backward(const py::array& x, const py::array& h, const py::array& c, const py::array& w_ih,
                   const py::array& w_hh, const py::array& acts, const py::array& c_new, const py::object& dh_new,
                   const py::object& dc_new, const py::array& dx, const py::array& dh, const py::array& dc,
                   const py::array& dw_ih, const py::array& dw_hh, const py::object& db) {
  fl_cell_backward_params p{};
  const CellShape n = cell_inputs(p, x, h, c, w_ih, w_hh);
  const py::dtype d = numpy_dtype(p.dtype);
  p.acts = in(acts, "acts", d, n.gates()), p.c_new = in(c_new, "c_new", d, n.state());
  p.dh_new = in(dh_new, "dh_new", d, n.state()), p.dc_new = in(dc_new, "dc_new", d, n.state());
  p.dx = out(dx, "dx", d, n.x()), p.dh = out(dh, "dh", d, n.state()), p.dc = out(dc, "dc", d, n.state());
  p.dw_ih = out(dw_ih, "dw_ih", d, n.w_ih()), p.dw_hh = out(dw_hh, "dw_hh", d, n.w_hh());
  p.db = out(db, "db", d, n.bias());
  check(without_gil([&] { return fl_lstm_cell_backward(&p); }));
}

// ---- layer stacks. Arrays are laid out as fl_stack_params documents; the
// 3-D ones ([T, B, K], last axis contiguous) give their strides here.

// The sizes of a stack call (x [T, B, I] gives T, B and I) and the element
// count of each of its arrays.
struct StackShape {
  py::dtype dtype;
  int64_t T, B, I, H, R, L, D;
  StackShape(const py::array& x, int64_t H_, int64_t R_, int64_t L_, int64_t D_)
      : dtype(numpy_dtype(dtype_of(x))), H(H_), R(R_), L(L_), D(D_) {
    if (x.ndim() != 3) throw py::value_error("x must be 3-D: [T, B, I]");
    T = x.shape(0), B = x.shape(1), I = x.shape(2);
  }
  int64_t hout() const { return R > 0 ? R : H; }
  int64_t w_ih(int64_t cell) const { return cell < D ? elements({4, H, I}) : elements({4, H, D, hout()}); }
  int64_t w_hh() const { return elements({4, H, hout()}); }
  int64_t bias() const { return elements({4, H}); }
  int64_t w_hr() const { return elements({R, H}); }
  int64_t states(int64_t width) const { return elements({L, D, B, width}); }
  int64_t mask() const { return elements({L - 1, T, B, D, hout()}); }

  // The per-cell list (one tuple per cell, L*D of them, each of `fields`).
  std::vector<py::tuple> cells(const py::list& list, const char* name, size_t fields) const {
    const int64_t n = elements({L, D});
    if (n >= 0 && int64_t(py::len(list)) != n)
      throw py::value_error(std::string(name) + " must hold num_layers * num_directions = " + std::to_string(n) +
                            " cells, got " + std::to_string(py::len(list)));
    std::vector<py::tuple> out;
    for (const auto& item : list) {
      auto t = py::cast<py::tuple>(item);
      if (t.size() != fields)
        throw py::value_error(std::string(name) + ": each cell must be a tuple of " + std::to_string(fields));
      out.push_back(std::move(t));
    }
    return out;
  }
};

// x, y, dy or dx of a stack call: [T, B, K] (any strides but the last axis's).
py::array stack_rows(const py::object& obj, const char* name, const StackShape& n, int64_t K) {
  const auto a = checked(obj, name, n.dtype, elements({n.T, n.B, K}), Layout::rows);
  if (a.ndim() != 3 || a.shape(0) != n.T || a.shape(1) != n.B)
    throw py::value_error(std::string(name) + " must have shape [T, B, " + std::to_string(K) + "] = [" +
                          std::to_string(n.T) + ", " + std::to_string(n.B) + ", " + std::to_string(K) + "]");
  return a;
}

std::string cell_name(const char* list, size_t k, const char* field) {
  return std::string(list) + "[" + std::to_string(k) + "]." + field;
}

// The weights of every cell, each (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None).
struct CellPointers {
  std::vector<const void*> w_ih, w_hh, b_ih, b_hh, w_hr;
  CellPointers(const py::list& cells, const StackShape& n) {
    const auto list = n.cells(cells, "cells", 5);
    for (size_t k = 0; k < list.size(); ++k) {
      const auto& c = list[k];
      w_ih.push_back(in(c[0], cell_name("cells", k, "w_ih"), n.dtype, n.w_ih(int64_t(k))));
      w_hh.push_back(in(c[1], cell_name("cells", k, "w_hh"), n.dtype, n.w_hh()));
      b_ih.push_back(in(c[2], cell_name("cells", k, "b_ih"), n.dtype, n.bias()));
      b_hh.push_back(in(c[3], cell_name("cells", k, "b_hh"), n.dtype, n.bias()));
      w_hr.push_back(in(c[4], cell_name("cells", k, "w_hr"), n.dtype, n.w_hr()));
    }
  }
};

fl_stack_params stack_params(const py::array& x, const StackShape& n, const CellPointers& cells,
                             const py::object& h0, const py::object& c0, const py::object& lengths,
                             const py::object& mask) {
  fl_stack_params p{};
  p.dtype = dtype_of(x);
  p.T = n.T, p.B = n.B, p.I = n.I, p.H = n.H;
  p.proj_size = n.R;
  p.num_layers = n.L, p.num_directions = n.D;
  const auto xa = stack_rows(x, "x", n, n.I);
  p.x = xa.data();
  p.x_stride_t = stride_of(xa, 0), p.x_stride_b = stride_of(xa, 1);
  p.lengths = static_cast<const int64_t*>(in(lengths, "lengths", py::dtype::of<int64_t>(), elements({n.B})));
  p.w_ih = cells.w_ih.data(), p.w_hh = cells.w_hh.data();
  p.b_ih = cells.b_ih.data(), p.b_hh = cells.b_hh.data(), p.w_hr = cells.w_hr.data();
  p.h0 = in(h0, "h0", n.dtype, n.states(n.hout())), p.c0 = in(c0, "c0", n.dtype, n.states(n.H));
  p.dropout_mask = in(mask, "dropout_mask", n.dtype, n.mask());
  return p;
}

int64_t stack_reserve_bytes(bool float64, int64_t T, int64_t B, int64_t H, int64_t proj_size,
                            int64_t num_layers, int64_t num_directions) {
  fl_stack_params p{};
  p.dtype = float64 ? FL_FLOAT64 : FL_FLOAT32;
  p.T = T, p.B = B, p.H = H, p.proj_size = proj_size;
  p.num_layers = num_layers, p.num_directions = num_directions;
  const int64_t bytes = fl_lstm_stack_reserve_bytes(&p);
  if (bytes < 0) throw py::value_error(fl_last_error());  // shapes no reserve can hold
  return bytes;
}

void stack_forward(const py::array& x, const py::list& cells, const py::object& h0, const py::object& c0,
                   const py::object& lengths, const py::object& mask, int64_t num_layers,
                   int64_t num_directions, int64_t proj_size, int64_t H, const py::object& y,
                   const py::array& h_n, const py::array& c_n, const py::object& reserve) {
  const StackShape n(x, H, proj_size, num_layers, num_directions);
  const CellPointers w(cells, n);
  fl_stack_params p = stack_params(x, n, w, h0, c0, lengths, mask);
  if (!y.is_none()) {
    const auto ya = stack_rows(y, "y", n, n.D * n.hout());
    p.y = writable(ya, "y");
    p.y_stride_t = stride_of(ya, 0), p.y_stride_b = stride_of(ya, 1);
  }
  p.h_n = out(h_n, "h_n", n.dtype, n.states(n.hout())), p.c_n = out(c_n, "c_n", n.dtype, n.states(n.H));
  void* res = out(reserve, "reserve", py::dtype::of<uint8_t>(), -1);
  const int64_t res_bytes = reserve.is_none() ? 0 : int64_t(py::cast<py::array>(reserve).nbytes());
  check(without_gil([&] { return fl_lstm_stack_forward(&p, res, res_bytes); }));
}

void stack_backward(const py::array& x, const py::list& cells, const py::object& h0, const py::object& c0,
                    const py::object& lengths, const py::object& mask, int64_t num_layers,
                    int64_t num_directions, int64_t proj_size, int64_t H, const py::array& reserve,
                    const py::object& dy, const py::object& dh_n, const py::object& dc_n, const py::array& dx,
                    const py::array& dh0, const py::array& dc0, const py::list& cell_grads) {
  const StackShape n(x, H, proj_size, num_layers, num_directions);
  const CellPointers w(cells, n);
  const fl_stack_params p = stack_params(x, n, w, h0, c0, lengths, mask);
  std::vector<void*> dw_ih, dw_hh, db, dw_hr;
  const auto grads = n.cells(cell_grads, "cell_grads", 4);  // (dw_ih, dw_hh, db | None, dw_hr | None)
  for (size_t k = 0; k < grads.size(); ++k) {
    const auto& c = grads[k];
    dw_ih.push_back(out(c[0], cell_name("cell_grads", k, "dw_ih"), n.dtype, n.w_ih(int64_t(k))));
    dw_hh.push_back(out(c[1], cell_name("cell_grads", k, "dw_hh"), n.dtype, n.w_hh()));
    db.push_back(out(c[2], cell_name("cell_grads", k, "db"), n.dtype, n.bias()));
    dw_hr.push_back(out(c[3], cell_name("cell_grads", k, "dw_hr"), n.dtype, n.w_hr()));
  }
  fl_stack_grads g{};
  if (!dy.is_none()) {
    const auto a = stack_rows(dy, "dy", n, n.D * n.hout());
    g.dy = a.data();
    g.dy_stride_t = stride_of(a, 0), g.dy_stride_b = stride_of(a, 1);
  }
  g.dh_n = in(dh_n, "dh_n", n.dtype, n.states(n.hout())), g.dc_n = in(dc_n, "dc_n", n.dtype, n.states(n.H));
  const auto dxa = stack_rows(dx, "dx", n, n.I);
  g.dx = writable(dxa, "dx");
  g.dx_stride_t = stride_of(dxa, 0), g.dx_stride_b = stride_of(dxa, 1);
  g.dh0 = out(dh0, "dh0", n.dtype, n.states(n.hout())), g.dc0 = out(dc0, "dc0", n.dtype, n.states(n.H));
  g.dw_ih = dw_ih.data(), g.dw_hh = dw_hh.data(), g.db = db.data(), g.dw_hr = dw_hr.data();
  const void* res = in(reserve, "reserve", py::dtype::of<uint8_t>(), -1);
  const int64_t res_bytes = int64_t(reserve.nbytes());  // touches Python objects: before releasing the GIL
  check(without_gil([&] { return fl_lstm_stack_backward(&p, res, res_bytes, &g); }));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedlstm compiled core (internal; use the fusedlstm package)";
  InterruptibleCall::main_thread_id() =
      py::cast<unsigned long>(py::module_::import("threading").attr("main_thread")().attr("ident"));
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
  m.attr("MAX_THREADS") = FL_MAX_THREADS;
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
