"""PyTorch front end: drop-in ``LSTM`` and ``LSTMCell`` modules on the fused kernels.

    from fusedlstm.torch import LSTM      # instead of torch.nn.LSTM
    model.rnn = LSTM(256, 512, num_layers=2, bidirectional=True, batch_first=True)

Same constructor, parameter names, shapes, ``state_dict`` and ``forward``
contract as ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` (tensors or
``PackedSequence``, unbatched input, ``hx``). Autograd goes through two
custom operators registered with ``torch.library`` (``fusedlstm::stack_forward``
and ``fusedlstm::stack_backward``), so ``torch.compile(fullgraph=True)``
traces the module without graph breaks; torch.export and torch.jit.trace
work too, torch.jit.script is refused with a clear error. Every operator has
a vmap rule (torch.func.vmap, gradcheck's batched gradients). The saved
activations travel as a ``reserve`` uint8 tensor from torch's allocator (like
cuDNN's reserve space). Parameters, states and inputs in any layout are read
correctly (made dense where the core needs it, copying only then). Errors
for bad arguments are of the types nn.LSTM / nn.LSTMCell raise.

CPU tensors of float32 and float64 run natively; under ``torch.autocast``
(or with bfloat16/float16 tensors) inputs, weights and outputs keep the low
precision dtype and the arithmetic inside runs in float32. ``LSTMCell``
follows ``nn.LSTMCell``, which CPU autocast leaves in float32. CUDA tensors are
not supported by this build's torch front end yet (a clear error says so).
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import List, Optional, Tuple

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a venv without torch
    raise ImportError("fusedlstm.torch needs PyTorch (pip install torch); the numpy API "
                      "(import fusedlstm) works without it") from exc

from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import _core
from .layers import stack_reserve_nbytes, weight_shapes

__all__ = ["LSTM", "LSTMCell"]

# Run the core's parallel regions on torch's own OpenMP team: torch's workers
# spin for milliseconds after each torch op, and our own threads started in
# that window would share cores with them (bench/NOTES.md, change 8).
# FUSEDLSTM_OPENMP=0 keeps fusedlstm's own threads.
if os.environ.get("FUSEDLSTM_OPENMP", "1") != "0":
    _core.use_openmp(True)

_NATIVE = (torch.float32, torch.float64)
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(dtype):
    return dtype if dtype in _NATIVE else torch.float32


def _cells_per_layer(num_layers, bidirectional):
    return num_layers * (2 if bidirectional else 1)


def _per_cell(weights, num_layers, bidirectional, has_bias, proj_size):
    """Split the flat weight list (nn.LSTM's order) into per-cell tuples
    (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None)."""
    per = 2 + (2 if has_bias else 0) + (1 if proj_size > 0 else 0)
    cells = []
    for k in range(_cells_per_layer(num_layers, bidirectional)):
        w = weights[k * per:(k + 1) * per]
        b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
        w_hr = w[-1] if proj_size > 0 else None
        cells.append((w[0], w[1], b_ih, b_hh, w_hr))
    return cells


def _core_array(t: Optional[Tensor], dtype, *, rows=False):
    """t as the numpy array the core reads (None stays None): detached, in
    `dtype`, and C-contiguous, the layout the C API reads weights, biases,
    states, masks, lengths and the reserve in. With rows=True only the last
    axis must be contiguous: x, y, dy and dx pass the strides of their other
    axes (zero strides included). Copies only when it must. Every tensor that
    reaches the core goes through here: a parameter with the right values but
    other strides (w.t().contiguous().t(), a strided bias) would otherwise be
    read as if it were dense."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype != dtype:
        t = t.to(dtype)
    if rows:
        if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
            t = t.contiguous()
    elif not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def _core_arrays(dtype, *tensors):
    return [_core_array(t, dtype) for t in tensors]


def _stack_core_args(x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size,
                     has_bias, batch_first):
    """What stack_forward and stack_backward both hand to the core: (compute dtype,
    time-major x, H, D, the leading core arguments)."""
    work = _compute_dtype(x.dtype)
    xt = _time_major(x, batch_first)
    H = weights[1].shape[0] // 4
    D = 2 if bidirectional else 1
    cells = [tuple(_core_arrays(work, *c))
             for c in _per_cell(weights, num_layers, bidirectional, has_bias, proj_size)]
    h0n, c0n, maskn = _core_arrays(work, h0, c0, dropout_mask)
    lens = _core_array(lengths, torch.int64)
    return work, xt, H, D, [_core_array(xt, work, rows=True), cells, h0n, c0n, lens, maskn, num_layers, D,
                            proj_size, H]


# Bad forward input raises what nn.LSTM / nn.LSTMCell raise (RuntimeError for
# sizes, ValueError or RuntimeError for dtypes, ...) so that code written
# against them keeps catching it; each error is also the ValueError / TypeError
# the rest of fusedlstm raises for bad input.
class _ShapeError(RuntimeError, ValueError):
    """A size that does not fit (nn.LSTM: RuntimeError)."""


class _StateTypeError(RuntimeError, TypeError):
    """hx that is not two tensors (nn.LSTM: RuntimeError, nn.LSTMCell: TypeError or RuntimeError)."""


class _DtypeError(RuntimeError, ValueError, TypeError):
    """Tensors whose dtype is not the parameters' (nn.LSTM: ValueError for the
    input, RuntimeError for hx, packed input and nn.LSTMCell)."""


def _check_dtype(module, tensors):
    """Every tensor of {name: tensor} has the parameters' dtype; the message
    names both sides and how to convert either (nn.LSTM's wording)."""
    want = next(module.parameters()).dtype
    off = {name: t.dtype for name, t in tensors.items() if t.dtype != want}
    if off:
        got = ", ".join(str(dt) if name == "input" else f"{name} {dt}" for name, dt in off.items())
        fix = ", ".join(f"{name}.to({want})" for name in off)
        raise _DtypeError(f"RNN input dtype ({got}) does not match weight dtype ({want}). Convert input: "
                          f"{fix}, or convert model: model.to({next(iter(off.values()))})")


def _two_states(hx, op, names):
    if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
        raise _StateTypeError(f"{op} expects two hidden states: hx must be a tuple {names} of tensors, got "
                              f"{type(hx).__name__}" + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
    return hx


def _check_device(x: Tensor):
    if x.device.type != "cpu":
        raise NotImplementedError(
            f"fusedlstm.torch: tensors on {x.device} are not supported by this build's torch front end "
            "yet (CPU only); move the module and inputs to the CPU or use torch.nn.LSTM there")


class _torch_threads:
    """Calls into the core inside this use at most torch.get_num_threads()
    threads (capped by fusedlstm.set_num_threads), as nn.LSTM would: e.g.
    one per process under torchrun's OMP_NUM_THREADS=1."""

    def __enter__(self):
        self._previous = _core.limit_threads_on_this_thread(torch.get_num_threads())

    def __exit__(self, *exc):
        _core.limit_threads_on_this_thread(self._previous)


def _time_major(a, batch_first):
    if a is None:
        return None
    return a.transpose(0, 1) if batch_first else a


# ----------------------------------------------------------------------------
# Custom operators. x: [T, B, I] (or [B, T, I] when batch_first); weights: the
# flat nn.LSTM list; h0 [L*D, B, Hout], c0 [L*D, B, H]; lengths: int64 [B] on
# the CPU or None; dropout_mask: [L-1, T, B, D*Hout] factors or None.
# Returns y (layout of x), h_n, c_n and the reserve (empty unless need_reserve).

@torch.library.custom_op("fusedlstm::stack_forward", mutates_args=(), device_types="cpu")
def _stack_forward(x: Tensor, weights: List[Tensor], h0: Tensor, c0: Tensor, lengths: Optional[Tensor],
                   dropout_mask: Optional[Tensor], num_layers: int, bidirectional: bool, proj_size: int,
                   has_bias: bool, batch_first: bool, need_reserve: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    work, xt, H, D, core_args = _stack_core_args(x, weights, h0, c0, lengths, dropout_mask, num_layers,
                                                 bidirectional, proj_size, has_bias, batch_first)
    T, B, _ = xt.shape
    hout = proj_size if proj_size > 0 else H
    y = torch.empty((B, T, D * hout) if batch_first else (T, B, D * hout), dtype=work)
    h_n = torch.empty((num_layers * D, B, hout), dtype=work)
    c_n = torch.empty((num_layers * D, B, H), dtype=work)
    nbytes = stack_reserve_nbytes(torch.finfo(work).bits // 8, T, B, H, proj_size, num_layers, D) if need_reserve else 0
    reserve = torch.empty((nbytes,), dtype=torch.uint8)
    y_t = y.transpose(0, 1) if batch_first else y
    with _torch_threads():
        _core.stack_forward(*core_args, y_t.numpy(), h_n.numpy(), c_n.numpy(),
                            reserve.numpy() if need_reserve else None)
    if x.dtype != work:
        y, h_n, c_n = y.to(x.dtype), h_n.to(x.dtype), c_n.to(x.dtype)
    return y, h_n, c_n, reserve


@_stack_forward.register_fake
def _(x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size, has_bias, batch_first,
      need_reserve):
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    H = weights[1].shape[0] // 4
    D = 2 if bidirectional else 1
    hout = proj_size if proj_size > 0 else H
    work = _compute_dtype(x.dtype)
    y = x.new_empty((B, T, D * hout) if batch_first else (T, B, D * hout))
    nbytes = stack_reserve_nbytes(torch.finfo(work).bits // 8, T, B, H, proj_size, num_layers, D) if need_reserve else 0
    return (y, x.new_empty((num_layers * D, B, hout)), x.new_empty((num_layers * D, B, H)),
            x.new_empty((nbytes,), dtype=torch.uint8))


def _unflatten(flat, shapes):
    """The tensors of shapes, in order, as views of the 1-D flat."""
    return [part.reshape(shape) for part, shape in zip(flat.split([math.prod(s) for s in shapes]), shapes)]


def _weight_shapes(x, c0, num_layers, bidirectional, proj_size, has_bias):
    """nn.LSTM's parameter shapes in its order, for x's input size and c0's hidden size."""
    return list(weight_shapes(x.shape[-1], c0.shape[-1], num_layers, bidirectional, has_bias, proj_size).values())


# The weights and their gradients cross stack_backward as one flat tensor
# (nn.LSTM's parameters in order, each row-major): an operator without tensor
# lists is one torch's own vmap can loop over, and gradcheck's batched-gradient
# check and autograd.grad(is_grads_batched=True) run the backward under it.
@torch.library.custom_op("fusedlstm::stack_backward", mutates_args=(), device_types="cpu")
def _stack_backward(x: Tensor, flat_weights: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor],
                    dropout_mask: Optional[Tensor], reserve: Tensor, dy: Optional[Tensor],
                    dh_n: Optional[Tensor], dc_n: Optional[Tensor], num_layers: int, bidirectional: bool,
                    proj_size: int, has_bias: bool, batch_first: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0, the weights' gradients flat like flat_weights)."""
    shapes = _weight_shapes(x, c0, num_layers, bidirectional, proj_size, has_bias)
    weights = _unflatten(flat_weights, shapes)
    work, xt, H, D, core_args = _stack_core_args(x, weights, h0, c0, lengths, dropout_mask, num_layers,
                                                 bidirectional, proj_size, has_bias, batch_first)
    dx = torch.empty(x.shape, dtype=work)
    dx_t = dx.transpose(0, 1) if batch_first else dx
    dh0 = torch.empty(h0.shape, dtype=work)
    dc0 = torch.empty(c0.shape, dtype=work)
    dflat = torch.empty(flat_weights.shape, dtype=work)
    dweights = _unflatten(dflat, shapes)
    grad_cells = []
    for w_ih, w_hh, b_ih, b_hh, w_hr in _per_cell(dweights, num_layers, bidirectional, has_bias, proj_size):
        grad_cells.append((w_ih.numpy(), w_hh.numpy(), None if b_ih is None else b_ih.numpy(),
                           None if w_hr is None else w_hr.numpy()))
    dy_t = _time_major(dy, batch_first)
    with _torch_threads():
        _core.stack_backward(*core_args, _core_array(reserve, torch.uint8), _core_array(dy_t, work, rows=True),
                             *_core_arrays(work, dh_n, dc_n), dx_t.numpy(), dh0.numpy(), dc0.numpy(), grad_cells)
    if has_bias:  # b_ih and b_hh enter the gates alike: equal gradients
        for _, _, b_ih, b_hh, _ in _per_cell(dweights, num_layers, bidirectional, has_bias, proj_size):
            b_hh.copy_(b_ih)
    return tuple(g.to(x.dtype) if g.dtype != x.dtype else g for g in (dx, dh0, dc0, dflat))


@_stack_backward.register_fake
def _(x, flat_weights, h0, c0, lengths, dropout_mask, reserve, dy, dh_n, dc_n, num_layers, bidirectional,
      proj_size, has_bias, batch_first):
    return x.new_empty(x.shape), x.new_empty(h0.shape), x.new_empty(c0.shape), x.new_empty(flat_weights.shape)


@torch.library.custom_op("fusedlstm::cell_forward", mutates_args=(), device_types="cpu")
def _cell_forward(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                  b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One step without autograd (no_grad / inference): the core's cell,
    which reads the weights as they are (no packing), for streaming."""
    work = _compute_dtype(x.dtype)
    h_new = torch.empty(h.shape, dtype=work)
    c_new = torch.empty(c.shape, dtype=work)
    args = _core_arrays(work, x, h, c, w_ih, w_hh, b_ih, b_hh)
    with _torch_threads():
        _core.cell(*args, h_new.numpy(), c_new.numpy())
    if x.dtype != work:
        h_new, c_new = h_new.to(x.dtype), c_new.to(x.dtype)
    return h_new, c_new


@_cell_forward.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
    return h.new_empty(h.shape), c.new_empty(c.shape)


# Training LSTMCell: up to this many rows the unpacked step and its own
# backward; above, stack_forward with T = 1 (packed GEMMs). Measured training
# step at H = 256, unpacked vs packed: B = 8 0.80 vs 1.36 ms, B = 16 1.24 vs
# 1.48, B = 32 2.08 vs 1.59, B = 64 3.83 vs 2.32 (H = 512, B = 16: 4.3 vs 6.6).
_CELL_UNPACKED_MAX_ROWS = 16


@torch.library.custom_op("fusedlstm::cell_train_forward", mutates_args=(), device_types="cpu")
def _cell_train_forward(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                        b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """One step that keeps its gate activations [B, 4H] for cell_backward."""
    work = _compute_dtype(x.dtype)
    B, H = h.shape
    h_new = torch.empty((B, H), dtype=work)
    c_new = torch.empty((B, H), dtype=work)
    acts = torch.empty((B, 4 * H), dtype=work)
    args = _core_arrays(work, x, h, c, w_ih, w_hh, b_ih, b_hh)
    with _torch_threads():
        _core.cell(*args, h_new.numpy(), c_new.numpy(), acts.numpy())
    if x.dtype != work:
        h_new, c_new = h_new.to(x.dtype), c_new.to(x.dtype)
    return h_new, c_new, acts


@_cell_train_forward.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
    B, H = h.shape
    return h.new_empty((B, H)), c.new_empty((B, H)), h.new_empty((B, 4 * H), dtype=_compute_dtype(h.dtype))


@torch.library.custom_op("fusedlstm::cell_backward", mutates_args=(), device_types="cpu")
def _cell_backward(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, acts: Tensor, c_new: Tensor,
                   dh_new: Optional[Tensor], dc_new: Optional[Tensor], has_bias: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh, dc, dw_ih, dw_hh, db); db is empty without has_bias (a fixed
    tuple of tensors, which torch's own vmap can loop over)."""
    work = _compute_dtype(x.dtype)
    B, I = x.shape
    H = h.shape[1]
    out = [torch.empty((B, I), dtype=work), torch.empty((B, H), dtype=work), torch.empty((B, H), dtype=work),
           torch.empty(w_ih.shape, dtype=work), torch.empty(w_hh.shape, dtype=work)]
    db = torch.empty((4 * H if has_bias else 0,), dtype=work)
    args = _core_arrays(work, x, h, c, w_ih, w_hh, acts, c_new, dh_new, dc_new)
    with _torch_threads():
        _core.cell_backward(*args, *(t.numpy() for t in out), db.numpy() if has_bias else None)
    return tuple(g.to(x.dtype) if g.dtype != x.dtype else g for g in out + [db])


@_cell_backward.register_fake
def _(x, h, c, w_ih, w_hh, acts, c_new, dh_new, dc_new, has_bias):
    return (x.new_empty(x.shape), h.new_empty(h.shape), c.new_empty(c.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_ih.new_empty((w_ih.shape[0] if has_bias else 0,)))


def _cell_setup_context(ctx, inputs, output):
    x, h, c, w_ih, w_hh, b_ih, b_hh = inputs
    ctx.save_for_backward(x, h, c, w_ih, w_hh, output[2], output[1])
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.set_materialize_grads(False)


def _cell_backward_rule(ctx, dh_new, dc_new, _dacts):
    x, h, c, w_ih, w_hh, acts, c_new = ctx.saved_tensors
    has_bias = any(ctx.has_bias)
    grads = _cell_backward(x, h, c, w_ih, w_hh, acts, c_new, dh_new, dc_new, has_bias)
    db = grads[5] if has_bias else None
    return (grads[0], grads[1], grads[2], grads[3], grads[4],
            db if ctx.has_bias[0] else None, db if ctx.has_bias[1] else None)


_cell_train_forward.register_autograd(_cell_backward_rule, setup_context=_cell_setup_context)


def _setup_context(ctx, inputs, output):
    (x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size, has_bias, batch_first,
     need_reserve) = inputs
    ctx.save_for_backward(x, h0, c0, output[3], *weights)
    # Outputs the loss does not use (always the reserve) get None, not a
    # materialised zero tensor: the core takes None as zero.
    ctx.set_materialize_grads(False)
    ctx.lengths, ctx.dropout_mask = lengths, dropout_mask
    ctx.config = (num_layers, bidirectional, proj_size, has_bias, batch_first)
    ctx.need_reserve = need_reserve
    ctx.n_weights = len(weights)


def _backward(ctx, dy, dh_n, dc_n, _dreserve):
    if not ctx.need_reserve:
        raise RuntimeError("fusedlstm::stack_forward ran without keeping its activations "
                           "(need_reserve=False), so it cannot be differentiated")
    x, h0, c0, reserve, *weights = ctx.saved_tensors
    flat = torch.cat([w.reshape(-1) for w in weights])
    dx, dh0, dc0, dflat = _stack_backward(x, flat, h0, c0, ctx.lengths, ctx.dropout_mask, reserve, dy, dh_n,
                                          dc_n, *ctx.config)
    dweights = _unflatten(dflat, [w.shape for w in weights])
    return dx, dweights, dh0, dc0, None, None, None, None, None, None, None, None


_stack_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fusedlstm: double backward (differentiating the gradient of an LSTM, "
                       "e.g. create_graph=True for a gradient penalty) is not supported")


def _setup_nothing(ctx, inputs, output):
    pass


_stack_backward.register_autograd(_no_double_backward, setup_context=_setup_nothing)
_cell_backward.register_autograd(_no_double_backward, setup_context=_setup_nothing)


# torch.func.vmap, over the modules or over autograd.grad (torch.func.grad /
# vjp / jacrev do not support custom operators with register_autograd at all):
# the core has no batch dimension of its own, so each operator runs once per
# entry of the vmapped dimension and the results are stacked.
def _vmap_entry(arg, dim, i):
    if dim is None:
        return arg
    if isinstance(dim, (list, tuple)):  # a List[Tensor] argument: one dim per tensor
        return [_vmap_entry(a, d, i) for a, d in zip(arg, dim)]
    return arg.select(dim, i)


def _vmap_by_loop(op):
    def rule(info, in_dims, *args):
        runs = [op(*(_vmap_entry(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
        out = [torch.stack(parts) for parts in zip(*runs)]
        if isinstance(runs[0], tuple):
            return tuple(out), (0,) * len(out)
        return out, [0] * len(out)

    op.register_vmap(rule)


for _op in (_stack_forward, _stack_backward, _cell_forward, _cell_train_forward, _cell_backward):
    _vmap_by_loop(_op)


# ----------------------------------------------------------------------------
# Modules

def _needs_grad(*tensors):
    """Whether autograd may differentiate this call (so the forward must keep
    its activations). Always under torch.jit.trace: the trace records the
    answer as a constant, and must work for training (its own check reruns it
    under no_grad)."""
    return torch.jit.is_tracing() or torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _autocast_dtype(device_type):
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _NotScriptable:
    """torch.jit.script calls __prepare_scriptable__ on every module it is
    given, submodules included: refuse there, with what works instead."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile fusedlstm.torch.{type(self).__name__}: its forward runs fusedlstm's "
            "kernels through Python custom operators, which TorchScript cannot compile. Use "
            "torch.compile(model) or torch.export.export(model, args), which work with it (so does "
            "torch.jit.trace(model, example_inputs), but TorchScript is deprecated)")


class LSTM(_NotScriptable, nn.Module):
    """``torch.nn.LSTM`` on fusedlstm's fused kernels: same arguments,
    parameters, ``state_dict`` and ``forward(input, hx=None)`` contract."""

    __constants__ = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"]

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__()
        # nn.RNNBase's checks, in its order, with its exception types and
        # messages (code written against nn.LSTM catches these); num_layers and
        # proj_size, which nn.LSTM lets fail later with a TypeError, get one here.
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        for name, v in (("num_layers", num_layers), ("proj_size", proj_size)):
            if isinstance(v, bool) and name == "proj_size" or not isinstance(v, int):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers=1",
                          UserWarning, stacklevel=2)
        for name, v in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(v).__name__}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
            if v <= 0:
                raise ValueError(f"{name} must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), proj_size
        factory = {"device": device, "dtype": dtype}
        D = 2 if bidirectional else 1
        hout = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names = []
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[:D]:
                layer_in = input_size if layer == 0 else D * hout
                shapes = [(f"weight_ih_l{layer}{suffix}", (4 * hidden_size, layer_in)),
                          (f"weight_hh_l{layer}{suffix}", (4 * hidden_size, hout))]
                if bias:
                    shapes += [(f"bias_ih_l{layer}{suffix}", (4 * hidden_size,)),
                               (f"bias_hh_l{layer}{suffix}", (4 * hidden_size,))]
                if proj_size > 0:
                    shapes.append((f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size)))
                for name, shape in shapes:
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    @property
    def _flat_weights(self):
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self):
        per = len(self._flat_weights_names) // _cells_per_layer(self.num_layers, self.bidirectional)
        w = self._flat_weights
        return [w[i:i + per] for i in range(0, len(w), per)]

    def flatten_parameters(self):
        """No-op, for code written for cuDNN's nn.LSTM."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            sorted_indices, unsorted_indices, batch_sizes = (input.sorted_indices, input.unsorted_indices,
                                                             input.batch_sizes)
            x, lengths = pad_packed_sequence(input, batch_first=self.batch_first)
            batched = True
        else:
            x = input
            if not isinstance(x, Tensor):
                raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(x).__name__}")
            if x.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {x.dim()}D instead")
            batched = x.dim() == 3
            if not batched:
                x = x.unsqueeze(0 if self.batch_first else 1)
        _check_device(x)
        if _autocast_dtype(x.device.type) is None:
            _check_dtype(self, {"input": x})
        if x.shape[-1] != self.input_size:
            raise _ShapeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                              f"got {x.shape[-1]}")
        B = x.shape[0] if self.batch_first else x.shape[1]
        T = x.shape[1] if self.batch_first else x.shape[0]
        D = 2 if self.bidirectional else 1
        hout = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_shape = (self.num_layers * D, B, hout)
        c_shape = (self.num_layers * D, B, self.hidden_size)
        if hx is None:
            h0 = torch.zeros(h_shape, dtype=x.dtype, device=x.device)
            c0 = torch.zeros(c_shape, dtype=x.dtype, device=x.device)
        else:
            h0, c0 = _two_states(hx, "lstm", "(h_0, c_0)")
            dims = 3 if batched else 2
            if h0.dim() != dims or c0.dim() != dims:
                raise _ShapeError(f"For {'batched 3' if batched else 'unbatched 2'}-D input, hx and cx should "
                                  f"also be {dims}-D but got ({h0.dim()}-D, {c0.dim()}-D) tensors")
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            if tuple(h0.shape) != h_shape:
                raise _ShapeError(f"Expected hidden[0] size {h_shape}, got {list(h0.shape)}")
            if tuple(c0.shape) != c_shape:
                raise _ShapeError(f"Expected hidden[1] size {c_shape}, got {list(c0.shape)}")

        weights = self._flat_weights
        cast = _autocast_dtype(x.device.type)
        if cast is not None:  # run in the autocast dtype, as nn.LSTM does
            x, h0, c0 = x.to(cast), h0.to(cast), c0.to(cast)
            weights = [w.to(cast) for w in weights]
        else:
            _check_dtype(self, {"h_0": h0, "c_0": c0})

        if B == 0:  # nothing to run; nn.LSTM returns empty outputs (zero gradients)
            connect = sum(w.sum() for w in weights) * 0 + x.sum() * 0 + h0.sum() * 0 + c0.sum() * 0
            y = x.new_zeros((B, T, D * hout) if self.batch_first else (T, B, D * hout)) + connect
            h_n, c_n = h0 + connect, c0 + connect
            if packed:
                return PackedSequence(y.reshape(0, D * hout), batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
            return (y if batched else y.squeeze(0 if self.batch_first else 1)), (h_n, c_n)

        mask = None
        if self.training and self.dropout > 0 and self.num_layers > 1:
            keep = 1.0 - self.dropout
            shape = (self.num_layers - 1, T, B, D * hout)
            if keep > 0:
                mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
            else:
                mask = torch.zeros(shape, dtype=x.dtype, device=x.device)
        need_reserve = _needs_grad(x, h0, c0, *weights)
        y, h_n, c_n, _ = torch.ops.fusedlstm.stack_forward(
            x, weights, h0, c0, lengths, mask, self.num_layers, self.bidirectional, self.proj_size, self.bias,
            self.batch_first, need_reserve)

        if packed:
            y = _repack(y, batch_sizes, sorted_indices, unsorted_indices, self.batch_first)
        elif not batched:
            y = y.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return y, (h_n, c_n)


def _repack(y, batch_sizes, sorted_indices, unsorted_indices, batch_first):
    """y (padded, original batch order) as a PackedSequence with the input's layout."""
    yt = y.transpose(0, 1) if batch_first else y
    B = yt.shape[1]
    order = sorted_indices if sorted_indices is not None else torch.arange(B)
    steps = batch_sizes.shape[0]
    present = torch.arange(B)[None, :] < batch_sizes[:, None]  # [steps, B] in sorted order
    data = yt[:steps].index_select(1, order.to(yt.device))[present.to(yt.device)]
    return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)


class LSTMCell(_NotScriptable, nn.Module):
    """``torch.nn.LSTMCell`` on fusedlstm's kernels (one step of the fused
    sequence path): same arguments, parameters and ``forward(input, hx=None)``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__()
        # nn.LSTMCell checks nothing here (sizes of 0 make an empty cell, a
        # negative one is a RuntimeError from torch.empty); the core needs sizes >= 1.
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
            if v <= 0:
                raise _ShapeError(f"{name} must be greater than zero")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty((4 * hidden_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((4 * hidden_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input, hx=None):
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            hx = _two_states(hx, "lstm_cell", "(h_0, c_0)")
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        _check_device(input)
        # Unlike nn.LSTM, nn.LSTMCell is not on CPU autocast's lower-precision
        # list: it runs in the parameters' dtype there, and so does this cell.
        _check_dtype(self, {"input": input} if hx is None else {"input": input, "hx[0]": hx[0], "hx[1]": hx[1]})
        if input.shape[-1] != self.input_size:
            raise _ShapeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        B, H = x.shape[0], self.hidden_size
        if hx is None:
            h = torch.zeros((B, H), dtype=x.dtype, device=x.device)
            c = torch.zeros((B, H), dtype=x.dtype, device=x.device)
        else:
            h, c = hx if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
            for k, state in enumerate((h, c)):
                if state.dim() != 2:
                    raise _ShapeError(f"For {'batched 2' if batched else 'unbatched 1'}-D input, hx[{k}] should "
                                      f"also be {2 if batched else 1}-D but got {hx[k].dim()}-D")
                if state.shape[0] != B:
                    raise _ShapeError(f"Input batch size {B} doesn't match hidden{k} batch size {state.shape[0]}")
                if state.shape[1] != H:
                    raise _ShapeError(f"hidden{k} has inconsistent hidden_size: got {state.shape[1]}, expected {H}")
        weights = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh] if self.bias else [])
        if B == 0:
            connect = sum(w.sum() for w in weights) * 0 + x.sum() * 0
            return h + connect, c + connect
        need_reserve = _needs_grad(x, h, c, *weights)
        b_ih, b_hh = (weights[2], weights[3]) if self.bias else (None, None)
        if not need_reserve:  # inference: the unpacked single-step kernel
            h_new, c_new = torch.ops.fusedlstm.cell_forward(x, h, c, weights[0], weights[1], b_ih, b_hh)
            return (h_new, c_new) if batched else (h_new[0], c_new[0])
        if B <= _CELL_UNPACKED_MAX_ROWS:  # small batches: the unpacked step and its own backward
            h_new, c_new, _ = torch.ops.fusedlstm.cell_train_forward(x, h, c, weights[0], weights[1], b_ih, b_hh)
            return (h_new, c_new) if batched else (h_new[0], c_new[0])
        _, h_n, c_n, _ = torch.ops.fusedlstm.stack_forward(
            x.unsqueeze(0), weights, h.unsqueeze(0), c.unsqueeze(0), None, None, 1, False, 0, self.bias, False,
            need_reserve)
        h_new, c_new = h_n[0], c_n[0]
        if not batched:
            h_new, c_new = h_new[0], c_new[0]
        return h_new, c_new
