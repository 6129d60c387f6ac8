// The CPU backend: drives the SIMD kernels through forward, BPTT and the
// single cell of one direction of any cell kind (LSTM, GRU, RNN). Called by the C API (core/capi.cpp) and
// the layer-stack driver (core/stack.cpp) after they validated the
// parameters. Throws std::bad_alloc when a workspace cannot be allocated.
#ifndef FUSEDLSTM_CPU_LSTM_CPU_H_
#define FUSEDLSTM_CPU_LSTM_CPU_H_

#include <cstdint>

#include "fusedlstm/fusedlstm.h"

namespace fusedlstm {
namespace cpu {

// Bytes of the reserve a training forward of these sizes fills and the
// backward reads: an upper bound that depends on dtype, T, B, H and
// proj_size only (not on lengths or on the SIMD path), so a framework can
// allocate it from shapes alone. See fl_lstm_reserve_bytes.
int64_t reserve_bytes(fl_cell_kind cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H, int64_t proj_size);

// reserve: nullptr for inference; else at least reserve_bytes(...) bytes
// that receive the saved activations (every byte is written).
void forward(const fl_forward_params& params, void* reserve);
// params: the same inputs as the forward that filled `reserve` (x, weights,
// h0, c0, lengths); its outputs are not read.
void backward(const fl_forward_params& params, const void* reserve, const fl_backward_params& grads);
void cell(const fl_cell_params& params);
// The single step as a sequence call of T = 1 (many_to_many, dense x, h, c).
fl_forward_params one_step(const fl_cell_params& params);
// forward() and backward() of float32 arrays with the operands of every
// product (x, W_ih, W_hh, h_{t-1}; in backward dG, the states and x) rounded
// to bfloat16 and run by the bfloat16 kernels: sums, cell state, gate math,
// the projection's products and the reserve in float32 (either backward
// reads either forward's reserve). What FL_BFLOAT16 and allow_bf16 run.
void forward_bf16_operands(const fl_forward_params& params, void* reserve);
void backward_bf16_operands(const fl_forward_params& params, const void* reserve, const fl_backward_params& grads);
void cell_backward(const fl_cell_backward_params& params);

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_LSTM_CPU_H_
