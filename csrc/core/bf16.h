// bfloat16 <-> float32 conversions for host code (every backend's host side
// and the CPU kernels' scalar paths). bfloat16 is the upper half of a
// float32: widening is exact; narrowing rounds to nearest even, as
// vcvtneps2bf16, cuDNN and PyTorch do, and keeps NaN a (quiet) NaN.
#ifndef FUSEDLSTM_CORE_BF16_H_
#define FUSEDLSTM_CORE_BF16_H_

#include <cstdint>
#include <cstring>

namespace fusedlstm {

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x0040u);  // NaN: quiet, sign kept
  bits += 0x7fffu + ((bits >> 16) & 1u);  // to nearest, ties to even (overflow rounds to inf)
  return uint16_t(bits >> 16);
}

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_BF16_H_
