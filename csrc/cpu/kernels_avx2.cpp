// AVX2 + FMA kernels (compiled with -mavx2 -mfma).
// Only reached after dispatch.cpp has checked the CPU and OS support AVX2 and FMA.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/gate_math.h"
#include "cpu/kernels.h"

namespace fusedlstm {
namespace cpu {
namespace avx2 {
#include "cpu/simd/vec_avx2.h"
constexpr int kRowBlock = 3;  // 3 rows x 4 ymm = 12 accumulators of 16 registers
#include "cpu/kernels_impl.h"
}  // namespace avx2

const KernelTable& kernels_avx2() {
  static const KernelTable table{"avx2", avx2::Impl<avx2::VecF>::table(), avx2::Impl<avx2::VecD>::table(),
                                 avx2::Impl<avx2::VecF>::bf16_table()};
  return table;
}

}  // namespace cpu
}  // namespace fusedlstm
