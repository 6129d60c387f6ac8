"""Layer stacks for numpy users: :class:`LSTM`, a small ``torch.nn.LSTM``
look-alike that owns its weights and has ``forward`` and ``backward``.

Stacked layers, both directions, the projection and dropout between layers
all run inside the compiled core (``fl_lstm_stack_*``); this file checks
arguments, owns the weights and lays out arrays.
"""

from __future__ import annotations

import numpy as np

from . import _core
from .api import _alloc, _bool_arg, _check_fits, _check_lengths, _dense, _float_array, _inner_contiguous, _int_arg

__all__ = ["LSTM", "LSTMStackResult", "stack_reserve_nbytes"]


def _round_up(n, m):
    return (n + m - 1) // m * m


def stack_reserve_nbytes(itemsize, T, B, H, proj_size, num_layers, num_directions):
    """Bytes of the reserve a training forward of these shapes fills
    (``fl_lstm_stack_reserve_bytes``'s closed form). Plain integer
    arithmetic, so it also works on symbolic sizes (torch.compile)."""
    w = 64 // itemsize
    hp = _round_up(H, w)
    slots = T * B

    def r64(n):
        return _round_up(n, 64)

    cell = 320 + r64(slots * 4 * hp * itemsize) + r64(slots * hp * itemsize)
    cell = cell + r64(slots * (proj_size if proj_size else hp) * itemsize)
    if proj_size:
        cell = cell + r64(slots * _round_up(H, 4 * w) * itemsize)
    hout = proj_size if proj_size else H
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

    def _array(self, name, a):
        return _float_array(name, a, self.dtype, works_in=f"the layer (dtype={self.dtype})")

    # ---------------------------------------------------------- forward
    def forward(self, x, hx=None, *, lengths=None, training=False, rng=None):
        """x (T, B, I) (or (B, T, I) with batch_first); hx = (h0, c0) with
        h0 (L*D, B, Hout), c0 (L*D, B, H), or None (zeros); lengths (B,)
        ends sequence b after lengths[b] steps (y is zero past it, h_n/c_n
        are taken at it; the reverse direction starts there).
        ``training=True`` applies dropout between layers (masks drawn from
        ``rng`` or the layer's own generator) and keeps what
        :meth:`backward` needs. Returns an :class:`LSTMStackResult`."""
        x = self._array("x", x)
        if x.ndim != 3:
            raise ValueError(f"x must have shape ({'B, T' if self.batch_first else 'T, B'}, I), got {x.shape}")
        xt = x.swapaxes(0, 1) if self.batch_first else x
        T, B, I = xt.shape
        if I != self.input_size:
            raise ValueError(f"x must have input size {self.input_size} in its last axis, got {I}")
        if T < 1 or B < 1:
            raise ValueError(f"x must have at least one step and one sequence, got shape {x.shape}")
        xt, _ = _inner_contiguous(xt)
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        hout = self.proj_size or H
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h0, c0) or None")
            h0, c0 = _dense(self._array("h0", hx[0])), _dense(self._array("c0", hx[1]))
            if h0.shape != (L * D, B, hout):
                raise ValueError(f"h0 must have shape (num_layers*num_directions, B, Hout) = "
                                 f"{(L * D, B, hout)}, got {h0.shape}")
            if c0.shape != (L * D, B, H):
                raise ValueError(f"c0 must have shape (num_layers*num_directions, B, H) = "
                                 f"{(L * D, B, H)}, got {c0.shape}")
        lengths = _check_lengths(lengths, B, T)
        mask = None
        if training and self.dropout > 0 and L > 1:
            gen = self._rng if rng is None else rng
            keep = 1.0 - self.dropout
            draw = gen.random((L - 1, T, B, D * hout)) < keep
            mask = (draw / keep if keep > 0 else np.zeros(draw.shape)).astype(self.dtype)
        # The core reads C-order arrays; users may also set params by hand.
        params = {k: (np.array(v, dtype=self.dtype, order="C") if training else
                      _dense(np.asarray(v, dtype=self.dtype))) for k, v in self.params.items()}
        cells = self._cells(params)

        y = _alloc((B, T, D * hout) if self.batch_first else (T, B, D * hout), self.dtype)
        h_n = _alloc((L * D, B, hout), self.dtype)
        c_n = _alloc((L * D, B, H), self.dtype)
        reserve = None
        if training:
            reserve = np.empty(stack_reserve_nbytes(self.dtype.itemsize, T, B, H, self.proj_size, L, D), np.uint8)
            # backward reads x, hx and lengths as they are now
            xt = xt.copy()
            h0, c0, lengths = (None if a is None else a.copy() for a in (h0, c0, lengths))
        y_t = y.swapaxes(0, 1) if self.batch_first else y
        _core.stack_forward(xt, cells, h0, c0, lengths, mask, L, D, self.proj_size, H, y_t, h_n, c_n, reserve)
        ctx = None
        if training:
            ctx = dict(x=xt, cells=cells, h0=h0, c0=c0, lengths=lengths, mask=mask, reserve=reserve,
                       x_shape=x.shape, params=params)
        return LSTMStackResult(y, h_n, c_n, ctx)

    __call__ = forward

    # --------------------------------------------------------- backward
    def backward(self, result, dy=None, dh_n=None, dc_n=None):
        """Gradients of a training forward: a dict with ``"x"``, ``"h0"``,
        ``"c0"`` and one entry per parameter name (both biases of a cell get
        the same gradient). Upstream gradients default to zero."""
        if not isinstance(result, LSTMStackResult):
            raise TypeError(f"result must be the LSTMStackResult of LSTM.forward, got {type(result).__name__}")
        if result._ctx is None:
            raise ValueError("result comes from a forward with training=False; run forward(..., training=True)")
        ctx = result._ctx
        xt = ctx["x"]
        T, B, I = xt.shape
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        hout = self.proj_size or H

        def grad_in(name, a, shape):
            if a is None:
                return None
            arr = _dense(self._array(name, a))
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            return arr

        dy = grad_in("dy", dy, result.y.shape)
        if dy is not None and self.batch_first:
            dy = dy.swapaxes(0, 1)
        dh_n = grad_in("dh_n", dh_n, (L * D, B, hout))
        dc_n = grad_in("dc_n", dc_n, (L * D, B, H))
        dx = _alloc((B, T, I) if self.batch_first else (T, B, I), self.dtype)
        dx_t = dx.swapaxes(0, 1) if self.batch_first else dx
        dh0 = _alloc((L * D, B, hout), self.dtype)
        dc0 = _alloc((L * D, B, H), self.dtype)
        shapes = self._shapes()
        grads = {name: _alloc(shape, self.dtype) for name, shape in shapes.items() if "bias_hh" not in name}
        cell_grads = []
        for layer in range(L):
            for suffix in ("", "_reverse")[:D]:
                s = f"_l{layer}{suffix}"
                cell_grads.append((grads["weight_ih" + s], grads["weight_hh" + s], grads.get("bias_ih" + s),
                                   grads.get("weight_hr" + s)))
        _core.stack_backward(xt, ctx["cells"], ctx["h0"], ctx["c0"], ctx["lengths"], ctx["mask"], L, D,
                             self.proj_size, H, ctx["reserve"], dy, dh_n, dc_n, dx_t, dh0, dc0, cell_grads)
        out = {"x": dx, "h0": dh0, "c0": dc0}
        for name in shapes:  # b_ih and b_hh enter the gates alike: equal gradients
            out[name] = grads[name.replace("bias_hh", "bias_ih")].copy() if "bias_hh" in name else grads[name]
        return out

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("num_layers", "bias", "batch_first", "dropout",
                                                                 "bidirectional", "proj_size")
                        if getattr(self, k) != {"num_layers": 1, "bias": True, "batch_first": False,
                                                "dropout": 0.0, "bidirectional": False, "proj_size": 0}[k])
        return f"LSTM({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype})"
