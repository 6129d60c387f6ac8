// What both pybind11 modules (_core, _cuda) do alike at the C API boundary:
// a failed status becomes the Python exception its kind calls for, and an
// int from Python is stored in a C enum field as the C caller would store it.
#ifndef FUSEDLSTM_BINDINGS_STATUS_TO_PYTHON_H_
#define FUSEDLSTM_BINDINGS_STATUS_TO_PYTHON_H_

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "fusedlstm/fusedlstm.h"

namespace fusedlstm_bindings {

// FL_INVALID_ARGUMENT: ValueError; FL_OUT_OF_MEMORY: MemoryError (the
// message says what was being allocated and how many bytes); anything else
// (a failed thread start, a CUDA or cuBLAS error): RuntimeError with
// `prefix`. The message is the C API's last error for the calling thread.
inline void raise_for_status(fl_status status, const char* message, const char* prefix) {
  if (status == FL_OK) return;
  const std::string msg = message;
  if (status == FL_INVALID_ARGUMENT) throw pybind11::value_error(msg);
  if (status == FL_OUT_OF_MEMORY) {
    PyErr_SetString(PyExc_MemoryError, msg.c_str());
    throw pybind11::error_already_set();
  }
  throw std::runtime_error(std::string(prefix) + msg);
}

// The C API reads enum fields as raw ints and refuses values outside the
// enumerators; converting such an int to the enum type here would already be
// undefined behaviour, so the int's bytes are stored as they are.
template <class E>
void store_enum(E& field, int value) {
  static_assert(sizeof(E) == sizeof(int32_t), "fusedlstm's C enums are int-sized");
  const int32_t v = value;
  std::memcpy(&field, &v, sizeof v);
}

}  // namespace fusedlstm_bindings

#endif  // FUSEDLSTM_BINDINGS_STATUS_TO_PYTHON_H_
