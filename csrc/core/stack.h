// Layer stacks: num_layers x num_directions single-direction LSTMs, wired as
// nn.LSTM wires them (see fl_stack_params). Backend-free: it runs any backend
// that works on host memory through that backend's single-direction
// forward/backward (today the CPU one).
#ifndef FUSEDLSTM_CORE_STACK_H_
#define FUSEDLSTM_CORE_STACK_H_

#include <cstdint>

#include "fusedlstm/fusedlstm.h"

namespace fusedlstm {

int64_t stack_reserve_bytes(const fl_stack_params& p);
void stack_forward(const fl_stack_params& p, void* reserve);
void stack_backward(const fl_stack_params& p, const void* reserve, const fl_stack_grads& g);

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_STACK_H_
