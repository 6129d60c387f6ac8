// Portable kernels: plain C++ on fixed-size arrays, built with the compiler's
// baseline flags. Runs on any CPU; the x86 SIMD paths are preferred when present.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/gate_math.h"
#include "cpu/kernels.h"

namespace fusedlstm {
namespace cpu {
namespace generic {
#include "cpu/simd/vec_generic.h"
constexpr int kRowBlock = 4;
#include "cpu/kernels_impl.h"
}  // namespace generic

const KernelTable& kernels_generic() {
  static const KernelTable table{"generic", generic::Impl<generic::VecF>::table(),
                                 generic::Impl<generic::VecD>::table(),
                                 generic::Impl<generic::VecF>::bf16_table()};
  return table;
}

}  // namespace cpu
}  // namespace fusedlstm
