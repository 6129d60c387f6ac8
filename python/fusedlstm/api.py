"""The public numpy API: argument checks, layout, dispatch to the compiled core.

Every check names the argument and says what was expected and what came;
the core only ever sees arrays of one float dtype whose innermost axis is
contiguous, with strides passed in elements.
"""

from __future__ import annotations

import operator
import os
import sys

import numpy as np

from . import _core

MODES = ("many_to_many", "many_to_one", "one_to_many")
FEEDS = ("repeat", "first", "output")
_MODE_CODE = {
    "many_to_many": _core.MANY_TO_MANY,
    "many_to_one": _core.MANY_TO_ONE,
    "one_to_many": _core.ONE_TO_MANY,
}
_FEED_CODE = {"repeat": _core.FEED_REPEAT, "first": _core.FEED_FIRST, "output": _core.FEED_OUTPUT}
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_debug_poison = False


def _set_debug_poison(flag: bool) -> bool:
    """Fill every output array with NaN before the kernels write it (for
    tests: an element a kernel forgets to write then shows). Returns the
    previous setting."""
    global _debug_poison
    previous, _debug_poison = _debug_poison, bool(flag)
    return previous


def _alloc(shape, dtype):
    return np.full(shape, np.nan, dtype) if _debug_poison else np.empty(shape, dtype)


class LSTMResult:
    """Output of :func:`lstm_forward`: ``y``, ``h_n``, ``c_n`` (numpy arrays).

    With ``training=True`` it also holds what :func:`lstm_backward` needs
    (copies of the inputs and the saved activations; ``saved_nbytes`` says
    how much).
    """

    __slots__ = ("y", "h_n", "c_n", "_state", "_ctx")

    def __init__(self, y, h_n, c_n, state, ctx):
        self.y, self.h_n, self.c_n = y, h_n, c_n
        self._state, self._ctx = state, ctx

    @property
    def training(self) -> bool:
        return self._state is not None

    @property
    def saved_nbytes(self) -> int:
        return self._state.nbytes if self._state is not None else 0

    def __repr__(self):
        return (f"LSTMResult(y{tuple(self.y.shape)}, h_n{tuple(self.h_n.shape)}, "
                f"c_n{tuple(self.c_n.shape)}, dtype={self.y.dtype}, training={self.training})")


class LSTMGrads:
    """Output of :func:`lstm_backward`: gradients with the shapes of the
    matching inputs (``db_ih``/``db_hh`` are None when that bias was None)."""

    __slots__ = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")

    def __init__(self, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh):
        self.dx, self.dh0, self.dc0 = dx, dh0, dc0
        self.dw_ih, self.dw_hh, self.db_ih, self.db_hh = dw_ih, dw_hh, db_ih, db_hh

    def __repr__(self):
        return "LSTMGrads(" + ", ".join(
            f"{k}={None if getattr(self, k) is None else tuple(getattr(self, k).shape)}"
            for k in self.__slots__) + ")"


# ------------------------------------------------------------ CUDA hook
def _on_cuda(a) -> bool:
    """True when `a` is a GPU array (DLPack device CUDA): the call then goes to
    fusedlstm/_cuda_dispatch.py. numpy arrays never pay for the CUDA import."""
    if isinstance(a, np.ndarray) or getattr(a, "__dlpack_device__", None) is None:
        return False
    from ._cuda_dispatch import is_cuda_array
    return is_cuda_array(a)


def _no_stream_on_host(stream):
    if stream is not None:
        raise ValueError("stream= applies only to CUDA arrays; x is a host array")


# ----------------------------------------------------------------- checks
def _float_array(name, a, dtype=None, *, works_in="the call"):
    """a as an ndarray of float32/float64; dtype, when given, must match
    (works_in says whose dtype it is, for the message)."""
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = a if isinstance(a, np.ndarray) else _as_array(name, a)
    if arr.dtype.kind == "f" and not arr.dtype.isnative:  # same dtype, other byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but {works_in} works in {dtype}: convert {name} "
                        f"(e.g. {name}.astype(np.{dtype}))")
    return arr


def _as_array(name, a):
    """np.asarray(a), with numpy's refusal (a ragged list, say) named."""
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name} must be an array or a nested sequence of one shape: {e}") from None


def _bool_arg(name, v):
    """A flag must be a bool (as nn.LSTM requires of batch_first and bias):
    'False' or 2 would otherwise be read by truthiness."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def _physical_memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(nbytes, what, **sizes):
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


def _same_dtype(**arrays):
    """{name: array or None} as float arrays of one dtype (None stays None).
    When they differ, the message names the arrays off the majority's dtype,
    the ones to convert, and the others (on a tie, both sides)."""
    arrs = {name: None if a is None else _float_array(name, a) for name, a in arrays.items()}
    by_dtype = {}
    for name, a in arrs.items():
        if a is not None:
            by_dtype.setdefault(a.dtype, []).append(name)
    if len(by_dtype) > 1:
        (major, majority), (minor, minority) = sorted(by_dtype.items(), key=lambda kv: -len(kv[1]))
        fix = f"convert {', '.join(minority)} (e.g. {minority[0]}.astype(np.{major}))"
        if len(minority) == len(majority):
            fix += f", or {', '.join(majority)} (e.g. {majority[0]}.astype(np.{minor}))"
        raise TypeError(f"all arrays of one call must share a dtype: {', '.join(minority)} "
                        f"{'is' if len(minority) == 1 else 'are'} {minor} but {', '.join(majority)} "
                        f"{'is' if len(majority) == 1 else 'are'} {major}; {fix}")
    return arrs


def _dense(arr):
    """arr as the core reads weights, states and masks: C-contiguous and
    aligned (a copy only when it is not)."""
    flags = arr.flags
    if flags.c_contiguous and flags.aligned:  # the common case, without np.require's per-call cost
        return arr
    return np.require(arr, requirements="CA")


def _check_shape(name, arr, shape, meaning):
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} {meaning}, got {arr.shape}")


def _contiguous(name, a, dtype, shape, meaning):
    arr = _float_array(name, a, dtype)
    _check_shape(name, arr, shape, meaning)
    return _dense(arr)


def _optional(name, a, dtype, shape, meaning):
    return None if a is None else _contiguous(name, a, dtype, shape, meaning)


def _inner_contiguous(arr):
    """arr as the core reads x, y, dy and dx: copied if needed so that it is
    aligned, its last axis is contiguous and every stride is a whole number
    of elements (other strides, zero and negative ones included, are passed);
    returns (arr, strides in elements)."""
    item = arr.itemsize
    if arr.strides[-1] != item or any(s % item for s in arr.strides) or not arr.flags.aligned:
        arr = _dense(arr)
    return arr, tuple(s // item for s in arr.strides)


def _int_arg(name, v):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}") from None


def _weights(w_ih, w_hh, b_ih, b_hh, dtype):
    w_hh = _float_array("w_hh", w_hh, dtype)
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"w_hh must have shape (4*H, H) with H >= 1 (gate rows i, f, g, o), "
                         f"got {w_hh.shape}")
    H = w_hh.shape[1]
    w_ih = _float_array("w_ih", w_ih, dtype)
    if w_ih.ndim != 2 or w_ih.shape[0] != 4 * H:
        raise ValueError(f"w_ih must have shape (4*H, I) = ({4 * H}, I) to match w_hh {w_hh.shape}, "
                         f"got {w_ih.shape}")
    w_ih, w_hh = _dense(w_ih), _dense(w_hh)
    b_ih = _optional("b_ih", b_ih, dtype, (4 * H,), "(4*H,)")
    b_hh = _optional("b_hh", b_hh, dtype, (4 * H,), "(4*H,)")
    return w_ih, w_hh, b_ih, b_hh, H, w_ih.shape[1]


def _check_lengths(lengths, B, T):
    """lengths as a contiguous int64 array of shape (B,) in [1, T], or None."""
    if lengths is None:
        return None
    lens = _as_array("lengths", lengths)
    if lens.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array, got dtype {lens.dtype}")
    if lens.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {lens.shape}")
    if lens.size and (lens.min() < 1 or lens.max() > T):
        raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got min {lens.min()} "
                         f"max {lens.max()}")
    return np.require(lens, np.int64, "CA")


def _sequence_shape(x, w_ih, I, H, *, mode, steps, lengths, feed, batch_first):
    """(T, B) of a forward call, after checking x against the mode (numpy and
    CUDA arrays alike)."""
    one_to_many = mode == "one_to_many"
    if one_to_many:
        if x.ndim != 2:
            raise ValueError(f"x must have shape (B, I) for mode='one_to_many', got ndim {x.ndim} "
                             f"shape {tuple(x.shape)}")
        if steps is None:
            raise ValueError("steps is required for mode='one_to_many' (the number of steps to generate)")
        T = _int_arg("steps", steps)
        if T < 1:
            raise ValueError(f"steps must be >= 1, got {T}")
        if lengths is not None:
            raise ValueError("lengths is only supported for mode='many_to_many' and 'many_to_one'")
        B = x.shape[0]
        _check_fits(T * B * H * x.itemsize, "the output y (steps, B, H)", steps=T)
        if feed == "output" and I != H:
            raise ValueError(f"feed='output' feeds h_{{t-1}} back as the input, so it needs I == H; "
                             f"w_ih has I = {I}, w_hh has H = {H}")
    else:
        if steps is not None:
            raise ValueError(f"steps is only for mode='one_to_many' (mode={mode!r} takes T from x)")
        if x.ndim != 3:
            layout = "(B, T, I)" if batch_first else "(T, B, I)"
            raise ValueError(f"x must have shape {layout} for mode={mode!r}, got ndim {x.ndim} "
                             f"shape {tuple(x.shape)}")
        T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    if x.shape[-1] != I:
        raise ValueError(f"x has input size {x.shape[-1]} (last axis) but w_ih has I = {I} "
                         f"(shape {tuple(w_ih.shape)})")
    if B < 1 or (not one_to_many and T < 1):
        raise ValueError(f"x must have at least one step and one batch row, got shape {tuple(x.shape)}")
    return T, B


# ---------------------------------------------------------------- forward
def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, mode="many_to_many",
                 lengths=None, steps=None, feed="repeat", batch_first=False, training=False,
                 allow_tf32=False, stream=None):
    """Run an LSTM layer over a sequence with fused kernels.

    Weights are ``torch.nn.LSTM``'s: ``w_ih`` (4H, I), ``w_hh`` (4H, H),
    ``b_ih``, ``b_hh`` (4H,), gate order i, f, g, o.

    Modes:
      * ``"many_to_many"``: x (T, B, I) -> y (T, B, H)
      * ``"many_to_one"``: x (T, B, I) -> y (B, H), each sequence's last hidden state
      * ``"one_to_many"``: x (B, I), ``steps=T`` -> y (T, B, H); ``feed`` says what
        the later steps see: ``"repeat"`` (x every step), ``"first"`` (zero input
        after step 0) or ``"output"`` (x_t = h_{t-1}; needs I == H).

    ``lengths`` (B,) ends sequence b after lengths[b] steps (many_to_*), like
    ``pack_padded_sequence(enforce_sorted=False)``: y is zero past the end and
    h_n, c_n are each sequence's state after its last step. ``batch_first``
    swaps the first two axes of x and y. ``training=True`` keeps what
    :func:`lstm_backward` needs.

    Returns an :class:`LSTMResult` with ``y``, ``h_n``, ``c_n``.
    """
    if mode not in _MODE_CODE:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if feed not in _FEED_CODE:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
    one_to_many = mode == "one_to_many"
    if not one_to_many and feed != "repeat":
        raise ValueError(f"feed applies only to mode='one_to_many', got feed={feed!r} with mode={mode!r}")
    batch_first, training = _bool_arg("batch_first", batch_first), _bool_arg("training", training)
    if _on_cuda(x):
        from . import _cuda_dispatch
        return _cuda_dispatch.lstm_forward(
            x, w_ih, w_hh, b_ih, b_hh, h0, c0, mode=mode, lengths=lengths, steps=steps, feed=feed,
            batch_first=batch_first, training=training, allow_tf32=allow_tf32, stream=stream)
    _no_stream_on_host(stream)

    arrs = _same_dtype(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0)
    x = _float_array("x", arrs["x"])
    dtype = x.dtype
    w_ih, w_hh, b_ih, b_hh, H, I = _weights(arrs["w_ih"], arrs["w_hh"], arrs["b_ih"], arrs["b_hh"], dtype)
    h0, c0 = arrs["h0"], arrs["c0"]

    T, B = _sequence_shape(x, w_ih, I, H, mode=mode, steps=steps, lengths=lengths, feed=feed,
                           batch_first=batch_first)

    h0 = _optional("h0", h0, dtype, (B, H), "(B, H)")
    c0 = _optional("c0", c0, dtype, (B, H), "(B, H)")

    lengths = _check_lengths(lengths, B, T)

    x, xs = _inner_contiguous(x)
    if one_to_many:
        x_st, x_sb = 0, xs[0]
    else:
        x_st, x_sb = (xs[1], xs[0]) if batch_first else (xs[0], xs[1])

    h_n, c_n = _alloc((B, H), dtype), _alloc((B, H), dtype)
    if mode == "many_to_one":
        y, y_st, y_sb = None, 0, 0
    else:
        y = _alloc((B, T, H) if batch_first else (T, B, H), dtype)
        y_st, y_sb = (H, T * H) if batch_first else (B * H, H)

    state = _core.forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, _MODE_CODE[mode], _FEED_CODE[feed],
                          T, B, I, H, lengths, x_st, x_sb, y, y_st, y_sb, h_n, c_n, bool(training))
    if mode == "many_to_one":
        y = h_n.copy()
    ctx = None
    if training:
        ctx = dict(mode=mode, batch_first=batch_first, x_shape=x.shape, T=T, B=B, I=I, H=H,
                   dtype=dtype, has_b_ih=b_ih is not None, has_b_hh=b_hh is not None)
    return LSTMResult(y, h_n, c_n, state, ctx)


# --------------------------------------------------------------- backward
def lstm_backward(result, dy=None, dh_n=None, dc_n=None, *, stream=None):
    """Backward through time for a forward run with ``training=True``.

    ``dy``, ``dh_n``, ``dc_n`` are the gradients of the loss with respect to
    ``result.y``, ``result.h_n``, ``result.c_n`` (None = zero). Returns an
    :class:`LSTMGrads`; ``dx`` has x's shape ((B, I) for one_to_many) and is
    zero at padded steps.
    """
    if not isinstance(result, LSTMResult):
        raise TypeError(f"result must be the LSTMResult of lstm_forward, got {type(result).__name__}")
    if result._state is None:
        raise ValueError("result was computed with training=False, which keeps nothing for backward; "
                         "call lstm_forward(..., training=True)")
    ctx = result._ctx
    if ctx.get("backend") == "cuda":
        from . import _cuda_dispatch
        return _cuda_dispatch.lstm_backward(result, dy, dh_n, dc_n, stream=stream)
    _no_stream_on_host(stream)
    dtype, B, H, T = ctx["dtype"], ctx["B"], ctx["H"], ctx["T"]
    mode, batch_first = ctx["mode"], ctx["batch_first"]

    dy_st = dy_sb = 0
    if dy is not None:
        dy = _float_array("dy", dy, dtype, works_in="the forward (result)")
        _check_shape("dy", dy, result.y.shape, "(the shape of result.y)")
        if mode == "many_to_one":
            dy = _dense(dy)
        else:
            dy, s = _inner_contiguous(dy)
            dy_st, dy_sb = (s[1], s[0]) if batch_first else (s[0], s[1])
    dh_n = _optional("dh_n", dh_n, dtype, (B, H), "(B, H), the shape of result.h_n")
    dc_n = _optional("dc_n", dc_n, dtype, (B, H), "(B, H), the shape of result.c_n")

    dx = _alloc(ctx["x_shape"], dtype)
    if mode == "one_to_many":
        dx_st, dx_sb = 0, ctx["I"]
    else:
        dx_st, dx_sb = (ctx["I"], T * ctx["I"]) if batch_first else (B * ctx["I"], ctx["I"])
    dh0, dc0 = _alloc((B, H), dtype), _alloc((B, H), dtype)
    dw_ih, dw_hh = _alloc((4 * H, ctx["I"]), dtype), _alloc((4 * H, H), dtype)
    has_bias = ctx["has_b_ih"] or ctx["has_b_hh"]
    db = _alloc((4 * H,), dtype) if has_bias else None

    _core.backward(result._state, dy, dy_st, dy_sb, dh_n, dc_n, dx, dx_st, dx_sb, dh0, dc0,
                   dw_ih, dw_hh, db)
    db_ih = db if ctx["has_b_ih"] else None
    db_hh = (db.copy() if ctx["has_b_ih"] else db) if ctx["has_b_hh"] else None
    return LSTMGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)


# ------------------------------------------------------------------- cell
def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, allow_tf32=False, stream=None):
    """One LSTM step (one-to-one, streaming): returns ``(h_new, c_new)``.

    x (B, I), h and c (B, H); weights as in :func:`lstm_forward`. Works on the
    weights as given (no packing), so a call costs little beyond the math.
    """
    if _on_cuda(x):
        from . import _cuda_dispatch
        return _cuda_dispatch.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32=allow_tf32,
                                        stream=stream)
    _no_stream_on_host(stream)
    arrs = _same_dtype(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    x = _float_array("x", arrs["x"])
    dtype = x.dtype
    w_ih, w_hh, b_ih, b_hh, H, I = _weights(arrs["w_ih"], arrs["w_hh"], arrs["b_ih"], arrs["b_hh"], dtype)
    h, c = arrs["h"], arrs["c"]
    if x.ndim != 2 or x.shape[1] != I:
        raise ValueError(f"x must have shape (B, I) with I = {I} (from w_ih), got {x.shape}")
    B = x.shape[0]
    if B < 1:
        raise ValueError(f"x must have at least one batch row, got shape {x.shape}")
    x = _dense(x)
    h = _contiguous("h", h, dtype, (B, H), "(B, H)")
    c = _contiguous("c", c, dtype, (B, H), "(B, H)")
    h_new, c_new = _alloc((B, H), dtype), _alloc((B, H), dtype)
    _core.cell(x, h, c, w_ih, w_hh, b_ih, b_hh, h_new, c_new)
    return h_new, c_new


# ------------------------------------------------------- threads and SIMD
def set_num_threads(n: int) -> None:
    """Most threads a call may use (default: FUSEDLSTM_NUM_THREADS, else the
    CPUs this process may run on), at most _core.MAX_THREADS (1024). Small
    problems use fewer; worker threads start when a call first needs them."""
    n = _int_arg("n", n)
    if not 1 <= n <= _core.MAX_THREADS:
        raise ValueError(f"n must be in [1, {_core.MAX_THREADS}] (threads per call), got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.get_num_threads()


def available_isas() -> list:
    """SIMD paths this CPU can run, best first, e.g. ['avx512', 'avx2', 'generic']."""
    return _core.available_isas().split(",")


def get_isa() -> str:
    """The SIMD path in use (FUSEDLSTM_ISA at import, else the best available)."""
    return _core.get_isa()


def set_isa(name: str) -> None:
    """Force a SIMD path (one of :func:`available_isas`)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in available_isas():
        raise ValueError(f"name must be one of the SIMD paths this CPU supports {available_isas()}, "
                         f"got {name!r}")
    _core.set_isa(name)
