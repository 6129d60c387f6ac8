// The CPU backend's table (core/backend.h): host memory, the SIMD kernels of
// lstm_cpu.cpp, fusedlstm's thread pool.
#ifndef FUSEDLSTM_CPU_CPU_BACKEND_H_
#define FUSEDLSTM_CPU_CPU_BACKEND_H_

#include "core/backend.h"

namespace fusedlstm {
namespace cpu {

const fl_backend_ops& backend_ops();

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_CPU_BACKEND_H_
