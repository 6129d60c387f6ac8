// Sizes derived from caller-given int64 values. Every product, sum and byte
// count a C API call computes from its arguments goes through these, before
// anything is allocated or indexed: an impossible size is an InvalidArgument
// whose message names the expression and its values ("T*B*I*elem =
// 9223372036854775807*1*1*4 overflows int64"), never a wrapped number.
#ifndef FUSEDLSTM_CORE_CHECKED_SIZE_H_
#define FUSEDLSTM_CORE_CHECKED_SIZE_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/status.h"

namespace fusedlstm {

namespace detail {

inline std::string joined(std::initializer_list<int64_t> values, const char* sep) {
  std::string s;
  for (int64_t v : values) {
    if (!s.empty()) s += sep;
    s += std::to_string(v);
  }
  return s;
}

[[noreturn]] inline void overflows(const char* what, std::initializer_list<int64_t> values, const char* sep) {
  throw InvalidArgument(std::string(what) + " = " + joined(values, sep) + " overflows int64");
}

}  // namespace detail

// The product of factors (each >= 0); what spells it ("T*B*4*H").
inline int64_t checked_product(const char* what, std::initializer_list<int64_t> factors) {
  int64_t product = 1;
  bool overflow = false;
  for (int64_t f : factors) {
    if (f == 0) return 0;
    overflow |= __builtin_mul_overflow(product, f, &product);
  }
  if (overflow) detail::overflows(what, factors, "*");
  return product;
}

inline int64_t checked_sum(const char* what, std::initializer_list<int64_t> terms) {
  int64_t sum = 0;
  bool overflow = false;
  for (int64_t t : terms) overflow |= __builtin_add_overflow(sum, t, &sum);
  if (overflow) detail::overflows(what, terms, " + ");
  return sum;
}

// n rounded up to a multiple of m (n >= 0, m >= 1).
inline int64_t checked_round_up(const char* what, int64_t n, int64_t m) {
  return checked_sum(what, {n, m - 1}) / m * m;
}

// A byte count: the product of factors, which must also fit in ptrdiff_t
// (and so in size_t): the largest object a pointer difference can span.
inline int64_t checked_bytes(const char* what, std::initializer_list<int64_t> factors) {
  const int64_t bytes = checked_product(what, factors);
  if (static_cast<uint64_t>(bytes) > static_cast<uint64_t>(PTRDIFF_MAX))
    throw InvalidArgument(std::string(what) + " = " + std::to_string(bytes) + " bytes exceeds PTRDIFF_MAX");
  return bytes;
}

// Elements an index into a strided [n0, n1, row] array of elem-byte
// elements can reach: element (i, j, k) at i*s0 + j*s1 + k, strides of any
// sign (zero included), so the span is (n0-1)*|s0| + (n1-1)*|s1| + row,
// checked in elements and in bytes. It bounds every offset the kernels form
// from these strides.
inline int64_t checked_extent(const char* what, int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t row,
                              int64_t elem) {
  int64_t a, b, span, bytes;
  const bool overflow = s0 == INT64_MIN || s1 == INT64_MIN ||
                        __builtin_mul_overflow(n0 - 1, s0 < 0 ? -s0 : s0, &a) ||
                        __builtin_mul_overflow(n1 - 1, s1 < 0 ? -s1 : s1, &b) ||
                        __builtin_add_overflow(a, b, &span) || __builtin_add_overflow(span, row, &span) ||
                        __builtin_mul_overflow(span, elem, &bytes);
  if (overflow || static_cast<uint64_t>(bytes) > static_cast<uint64_t>(PTRDIFF_MAX))
    throw InvalidArgument(std::string(what) + " = " + std::to_string(n0 - 1) + "*|" + std::to_string(s0) + "| + " +
                          std::to_string(n1 - 1) + "*|" + std::to_string(s1) + "| + " + std::to_string(row) +
                          " elements of " + std::to_string(elem) + " bytes overflows int64");
  return span;
}

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_CHECKED_SIZE_H_
