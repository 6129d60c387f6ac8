"""fusedlstm.torch.LSTM and LSTMCell: torch.nn.LSTM / nn.LSTMCell's contract
(constructor, parameters, state_dict, forward) on the custom operators of
_ops.py, on CPU and CUDA tensors alike."""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._ops import _CELL_UNPACKED_MAX_ROWS, _cells_per_layer, checked_lengths, to_device

__all__ = ["LSTM", "LSTMCell"]




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
        batch_first = self.batch_first
        if packed:  # runs time-major, in the packed (sorted) batch order, as nn.LSTM does
            rows = _PackedRows(input)
            x, batch_first, batched = input.data, False, True
        else:
            x = input
            if not isinstance(x, Tensor):
                raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(x).__name__}")
            if x.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {x.dim()}D instead")
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
            if packed:
                h0, c0 = rows.to_sorted(h0), rows.to_sorted(c0)

        weights = self._flat_weights
        cast = _autocast_dtype(x.device.type)
        if cast is not None:  # run in the autocast dtype, as nn.LSTM does
            x, h0, c0 = x.to(cast), h0.to(cast), c0.to(cast)
            weights = [w.to(cast) for w in weights]
        else:
            _check_dtype(self, {"h_0": h0, "c_0": c0})

        if B == 0:  # nothing to run (never packed); nn.LSTM returns empty outputs (zero gradients)
            connect = sum(w.sum() for w in weights) * 0 + x.sum() * 0 + h0.sum() * 0 + c0.sum() * 0
            y = x.new_zeros((B, T, D * hout) if batch_first else (T, B, D * hout)) + connect
            h_n, c_n = h0 + connect, c0 + connect
            return (y if batched else y.squeeze(0 if batch_first else 1)), (h_n, c_n)

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
            batch_first, need_reserve)

        if packed:
            return rows.pack(y), (rows.to_input_order(h_n), rows.to_input_order(c_n))
        if not batched:
            y = y.squeeze(0 if batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return y, (h_n, c_n)


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
        # nn.LSTMCell (aten::lstm_cell) is on CUDA autocast's lower-precision
        # list, not on the CPU's: it runs in the parameters' dtype there, and so
        # does this cell.
        cast = _autocast_dtype("cuda") if input.device.type == "cuda" else None
        if cast is None:
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
        if cast is not None:
            x, h, c = x.to(cast), h.to(cast), c.to(cast)
            weights = [w.to(cast) for w in weights]
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
