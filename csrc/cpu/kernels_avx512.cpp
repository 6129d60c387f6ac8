// AVX-512F kernels (compiled with -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma).
// Only reached after dispatch.cpp has checked the CPU and OS support AVX-512.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/gate_math.h"
#include "cpu/kernels.h"

namespace fusedlstm {
namespace cpu {
namespace avx512 {
#include "cpu/simd/vec_avx512.h"
constexpr int kRowBlock = 6;  // 6 rows x 4 zmm = 24 accumulators of 32 registers
#include "cpu/kernels_impl.h"
}  // namespace avx512

const KernelTable& kernels_avx512() {
  static const KernelTable table{"avx512", avx512::Impl<avx512::VecF>::table(),
                                 avx512::Impl<avx512::VecD>::table(),
                                 avx512::Impl<avx512::VecF>::bf16_table()};
  return table;
}

}  // namespace cpu
}  // namespace fusedlstm
