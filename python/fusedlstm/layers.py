"""Layer stacks for numpy users: :class:`LSTM`, a small ``torch.nn.LSTM``
look-alike that owns its weights and has ``forward`` and ``backward``.

Stacked layers, both directions, the projection and dropout between layers
all run inside the compiled core (``fl_lstm_stack_*``), on the CPU for numpy
input and on the GPU for CUDA arrays (torch / CuPy; the weights are copied to
x's device at each forward); this file checks arguments, owns the weights and
lays out arrays through the array path of x (fusedlstm/_host.py or
fusedlstm/_device.py).
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core
from ._checks import bool_arg as _bool_arg, check_fits as _check_fits, int_arg as _int_arg
from ._host import dense as _dense, float_array as _float_array
from .api import arrays_for

__all__ = ["LSTM", "LSTMStackResult", "stack_reserve_nbytes"]


def _round_up(n, m):
    return (n + m - 1) // m * m


def stack_reserve_nbytes(itemsize, T, B, H, proj_size, num_layers, num_directions, *, device="cpu"):
    """Bytes of the reserve a training forward of these shapes fills on
    `device` ("cpu" or "cuda"): ``fl_lstm_stack_reserve_bytes``'s closed form
    (fusedlstm.h). Plain integer arithmetic, so it also works on symbolic
    sizes (torch.compile)."""
    slots = T * B
    hout = proj_size if proj_size else H

    def r64(n):
        return _round_up(n, 64)

    if device == "cpu":
        w = 64 // itemsize
        hp = _round_up(H, w)
        cell = 320 + r64(slots * 4 * hp * itemsize) + r64(slots * hp * itemsize)
        cell = cell + r64(slots * (proj_size if proj_size else hp) * itemsize)
        if proj_size:
            cell = cell + r64(slots * _round_up(H, 4 * w) * itemsize)
    elif device == "cuda":
        def r256(n):
            return _round_up(n, 256)

        math = 8 if itemsize == 8 else 4  # float64, else the float32 math of float32/16/bfloat16
        cell = r256(slots * 4 * H * math) + r256((slots + B) * H * math) + r256((slots + B) * hout * itemsize)
        if proj_size:
            cell = cell + r256(slots * H * itemsize)
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return num_layers * num_directions * cell + (num_layers - 1) * (r64(slots * num_directions * hout * itemsize) + 64)


def weight_names(num_layers, bidirectional, bias, proj_size):
    """Parameter names in torch.nn.LSTM's order."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            if proj_size > 0:
                names.append(f"weight_hr_l{layer}{suffix}")
    return names


def weight_shapes(input_size, hidden_size, num_layers, bidirectional, bias, proj_size):
    """{name: shape} in torch.nn.LSTM's order."""
    D = 2 if bidirectional else 1
    H, hout = hidden_size, (proj_size if proj_size > 0 else hidden_size)
    shapes = {}
    for name in weight_names(num_layers, bidirectional, bias, proj_size):
        layer = int(name.split("_l")[1].split("_")[0])
        kind = name.split("_l")[0]
        shapes[name] = {
            "weight_ih": (4 * H, input_size if layer == 0 else D * hout),
            "weight_hh": (4 * H, hout),
            "bias_ih": (4 * H,),
            "bias_hh": (4 * H,),
            "weight_hr": (proj_size, H),
        }[kind]
    return shapes


def check_config(input_size, hidden_size, num_layers, dropout, proj_size):
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
    hout = proj_size or hidden_size
    per_direction = 4 * hidden_size * (input_size + hout + 2) + proj_size * hidden_size
    later_layers = 4 * hidden_size * 2 * hout  # the widest input of layers >= 1 (bidirectional)
    _check_fits(8 * 2 * (per_direction + (num_layers - 1) * (per_direction + later_layers)),
                "the weights (float64, bidirectional at most)", input_size=input_size, hidden_size=hidden_size,
                num_layers=num_layers)
    return input_size, hidden_size, num_layers, float(dropout), proj_size


def _nbytes(reserve):
    return 0 if reserve is None else reserve.nbytes


class LSTMStackResult:
    """Output of :meth:`LSTM.forward`: ``y`` (T, B, D*Hout) (batch-first
    when the layer is), ``h_n`` (L*D, B, Hout), ``c_n`` (L*D, B, H)."""

    __slots__ = ("y", "h_n", "c_n", "_ctx")

    def __init__(self, y, h_n, c_n, ctx):
        self.y, self.h_n, self.c_n, self._ctx = y, h_n, c_n, ctx

    @property
    def training(self) -> bool:
        return self._ctx is not None

    def __repr__(self):
        return (f"LSTMStackResult(y{tuple(self.y.shape)}, h_n{tuple(self.h_n.shape)}, "
                f"c_n{tuple(self.c_n.shape)}, training={self.training})")


class LSTM:
    """A stack of LSTM layers on numpy arrays, laid out like ``torch.nn.LSTM``.

    Same constructor arguments and parameter names (``weight_ih_l0``,
    ``weight_hh_l0_reverse``, ``bias_ih_l1``, ``weight_hr_l0`` ...), so
    ``load_state_dict(torch_lstm.state_dict())`` and back both work::

        layer = fusedlstm.LSTM(32, 64, num_layers=2, bidirectional=True)
        res = layer.forward(x, training=True)          # x (T, B, 32)
        grads = layer.backward(res, dy=np.ones_like(res.y))
        grads["weight_ih_l1_reverse"], grads["x"]

    ``dtype`` is float32 or float64. Initialisation is nn.LSTM's:
    uniform(-1/sqrt(H), 1/sqrt(H)).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, dtype=np.float32, seed=None):
        (self.input_size, self.hidden_size, self.num_layers, self.dropout,
         self.proj_size) = check_config(input_size, hidden_size, num_layers, dropout, proj_size)
        self.bias, self.batch_first = _bool_arg("bias", bias), _bool_arg("batch_first", batch_first)
        self.bidirectional = _bool_arg("bidirectional", bidirectional)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
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

    def _shapes(self):
        return weight_shapes(self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                             self.bias, self.proj_size)

    def state_dict(self):
        """{name: array} in nn.LSTM's order (copies)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Load weights from {name: array-like} (e.g. nn.LSTM's state_dict,
        torch tensors included); every name must be present with its shape."""
        shapes = self._shapes()
        missing = [k for k in shapes if k not in state]
        unexpected = [k for k in state if k not in shapes]
        if missing or unexpected:
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for name, shape in shapes.items():
            v = state[name]
            if hasattr(v, "detach"):  # a torch tensor
                v = v.detach().cpu().numpy()
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
    def forward(self, x, hx=None, *, lengths=None, training=False, rng=None, stream=None):
        """x (T, B, I) (or (B, T, I) with batch_first); hx = (h0, c0) with
        h0 (L*D, B, Hout), c0 (L*D, B, H), or None (zeros); lengths (B,)
        ends sequence b after lengths[b] steps (y is zero past it, h_n/c_n
        are taken at it; the reverse direction starts there).
        ``training=True`` applies dropout between layers (masks drawn from
        ``rng`` or the layer's own generator) and keeps what
        :meth:`backward` needs. x may be a CUDA array (torch / CuPy, of the
        layer's dtype): then the call runs on its device and stream (see
        fusedlstm/_device.py; lengths there as for lstm_forward).
        Returns an :class:`LSTMStackResult` of arrays of x's library."""
        training = _bool_arg("training", training)
        arrays = arrays_for(x, stream=stream, dtype=self.dtype)
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
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h0, c0) or None")
            h0, c0 = (arrays.dense(arrays.adopt_one(n, a, works_in)) for n, a in zip(("h0", "c0"), hx))
            if arrays.shape(h0) != (L * D, B, hout):
                raise ValueError(f"h0 must have shape (num_layers*num_directions, B, Hout) = "
                                 f"{(L * D, B, hout)}, got {arrays.shape(h0)}")
            if arrays.shape(c0) != (L * D, B, H):
                raise ValueError(f"c0 must have shape (num_layers*num_directions, B, H) = "
                                 f"{(L * D, B, H)}, got {arrays.shape(c0)}")
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
        h_n, c_n = arrays.empty((L * D, B, hout)), arrays.empty((L * D, B, H))
        reserve = None
        if training:
            device = "cpu" if arrays.device_type == _core.DEVICE_CPU else "cuda"
            reserve = arrays.empty_bytes(stack_reserve_nbytes(self.dtype.itemsize, T, B, H, self.proj_size, L, D,
                                                              device=device))
            # backward reads x, hx and lengths as they are now
            xt, h0, c0, lengths = (arrays.copy(a) for a in (xt, h0, c0, lengths))
            xt, xs = arrays.rows(xt)
        shapes = dict(T=T, B=B, I=I, H=H, proj_size=self.proj_size, num_layers=L, num_directions=D)
        core = arrays.core
        inputs = dict(x=core(xt), x_strides=xs[:2], cells=[tuple(core(a) for a in c) for c in cells], h0=core(h0),
                      c0=core(c0), lengths=core(lengths), dropout_mask=core(mask))
        y_strides = _checks.sequence_layout(T, B, D * hout, self.batch_first)[1]
        _core.stack_forward(**inputs, y=core(y), y_strides=y_strides, h_n=core(h_n), c_n=core(c_n),
                            reserve=core(reserve), reserve_bytes=_nbytes(reserve), **shapes, **arrays.call())
        # On CUDA `inputs` holds bare pointers: `saved` keeps their arrays alive for backward.
        saved = (xt, h0, c0, lengths, mask, reserve, *params.values())
        arrays.done(y, h_n, c_n, *saved)
        ctx = None
        if training:
            ctx = dict(arrays=arrays, saved=saved, inputs=inputs, shapes=shapes)
        return LSTMStackResult(y, h_n, c_n, ctx)

    __call__ = forward

    # --------------------------------------------------------- backward
    def backward(self, result, dy=None, dh_n=None, dc_n=None, *, stream=None):
        """Gradients of a training forward: a dict with ``"x"``, ``"h0"``,
        ``"c0"`` and one entry per parameter name (both biases of a cell get
        the same gradient), arrays of x's library. Upstream gradients default
        to zero."""
        if not isinstance(result, LSTMStackResult):
            raise TypeError(f"result must be the LSTMStackResult of LSTM.forward, got {type(result).__name__}")
        if result._ctx is None:
            raise ValueError("result comes from a forward with training=False; run forward(..., training=True)")
        ctx = result._ctx
        arrays = ctx["arrays"].for_backward(stream)
        shapes = ctx["shapes"]
        T, B, I = shapes["T"], shapes["B"], shapes["I"]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        hout = self.proj_size or H
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
        dh0, dc0 = arrays.empty((L * D, B, hout)), arrays.empty((L * D, B, H))
        names = self._shapes()
        grads = {name: arrays.empty(shape) for name, shape in names.items() if "bias_hh" not in name}
        cell_grads = []
        for layer in range(L):
            for suffix in ("", "_reverse")[:D]:
                s = f"_l{layer}{suffix}"
                cell_grads.append(tuple(arrays.core(grads.get(k + s)) for k in
                                        ("weight_ih", "weight_hh", "bias_ih", "weight_hr")))
        core = arrays.core
        reserve = ctx["saved"][5]
        _core.stack_backward(**ctx["inputs"], reserve=core(reserve), reserve_bytes=_nbytes(reserve), dy=core(dy),
                             dy_strides=dy_strides, dh_n=core(dh_n),
                             dc_n=core(dc_n), dx=core(dx), dx_strides=_checks.sequence_layout(T, B, I, self.batch_first)[1], dh0=core(dh0),
                             dc0=core(dc0), cell_grads=cell_grads, **ctx["shapes"], **arrays.call())
        arrays.done(dy, dh_n, dc_n, dx, dh0, dc0, *grads.values(), *ctx["saved"])
        out = {"x": dx, "h0": dh0, "c0": dc0}
        for name in names:  # b_ih and b_hh enter the gates alike: equal gradients
            out[name] = arrays.copy(grads[name.replace("bias_hh", "bias_ih")]) if "bias_hh" in name else grads[name]
        return out

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("num_layers", "bias", "batch_first", "dropout",
                                                                 "bidirectional", "proj_size")
                        if getattr(self, k) != {"num_layers": 1, "bias": True, "batch_first": False,
                                                "dropout": 0.0, "bidirectional": False, "proj_size": 0}[k])
        return f"LSTM({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype})"
