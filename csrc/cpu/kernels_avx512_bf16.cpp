// AVX-512 kernels with AVX512-BF16 (compiled with the AVX-512 flags plus
// -mavx512bf16): the float32 and float64 kernels as in kernels_avx512.cpp,
// and the bfloat16-operand kernels on vdpbf16ps. Only reached after
// dispatch.cpp has checked the CPU supports AVX512-BF16.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/gate_math.h"
#include "cpu/kernels.h"

namespace fusedlstm {
namespace cpu {
namespace avx512bf16 {
#include "cpu/simd/vec_avx512.h"
#define FL_HAVE_DPBF16 1
constexpr int kRowBlock = 6;
#include "cpu/kernels_impl.h"
#undef FL_HAVE_DPBF16
}  // namespace avx512bf16

const KernelTable& kernels_avx512_bf16() {
  static const KernelTable table{"avx512_bf16", avx512bf16::Impl<avx512bf16::VecF>::table(),
                                 avx512bf16::Impl<avx512bf16::VecD>::table(),
                                 avx512bf16::Impl<avx512bf16::VecF>::bf16_table()};
  return table;
}

}  // namespace cpu
}  // namespace fusedlstm
