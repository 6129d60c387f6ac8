"""fusedlstm.torch.LSTM, GRU, RNN and their cells: torch.nn.LSTM / GRU / RNN /
LSTMCell / GRUCell / RNNCell's contract (constructor, parameters, state_dict,
forward) on the custom operators of _ops.py: one stack module and one cell
module over the cell kind. LSTM and LSTMCell run on CPU and CUDA tensors,
GRU and RNN on the CPU so far."""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._ops import (CELL_GRU, CELL_LSTM, CELL_RNN_RELU, CELL_RNN_TANH, GATES, _CELL_UNPACKED_MAX_ROWS,
                   _cells_per_layer, checked_lengths, param_shapes, to_device)

__all__ = ["LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "RNNCell"]


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


def _autocast_off(device_type):
    """The context the modules call the operators in: autocast off, since each
    module casts for itself as its nn counterpart does (the operators' own
    AutocastCPU kernels are for direct callers; _ops.py)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _NotScriptable:
    """torch.jit.script calls __prepare_scriptable__ on every module it is
    given, submodules included: refuse there, with what works instead."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile fusedlstm.torch.{type(self).__name__}: its forward runs fusedlstm's "
            "kernels through Python custom operators, which TorchScript cannot compile. Use "
            "torch.compile(model) or torch.export.export(model, args), which work with it (so does "
            "torch.jit.trace(model, example_inputs), but TorchScript is deprecated)")


# nn's mode names -> the operators' cell kinds.
_MODES = {"LSTM": CELL_LSTM, "GRU": CELL_GRU, "RNN_TANH": CELL_RNN_TANH, "RNN_RELU": CELL_RNN_RELU}


class _NonlinearityError(RuntimeError, ValueError):
    """A nonlinearity other than 'tanh' / 'relu' (nn.RNN: ValueError; nn.RNNCell:
    RuntimeError, at its first forward)."""


def _rnn_mode(nonlinearity):
    if nonlinearity == "tanh":
        return "RNN_TANH"
    if nonlinearity == "relu":
        return "RNN_RELU"
    raise _NonlinearityError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


class _RNNBase(_NotScriptable, nn.Module):
    """nn.RNNBase on fusedlstm's fused kernels: the stack of layers (both
    directions, dropout between layers, LSTM projections) of one cell kind
    (`mode`: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"), with nn's constructor
    checks, parameters and forward contract."""

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"]
    # The device types whose autocast the module follows (runs in the autocast
    # dtype), as its nn counterpart does: nn.LSTM (aten::lstm) and nn.RNN (its
    # matmuls) follow CPU and CUDA autocast; nn.GRU stays in float32 under CPU
    # autocast (aten::gru is not on the CPU's lower-precision list).
    _autocast = ("cpu", "cuda")

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
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
                          UserWarning, stacklevel=3)
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
        self.mode, self._cell = mode, _MODES[mode]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), proj_size
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names = []
        for name, shape in param_shapes(input_size, hidden_size, num_layers, self.bidirectional, self.bias,
                                        proj_size, self._cell):
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
        """No-op, for code written for cuDNN's nn.LSTM / nn.GRU / nn.RNN."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    # The parts of forward that differ between the LSTM (hx = (h_0, c_0)) and
    # the cells without c (hx one tensor): each returns the batched states in
    # the caller's batch order.
    def _states(self, hx, batched, h_shape, c_shape):
        raise NotImplementedError

    def _input_dim_error(self, dim):
        return ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {dim}D instead")

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        batch_first = self.batch_first
        if packed:  # runs time-major, in the packed (sorted) batch order, as nn does
            rows = _PackedRows(input)
            x, batch_first, batched = input.data, False, True
        else:
            x = input
            if not isinstance(x, Tensor):
                raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(x).__name__}")
            if x.dim() not in (2, 3):
                raise self._input_dim_error(x.dim())
            batched = x.dim() == 3
            if not batched:
                x = x.unsqueeze(0 if self.batch_first else 1)
        if _autocast_dtype(x.device.type) is None:
            _check_dtype(self, {"input": x})
        if x.shape[-1] != self.input_size:
            raise _ShapeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                              f"got {x.shape[-1]}")
        if packed:
            x, lengths = rows.pad(x), rows.lengths
        B = x.shape[0] if batch_first else x.shape[1]
        T = x.shape[1] if batch_first else x.shape[0]
        D = 2 if self.bidirectional else 1
        hout = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_shape = (self.num_layers * D, B, hout)
        has_c = self._cell == CELL_LSTM
        c_shape = (self.num_layers * D, B, self.hidden_size)
        if hx is None:
            h0 = torch.zeros(h_shape, dtype=x.dtype, device=x.device)
            c0 = torch.zeros(c_shape, dtype=x.dtype, device=x.device) if has_c else None
        else:
            h0, c0 = self._states(hx, batched, h_shape, c_shape)
            if packed:
                h0 = rows.to_sorted(h0)
                c0 = rows.to_sorted(c0) if has_c else None
        states = [h0] + ([c0] if has_c else [])

        weights = self._flat_weights
        cast = _autocast_dtype(x.device.type) if x.device.type in self._autocast else None
        if cast is not None:  # run in the autocast dtype, as nn does
            x, states = x.to(cast), [s.to(cast) for s in states]
            weights = [w.to(cast) for w in weights]
        else:
            _check_dtype(self, dict(zip(("h_0", "c_0"), states)))
        h0, c0 = states[0], (states[1] if has_c else None)

        if B == 0:  # nothing to run (never packed); nn returns empty outputs (zero gradients)
            connect = sum(w.sum() for w in weights) * 0 + x.sum() * 0 + sum(s.sum() for s in states) * 0
            y = x.new_zeros((B, T, D * hout) if batch_first else (T, B, D * hout)) + connect
            out = [s + connect for s in states]
            y = y if batched else y.squeeze(0 if batch_first else 1)
            return y, (tuple(out) if has_c else out[0])

        mask = None
        if self.training and self.dropout > 0 and self.num_layers > 1:
            keep = 1.0 - self.dropout
            shape = (self.num_layers - 1, T, B, D * hout)
            if keep > 0:
                mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
            else:
                mask = torch.zeros(shape, dtype=x.dtype, device=x.device)
        need_reserve = _needs_grad(x, *states, *weights)
        with _autocast_off(x.device.type):
            y, h_n, c_n, _ = torch.ops.fusedlstm.stack_forward(
                x, weights, h0, c0, lengths, mask, self.num_layers, self.bidirectional, self.proj_size, self.bias,
                batch_first, need_reserve, self._cell)
        if cast is not None and has_c and self.proj_size > 0 and x.device.type == "cpu":
            # nn.LSTM with a projection under CPU autocast returns c_n in float32
            # (its y and h_n in the autocast dtype): the same here
            c_n = c_n.float()
        out = [h_n] + ([c_n] if has_c else [])

        if packed:
            y, out = rows.pack(y), [rows.to_input_order(s) for s in out]
        elif not batched:
            y = y.squeeze(0 if batch_first else 1)
            out = [s.squeeze(1) for s in out]
        return y, (tuple(out) if has_c else out[0])


class LSTM(_RNNBase):
    """``torch.nn.LSTM`` on fusedlstm's fused kernels: same arguments,
    parameters, ``state_dict`` and ``forward(input, hx=None)`` contract."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)

    def _states(self, hx, batched, h_shape, c_shape):
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
        return h0, c0


def _one_state(hx, batched, h_shape):
    """nn.GRU's / nn.RNN's checks of hx (one tensor) -> the batched h_0."""
    if not isinstance(hx, Tensor):
        raise _StateTypeError(f"hx must be a tensor (the initial hidden state h_0), got {type(hx).__name__}")
    dims = 3 if batched else 2
    if hx.dim() != dims:
        raise _ShapeError(f"For {'batched 3' if batched else 'unbatched 2'}-D input, hx should also be "
                          f"{dims}-D but got {hx.dim()}-D tensor")
    h0 = hx if batched else hx.unsqueeze(1)
    if tuple(h0.shape) != h_shape:
        raise _ShapeError(f"Expected hidden size {h_shape}, got {list(h0.shape)}")
    return h0


def _no_projection(kwargs):
    """nn.GRU / nn.RNN refuse a proj_size keyword (any value) with this ValueError;
    another unknown keyword is a TypeError, as for any function."""
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if kwargs:
        raise TypeError(f"__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")


class GRU(_RNNBase):
    """``torch.nn.GRU`` on fusedlstm's fused kernels (CPU and CUDA): same arguments,
    parameters (gate order r, z, n), ``state_dict`` and ``forward(input,
    hx=None) -> (output, h_n)`` contract."""

    _autocast = ("cuda",)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, **kwargs):
        _no_projection(kwargs)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)

    def _states(self, hx, batched, h_shape, c_shape):
        return _one_state(hx, batched, h_shape), None


class RNN(_RNNBase):
    """``torch.nn.RNN`` (Elman, ``nonlinearity`` 'tanh' or 'relu') on
    fusedlstm's fused kernels (CPU and CUDA): same arguments, parameters, ``state_dict``
    and ``forward(input, hx=None) -> (output, h_n)`` contract."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, **kwargs):
        _no_projection(kwargs)
        mode = _rnn_mode(nonlinearity)  # nn.RNN checks it first
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)
        self.nonlinearity = nonlinearity

    def _input_dim_error(self, dim):
        return ValueError(f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead")

    def _states(self, hx, batched, h_shape, c_shape):
        return _one_state(hx, batched, h_shape), None

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity}"


class _PackedRows:
    """A PackedSequence's rows in the time-major padded batch [T, B] of its
    packed (sorted) order: where each row of data sits there (an index
    computed on the host from batch_sizes, which torch keeps on the CPU, and
    uploaded once) and each sequence's length. Pads and repacks with one
    index_copy / index_select each; nothing reads device memory on the host."""

    def __init__(self, packed: PackedSequence):
        batch_sizes = packed.batch_sizes
        if (batch_sizes.device.type != "cpu" or batch_sizes.dim() != 1 or batch_sizes.numel() == 0
                or batch_sizes.dtype != torch.int64):
            raise ValueError(f"PackedSequence.batch_sizes must be a non-empty 1-D int64 CPU tensor, got "
                             f"{batch_sizes.dtype} {list(batch_sizes.shape)} on {batch_sizes.device}")
        if int(batch_sizes.min()) < 1 or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
            raise ValueError(f"PackedSequence.batch_sizes must be positive and non-increasing, got "
                             f"{batch_sizes.tolist()}")
        if packed.data.dim() != 2 or packed.data.shape[0] != int(batch_sizes.sum()):
            raise ValueError(f"PackedSequence.data must have shape [sum(batch_sizes) = {int(batch_sizes.sum())}, "
                             f"input_size], got {list(packed.data.shape)}")
        self.packed = packed
        self.T, self.B = batch_sizes.numel(), int(batch_sizes[0])
        present = torch.arange(self.B)[None, :] < batch_sizes[:, None]  # [T, B]
        device = packed.data.device
        self.index = to_device(torch.arange(self.T * self.B).reshape(self.T, self.B)[present], device)
        self.lengths = to_device(checked_lengths(present.sum(0), self.T, self.B), device)

    def pad(self, data):
        """data [N, I] -> the padded time-major [T, B, I] (zero at padded steps)."""
        padded = data.new_zeros((self.T * self.B, data.shape[-1])).index_copy(0, self.index, data)
        return padded.view(self.T, self.B, data.shape[-1])

    def pack(self, y):
        """y [T, B, F] -> the PackedSequence of its rows, with the input's batch_sizes and indices."""
        p = self.packed
        data = y.reshape(self.T * self.B, y.shape[-1]).index_select(0, self.index)
        return PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)

    def to_sorted(self, state):
        """A state [L*D, B, K] in the caller's batch order -> the packed order."""
        order = self.packed.sorted_indices
        return state if order is None else state.index_select(1, order)

    def to_input_order(self, state):
        order = self.packed.unsorted_indices
        return state if order is None else state.index_select(1, order)


class _RNNCellBase(_NotScriptable, nn.Module):
    """nn.RNNCellBase on fusedlstm's kernels (one step of the fused sequence
    path) for one cell kind (`mode` as _RNNBase's)."""

    # The device types whose autocast the cell follows, as nn's: aten::lstm_cell
    # and gru_cell are on CUDA autocast's lower-precision list, not on the CPU's
    # (they run in the parameters' dtype there); nn.RNNCell's matmuls follow
    # both (RNNCell sets its own).
    _autocast = ("cuda",)

    def __init__(self, mode, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__()
        # nn's cells check nothing here (sizes of 0 make an empty cell, a
        # negative one is a RuntimeError from torch.empty); the core needs sizes >= 1.
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
            if v <= 0:
                raise _ShapeError(f"{name} must be greater than zero")
        self._cell = _MODES[mode]
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        factory = {"device": device, "dtype": dtype}
        rows = GATES[self._cell] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((rows, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((rows, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
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

    # What differs between LSTMCell (hx = (h, c), returns (h', c')) and the
    # cells without c (hx one tensor, returns h'): the checks of hx before the
    # dtypes are compared, as nn's, returning {name: state} as given.
    def _check_hx(self, hx):
        raise NotImplementedError

    def _run(self, input, hx):
        """(h', c' or None) of one step, nn's checks first."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        given = {} if hx is None else self._check_hx(hx)
        cast = _autocast_dtype(input.device.type) if input.device.type in self._autocast else None
        if cast is None:
            _check_dtype(self, {"input": input, **given})
        if input.shape[-1] != self.input_size:
            raise _ShapeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        B, H = x.shape[0], self.hidden_size
        has_c = self._cell == CELL_LSTM
        if hx is None:
            states = [torch.zeros((B, H), dtype=x.dtype, device=x.device) for _ in range(2 if has_c else 1)]
        else:
            states = list(given.values()) if batched else [s.unsqueeze(0) for s in given.values()]
            for k, state in enumerate(states):
                if state.dim() != 2:
                    raise _ShapeError(f"For {'batched 2' if batched else 'unbatched 1'}-D input, hx[{k}] should "
                                      f"also be {2 if batched else 1}-D but got {state.dim() - (not batched)}-D")
                if state.shape[0] != B:
                    raise _ShapeError(f"Input batch size {B} doesn't match hidden{k} batch size {state.shape[0]}")
                if state.shape[1] != H:
                    raise _ShapeError(f"hidden{k} has inconsistent hidden_size: got {state.shape[1]}, expected {H}")
        weights = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh] if self.bias else [])
        if cast is not None:
            x, states = x.to(cast), [s.to(cast) for s in states]
            weights = [w.to(cast) for w in weights]
        h, c = states[0], (states[1] if has_c else None)
        if B == 0:
            connect = sum(w.sum() for w in weights) * 0 + x.sum() * 0
            return h + connect, (c + connect if has_c else None)
        need_reserve = _needs_grad(x, *states, *weights)
        b_ih, b_hh = (weights[2], weights[3]) if self.bias else (None, None)
        with _autocast_off(x.device.type):
            h_new, c_new = self._step(x, h, c, weights, b_ih, b_hh, need_reserve, B, has_c)
        if not batched:
            h_new, c_new = h_new[0], (c_new[0] if has_c else None)
        return h_new, (c_new if has_c else None)

    def _step(self, x, h, c, weights, b_ih, b_hh, need_reserve, B, has_c):
        if not need_reserve:  # inference: the unpacked single-step kernel
            h_new, c_new = torch.ops.fusedlstm.cell_forward(x, h, c, weights[0], weights[1], b_ih, b_hh,
                                                            self._cell)
        elif B <= _CELL_UNPACKED_MAX_ROWS:  # small batches: the unpacked step and its own backward
            h_new, c_new, _ = torch.ops.fusedlstm.cell_train_forward(x, h, c, weights[0], weights[1], b_ih, b_hh,
                                                                     self._cell)
        else:
            _, h_n, c_n, _ = torch.ops.fusedlstm.stack_forward(
                x.unsqueeze(0), weights, h.unsqueeze(0), c.unsqueeze(0) if has_c else None, None, None, 1, False,
                0, self.bias, False, need_reserve, self._cell)
            h_new, c_new = h_n[0], c_n[0] if has_c else None
        return h_new, c_new


class LSTMCell(_RNNCellBase):
    """``torch.nn.LSTMCell`` on fusedlstm's kernels (one step of the fused
    sequence path): same arguments, parameters and ``forward(input, hx=None)``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)

    def _check_hx(self, hx):
        hx = _two_states(hx, "lstm_cell", "(h_0, c_0)")
        for idx, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        return {"hx[0]": hx[0], "hx[1]": hx[1]}

    def forward(self, input, hx=None):
        return self._run(input, hx)


class _OneStateCell(_RNNCellBase):
    def _check_hx(self, hx):
        if not isinstance(hx, Tensor):
            raise _StateTypeError(f"hx must be a tensor (the hidden state), got {type(hx).__name__}")
        if hx.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        return {"hx": hx}

    def forward(self, input, hx=None):
        return self._run(input, hx)[0]


class GRUCell(_OneStateCell):
    """``torch.nn.GRUCell`` on fusedlstm's kernels (CPU and CUDA): same arguments,
    parameters and ``forward(input, hx=None) -> h'``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)


class RNNCell(_OneStateCell):
    """``torch.nn.RNNCell`` (``nonlinearity`` 'tanh' or 'relu') on fusedlstm's
    kernels (CPU and CUDA): same arguments, parameters and ``forward(input, hx=None) -> h'``.
    A bad nonlinearity is refused here (nn.RNNCell refuses it at the first
    forward, with a RuntimeError; this error is one too)."""

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]
    _autocast = ("cpu", "cuda")

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__(_rnn_mode(nonlinearity), input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity}"
