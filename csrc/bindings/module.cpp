// pybind11 module fusedlstm._core: the one C API of fusedlstm.h, thin. The
// Python layer (fusedlstm/_host.py, _device.py, layers.py, torch.py) checks
// arguments and lays arrays out; this file fills the C params (the device of
// every call included), releases the GIL around the kernels, and turns a
// failed status into a Python exception. Every kernel call takes keyword-only
// arguments (BINDING_SPEC.md).
//
// An array argument is None (NULL), a numpy array (host memory), or an int (a
// device pointer, CUDA only). The binding still refuses any numpy array whose
// dtype, layout or size is not what fusedlstm.h documents for it (see the
// accessors below): the C API reads raw pointers and cannot tell. Device
// pointers carry no shape: the Python layer checked them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/arg_checks.h"  // raw_enum
#include "status_to_python.h"
#include "fusedlstm/fusedlstm.h"
#include "fusedlstm/fusedlstm_cuda.h"

namespace py = pybind11;

namespace {

using Strides = std::tuple<int64_t, int64_t>;  // (stride_t, stride_b) in elements

// ---- the device of a call
fl_device device_of(int device_type, int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  fl_device d{};
  fusedlstm_bindings::store_enum(d.type, device_type);
  d.index = device_index;
  d.stream = reinterpret_cast<void*>(stream);
  d.allow_tf32 = allow_tf32 ? 1 : 0;
  d.allow_bf16 = allow_bf16 ? 1 : 0;
  return d;
}

// Whether the loaded CUDA backend's "device" memory is host memory (the CPU
// emulation); loads the backend when no call has yet.
bool cuda_backend_host_memory() { return fl_cuda_backend_host_memory() != 0; }

// ---- arrays. A numpy array reaches the C API as a bare pointer, read in the
// layout fusedlstm.h documents: "dense" (C-contiguous) for weights, biases,
// states, masks, lengths, reserves and cell arrays; "rows" (last axis
// contiguous, the other strides passed) for x, y, dy and dx. An array with
// the right values in another layout would be read as if it were dense, a
// silently wrong answer, and a short one would be overrun; so each is checked
// here (dtype, layout, alignment, element count), never trusted.
enum class Layout { dense, rows };

std::string describe(const py::handle& h) { return py::str(h).cast<std::string>(); }

// The number of elements a shape holds; kUnchecked when a size is not
// positive (the C API refuses such sizes before it reads any array),
// kOverflows when the product does not fit (a numpy array is refused then; a
// device pointer is left to the C API, which names the product).
constexpr int64_t kUnchecked = -1, kOverflows = -2;
int64_t elements(std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  for (const int64_t d : dims) {
    if (d <= 0) return kUnchecked;
  }
  for (const int64_t d : dims) {
    if (__builtin_mul_overflow(n, d, &n)) return kOverflows;
  }
  return n;
}

int64_t stride_of(const py::array& a, int axis) { return a.strides(axis) / a.itemsize(); }

// dtype codes stay plain ints in the binding: a value outside fl_dtype's
// enumerators is the C API's to refuse (naming it), and loading it as the
// enum type would be undefined behaviour.
// Gates G of a cell code (the C API checks the code itself; any other
// value sizes the arrays as the LSTM's until it refuses it).
int64_t gates_of(int cell) { return cell == FL_CELL_GRU ? 3 : (cell == FL_CELL_RNN_TANH || cell == FL_CELL_RNN_RELU) ? 1 : 4; }
// Values per unit the single step saves (fusedlstm.h, fl_cell_params.acts).
int64_t step_saved_of(int cell) { return (cell == FL_CELL_RNN_TANH || cell == FL_CELL_RNN_RELU) ? 1 : 4; }

std::string dtype_name(int d) {
  switch (d) {
    case FL_FLOAT32: return "FLOAT32";
    case FL_FLOAT64: return "FLOAT64";
    case FL_FLOAT16: return "FLOAT16";
    case FL_BFLOAT16: return "BFLOAT16";
  }
  return std::to_string(d);
}

// What the arrays of one call may be, and how each is checked.
class Arrays {
 public:
  Arrays(int dtype, const fl_device& device) : dtype_(dtype), device_(device) {}

  int dtype() const { return dtype_; }

  // A numpy array of the call's dtype, or of `element` (int64 lengths, uint8 reserves).
  const void* in(const py::object& obj, const std::string& name, int64_t count, Layout layout = Layout::dense,
                 const std::optional<py::dtype>& element = std::nullopt) const {
    if (const auto ptr = pointer(obj, name)) return *ptr;
    return checked(obj, name, count, layout, element).data();
  }
  void* out(const py::object& obj, const std::string& name, int64_t count, Layout layout = Layout::dense,
            const std::optional<py::dtype>& element = std::nullopt) const {
    if (const auto ptr = pointer(obj, name)) return *ptr;
    return writable(checked(obj, name, count, layout, element), name);
  }
  const int64_t* lengths(const py::object& obj, int64_t B) const {
    return static_cast<const int64_t*>(in(obj, "lengths", elements({B}), Layout::dense, py::dtype::of<int64_t>()));
  }

  // A "rows" array whose strides are passed in elements: they must be the
  // array's own, over T x B rows of K elements (shape (T, B, K) or (B, T, K)),
  // or over B rows of a 2-D (B, K) array.
  const void* rows_in(const py::object& obj, const std::string& name, int64_t T, int64_t B, int64_t K,
                      const Strides& s, bool two_d) const {
    if (const auto ptr = pointer(obj, name)) return *ptr;
    return strided_rows(obj, name, T, B, K, s, two_d).data();
  }
  void* rows_out(const py::object& obj, const std::string& name, int64_t T, int64_t B, int64_t K,
                 const Strides& s, bool two_d) const {
    if (const auto ptr = pointer(obj, name)) return *ptr;
    return writable(strided_rows(obj, name, T, B, K, s, two_d), name);
  }

 private:
  // nullptr for None, the address for an int (a device pointer), nothing for
  // an array to check.
  std::optional<void*> pointer(const py::object& obj, const std::string& name) const {
    if (obj.is_none()) return nullptr;
    if (!py::isinstance<py::int_>(obj) || py::isinstance<py::bool_>(obj)) {
      if (!py::isinstance<py::array>(obj))  // no conversion: a temporary's pointer would dangle
        throw py::type_error(name + " must be a numpy array, a device pointer (int) or None, got " +
                             describe(py::type::of(obj)));
      if (fusedlstm::raw_enum(device_.type) == FL_DEVICE_CUDA && !host_memory())
        throw py::type_error(name + " is a numpy array (host memory) but the call runs on CUDA device " +
                             std::to_string(device_.index) + ": pass a device pointer");
      return std::nullopt;
    }
    if (fusedlstm::raw_enum(device_.type) != FL_DEVICE_CUDA)
      throw py::type_error(name + " is an int (a device pointer) but the call runs on the CPU "
                                  "(device_type=DEVICE_CPU): pass a numpy array");
    const unsigned long long v = PyLong_AsUnsignedLongLong(obj.ptr());
    if (PyErr_Occurred()) {
      PyErr_Clear();
      throw py::value_error(name + " = " + describe(obj) + " is not a device pointer (an int in [0, 2**64))");
    }
    return reinterpret_cast<void*>(static_cast<std::uintptr_t>(v));
  }

  bool host_memory() const {
    if (!host_memory_) host_memory_ = cuda_backend_host_memory();
    return *host_memory_;
  }

  py::dtype numpy_dtype(const std::string& name) const {
    switch (dtype_) {
      case FL_FLOAT32: return py::dtype::of<float>();
      case FL_FLOAT64: return py::dtype::of<double>();
      case FL_FLOAT16: return py::dtype("float16");
      case FL_BFLOAT16:
        // ml_dtypes registers numpy's "bfloat16" (what JAX, TensorFlow and ONNX tooling use).
        try {
          py::module_::import("ml_dtypes");
          return py::dtype("bfloat16");
        } catch (const py::error_already_set&) {
          throw py::type_error(name + ": bfloat16 numpy arrays need the ml_dtypes package "
                               "(pip install ml_dtypes); or pass them as device pointers");
        }
    }
    throw py::value_error("dtype = " + std::to_string(dtype_) +
                          " is not one of FLOAT32 (0), FLOAT64 (1), FLOAT16 (2), BFLOAT16 (3)");
  }

  py::array checked(const py::object& obj, const std::string& name, int64_t count, Layout layout,
                    const std::optional<py::dtype>& element) const {
    const auto a = py::reinterpret_borrow<py::array>(obj);
    const py::dtype dtype = element ? *element : numpy_dtype(name);
    // equal(), not is(): an unpickled array carries its own dtype instance.
    if (!a.dtype().equal(dtype))
      throw py::type_error(name + " has dtype " + describe(a.dtype()) + " but the call works in " +
                           (element ? describe(dtype) : describe(dtype) + " (dtype=" + dtype_name(dtype_) + ")"));
    if (count == kOverflows) throw py::value_error(name + ": array sizes overflow int64 (its element count)");
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

  py::array strided_rows(const py::object& obj, const std::string& name, int64_t T, int64_t B, int64_t K,
                         const Strides& s, bool two_d) const {
    const auto [st, sb] = s;
    const int64_t count = two_d ? elements({B, K}) : elements({T, B, K});
    const auto a = checked(obj, name, count, Layout::rows, std::nullopt);
    if (count < 0) return a;  // a size below 1: the C API refuses it, naming the size
    const auto is = [&](int axis, int64_t n, int64_t stride) {
      return a.shape(axis) == n && stride_of(a, axis) == stride;
    };
    const bool ok = two_d ? a.ndim() == 2 && is(0, B, sb)
                          : a.ndim() == 3 && ((is(0, T, st) && is(1, B, sb)) || (is(0, B, sb) && is(1, T, st)));
    if (!ok) throw py::value_error(name + ": the strides passed with it are not its own");
    return a;
  }

  static void* writable(py::array a, const std::string& name) {
    if (!a.writeable()) throw py::value_error(name + " (an output) is read-only");
    return a.mutable_data();
  }

  int dtype_;
  fl_device device_;
  mutable std::optional<bool> host_memory_;
};

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
void run(Call&& call) {
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
  check(status);
}

// ---- single sequence

// Owns the saved activations of a training forward, and remembers the
// forward's sizes and device so that backward can check the arrays it is
// given and run where the forward ran.
struct TrainingState {
  fl_training_state* state = nullptr;
  int dtype = 0;  // the fl_dtype code the forward was given
  fl_device device{};
  int mode = 0;
  int cell = 0;
  int64_t T = 0, B = 0, I = 0, H = 0, proj_size = 0;
  int64_t hout() const { return proj_size > 0 ? proj_size : H; }
  ~TrainingState() { fl_training_state_free(state); }
};

std::shared_ptr<TrainingState> forward(const py::object& x, const Strides& x_strides, const py::object& w_ih,
                                       const py::object& w_hh, const py::object& w_hr, const py::object& b_ih,
                                       const py::object& b_hh, const py::object& h0, const py::object& c0,
                                       const py::object& lengths, const py::object& y, const Strides& y_strides,
                                       const py::object& h_n, const py::object& c_n, int mode, int feed,
                                       int64_t T, int64_t B, int64_t I, int64_t H, int64_t proj_size,
                                       bool reverse, bool training, int cell, int dtype, int device_type,
                                       int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  fl_forward_params p{};
  fusedlstm_bindings::store_enum(p.dtype, dtype);
  fusedlstm_bindings::store_enum(p.cell, cell);
  const int64_t G = gates_of(cell);
  p.device = device_of(device_type, device_index, stream, allow_tf32, allow_bf16);
  const Arrays a(dtype, p.device);
  fusedlstm_bindings::store_enum(p.mode, mode);
  fusedlstm_bindings::store_enum(p.feed, feed);
  p.T = T, p.B = B, p.I = I, p.H = H, p.proj_size = proj_size;
  p.reverse = reverse ? 1 : 0;
  const int64_t hout = proj_size > 0 ? proj_size : H;
  p.x = a.rows_in(x, "x", T, B, I, x_strides, mode == FL_ONE_TO_MANY);
  std::tie(p.x_stride_t, p.x_stride_b) = x_strides;
  p.w_ih = a.in(w_ih, "w_ih", elements({G, H, I})), p.w_hh = a.in(w_hh, "w_hh", elements({G, H, hout}));
  p.w_hr = proj_size > 0 ? a.in(w_hr, "w_hr", elements({proj_size, H})) : nullptr;
  p.b_ih = a.in(b_ih, "b_ih", elements({G, H})), p.b_hh = a.in(b_hh, "b_hh", elements({G, H}));
  p.h0 = a.in(h0, "h0", elements({B, hout})), p.c0 = a.in(c0, "c0", elements({B, H}));
  p.lengths = a.lengths(lengths, B);
  p.y = a.rows_out(y, "y", T, B, hout, y_strides, false);
  std::tie(p.y_stride_t, p.y_stride_b) = y_strides;
  p.h_n = a.out(h_n, "h_n", elements({B, hout})), p.c_n = a.out(c_n, "c_n", elements({B, H}));
  auto state = training ? std::make_shared<TrainingState>() : nullptr;
  if (state) {
    state->dtype = dtype, state->device = p.device, state->mode = mode, state->cell = cell;
    state->T = T, state->B = B, state->I = I, state->H = H, state->proj_size = proj_size;
  }
  p.state_out = training ? &state->state : nullptr;
  run([&] { return fl_lstm_forward(&p); });
  return state;
}

void backward(const TrainingState& state, const py::object& dy, const Strides& dy_strides, const py::object& dh_n,
              const py::object& dc_n, const py::object& dx, const Strides& dx_strides, const py::object& dh0,
              const py::object& dc0, const py::object& dw_ih, const py::object& dw_hh, const py::object& db,
              const py::object& dw_hr, const py::object& db_hh, std::uintptr_t stream) {
  fl_backward_params p{};
  p.state = state.state;
  p.device = state.device;
  p.device.stream = reinterpret_cast<void*>(stream);
  const Arrays a(state.dtype, p.device);
  const int64_t T = state.T, B = state.B, I = state.I, H = state.H, R = state.proj_size, hout = state.hout();
  p.dy = state.mode == FL_MANY_TO_ONE ? a.in(dy, "dy", elements({B, hout}))
                                      : a.rows_in(dy, "dy", T, B, hout, dy_strides, false);
  std::tie(p.dy_stride_t, p.dy_stride_b) = dy_strides;
  p.dh_n = a.in(dh_n, "dh_n", elements({B, hout})), p.dc_n = a.in(dc_n, "dc_n", elements({B, H}));
  p.dx = a.rows_out(dx, "dx", T, B, I, dx_strides, state.mode == FL_ONE_TO_MANY);
  std::tie(p.dx_stride_t, p.dx_stride_b) = dx_strides;
  p.dh0 = a.out(dh0, "dh0", elements({B, hout})), p.dc0 = a.out(dc0, "dc0", elements({B, H}));
  const int64_t G = gates_of(state.cell);
  p.dw_ih = a.out(dw_ih, "dw_ih", elements({G, H, I}));
  p.dw_hh = a.out(dw_hh, "dw_hh", elements({G, H, hout}));
  p.db = a.out(db, "db", elements({G, H}));
  p.db_hh = a.out(db_hh, "db_hh", elements({G, H}));
  p.dw_hr = R > 0 ? a.out(dw_hr, "dw_hr", elements({R, H})) : nullptr;
  run([&] { return fl_lstm_backward(&p); });
}

// ---- single step. What both cell calls read alike: dtype, device, sizes, x,
// h, c and the weights.
template <class Params>
Arrays cell_inputs(Params& p, const py::object& x, const py::object& h, const py::object& c,
                   const py::object& w_ih, const py::object& w_hh, int64_t B, int64_t I, int64_t H, int cell,
                   int dtype, int device_type, int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  fusedlstm_bindings::store_enum(p.dtype, dtype);
  fusedlstm_bindings::store_enum(p.cell, cell);
  const int64_t G = gates_of(cell);
  p.device = device_of(device_type, device_index, stream, allow_tf32, allow_bf16);
  const Arrays a(dtype, p.device);
  p.B = B, p.I = I, p.H = H;
  p.x = a.in(x, "x", elements({B, I})), p.h = a.in(h, "h", elements({B, H})), p.c = a.in(c, "c", elements({B, H}));
  p.w_ih = a.in(w_ih, "w_ih", elements({G, H, I})), p.w_hh = a.in(w_hh, "w_hh", elements({G, H, H}));
  return a;
}

void cell(const py::object& x, const py::object& h, const py::object& c, const py::object& w_ih,
          const py::object& w_hh, const py::object& b_ih, const py::object& b_hh, const py::object& h_new,
          const py::object& c_new, const py::object& acts, int64_t B, int64_t I, int64_t H, int cell, int dtype,
          int device_type, int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  fl_cell_params p{};
  const Arrays a = cell_inputs(p, x, h, c, w_ih, w_hh, B, I, H, cell, dtype, device_type, device_index, stream,
                               allow_tf32, allow_bf16);
  const int64_t G = gates_of(cell);
  p.b_ih = a.in(b_ih, "b_ih", elements({G, H})), p.b_hh = a.in(b_hh, "b_hh", elements({G, H}));
  p.h_new = a.out(h_new, "h_new", elements({B, H})), p.c_new = a.out(c_new, "c_new", elements({B, H}));
  p.acts = a.out(acts, "acts", elements({B, step_saved_of(cell), H}));
  run([&] { return fl_lstm_cell(&p); });
}

void cell_backward(const py::object& x, const py::object& h, const py::object& c, const py::object& w_ih,
                   const py::object& w_hh, const py::object& acts, const py::object& c_new,
                   const py::object& dh_new, const py::object& dc_new, const py::object& dx, const py::object& dh,
                   const py::object& dc, const py::object& dw_ih, const py::object& dw_hh, const py::object& db,
                   const py::object& db_hh, int64_t B, int64_t I, int64_t H, int cell, int dtype,
                   int device_type, int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  fl_cell_backward_params p{};
  const Arrays a = cell_inputs(p, x, h, c, w_ih, w_hh, B, I, H, cell, dtype, device_type, device_index, stream,
                               allow_tf32, allow_bf16);
  const int64_t G = gates_of(cell);
  p.acts = a.in(acts, "acts", elements({B, step_saved_of(cell), H}));
  p.c_new = a.in(c_new, "c_new", elements({B, H}));
  p.dh_new = a.in(dh_new, "dh_new", elements({B, H})), p.dc_new = a.in(dc_new, "dc_new", elements({B, H}));
  p.dx = a.out(dx, "dx", elements({B, I}));
  p.dh = a.out(dh, "dh", elements({B, H})), p.dc = a.out(dc, "dc", elements({B, H}));
  p.dw_ih = a.out(dw_ih, "dw_ih", elements({G, H, I})), p.dw_hh = a.out(dw_hh, "dw_hh", elements({G, H, H}));
  p.db = a.out(db, "db", elements({G, H})), p.db_hh = a.out(db_hh, "db_hh", elements({G, H}));
  run([&] { return fl_lstm_cell_backward(&p); });
}

// ---- layer stacks, laid out as fl_stack_params documents.

// The sizes of a stack call and the element count of each of its arrays.
struct StackShape {
  int64_t T, B, I, H, R, L, D, G;
  int64_t hout() const { return R > 0 ? R : H; }
  int64_t w_ih(int64_t cell) const { return cell < D ? elements({G, H, I}) : elements({G, H, D, hout()}); }
  int64_t w_hh() const { return elements({G, H, hout()}); }
  int64_t bias() const { return elements({G, H}); }
  int64_t w_hr() const { return elements({R, H}); }
  int64_t states(int64_t width) const { return elements({L, D, B, width}); }
  int64_t mask() const { return elements({L - 1, T, B, D, hout()}); }

  // The per-cell list (one tuple per cell, L*D of them, each of `fields`).
  std::vector<py::tuple> cells(const py::list& list, const char* name, std::initializer_list<size_t> fields) const {
    const int64_t n = elements({L, D});
    if (n >= 0 && int64_t(py::len(list)) != n)
      throw py::value_error(std::string(name) + " must hold num_layers * num_directions = " + std::to_string(n) +
                            " cells, got " + std::to_string(py::len(list)));
    std::vector<py::tuple> out;
    for (const auto& item : list) {
      if (!py::isinstance<py::tuple>(item))
        throw py::type_error(std::string(name) + ": each cell must be a tuple, got " + describe(py::type::of(item)));
      auto t = py::reinterpret_borrow<py::tuple>(item);
      if (std::find(fields.begin(), fields.end(), t.size()) == fields.end())
        throw py::value_error(std::string(name) + ": each cell must be a tuple of " +
                              std::to_string(*fields.begin()) +
                              (fields.size() > 1 ? " or " + std::to_string(*(fields.end() - 1)) : std::string()));
      out.push_back(std::move(t));
    }
    return out;
  }
};

std::string cell_name(const char* list, size_t k, const char* field) {
  return std::string(list) + "[" + std::to_string(k) + "]." + field;
}

// The weights of every cell, each (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None).
struct CellPointers {
  std::vector<const void*> w_ih, w_hh, b_ih, b_hh, w_hr;
  CellPointers(const py::list& cells, const StackShape& n, const Arrays& a) {
    const auto list = n.cells(cells, "cells", {5});
    for (size_t k = 0; k < list.size(); ++k) {
      const auto& c = list[k];
      w_ih.push_back(a.in(c[0], cell_name("cells", k, "w_ih"), n.w_ih(int64_t(k))));
      w_hh.push_back(a.in(c[1], cell_name("cells", k, "w_hh"), n.w_hh()));
      b_ih.push_back(a.in(c[2], cell_name("cells", k, "b_ih"), n.bias()));
      b_hh.push_back(a.in(c[3], cell_name("cells", k, "b_hh"), n.bias()));
      w_hr.push_back(n.R > 0 ? a.in(c[4], cell_name("cells", k, "w_hr"), n.w_hr()) : nullptr);
    }
  }
};

// The inputs both stack calls read alike.
struct StackInputs {
  StackShape n;
  Arrays a;
  CellPointers w;
  fl_stack_params p{};
  StackInputs(const py::object& x, const Strides& x_strides, const py::list& cells, const py::object& h0,
              const py::object& c0, const py::object& lengths, const py::object& mask, int64_t T, int64_t B,
              int64_t I, int64_t H, int64_t proj_size, int64_t num_layers, int64_t num_directions, int cell,
              int dtype, int device_type, int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16)
      : n{T, B, I, H, proj_size, num_layers, num_directions, gates_of(cell)},
        a(dtype, device_of(device_type, device_index, stream, allow_tf32, allow_bf16)),
        w(cells, n, a) {
    fusedlstm_bindings::store_enum(p.dtype, dtype);
    fusedlstm_bindings::store_enum(p.cell, cell);
    p.device = device_of(device_type, device_index, stream, allow_tf32, allow_bf16);
    p.T = T, p.B = B, p.I = I, p.H = H, p.proj_size = proj_size;
    p.num_layers = num_layers, p.num_directions = num_directions;
    p.x = a.rows_in(x, "x", T, B, I, x_strides, false);
    std::tie(p.x_stride_t, p.x_stride_b) = x_strides;
    p.lengths = a.lengths(lengths, B);
    p.w_ih = w.w_ih.data(), p.w_hh = w.w_hh.data();
    p.b_ih = w.b_ih.data(), p.b_hh = w.b_hh.data(), p.w_hr = w.w_hr.data();
    p.h0 = a.in(h0, "h0", n.states(n.hout())), p.c0 = a.in(c0, "c0", n.states(H));
    p.dropout_mask = a.in(mask, "dropout_mask", n.mask());
  }
  StackInputs(const StackInputs&) = delete;
};

// The reserve: None, a numpy uint8 array (its nbytes), or a device pointer with reserve_bytes.
std::pair<void*, int64_t> reserve_of(const StackInputs& s, const py::object& reserve, int64_t reserve_bytes,
                                     bool output) {
  if (reserve.is_none()) return {nullptr, 0};
  const auto u8 = py::dtype::of<uint8_t>();
  void* ptr = output ? s.a.out(reserve, "reserve", -1, Layout::dense, u8)
                     : const_cast<void*>(s.a.in(reserve, "reserve", -1, Layout::dense, u8));
  if (py::isinstance<py::array>(reserve)) reserve_bytes = int64_t(py::reinterpret_borrow<py::array>(reserve).nbytes());
  return {ptr, reserve_bytes};
}

int64_t stack_reserve_bytes(int dtype, int64_t T, int64_t B, int64_t H, int64_t proj_size, int64_t num_layers,
                            int64_t num_directions, int device_type, int cell) {
  fl_stack_params p{};
  fusedlstm_bindings::store_enum(p.dtype, dtype);
  fusedlstm_bindings::store_enum(p.cell, cell);
  fusedlstm_bindings::store_enum(p.device.type, device_type);
  p.T = T, p.B = B, p.H = H, p.proj_size = proj_size;
  p.num_layers = num_layers, p.num_directions = num_directions;
  const int64_t bytes = fl_lstm_stack_reserve_bytes(&p);
  if (bytes < 0) throw py::value_error(fl_last_error());  // shapes no reserve can hold
  return bytes;
}

void stack_forward(const py::object& x, const Strides& x_strides, const py::list& cells, const py::object& h0,
                   const py::object& c0, const py::object& lengths, const py::object& dropout_mask,
                   const py::object& y, const Strides& y_strides, const py::object& h_n, const py::object& c_n,
                   const py::object& reserve, int64_t reserve_bytes, int64_t T, int64_t B, int64_t I, int64_t H,
                   int64_t proj_size, int64_t num_layers, int64_t num_directions, int cell, int dtype,
                   int device_type, int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  StackInputs s(x, x_strides, cells, h0, c0, lengths, dropout_mask, T, B, I, H, proj_size, num_layers,
                num_directions, cell, dtype, device_type, device_index, stream, allow_tf32, allow_bf16);
  const StackShape& n = s.n;
  fl_stack_params& p = s.p;
  p.y = s.a.rows_out(y, "y", T, B, n.D * n.hout(), y_strides, false);
  std::tie(p.y_stride_t, p.y_stride_b) = y_strides;
  p.h_n = s.a.out(h_n, "h_n", n.states(n.hout())), p.c_n = s.a.out(c_n, "c_n", n.states(H));
  const auto [res, res_bytes] = reserve_of(s, reserve, reserve_bytes, true);
  run([&] { return fl_lstm_stack_forward(&p, res, res_bytes); });
}

void stack_backward(const py::object& x, const Strides& x_strides, const py::list& cells, const py::object& h0,
                    const py::object& c0, const py::object& lengths, const py::object& dropout_mask,
                    const py::object& reserve, int64_t reserve_bytes, const py::object& dy,
                    const Strides& dy_strides, const py::object& dh_n, const py::object& dc_n, const py::object& dx,
                    const Strides& dx_strides, const py::object& dh0, const py::object& dc0,
                    const py::list& cell_grads, int64_t T, int64_t B, int64_t I, int64_t H, int64_t proj_size,
                    int64_t num_layers, int64_t num_directions, int cell, int dtype, int device_type,
                    int device_index, std::uintptr_t stream, bool allow_tf32, bool allow_bf16) {
  const StackInputs s(x, x_strides, cells, h0, c0, lengths, dropout_mask, T, B, I, H, proj_size, num_layers,
                      num_directions, cell, dtype, device_type, device_index, stream, allow_tf32, allow_bf16);
  const StackShape& n = s.n;
  const Arrays& a = s.a;
  std::vector<void*> dw_ih, dw_hh, db, dw_hr, db_hh;
  // (dw_ih, dw_hh, db | None, dw_hr | None[, db_hh | None])
  const auto grads = n.cells(cell_grads, "cell_grads", {4, 5});
  for (size_t k = 0; k < grads.size(); ++k) {
    const auto& c = grads[k];
    dw_ih.push_back(a.out(c[0], cell_name("cell_grads", k, "dw_ih"), n.w_ih(int64_t(k))));
    dw_hh.push_back(a.out(c[1], cell_name("cell_grads", k, "dw_hh"), n.w_hh()));
    db.push_back(a.out(c[2], cell_name("cell_grads", k, "db"), n.bias()));
    dw_hr.push_back(n.R > 0 ? a.out(c[3], cell_name("cell_grads", k, "dw_hr"), n.w_hr()) : nullptr);
    db_hh.push_back(c.size() > 4 ? a.out(c[4], cell_name("cell_grads", k, "db_hh"), n.bias()) : nullptr);
  }
  fl_stack_grads g{};
  g.dy = a.rows_in(dy, "dy", T, B, n.D * n.hout(), dy_strides, false);
  std::tie(g.dy_stride_t, g.dy_stride_b) = dy_strides;
  g.dh_n = a.in(dh_n, "dh_n", n.states(n.hout())), g.dc_n = a.in(dc_n, "dc_n", n.states(H));
  g.dx = a.rows_out(dx, "dx", T, B, I, dx_strides, false);
  std::tie(g.dx_stride_t, g.dx_stride_b) = dx_strides;
  g.dh0 = a.out(dh0, "dh0", n.states(n.hout())), g.dc0 = a.out(dc0, "dc0", n.states(H));
  g.dw_ih = dw_ih.data(), g.dw_hh = dw_hh.data(), g.db = db.data(), g.dw_hr = dw_hr.data(), g.db_hh = db_hh.data();
  const auto [res, res_bytes] = reserve_of(s, reserve, reserve_bytes, false);
  run([&] { return fl_lstm_stack_backward(&s.p, res, res_bytes, &g); });
}

std::string cuda_info(const std::string& key) {
  if (key == "backend") return fl_cuda_backend_name();
  const char* (*get)(void) = key == "build_archs"          ? &fl_cuda_build_archs
                             : key == "path"               ? &fl_cuda_path
                             : key == "last_forward_path"  ? &fl_cuda_last_forward_path
                             : key == "last_backward_path" ? &fl_cuda_last_backward_path
                                                           : nullptr;
  if (!get)
    throw py::value_error("key = '" + key + "' is not one of 'build_archs', 'path', 'last_forward_path', "
                          "'last_backward_path', 'backend'");
  const char* s = get();
  return s ? s : "";
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedlstm compiled core (internal; use the fusedlstm package)";
  InterruptibleCall::main_thread_id() =
      py::cast<unsigned long>(py::module_::import("threading").attr("main_thread")().attr("ident"));
  using py::arg;
  const auto none = py::none();
  const auto zero = Strides{0, 0};
  py::class_<TrainingState, std::shared_ptr<TrainingState>>(m, "TrainingState")
      .def_property_readonly("nbytes", [](const TrainingState& s) { return fl_training_state_bytes(s.state); })
      .def_property_readonly("device_type",
                             [](const TrainingState& s) { return fusedlstm::raw_enum(s.device.type); })
      .def_property_readonly("device_index", [](const TrainingState& s) { return s.device.index; })
      .def_property_readonly("dtype", [](const TrainingState& s) { return s.dtype; })
      .def_readonly("mode", &TrainingState::mode)
      .def_readonly("T", &TrainingState::T)
      .def_readonly("B", &TrainingState::B)
      .def_readonly("I", &TrainingState::I)
      .def_readonly("H", &TrainingState::H)
      .def_readonly("proj_size", &TrainingState::proj_size)
      .def_readonly("cell", &TrainingState::cell);

// The keyword arguments every kernel call ends with.
#define FL_COMMON_ARGS \
  arg("dtype"), arg("device_type") = int(FL_DEVICE_CPU), arg("device_index") = 0, arg("stream") = 0, \
      arg("allow_tf32") = false, arg("allow_bf16") = false
  m.def("forward", &forward, py::kw_only(), arg("x"), arg("x_strides"), arg("w_ih"), arg("w_hh"),
        arg("w_hr") = none, arg("b_ih") = none, arg("b_hh") = none, arg("h0") = none, arg("c0") = none,
        arg("lengths") = none, arg("y") = none, arg("y_strides") = zero, arg("h_n"), arg("c_n"), arg("mode"),
        arg("feed") = int(FL_FEED_REPEAT), arg("T"), arg("B"), arg("I"), arg("H"), arg("proj_size") = 0,
        arg("reverse") = false, arg("training") = false, arg("cell") = int(FL_CELL_LSTM), FL_COMMON_ARGS);
  m.def("backward", &backward, arg("state"), py::kw_only(), arg("dy") = none, arg("dy_strides") = zero,
        arg("dh_n") = none, arg("dc_n") = none, arg("dx"), arg("dx_strides"), arg("dh0"), arg("dc0") = none,
        arg("dw_ih"), arg("dw_hh"), arg("db") = none, arg("dw_hr") = none, arg("db_hh") = none, arg("stream") = 0);
  m.def("cell", &cell, py::kw_only(), arg("x"), arg("h"), arg("c") = none, arg("w_ih"), arg("w_hh"),
        arg("b_ih") = none, arg("b_hh") = none, arg("h_new"), arg("c_new") = none, arg("acts") = none, arg("B"),
        arg("I"), arg("H"), arg("cell") = int(FL_CELL_LSTM), FL_COMMON_ARGS);
  m.def("cell_backward", &cell_backward, py::kw_only(), arg("x"), arg("h"), arg("c") = none, arg("w_ih"),
        arg("w_hh"), arg("acts"), arg("c_new") = none, arg("dh_new") = none, arg("dc_new") = none, arg("dx"),
        arg("dh"), arg("dc") = none, arg("dw_ih"), arg("dw_hh"), arg("db") = none, arg("db_hh") = none, arg("B"),
        arg("I"), arg("H"), arg("cell") = int(FL_CELL_LSTM), FL_COMMON_ARGS);
  m.def("stack_reserve_bytes", &stack_reserve_bytes, py::kw_only(), arg("dtype"), arg("T"), arg("B"), arg("H"),
        arg("proj_size"), arg("num_layers"), arg("num_directions"), arg("device_type") = int(FL_DEVICE_CPU),
        arg("cell") = int(FL_CELL_LSTM));
  m.def("stack_forward", &stack_forward, py::kw_only(), arg("x"), arg("x_strides"), arg("cells"),
        arg("h0") = none, arg("c0") = none, arg("lengths") = none, arg("dropout_mask") = none, arg("y") = none,
        arg("y_strides") = zero, arg("h_n"), arg("c_n") = none, arg("reserve") = none, arg("reserve_bytes") = 0,
        arg("T"), arg("B"), arg("I"), arg("H"), arg("proj_size") = 0, arg("num_layers") = 1,
        arg("num_directions") = 1, arg("cell") = int(FL_CELL_LSTM), FL_COMMON_ARGS);
  m.def("stack_backward", &stack_backward, py::kw_only(), arg("x"), arg("x_strides"), arg("cells"),
        arg("h0") = none, arg("c0") = none, arg("lengths") = none, arg("dropout_mask") = none, arg("reserve"),
        arg("reserve_bytes") = 0, arg("dy") = none, arg("dy_strides") = zero, arg("dh_n") = none,
        arg("dc_n") = none, arg("dx"), arg("dx_strides"), arg("dh0"), arg("dc0") = none, arg("cell_grads"),
        arg("T"), arg("B"), arg("I"), arg("H"), arg("proj_size") = 0, arg("num_layers") = 1,
        arg("num_directions") = 1, arg("cell") = int(FL_CELL_LSTM), FL_COMMON_ARGS);
#undef FL_COMMON_ARGS

  m.def("cuda_device_count", [] {
    const char* why = nullptr;
    const int n = fl_cuda_device_count(&why);
    return py::make_tuple(n, std::string(why ? why : ""));
  });
  m.def("cuda_info", &cuda_info, arg("key"));
  m.def("cuda_backend_host_memory", &cuda_backend_host_memory);

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
  m.attr("FLOAT32") = int(FL_FLOAT32);
  m.attr("FLOAT64") = int(FL_FLOAT64);
  m.attr("FLOAT16") = int(FL_FLOAT16);
  m.attr("BFLOAT16") = int(FL_BFLOAT16);
  m.attr("CELL_LSTM") = int(FL_CELL_LSTM);
  m.attr("CELL_GRU") = int(FL_CELL_GRU);
  m.attr("CELL_RNN_TANH") = int(FL_CELL_RNN_TANH);
  m.attr("CELL_RNN_RELU") = int(FL_CELL_RNN_RELU);
  m.attr("DEVICE_CPU") = int(FL_DEVICE_CPU);
  m.attr("DEVICE_CUDA") = int(FL_DEVICE_CUDA);
}
