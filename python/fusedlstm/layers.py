"""Layer stacks for numpy users: :class:`LSTM`, :class:`GRU` and :class:`RNN`,
small look-alikes of ``torch.nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` that own
their weights and have ``forward`` and ``backward``. The three are one
implementation (:class:`RecurrentStack`) over the cell.

Stacked layers, both directions, the projection (LSTM) and dropout between
layers all run inside the compiled core (``fl_lstm_stack_*``), on the CPU for
numpy input and, for the LSTM, on the GPU for CUDA arrays (torch / CuPy; the
weights are copied to x's device at each forward; GRU and RNN run on the CPU
only so far); this file checks arguments, owns the weights and lays out
arrays through the array path of x (fusedlstm/_host.py or fusedlstm/_device.py).
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core
from ._checks import bool_arg as _bool_arg, check_fits as _check_fits, int_arg as _int_arg
from ._host import dense as _dense, float_dtype as _float_dtype
from .api import arrays_for

__all__ = ["LSTM", "GRU", "RNN", "LSTMStackResult", "GRUStackResult", "RNNStackResult",
           "RecurrentStack", "stack_reserve_nbytes"]


def _round_up(n, m):
    return (n + m - 1) // m * m


def _check_cell(cell):
    if cell not in _checks.GATES:
        raise ValueError(f"cell must be one of {_checks.CELLS}, got {cell!r}")
    return cell


def stack_reserve_nbytes(itemsize, T, B, H, proj_size, num_layers, num_directions, *, device="cpu", cell="lstm"):
    """Bytes of the reserve a training forward of these shapes fills on
    `device` ("cpu" or "cuda") for `cell` (one of _checks.CELLS):
    ``fl_lstm_stack_reserve_bytes``'s closed form (fusedlstm.h). Plain
    integer arithmetic, so it also works on symbolic sizes (torch.compile)."""
    _check_cell(cell)
    slots = T * B
    hout = proj_size if proj_size else H

    def r64(n):
        return _round_up(n, 64)

    stored = itemsize  # the layer outputs kept between layers are in the call's dtype
    if device == "cpu":
        if itemsize == 2:  # bfloat16: the CPU widens it to float32 and keeps float32's per-cell reserve
            itemsize = 4
        w = 64 // itemsize
        hp = _round_up(H, w)
        saved = 0 if cell in ("rnn_tanh", "rnn_relu") else 4  # A: per-unit values a step saves (RNN: h only)
        per_cell = 320 + r64(slots * saved * hp * itemsize)
        if cell == "lstm":  # the cell state
            per_cell = per_cell + r64(slots * hp * itemsize)
        per_cell = per_cell + r64(slots * (proj_size if proj_size else hp) * itemsize)
        if proj_size:
            per_cell = per_cell + r64(slots * _round_up(H, 4 * w) * itemsize)
    elif device == "cuda":
        def r256(n):
            return _round_up(n, 256)

        math = 8 if itemsize == 8 else 4  # float64, else the float32 math of float32/16/bfloat16
        saved = 1 if cell in ("rnn_tanh", "rnn_relu") else 4  # A: LSTM i|f|g|o, GRU r|z|n|hn, RNN h_new
        per_cell = r256(slots * saved * H * math) + r256((slots + B) * hout * itemsize)
        if cell == "lstm":  # the cell state
            per_cell = per_cell + r256((slots + B) * H * math)
        if proj_size:
            per_cell = per_cell + r256(slots * H * itemsize)
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return (num_layers * num_directions * per_cell
            + (num_layers - 1) * (r64(slots * num_directions * hout * stored) + 64))


def weight_names(num_layers, bidirectional, bias, proj_size):
    """Parameter names in torch.nn.LSTM's order (nn.GRU's and nn.RNN's with proj_size 0)."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            if proj_size > 0:
                names.append(f"weight_hr_l{layer}{suffix}")
    return names


def weight_shapes(input_size, hidden_size, num_layers, bidirectional, bias, proj_size, cell="lstm"):
    """{name: shape} in torch.nn.LSTM's (nn.GRU's, nn.RNN's) order: G*H gate rows, G of the cell."""
    G = _checks.GATES[_check_cell(cell)]
    D = 2 if bidirectional else 1
    H, hout = hidden_size, (proj_size if proj_size > 0 else hidden_size)
    shapes = {}
    for name in weight_names(num_layers, bidirectional, bias, proj_size):
        layer = int(name.split("_l")[1].split("_")[0])
        kind = name.split("_l")[0]
        shapes[name] = {
            "weight_ih": (G * H, input_size if layer == 0 else D * hout),
            "weight_hh": (G * H, hout),
            "bias_ih": (G * H,),
            "bias_hh": (G * H,),
            "weight_hr": (proj_size, H),
        }[kind]
    return shapes


def check_config(input_size, hidden_size, num_layers, dropout, proj_size, cell="lstm"):
    input_size = _int_arg("input_size", input_size)
    hidden_size = _int_arg("hidden_size", hidden_size)
    num_layers = _int_arg("num_layers", num_layers)
    proj_size = _int_arg("proj_size", proj_size)
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if proj_size < 0 or proj_size >= hidden_size:
        raise ValueError(f"proj_size must be 0 or in [1, hidden_size) = [1, {hidden_size}), got {proj_size}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
    G = _checks.GATES[_check_cell(cell)]
    hout = proj_size or hidden_size
    per_direction = G * hidden_size * (input_size + hout + 2) + proj_size * hidden_size
    later_layers = G * hidden_size * 2 * hout  # the widest input of layers >= 1 (bidirectional)
    _check_fits(8 * 2 * (per_direction + (num_layers - 1) * (per_direction + later_layers)),
                "the weights (float64, bidirectional at most)", input_size=input_size, hidden_size=hidden_size,
                num_layers=num_layers)
    return input_size, hidden_size, num_layers, float(dropout), proj_size


def _nbytes(reserve):
    return 0 if reserve is None else reserve.nbytes


# ---------------------------------------------------------------- results
class _StackResult:
    __slots__ = ("y", "h_n", "_ctx")
    _outputs = ("y", "h_n")

    @property
    def training(self) -> bool:
        return self._ctx is not None

    def __repr__(self):
        arrays = ", ".join(f"{k}{tuple(getattr(self, k).shape)}" for k in self._outputs)
        return f"{type(self).__name__}({arrays}, training={self.training})"


class LSTMStackResult(_StackResult):
    """Output of :meth:`LSTM.forward`: ``y`` (T, B, D*Hout) (batch-first
    when the layer is), ``h_n`` (L*D, B, Hout), ``c_n`` (L*D, B, H)."""

    __slots__ = ("c_n",)
    _outputs = ("y", "h_n", "c_n")

    def __init__(self, y, h_n, c_n, ctx):
        self.y, self.h_n, self.c_n, self._ctx = y, h_n, c_n, ctx


class GRUStackResult(_StackResult):
    """Output of :meth:`GRU.forward`: ``y`` (T, B, D*H) (batch-first when the
    layer is) and ``h_n`` (L*D, B, H); no ``c_n`` (a GRU has no cell state)."""

    __slots__ = ()

    def __init__(self, y, h_n, ctx):
        self.y, self.h_n, self._ctx = y, h_n, ctx


class RNNStackResult(_StackResult):
    """Output of :meth:`RNN.forward`: ``y`` (T, B, D*H) and ``h_n`` (L*D, B, H)."""

    __slots__ = ()

    def __init__(self, y, h_n, ctx):
        self.y, self.h_n, self._ctx = y, h_n, ctx


# ---------------------------------------------------------------- layers
class RecurrentStack:
    """A stack of recurrent layers of one cell on numpy arrays, laid out like
    torch's nn.LSTM / nn.GRU / nn.RNN: the implementation of :class:`LSTM`,
    :class:`GRU` and :class:`RNN`, which fix the cell and the constructor's
    arguments. ``cell`` is one of "lstm", "gru", "rnn_tanh", "rnn_relu"."""

    _result_type = None  # the forward's result class, set by each subclass

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, dtype=np.float32, seed=None):
        self.cell = _check_cell(cell)
        (self.input_size, self.hidden_size, self.num_layers, self.dropout,
         self.proj_size) = check_config(input_size, hidden_size, num_layers, dropout, proj_size, cell)
        if self.proj_size and cell != "lstm":
            raise ValueError(f"proj_size applies to the LSTM only, got proj_size={self.proj_size} for "
                             f"cell={cell!r}")
        self.bias, self.batch_first = _bool_arg("bias", bias), _bool_arg("batch_first", batch_first)
        self.bidirectional = _bool_arg("bidirectional", bidirectional)
        self.dtype = _float_dtype(dtype)
        self._rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(self.hidden_size)
        self.params = {name: self._rng.uniform(-bound, bound, shape).astype(self.dtype)
                       for name, shape in self._shapes().items()}

    # ---------------------------------------------------------- weights
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        return self.num_directions * (self.proj_size or self.hidden_size)

    @property
    def _has_cell_state(self):
        return _checks.has_cell_state(self.cell)

    def _shapes(self):
        return weight_shapes(self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                             self.bias, self.proj_size, self.cell)

    def _config(self):
        return (self.cell, self.input_size, self.hidden_size, self.num_layers, self.bidirectional, self.bias,
                self.proj_size, self.batch_first, self.dtype)

    def state_dict(self):
        """{name: array} in the torch module's order (copies)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Load weights from {name: array-like} (e.g. the torch module's
        state_dict, torch tensors included); every name must be present with
        its shape."""
        shapes = self._shapes()
        missing = [k for k in shapes if k not in state]
        unexpected = [k for k in state if k not in shapes]
        if missing or unexpected:
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for name, shape in shapes.items():
            v = state[name]
            if hasattr(v, "detach"):  # a torch tensor (bfloat16 / float16 ones via float32: exact)
                v = v.detach().cpu()
                v = (v.float() if str(v.dtype) in ("torch.bfloat16", "torch.float16") else v).numpy()
            arr = np.asarray(v)
            if arr.shape != shape:
                raise ValueError(f"state[{name!r}] must have shape {shape}, got {arr.shape}")
            new[name] = np.array(arr, dtype=self.dtype, order="C")
        self.params = new

    def _cells(self, params):
        cells = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: self.num_directions]:
                s = f"_l{layer}{suffix}"
                cells.append((params["weight_ih" + s], params["weight_hh" + s],
                              params.get("bias_ih" + s), params.get("bias_hh" + s),
                              params.get("weight_hr" + s)))
        return cells

    # ---------------------------------------------------------- forward
    def _initial_state(self, hx, arrays, works_in, B):
        """(h0, c0) from hx, checked (None: zeros; c0 None for cells without a cell state)."""
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        hout = self.proj_size or H
        if hx is None:
            return None, None
        if self._has_cell_state:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h0, c0) or None")
            h0, c0 = (arrays.dense(arrays.adopt_one(n, a, works_in)) for n, a in zip(("h0", "c0"), hx))
        else:
            if isinstance(hx, tuple):
                raise TypeError(f"hx must be the array h0 (num_layers*num_directions, B, H) or None, not a tuple: "
                                f"{_checks.A_CELL[self.cell]} has no cell state")
            h0, c0 = arrays.dense(arrays.adopt_one("hx", hx, works_in)), None
        name = "h0" if self._has_cell_state else "hx"
        if arrays.shape(h0) != (L * D, B, hout):
            raise ValueError(f"{name} must have shape (num_layers*num_directions, B, "
                             f"{'Hout' if self._has_cell_state else 'H'}) = {(L * D, B, hout)}, "
                             f"got {arrays.shape(h0)}")
        if c0 is not None and arrays.shape(c0) != (L * D, B, H):
            raise ValueError(f"c0 must have shape (num_layers*num_directions, B, H) = "
                             f"{(L * D, B, H)}, got {arrays.shape(c0)}")
        return h0, c0

    def forward(self, x, hx=None, *, lengths=None, training=False, rng=None, compute=None, stream=None):
        """x (T, B, I) (or (B, T, I) with batch_first); hx: the initial
        state or None (zeros): for the LSTM a tuple (h0, c0) with h0
        (L*D, B, Hout), c0 (L*D, B, H); for the GRU and RNN the array h0
        (L*D, B, H). lengths (B,) ends sequence b after lengths[b] steps (y
        is zero past it, h_n (c_n) are taken at it; the reverse direction
        starts there). ``training=True`` applies dropout between layers
        (masks drawn from ``rng`` or the layer's own generator) and keeps
        what :meth:`backward` needs. x may be a CUDA array (torch / CuPy, of
        the layer's dtype; LSTM only so far): then the call runs on its
        device and stream (see fusedlstm/_device.py; lengths there as for
        lstm_forward). ``compute="bf16"`` (a float32 layer on the CPU) runs
        the bfloat16 kernels (forward and backward) with float32 arrays, as for
        lstm_forward. Returns a result (``y``, ``h_n``, and ``c_n`` for
        the LSTM) of arrays of x's library."""
        training = _bool_arg("training", training)
        arrays = arrays_for(x, stream=stream, dtype=self.dtype, compute=compute)
        works_in = f"the layer (dtype={self.dtype})"
        x = arrays.adopt_one("x", x, works_in)
        shape = arrays.shape(x)
        if len(shape) != 3:
            raise ValueError(f"x must have shape ({'B, T' if self.batch_first else 'T, B'}, I), got {shape}")
        xt = arrays.swapaxes01(x) if self.batch_first else x
        T, B, I = arrays.shape(xt)
        if I != self.input_size:
            raise ValueError(f"x must have input size {self.input_size} in its last axis, got {I}")
        if T < 1 or B < 1:
            raise ValueError(f"x must have at least one step and one sequence, got shape {shape}")
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        hout = self.proj_size or H
        h0, c0 = self._initial_state(hx, arrays, works_in, B)
        lengths = arrays.lengths(lengths, B, T)
        mask = None
        if training and self.dropout > 0 and L > 1:
            gen = self._rng if rng is None else rng
            keep = 1.0 - self.dropout
            draw = gen.random((L - 1, T, B, D * hout)) < keep
            mask = arrays.from_host((draw / keep if keep > 0 else np.zeros(draw.shape)).astype(self.dtype))
        # The core reads C-order arrays; users may also set params by hand.
        if arrays.library == "numpy":
            params = {k: (np.array(v, dtype=self.dtype, order="C") if training else
                          _dense(np.asarray(v, dtype=self.dtype))) for k, v in self.params.items()}
        else:
            params = {k: arrays.from_host(np.asarray(v, dtype=self.dtype)) for k, v in self.params.items()}
        cells = self._cells(params)

        xt, xs = arrays.rows(xt)
        y = arrays.empty((B, T, D * hout) if self.batch_first else (T, B, D * hout))
        h_n = arrays.empty((L * D, B, hout))
        c_n = arrays.empty((L * D, B, H)) if self._has_cell_state else None
        reserve = None
        if training:
            device = "cpu" if arrays.device_type == _core.DEVICE_CPU else "cuda"
            reserve = arrays.empty_bytes(stack_reserve_nbytes(self.dtype.itemsize, T, B, H, self.proj_size, L, D,
                                                              device=device, cell=self.cell))
            # backward reads x, hx and lengths as they are now
            xt, h0, c0, lengths = (arrays.copy(a) for a in (xt, h0, c0, lengths))
            xt, xs = arrays.rows(xt)
        shapes = dict(T=T, B=B, I=I, H=H, proj_size=self.proj_size, num_layers=L, num_directions=D)
        core = arrays.core
        inputs = dict(x=core(xt), x_strides=xs[:2], cells=[tuple(core(a) for a in c) for c in cells], h0=core(h0),
                      c0=core(c0), lengths=core(lengths), dropout_mask=core(mask))
        y_strides = _checks.sequence_layout(T, B, D * hout, self.batch_first)[1]
        _core.stack_forward(**inputs, y=core(y), y_strides=y_strides, h_n=core(h_n), c_n=core(c_n),
                            reserve=core(reserve), reserve_bytes=_nbytes(reserve), **shapes,
                            **_checks.core_cell(self.cell), **arrays.call())
        # On CUDA `inputs` holds bare pointers: `saved` keeps their arrays alive for backward.
        saved = (xt, h0, c0, lengths, mask, reserve, *params.values())
        arrays.done(y, h_n, c_n, *saved)
        ctx = None
        if training:
            ctx = dict(arrays=arrays, saved=saved, inputs=inputs, shapes=shapes, config=self._config())
        return self._result(y, h_n, c_n, ctx)

    __call__ = forward

    def _result(self, y, h_n, c_n, ctx):
        if self._has_cell_state:
            return self._result_type(y, h_n, c_n, ctx)
        return self._result_type(y, h_n, ctx)

    # --------------------------------------------------------- backward
    def _backward(self, result, dy, dh_n, dc_n, stream):
        result_type = self._result_type
        if not isinstance(result, result_type):
            raise TypeError(f"result must be the {result_type.__name__} of {type(self).__name__}.forward, "
                            f"got {type(result).__name__}")
        if result._ctx is None:
            raise ValueError("result comes from a forward with training=False; run forward(..., training=True)")
        ctx = result._ctx
        if ctx["config"] != self._config():
            raise ValueError(f"result comes from the forward of another layer ({ctx['config'][0]}, sizes "
                             f"{ctx['config'][1:5]}); call backward on the layer that ran the forward")
        arrays = ctx["arrays"].for_backward(stream)
        shapes = ctx["shapes"]
        T, B, I = shapes["T"], shapes["B"], shapes["I"]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        hout = self.proj_size or H
        lstm = self._has_cell_state
        works_in = f"the layer (dtype={self.dtype})"

        def grad_in(name, a, shape):
            if a is None:
                return None
            arr = arrays.dense(arrays.adopt_one(name, a, works_in))
            if arrays.shape(arr) != tuple(shape):
                raise ValueError(f"{name} must have shape {tuple(shape)}, got {arrays.shape(arr)}")
            return arr

        dy = grad_in("dy", dy, arrays.shape(result.y))
        dy_strides = (0, 0) if dy is None else _checks.time_batch(arrays.rows(dy)[1], self.batch_first)
        dh_n = grad_in("dh_n", dh_n, (L * D, B, hout))
        dc_n = grad_in("dc_n", dc_n, (L * D, B, H))
        dx = arrays.empty((B, T, I) if self.batch_first else (T, B, I))
        dh0 = arrays.empty((L * D, B, hout))
        dc0 = arrays.empty((L * D, B, H)) if lstm else None
        names = self._shapes()
        # The GRU's b_ih and b_hh get different gradients (the n rows), which the core
        # writes each; the other cells' are equal: the core writes one, copied below.
        separate = self.cell == "gru"
        grads = {name: arrays.empty(shape) for name, shape in names.items() if separate or "bias_hh" not in name}
        kinds = ("weight_ih", "weight_hh", "bias_ih", "weight_hr") + (("bias_hh",) if separate else ())
        cell_grads = []
        for layer in range(L):
            for suffix in ("", "_reverse")[:D]:
                s = f"_l{layer}{suffix}"
                cell_grads.append(tuple(arrays.core(grads.get(k + s)) for k in kinds))
        core = arrays.core
        reserve = ctx["saved"][5]
        dx_strides = _checks.sequence_layout(T, B, I, self.batch_first)[1]
        _core.stack_backward(**ctx["inputs"], reserve=core(reserve), reserve_bytes=_nbytes(reserve), dy=core(dy),
                             dy_strides=dy_strides, dh_n=core(dh_n), dc_n=core(dc_n), dx=core(dx),
                             dx_strides=dx_strides, dh0=core(dh0), dc0=core(dc0), cell_grads=cell_grads,
                             **ctx["shapes"], **_checks.core_cell(self.cell), **arrays.call())
        arrays.done(dy, dh_n, dc_n, dx, dh0, dc0, *grads.values(), *ctx["saved"])
        out = {"x": dx, "h0": dh0}
        if lstm:
            out["c0"] = dc0
        for name in names:
            if name in grads:
                out[name] = grads[name]
            else:  # bias_hh of an LSTM or RNN: b_ih and b_hh enter the gates alike
                out[name] = arrays.copy(grads[name.replace("bias_hh", "bias_ih")])
        return out

    def _repr_args(self):
        """(name, value, default) of the constructor arguments after the sizes."""
        return [("num_layers", self.num_layers, 1), ("bias", self.bias, True),
                ("batch_first", self.batch_first, False), ("dropout", self.dropout, 0.0),
                ("bidirectional", self.bidirectional, False)]

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v, default in self._repr_args() if v != default)
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype})"


class LSTM(RecurrentStack):
    """A stack of LSTM layers on numpy arrays, laid out like ``torch.nn.LSTM``.

    Same constructor arguments and parameter names (``weight_ih_l0``,
    ``weight_hh_l0_reverse``, ``bias_ih_l1``, ``weight_hr_l0`` ...), so
    ``load_state_dict(torch_lstm.state_dict())`` and back both work::

        layer = fusedlstm.LSTM(32, 64, num_layers=2, bidirectional=True)
        res = layer.forward(x, training=True)          # x (T, B, 32)
        grads = layer.backward(res, dy=np.ones_like(res.y))
        grads["weight_ih_l1_reverse"], grads["x"]

    ``dtype`` is float32, float64 or bfloat16 (``ml_dtypes.bfloat16`` or
    "bfloat16", CPU; see fusedlstm.lstm_forward). Initialisation is nn.LSTM's:
    uniform(-1/sqrt(H), 1/sqrt(H)).
    """

    _result_type = LSTMStackResult

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, dtype=dtype, seed=seed)


    def backward(self, result, dy=None, dh_n=None, dc_n=None, *, stream=None):
        """Gradients of a training forward: a dict with ``"x"``, ``"h0"``,
        ``"c0"`` and one entry per parameter name (both biases of a cell get
        the same gradient), arrays of x's library. Upstream gradients default
        to zero."""
        return self._backward(result, dy, dh_n, dc_n, stream)

    def _repr_args(self):
        return super()._repr_args() + [("proj_size", self.proj_size, 0)]


class GRU(RecurrentStack):
    """A stack of GRU layers on numpy arrays (CPU), laid out like ``torch.nn.GRU``.

    Same constructor arguments and parameter names (``weight_ih_l0`` (3H, I),
    ``weight_hh_l0`` (3H, H), ``bias_ih_l0``, ``bias_hh_l0`` (3H,), gate order
    r, z, n; ``_reverse`` and ``_l1`` ... as nn.GRU), so state dicts move both
    ways::

        layer = fusedlstm.GRU(32, 64, num_layers=2, bidirectional=True)
        res = layer.forward(x, training=True)          # res.y, res.h_n
        grads = layer.backward(res, dy=np.ones_like(res.y))

    ``hx`` is the array h0 (L*D, B, H), as nn.GRU's. Initialisation is
    nn.GRU's: uniform(-1/sqrt(H), 1/sqrt(H)).
    """

    _result_type = GRUStackResult

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, dtype=np.float32, seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype=dtype, seed=seed)


    def backward(self, result, dy=None, dh_n=None, *, stream=None):
        """Gradients of a training forward: a dict with ``"x"``, ``"h0"`` and one
        entry per parameter name (``bias_ih_*`` and ``bias_hh_*`` differ in the
        n rows), arrays of x's library. Upstream gradients default to zero."""
        return self._backward(result, dy, dh_n, None, stream)


class RNN(RecurrentStack):
    """A stack of Elman RNN layers on numpy arrays (CPU), laid out like ``torch.nn.RNN``.

    Same constructor arguments (``nonlinearity`` "tanh" or "relu") and
    parameter names (``weight_ih_l0`` (H, I), ``weight_hh_l0`` (H, H),
    ``bias_ih_l0``, ``bias_hh_l0`` (H,) ...). ``hx`` is the array h0
    (L*D, B, H). Initialisation is nn.RNN's: uniform(-1/sqrt(H), 1/sqrt(H)).
    """

    _result_type = RNNStackResult

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None):
        super().__init__(_checks.rnn_cell(nonlinearity), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype=dtype, seed=seed)

    @property
    def nonlinearity(self):
        return self.cell[len("rnn_"):]


    def backward(self, result, dy=None, dh_n=None, *, stream=None):
        """Gradients of a training forward: a dict with ``"x"``, ``"h0"`` and one
        entry per parameter name (both biases of a cell get the same
        gradient), arrays of x's library. Upstream gradients default to zero."""
        return self._backward(result, dy, dh_n, None, stream)

    def _repr_args(self):
        args = super()._repr_args()
        return args[:1] + [("nonlinearity", self.nonlinearity, "tanh")] + args[1:]
