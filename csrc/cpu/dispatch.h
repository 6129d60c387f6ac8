// Run-time choice of the SIMD kernel table and of the thread count.
#ifndef FUSEDLSTM_CPU_DISPATCH_H_
#define FUSEDLSTM_CPU_DISPATCH_H_

#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace fusedlstm {
namespace cpu {

// Tables this CPU (and OS) can run, best first.
const std::vector<const KernelTable*>& supported_kernels();
// The table in use: FUSEDLSTM_ISA if set to a supported name, else the best.
const KernelTable& active_kernels();
// False (and nothing changes) when the name is unknown or unsupported here.
bool select_kernels(const std::string& name);

int num_threads();
void set_num_threads(int n);

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_DISPATCH_H_
