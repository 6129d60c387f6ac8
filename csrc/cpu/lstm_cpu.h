// The CPU backend: drives the SIMD kernels through forward, BPTT and the
// single cell. Called by the C API (core/capi.cpp) after it validated the
// parameters. Throws std::bad_alloc when a workspace cannot be allocated.
#ifndef FUSEDLSTM_CPU_LSTM_CPU_H_
#define FUSEDLSTM_CPU_LSTM_CPU_H_

#include <cstdint>
#include <memory>

#include "fusedlstm/fusedlstm.h"

namespace fusedlstm {
namespace cpu {

// What a training forward keeps for backward (defined in lstm_cpu.cpp).
struct SavedForward;
struct SavedForwardDeleter {
  void operator()(SavedForward* s) const;
};
using SavedForwardPtr = std::unique_ptr<SavedForward, SavedForwardDeleter>;

// saved: nullptr for inference; else receives the saved activations.
void forward(const fl_forward_params& params, SavedForwardPtr* saved);
void backward(const SavedForward& saved, const fl_backward_params& params);
void cell(const fl_cell_params& params);
int64_t saved_bytes(const SavedForward& saved);

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_LSTM_CPU_H_
