// FL_BFLOAT16 on the CPU: the calls of lstm_cpu.h for arrays of bfloat16.
// Inputs are widened to float32 (exactly), the float32 driver runs with
// bfloat16 GEMM operands (forward_bf16_operands; the single step and the
// backward see only bfloat16 values already, so their float32 paths
// compute exactly that), and outputs are rounded back to bfloat16. The
// reserve is a float32 forward's.
#ifndef FUSEDLSTM_CPU_BF16_IO_H_
#define FUSEDLSTM_CPU_BF16_IO_H_

#include "fusedlstm/fusedlstm.h"

namespace fusedlstm {
namespace cpu {

void forward_bf16(const fl_forward_params& params, void* reserve);
void backward_bf16(const fl_forward_params& params, const void* reserve, const fl_backward_params& grads);
void cell_bf16(const fl_cell_params& params);
// fl_device.allow_bf16 on a float32 step: one step of forward_bf16_operands;
// a step that saves activations runs float32 on copies of x, the weights and
// (but for the GRU) h rounded to bfloat16.
void cell_bf16_operands(const fl_cell_params& params);
void cell_backward_bf16(const fl_cell_backward_params& params);

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_BF16_IO_H_
