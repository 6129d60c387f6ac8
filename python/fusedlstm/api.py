"""The public functional API of every cell (lstm_*, gru_*, rnn_*): a facade.
It checks the options, decides where a call runs (numpy arrays: the host
path, fusedlstm/_host.py; CUDA arrays, torch or CuPy: the device path,
fusedlstm/_device.py) and hands the call to fusedlstm/_calls.py, which is
written once for both paths and every cell. The shared checks and the
result types live in fusedlstm/_checks.py.
"""

from __future__ import annotations

from . import _calls, _checks, _core, _host
from ._checks import (  # noqa: F401  (re-exported)
    CELLS, FEEDS, MODES, GRUGrads, GRUResult, LSTMGrads, LSTMResult, RNNGrads, RNNResult)

_set_debug_poison = _checks.set_debug_poison


def arrays_for(x, *, stream=None, allow_tf32=False, dtype=None, compute=None):
    """The array path of a call whose first array is x (dtype: the one its
    arrays must have; None: theirs, one for all; compute: None or "bf16")."""
    if _checks.is_cuda_array(x):
        from . import _device  # imported on the first CUDA call only
        return _device.DeviceArrays(x, stream=stream, allow_tf32=allow_tf32, dtype=dtype, compute=compute)
    return _host.HostArrays(dtype=dtype, stream=stream, allow_tf32=allow_tf32, compute=compute)


# ---------------------------------------------------------------- forward
def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, mode="many_to_many",
                 lengths=None, steps=None, feed="repeat", batch_first=False, training=False,
                 w_hr=None, reverse=False, allow_tf32=False, compute=None, stream=None):
    """Run an LSTM layer over a sequence with fused kernels.

    Weights are ``torch.nn.LSTM``'s: ``w_ih`` (4H, I), ``w_hh`` (4H, H),
    ``b_ih``, ``b_hh`` (4H,), gate order i, f, g, o. With a projection
    (nn.LSTM's ``proj_size`` R), ``w_hr`` (R, H) and ``w_hh`` (4H, R): the
    hidden state h (and y, h0, h_n) is R wide ("Hout" below), c stays H wide.

    Modes:
      * ``"many_to_many"``: x (T, B, I) -> y (T, B, Hout)
      * ``"many_to_one"``: x (T, B, I) -> y (B, Hout), each sequence's last hidden state
      * ``"one_to_many"``: x (B, I), ``steps=T`` -> y (T, B, Hout); ``feed`` says what
        the later steps see: ``"repeat"`` (x every step), ``"first"`` (zero input
        after step 0) or ``"output"`` (x_t = h_{t-1}; needs I == Hout).

    ``lengths`` (B,) ends sequence b after lengths[b] steps (many_to_*), like
    ``pack_padded_sequence(enforce_sorted=False)``: y is zero past the end and
    h_n, c_n are each sequence's state after its last step. ``reverse=True``
    (many_to_*) runs each sequence backwards from its own last step, as
    nn.LSTM's reverse direction; y stays in time order. ``batch_first``
    swaps the first two axes of x and y. ``training=True`` keeps what
    :func:`lstm_backward` needs.

    dtypes: every array of a call has one dtype, which the outputs and
    gradients keep. numpy arrays run on the CPU in float32, float64 or
    bfloat16 (``ml_dtypes.bfloat16``, an optional dependency: bfloat16 GEMM
    operands, float32 sums, cell state and gate math, outputs rounded to
    bfloat16 once). ``compute="bf16"`` runs float32 arrays through the same
    bfloat16 kernels (the operands of the products with the gate weights
    rounded to bfloat16, forward and backward) with float32 outputs.
    CUDA arrays (torch or CuPy, float32/float64/float16/bfloat16) run on the
    GPU, on the current stream (or ``stream``); see fusedlstm/_device.py for
    streams, ``allow_tf32`` and where lengths are read. Returns an
    :class:`LSTMResult` with ``y``, ``h_n``, ``c_n``.
    """
    return _forward("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, mode=mode, lengths=lengths, steps=steps,
                    feed=feed, batch_first=batch_first, training=training, reverse=reverse,
                    allow_tf32=allow_tf32, compute=compute, stream=stream)


def gru_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, mode="many_to_many", lengths=None, steps=None,
                feed="repeat", batch_first=False, training=False, reverse=False, allow_tf32=False, compute=None,
                stream=None):
    """Run a GRU layer over a sequence with fused kernels (CPU, or CUDA arrays).

    Weights are ``torch.nn.GRU``'s: ``w_ih`` (3H, I), ``w_hh`` (3H, H),
    ``b_ih``, ``b_hh`` (3H,), gate order r, z, n::

        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
        h' = (1 - z) * n + z * h

    ``h0`` (B, H), zero when omitted. Modes, ``feed``, ``lengths``,
    ``reverse``, ``batch_first``, dtypes and ``compute`` are :func:`lstm_forward`'s
    (feed="output" needs I == H). Returns a :class:`GRUResult` with ``y`` and ``h_n`` (no
    ``c_n``: a GRU has no cell state); ``training=True`` keeps what
    :func:`gru_backward` needs.
    """
    return _forward("gru", x, w_ih, w_hh, b_ih, b_hh, h0, None, None, mode=mode, lengths=lengths, steps=steps,
                    feed=feed, batch_first=batch_first, training=training, reverse=reverse,
                    allow_tf32=allow_tf32, compute=compute, stream=stream)


def rnn_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh", mode="many_to_many",
                lengths=None, steps=None, feed="repeat", batch_first=False, training=False, reverse=False,
                allow_tf32=False, compute=None, stream=None):
    """Run an Elman RNN layer over a sequence with fused kernels (CPU, or CUDA arrays).

    ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)`` with act = tanh or relu
    (``nonlinearity``, as ``torch.nn.RNN``; relu's gradient at 0 is 0).
    Weights are nn.RNN's: ``w_ih`` (H, I), ``w_hh`` (H, H), ``b_ih``,
    ``b_hh`` (H,). ``h0`` (B, H), zero when omitted. Modes, options, dtypes and
    ``compute`` are :func:`lstm_forward`'s. Returns an :class:`RNNResult` with ``y`` and
    ``h_n`` (no ``c_n``).
    """
    cell = _checks.rnn_cell(nonlinearity)
    return _forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, None, None, mode=mode, lengths=lengths, steps=steps,
                    feed=feed, batch_first=batch_first, training=training, reverse=reverse,
                    allow_tf32=allow_tf32, compute=compute, stream=stream)


def _forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, *, mode, lengths, steps, feed, batch_first, training,
             reverse, allow_tf32, compute, stream):
    batch_first, training, reverse = _checks.forward_options(mode, feed, batch_first, training, reverse)
    arrays = arrays_for(x, stream=stream, allow_tf32=allow_tf32, compute=compute)
    return _calls.forward(arrays, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, cell=cell, mode=mode, lengths=lengths,
                          steps=steps, feed=feed, batch_first=batch_first, training=training, reverse=reverse)


# --------------------------------------------------------------- backward
def lstm_backward(result, dy=None, dh_n=None, dc_n=None, *, stream=None):
    """Backward through time for a forward run with ``training=True``.

    ``dy``, ``dh_n``, ``dc_n`` are the gradients of the loss with respect to
    ``result.y``, ``result.h_n``, ``result.c_n`` (None = zero). Returns an
    :class:`LSTMGrads`; ``dx`` has x's shape ((B, I) for one_to_many) and is
    zero at padded steps. On CUDA it runs on the current stream (or ``stream``).
    The gradients have the forward's dtype (a bfloat16 forward or one with
    compute="bf16": the products with the gate weights on bfloat16 operands,
    float32 sums; bfloat16 gradients rounded once).
    """
    return _calls.backward(result, dy, dh_n, dc_n, family="lstm", stream=stream)


def gru_backward(result, dy=None, dh_n=None, *, stream=None):
    """Backward through time for a :func:`gru_forward` run with ``training=True``.

    ``dy``, ``dh_n``: gradients of the loss with respect to ``result.y`` and
    ``result.h_n`` (None = zero). Returns a :class:`GRUGrads` (``dx``,
    ``dh0``, ``dw_ih``, ``dw_hh``, ``db_ih``, ``db_hh``; the two bias
    gradients differ in the n rows).
    """
    return _calls.backward(result, dy, dh_n, None, family="gru", stream=stream)


def rnn_backward(result, dy=None, dh_n=None, *, stream=None):
    """Backward through time for an :func:`rnn_forward` run with ``training=True``.

    As :func:`gru_backward`; returns an :class:`RNNGrads` whose ``db_ih`` and
    ``db_hh`` are equal (each its own array).
    """
    return _calls.backward(result, dy, dh_n, None, family="rnn", stream=stream)


# ------------------------------------------------------------------- cell
def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, allow_tf32=False, compute=None, stream=None):
    """One LSTM step (one-to-one, streaming): returns ``(h_new, c_new)``.

    x (B, I), h and c (B, H); weights as in :func:`lstm_forward`. Works on the
    weights as given (no packing), so a call costs little beyond the math.
    dtypes and ``compute`` as :func:`lstm_forward`'s.
    """
    arrays = arrays_for(x, stream=stream, allow_tf32=allow_tf32, compute=compute)
    return _calls.cell(arrays, x, h, c, w_ih, w_hh, b_ih, b_hh, cell="lstm")


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, *, allow_tf32=False, compute=None, stream=None):
    """One GRU step (one-to-one, streaming): returns ``h_new`` (B, H).

    x (B, I), h (B, H); weights as in :func:`gru_forward`, used as given (no packing).
    dtypes and ``compute`` as :func:`lstm_forward`'s.
    """
    arrays = arrays_for(x, stream=stream, allow_tf32=allow_tf32, compute=compute)
    return _calls.cell(arrays, x, h, None, w_ih, w_hh, b_ih, b_hh, cell="gru")


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", allow_tf32=False, compute=None,
             stream=None):
    """One Elman RNN step: returns ``h_new = act(x W_ih^T + b_ih + h W_hh^T + b_hh)`` (B, H).
    dtypes and ``compute`` as :func:`lstm_forward`'s."""
    cell = _checks.rnn_cell(nonlinearity)
    arrays = arrays_for(x, stream=stream, allow_tf32=allow_tf32, compute=compute)
    return _calls.cell(arrays, x, h, None, w_ih, w_hh, b_ih, b_hh, cell=cell)


# ------------------------------------------------------- threads and SIMD
def set_num_threads(n: int) -> None:
    """Most threads a call may use (default: FUSEDLSTM_NUM_THREADS, else the
    CPUs this process may run on), at most _core.MAX_THREADS (1024). Small
    problems use fewer; worker threads start when a call first needs them."""
    n = _checks.int_arg("n", n)
    if not 1 <= n <= _core.MAX_THREADS:
        raise ValueError(f"n must be in [1, {_core.MAX_THREADS}] (threads per call), got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.get_num_threads()


def available_isas() -> list:
    """SIMD paths this CPU can run, best first, e.g. ['avx512_bf16', 'avx512', 'avx2', 'generic']
    ("avx512_bf16": AVX-512 with the BF16 dot products, vdpbf16ps, for bfloat16 calls)."""
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
