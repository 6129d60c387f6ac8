// The SIMD float->bfloat16 rounding of the CPU kernels (VecF::to_bf16 in
// csrc/cpu/simd/) against the scalar rule of csrc/core/bf16.h, bit for bit,
// on random bit patterns with NaNs, infinities, denormals and ties forced in.
// Built and run by tests/test_bf16_rounding.py once per ISA it can run:
//   g++ -std=c++20 -O2 -I csrc -DISA_AVX512 -mavx512f -mavx512bw -mavx512dq -mavx512vl ...
// Prints the number of mismatches and exits nonzero if there is one.
#include <immintrin.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/bf16.h"
#define FL_INLINE inline __attribute__((always_inline))
namespace fusedlstm {
namespace isa {
#if defined(ISA_AVX512)
#include "cpu/simd/vec_avx512.h"
#elif defined(ISA_AVX2)
#include "cpu/simd/vec_avx2.h"
#else
#include "cpu/simd/vec_generic.h"
#endif
}  // namespace isa
}  // namespace fusedlstm

int main() {
  using fusedlstm::float_to_bf16;
  using V = fusedlstm::isa::VecF;
  std::mt19937 rng(12345);
  long bad = 0, n = 0;
  for (int it = 0; it < 200000; ++it) {
    uint32_t bits[V::width];
    for (int l = 0; l < V::width; ++l) {
      uint32_t r = rng();
      switch (l % 4) {
        case 0: r = (r & 0x807fffffu) | 0x7f800000u; break;                 // inf and NaNs of every payload
        case 1: r = (r & 0xffff0000u) | (it % 2 ? 0x8000u : 0x7fffu); break;  // ties and just below
        case 2: r &= 0x807fffffu; break;                                      // denormals
        default: break;
      }
      bits[l] = r;
    }
    float f[V::width];
    std::memcpy(f, bits, sizeof f);
    uint16_t got[V::width];
    V::to_bf16(f, got);
    for (int l = 0; l < V::width; ++l, ++n)
      if (got[l] != float_to_bf16(f[l]) && bad++ < 10)
        std::printf("mismatch: %08x -> %04x, expected %04x\n", bits[l], got[l], float_to_bf16(f[l]));
  }
  std::printf("%ld mismatches in %ld values\n", bad, n);
  return bad != 0;
}
