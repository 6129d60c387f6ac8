// Layer stacks: num_layers x num_directions single-direction LSTMs, wired as
// nn.LSTM wires them (see fl_stack_params). Backend-free: it runs on any
// backend through its table (core/backend.h): the single-direction
// forward/backward, workspaces, and elementwise row operations. Arguments
// are checked by the C API first.
#ifndef FUSEDLSTM_CORE_STACK_H_
#define FUSEDLSTM_CORE_STACK_H_

#include <cstdint>

#include "core/backend.h"
#include "fusedlstm/fusedlstm.h"

namespace fusedlstm {

// Checked (throws InvalidArgument when a term overflows).
int64_t stack_reserve_bytes(const fl_backend_ops& ops, const fl_stack_params& p);
void stack_forward(const fl_backend_ops& ops, const fl_stack_params& p, void* reserve);
void stack_backward(const fl_backend_ops& ops, const fl_stack_params& p, const void* reserve,
                    const fl_stack_grads& g);

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_STACK_H_
