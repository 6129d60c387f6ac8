// Internal interface of the CUDA backend (csrc/cuda/), used by capi_cuda.cu.
#ifndef FUSEDLSTM_CUDA_LSTM_CUDA_H_
#define FUSEDLSTM_CUDA_LSTM_CUDA_H_

#include <cstdint>

#include "fusedlstm/fusedlstm_cuda.h"

namespace fusedlstm::cuda {

struct SavedState;  // device buffers of a training forward (lstm_cuda.cu)

// Arguments are already checked by the C API (capi_cuda.cu) except lengths.
// forward: saved_out non-NULL = training (receives a new SavedState).
void forward(const fl_cuda_forward_params& p, SavedState** saved_out);
void backward(const fl_cuda_backward_params& p, SavedState& state);
void cell(const fl_cuda_cell_params& p);
void free_saved(SavedState* state) noexcept;
int64_t saved_bytes(const SavedState* state);
// "persistent" or "fallback": the recurrence the last forward on this thread ran.
const char* last_forward_path();
const char* last_backward_path();

}  // namespace fusedlstm::cuda

#endif  // FUSEDLSTM_CUDA_LSTM_CUDA_H_
