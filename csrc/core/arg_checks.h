// Argument checks of the C API (csrc/capi/), for every backend: sizes, enum
// fields, strided extents. Each failure is an InvalidArgument naming the argument
// and its value.
#ifndef FUSEDLSTM_CORE_ARG_CHECKS_H_
#define FUSEDLSTM_CORE_ARG_CHECKS_H_

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>

#include "core/checked_size.h"
#include "core/status.h"

namespace fusedlstm {

// An enum field as the int a C caller stored there. Loading a value outside
// the enumerators as the enum type is undefined behaviour, so a field is
// read this way until it has been checked.
template <class E>
int32_t raw_enum(const E& field) {
  static_assert(sizeof(E) == sizeof(int32_t), "fusedlstm's C enums are int-sized");
  int32_t v;
  std::memcpy(&v, &field, sizeof v);
  return v;
}

// value must be one of names' enumerators, which are 0, 1, ... in order.
template <class E>
void require_enum(const char* argument, const E& field, std::initializer_list<const char*> names) {
  const int32_t v = raw_enum(field);
  if (v >= 0 && v < int32_t(names.size())) return;
  std::string msg = std::string(argument) + " = " + std::to_string(v) + " is not one of ";
  int32_t i = 0;
  for (const char* n : names) {
    msg += (i ? ", " : "") + std::string(n) + " (" + std::to_string(i) + ")";
    ++i;
  }
  throw InvalidArgument(msg);
}

// Bytes per element of a dtype already checked (checked_element_size).
inline int64_t element_size(fl_dtype dtype) {
  switch (dtype) {
    case FL_FLOAT64: return 8;
    case FL_FLOAT16:
    case FL_BFLOAT16: return 2;
    default: return 4;
  }
}

// Checks dtype (read as its raw integer) and returns its element size.
inline int64_t checked_element_size(const fl_dtype& dtype) {
  require_enum("dtype", dtype, {"FL_FLOAT32", "FL_FLOAT64", "FL_FLOAT16", "FL_BFLOAT16"});
  return element_size(dtype);
}

// Checks the cell field (read as its raw integer) and returns its gate
// count G. Every cell runs on every backend; cells other than the LSTM have
// no projection.
inline int64_t checked_cell_gates(const fl_cell_kind& cell, int64_t proj_size) {
  require_enum("cell", cell, {"FL_CELL_LSTM", "FL_CELL_GRU", "FL_CELL_RNN_TANH", "FL_CELL_RNN_RELU"});
  if (cell == FL_CELL_LSTM) return 4;
  const char* name = cell == FL_CELL_GRU ? "FL_CELL_GRU" : cell == FL_CELL_RNN_TANH ? "FL_CELL_RNN_TANH" : "FL_CELL_RNN_RELU";
  require(proj_size == 0, "proj_size = " + std::to_string(proj_size) + " is for the LSTM only; cell " + name +
                              " needs 0");
  return cell == FL_CELL_GRU ? 3 : 1;
}

inline void require_positive(const char* argument, int64_t v) {
  require(v >= 1, std::string(argument) + " = " + std::to_string(v) + " must be >= 1");
}

// x and y of a sequence forward: mode, feed, T, B, I, H, and the extents of
// x [T,B,I] ([B,I] for one_to_many) and y [T,B,Hout] from their strides.
inline void check_sequence_shape(const fl_forward_params& p, int64_t Hout, int64_t elem) {
  require_enum("mode", p.mode, {"FL_MANY_TO_MANY", "FL_MANY_TO_ONE", "FL_ONE_TO_MANY"});
  if (p.mode == FL_ONE_TO_MANY) require_enum("feed", p.feed, {"FL_FEED_REPEAT", "FL_FEED_FIRST", "FL_FEED_OUTPUT"});
  require_positive("T", p.T);
  require_positive("B", p.B);
  require_positive("I", p.I);
  require_positive("H", p.H);
  const int64_t x_steps = p.mode == FL_ONE_TO_MANY ? 1 : p.T;
  checked_extent("x extent (T-1)*|x_stride_t| + (B-1)*|x_stride_b| + I", x_steps, p.x_stride_t, p.B, p.x_stride_b,
                 p.I, elem);
  if (p.y && p.mode != FL_MANY_TO_ONE)
    checked_extent("y extent (T-1)*|y_stride_t| + (B-1)*|y_stride_b| + Hout", p.T, p.y_stride_t, p.B, p.y_stride_b,
                   Hout, elem);
}

// One step of B rows (the cell entry points): its sizes and the weights.
inline void check_cell_sizes(int64_t elem, int64_t B, int64_t I, int64_t H) {
  require_positive("B", B);
  require_positive("I", I);
  require_positive("H", H);
  checked_bytes("w_ih 4*H*I*elem", {4, H, I, elem});
  checked_bytes("w_hh 4*H*H*elem", {4, H, H, elem});
  checked_bytes("B*4*H*elem", {B, 4, H, elem});
}

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_ARG_CHECKS_H_
