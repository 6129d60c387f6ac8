"""What the host (numpy) and device (CUDA) paths check alike, written once:
options, shapes, weights, lengths, output layouts, and the result types.

Checks here read shapes, never array contents: the arrays of both paths
(numpy, torch, CuPy) pass through the same functions. Every message names
the argument and says what was expected and what came.
"""

from __future__ import annotations

import operator
import os
import sys

import numpy as np

from . import _core

MODES = ("many_to_many", "many_to_one", "one_to_many")
FEEDS = ("repeat", "first", "output")
MODE_CODE = {
    "many_to_many": _core.MANY_TO_MANY,
    "many_to_one": _core.MANY_TO_ONE,
    "one_to_many": _core.ONE_TO_MANY,
}
FEED_CODE = {"repeat": _core.FEED_REPEAT, "first": _core.FEED_FIRST, "output": _core.FEED_OUTPUT}

# ---------------------------------------------------------------- cells
# The recurrent cells (fusedlstm.h's fl_cell_kind), named as reference.py names them.
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
CELL_CODE = {name: getattr(_core, f"CELL_{name.upper()}", code) for code, name in enumerate(CELLS)}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # G: rows of w_ih / w_hh per hidden unit
GATE_ROWS = {"lstm": "gate rows i, f, g, o", "gru": "gate rows r, z, n", "rnn_tanh": "one gate",
             "rnn_relu": "one gate"}
A_CELL = {"lstm": "an LSTM", "gru": "a GRU", "rnn_tanh": "an RNN", "rnn_relu": "an RNN"}
FAMILY = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}  # lstm_forward, gru_forward ...
NONLINEARITIES = ("tanh", "relu")


def rnn_cell(nonlinearity):
    """The cell of an Elman RNN with this nonlinearity ("tanh" or "relu", as nn.RNN)."""
    if not isinstance(nonlinearity, str) or nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    return "rnn_" + nonlinearity


def gate_rows(cell):
    """'4H', '3H' or 'H': the rows of w_ih and w_hh of the cell, for messages."""
    G = GATES[cell]
    return "H" if G == 1 else f"{G}H"


def has_cell_state(cell):
    """Only the LSTM carries a cell state c (c0, c_n, dc_n, dc0)."""
    return cell == "lstm"


def core_cell(cell):
    """The cell keyword of a _core call: none for the LSTM (the core's default)."""
    return {} if cell == "lstm" else {"cell": CELL_CODE[cell]}

_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged

# ---------------------------------------------------------------- debug poison
_debug_poison = False


def set_debug_poison(flag: bool) -> bool:
    """Fill every output array with NaN before the kernels write it (for
    tests: an element a kernel forgets to write then shows). Returns the
    previous setting."""
    global _debug_poison
    previous, _debug_poison = _debug_poison, bool(flag)
    return previous


def debug_poison() -> bool:
    return _debug_poison


# ---------------------------------------------------------------- results
def _shape(a):
    return None if a is None else tuple(a.shape)


class _Result:
    """A forward's outputs (arrays of the library of x: numpy on the host,
    torch or CuPy on a GPU) and, with ``training=True``, what the backward
    needs (the saved activations and copies of the inputs; ``saved_nbytes``
    says how much). ``cell`` names the recurrent cell that made it."""

    __slots__ = ("y", "h_n", "_state", "_ctx", "cell")
    _outputs = ("y", "h_n")

    @property
    def training(self) -> bool:
        return self._state is not None

    @property
    def saved_nbytes(self) -> int:
        return self._state.nbytes if self._state is not None else 0

    def _extra_repr(self):
        return ""

    def __repr__(self):
        arrays = ", ".join(f"{k}{_shape(getattr(self, k))}" for k in self._outputs)
        return (f"{type(self).__name__}({arrays}{self._extra_repr()}, dtype={self.y.dtype}, "
                f"training={self.training})")


class LSTMResult(_Result):
    """Output of :func:`lstm_forward`: ``y``, ``h_n``, ``c_n``."""

    __slots__ = ("c_n",)
    _outputs = ("y", "h_n", "c_n")

    def __init__(self, y, h_n, c_n, state, ctx):
        self.y, self.h_n, self.c_n = y, h_n, c_n
        self._state, self._ctx, self.cell = state, ctx, "lstm"


class GRUResult(_Result):
    """Output of :func:`gru_forward`: ``y`` and ``h_n`` (a GRU has no cell
    state, so there is no ``c_n``)."""

    __slots__ = ()

    def __init__(self, y, h_n, state, ctx):
        self.y, self.h_n = y, h_n
        self._state, self._ctx, self.cell = state, ctx, "gru"


class RNNResult(_Result):
    """Output of :func:`rnn_forward`: ``y`` and ``h_n`` (no cell state, no
    ``c_n``); ``nonlinearity`` is "tanh" or "relu"."""

    __slots__ = ()

    def __init__(self, y, h_n, state, ctx, cell):
        self.y, self.h_n = y, h_n
        self._state, self._ctx, self.cell = state, ctx, cell

    @property
    def nonlinearity(self) -> str:
        return self.cell[len("rnn_"):]

    def _extra_repr(self):
        return f", nonlinearity={self.nonlinearity!r}"


RESULT_TYPES = {"lstm": LSTMResult, "gru": GRUResult, "rnn_tanh": RNNResult, "rnn_relu": RNNResult}


def make_result(cell, y, h_n, c_n, state, ctx):
    """The result type of the cell's forward (c_n: the LSTM's only)."""
    if cell == "lstm":
        return LSTMResult(y, h_n, c_n, state, ctx)
    if cell == "gru":
        return GRUResult(y, h_n, state, ctx)
    return RNNResult(y, h_n, state, ctx, cell)


class _Grads:
    __slots__ = ()

    def __repr__(self):
        fields = ", ".join(f"{k}={_shape(getattr(self, k))}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"


class LSTMGrads(_Grads):
    """Output of :func:`lstm_backward`: gradients with the shapes of the
    matching inputs (``db_ih``/``db_hh`` are None when that bias was None,
    ``dw_hr`` when there was no projection)."""

    __slots__ = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr")

    def __init__(self, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr=None):
        self.dx, self.dh0, self.dc0 = dx, dh0, dc0
        self.dw_ih, self.dw_hh, self.db_ih, self.db_hh, self.dw_hr = dw_ih, dw_hh, db_ih, db_hh, dw_hr


class GRUGrads(_Grads):
    """Output of :func:`gru_backward`: ``dx``, ``dh0``, ``dw_ih``, ``dw_hh``,
    ``db_ih``, ``db_hh`` with the shapes of the matching inputs (a bias
    gradient is None when that bias was None). Unlike the LSTM's, the
    gradients of b_ih and b_hh differ (in the n rows, b_hn sits inside r * (...))."""

    __slots__ = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")

    def __init__(self, dx, dh0, dw_ih, dw_hh, db_ih, db_hh):
        self.dx, self.dh0, self.dw_ih, self.dw_hh, self.db_ih, self.db_hh = dx, dh0, dw_ih, dw_hh, db_ih, db_hh


class RNNGrads(_Grads):
    """Output of :func:`rnn_backward`: as :class:`GRUGrads`; ``db_ih`` and
    ``db_hh`` are equal (both biases enter the one gate alike), each its own array."""

    __slots__ = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")

    def __init__(self, dx, dh0, dw_ih, dw_hh, db_ih, db_hh):
        self.dx, self.dh0, self.dw_ih, self.dw_hh, self.db_ih, self.db_hh = dx, dh0, dw_ih, dw_hh, db_ih, db_hh


def check_result(result, family):
    """TypeError unless result is a forward result of this family ("lstm", "gru"
    or "rnn"), naming the backward a result of another cell belongs to;
    ValueError when it kept nothing for backward."""
    expected = {"lstm": LSTMResult, "gru": GRUResult, "rnn": RNNResult}[family]
    if not isinstance(result, expected):
        hint = ""
        if isinstance(result, _Result):
            other = FAMILY[result.cell]
            hint = f" (this one comes from {other}_forward: pass it to {other}_backward)"
        raise TypeError(f"result must be the {expected.__name__} of {family}_forward, got "
                        f"{type(result).__name__}{hint}")
    if result._state is None:
        raise ValueError(f"result was computed with training=False, which keeps nothing for backward; "
                         f"call {family}_forward(..., training=True)")


# ---------------------------------------------------------------- scalars
def bool_arg(name, v):
    """A flag must be a bool (as nn.LSTM requires of batch_first and bias):
    'False' or 2 would otherwise be read by truthiness."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def int_arg(name, v):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}") from None


def _physical_memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes, what, **sizes):
    """MemoryError naming the sizes (argument = value) when arrays of nbytes
    cannot exist on this machine: more than its physical memory, or more
    than numpy can index. Checked before anything is allocated or looped
    over, so an absurd size is an error, not a hang or numpy's unnamed
    'array is too big'."""
    limit = min(sys.maxsize, _physical_memory_bytes() or sys.maxsize)
    if nbytes > limit:
        named = ", ".join(f"{k} = {v}" for k, v in sizes.items())
        raise MemoryError(f"{named}: {what} would need {nbytes} bytes, more than this machine's "
                          f"{limit} bytes of memory")


def forward_options(mode, feed, batch_first, training, reverse):
    """The options of a forward (lstm_forward, gru_forward, rnn_forward), checked:
    (batch_first, training, reverse)."""
    if mode not in MODE_CODE:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if feed not in FEED_CODE:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
    if mode != "one_to_many" and feed != "repeat":
        raise ValueError(f"feed applies only to mode='one_to_many', got feed={feed!r} with mode={mode!r}")
    reverse = bool_arg("reverse", reverse)
    if reverse and mode == "one_to_many":
        raise ValueError("reverse applies only to mode='many_to_many' and 'many_to_one' (one_to_many "
                         "generates forwards from x)")
    return bool_arg("batch_first", batch_first), bool_arg("training", training), reverse


def is_cuda_array(a) -> bool:
    """True for an array whose DLPack device is a CUDA GPU (numpy never is)."""
    if isinstance(a, np.ndarray) or isinstance(a, type):
        return False
    dev = getattr(a, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in _DLPACK_CUDA
    except Exception:
        return False


# ---------------------------------------------------------------- shapes
def required(**arrays):
    """TypeError naming the first of arrays that is None."""
    for name, a in arrays.items():
        if a is None:
            raise TypeError(f"{name} must be an array, got None")


def check_shape(name, shape, expected, meaning):
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {meaning}, got {tuple(shape)}")


def _looks_like(cell, w_hh):
    """A hint when w_hh's shape is another cell's (say an LSTM's weights passed to a GRU)."""
    rows, cols = w_hh
    if cols < 1:
        return ""
    for other in ("lstm", "gru", "rnn_tanh"):
        if GATES[other] != GATES[cell] and rows == GATES[other] * cols:
            return f" ({gate_rows(other)} rows: {A_CELL[other]}'s weights?)"
    return ""


def weight_sizes(w_ih, w_hh, w_hr=None, b_ih=None, b_hh=None, *, cell="lstm"):
    """(H, I, R) from the shapes of the weights of the cell (R = 0 without
    w_hr, which only the LSTM has), after checking that they fit together;
    b_ih, b_hh: shapes or None."""
    G, rows, what = GATES[cell], gate_rows(cell), f"for {A_CELL[cell]} ({GATE_ROWS[cell]})"
    w_hh, w_ih = tuple(w_hh), tuple(w_ih)
    with_proj = ", or (4H, proj_size) with w_hr" if cell == "lstm" else ""
    if len(w_hh) != 2 or w_hh[0] % G or w_hh[0] < G or w_hh[1] < 1:
        hint = _looks_like(cell, w_hh) if len(w_hh) == 2 else ""
        raise ValueError(f"w_hh must have shape ({rows}, H) {what}, H >= 1{with_proj}, got {w_hh}{hint}")
    H = w_hh[0] // G
    R = 0
    if w_hr is None:
        if w_hh[1] != H:
            raise ValueError(f"w_hh must have shape ({rows}, H) {what}{with_proj}, got {w_hh}"
                             f"{_looks_like(cell, w_hh)}")
    else:
        if cell != "lstm":
            raise ValueError(f"w_hr (a projection) is for the LSTM only; {A_CELL[cell]} has none")
        w_hr = tuple(w_hr)
        R = w_hh[1]
        if R >= H:
            raise ValueError(f"w_hh {w_hh} with w_hr: proj_size = {R} (the columns of w_hh) must be < H = {H}")
        check_shape("w_hr", w_hr, (R, H), "(proj_size, H), proj_size from w_hh's columns")
    if len(w_ih) != 2 or w_ih[0] != G * H:
        raise ValueError(f"w_ih must have shape ({rows}, I) = ({G * H}, I) {what} to match w_hh {w_hh}, "
                         f"got {w_ih}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_shape(name, b, (G * H,), f"({rows},) {what}")
    return H, w_ih[1], R


def sequence_shape(x_shape, itemsize, I, H, Hout, *, mode, steps, lengths, feed, batch_first):
    """(T, B) of a forward call, after checking x's shape against the mode."""
    x_shape = tuple(x_shape)
    ndim = len(x_shape)
    one_to_many = mode == "one_to_many"
    if one_to_many:
        if ndim != 2:
            raise ValueError(f"x must have shape (B, I) for mode='one_to_many', got ndim {ndim} shape {x_shape}")
        if steps is None:
            raise ValueError("steps is required for mode='one_to_many' (the number of steps to generate)")
        T = int_arg("steps", steps)
        if T < 1:
            raise ValueError(f"steps must be >= 1, got {T}")
        if lengths is not None:
            raise ValueError("lengths is only supported for mode='many_to_many' and 'many_to_one'")
        B = x_shape[0]
        check_fits(T * B * Hout * itemsize, "the output y (steps, B, Hout)", steps=T)
        if feed == "output" and I != Hout:
            raise ValueError(f"feed='output' feeds h_{{t-1}} back as the input, so it needs I == Hout; "
                             f"w_ih has I = {I}, the hidden state has {Hout}")
    else:
        if steps is not None:
            raise ValueError(f"steps is only for mode='one_to_many' (mode={mode!r} takes T from x)")
        if ndim != 3:
            layout = "(B, T, I)" if batch_first else "(T, B, I)"
            raise ValueError(f"x must have shape {layout} for mode={mode!r}, got ndim {ndim} shape {x_shape}")
        T, B = (x_shape[1], x_shape[0]) if batch_first else (x_shape[0], x_shape[1])
    if x_shape[-1] != I:
        raise ValueError(f"x has input size {x_shape[-1]} (last axis) but w_ih has I = {I}")
    if B < 1 or (not one_to_many and T < 1):
        raise ValueError(f"x must have at least one step and one batch row, got shape {x_shape}")
    return T, B


def lengths_header(dtype, shape, B):
    """The dtype (a numpy or array-library dtype) and shape of lengths."""
    kind = getattr(dtype, "kind", None)
    if kind is None:  # torch
        is_int = not (dtype.is_floating_point or dtype.is_complex) and str(dtype) != "torch.bool"
    else:
        is_int = kind in "iu"
    if not is_int:
        raise TypeError(f"lengths must be an integer array, got dtype {dtype}")
    if tuple(shape) != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(shape)}")


def lengths_values(lens, B, T):
    """Host lengths (any array-like) as a contiguous int64 numpy array of
    shape (B,) with values in [1, T]."""
    try:
        lens = np.asarray(lens)
    except (ValueError, TypeError) as e:
        raise type(e)(f"lengths must be an array or a nested sequence of one shape: {e}") from None
    lengths_header(lens.dtype, lens.shape, B)
    if lens.size and (lens.min() < 1 or lens.max() > T):
        raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got min {lens.min()} max {lens.max()}")
    return np.require(lens, np.int64, "CA")


# ---------------------------------------------------------------- layouts
def time_batch(strides, batch_first):
    """(stride_t, stride_b) of a 3-D array given its strides in elements."""
    return (strides[1], strides[0]) if batch_first else (strides[0], strides[1])


def sequence_layout(T, B, K, batch_first):
    """Shape and (stride_t, stride_b) of a fresh dense [T, B, K] array (or [B, T, K])."""
    if batch_first:
        return (B, T, K), (K, T * K)
    return (T, B, K), (B * K, K)


def bias_grads(db, has_b_ih, has_b_hh, copy):
    """(db_ih, db_hh) from the one bias gradient db (b_ih and b_hh enter the gates
    alike); copy(a) makes the second one its own array."""
    db_ih = db if has_b_ih else None
    db_hh = (copy(db) if has_b_ih else db) if has_b_hh else None
    return db_ih, db_hh
