"""Readable numpy reference of fusedlstm's recurrent cells: the ground truth for the tests.

Plain numpy, one Python loop over time for the forward pass and one for the
hand-written back-propagation through time.  No dependency on the compiled
module or on torch.  The semantics are those of ``fusedlstm.lstm_forward`` /
``fusedlstm.lstm_backward`` (and of the GRU / RNN functions beside them); this
file doubles as their documentation.

Cells (``cell=``; torch.nn.LSTM / nn.GRU / nn.RNN compatible, so their weights
move unchanged).  With the pre-activations of the input and of the recurrent
state (G gates of H rows each)::

    gx = x_t @ W_ih.T + b_ih          gh = h_{t-1} @ W_hh.T + b_hh      # (B, G*H)

* ``"lstm"`` (G = 4, gate order i, f, g, o; the only cell with a cell state c)::

      gates = gx + gh
      i = sigmoid(gates[:, 0:H])      f = sigmoid(gates[:, H:2H])
      g = tanh(gates[:, 2H:3H])       o = sigmoid(gates[:, 3H:4H])
      c_t = f * c_{t-1} + i * g
      h_t = o * tanh(c_t)

* ``"gru"`` (G = 3, gate order r, z, n; the reset gate applies after the
  recurrent product: ONNX linear_before_reset = 1, cuDNN's GRU)::

      r = sigmoid(gx_r + gh_r)        z = sigmoid(gx_z + gh_z)
      n = tanh(gx_n + r * gh_n)
      h_t = (1 - z) * n + z * h_{t-1}

  b_ih and b_hh have different gradients (their n rows: d b_in = d pre_n,
  d b_hn = d pre_n * r).

* ``"rnn_tanh"``, ``"rnn_relu"`` (Elman, G = 1)::

      h_t = act(gx + gh),   act = tanh or relu   (relu'(0) := 0, as torch)

Shapes: W_ih (G*H, I), W_hh (G*H, H), b_ih, b_hh (G*H,), h0, c0 (B, H)
(``nn.LSTM``'s ``weight_ih_l0`` etc.; missing biases / states are zero).
GRU and RNN have no c0 / c_n / dc_n / dc0 (None in results and gradients).

Modes (x is time-major (T, B, I) unless ``batch_first``, then (B, T, I)):

* ``many_to_many``: y (T, B, H), the hidden state of every step.
* ``many_to_one``:  y (B, H), the hidden state after each sequence's last step
  (equal to h_n).
* ``one_to_many``:  x (B, I) and ``steps=T``; y (T, B, H).  ``feed`` says what
  the per-step input is: ``"repeat"`` x at every step, ``"first"`` x at step 0
  and zeros afterwards (the biases still apply), ``"output"`` x at step 0 and
  x_t = h_{t-1} afterwards (needs I == H).

``lengths`` (B,) ints, 1 <= lengths[b] <= T, many_to_many / many_to_one only:
sequence b ends after lengths[b] steps (``pack_padded_sequence(...,
enforce_sorted=False)`` semantics).  y at padded steps is zero, h_n / c_n are
the state after the last real step; in backward, dy at padded steps is ignored
and dx at padded steps is zero.  Internally padded steps are steps at which the
state is carried over unchanged (a boolean ``mask`` (T, B)).

``reverse=True`` (many_to_many / many_to_one): each sequence runs backwards
from its own last step (lengths[b] - 1) to step 0, as nn.LSTM's reverse
direction; y stays in time order (y[t] is the state after reading x[t]), and
many_to_one's y is h_n, the state after reading x[0].

``dtype``: every computation is done in this dtype (inputs are cast to it).
float64 is the truth; float32 is "a plain float32 numpy implementation of the
same equations", the error baseline of the test-suite's tolerance policy.

One step of a cell (``lstm_cell`` etc.) is ``forward`` with T = 1:
``forward(x[None], ..., h0=h, c0=c)`` gives h_new = h_n, c_new = c_n.
"""

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np

__all__ = ["MODES", "FEEDS", "CELLS", "ForwardResult", "Gradients", "forward", "backward", "sigmoid",
           "num_gates", "StackResult", "stack_forward", "stack_backward"]

MODES = ("many_to_many", "many_to_one", "one_to_many")
FEEDS = ("repeat", "first", "output")
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) -> inf for very negative z gives 0, correctly
        return 1 / (1 + np.exp(-z))


# --------------------------------------------------------------------------
# The cell math: one step forward, and its backward from the saved values.
#
# forward(gx, gh, h, c) -> (h_new, c_new, acts)
#     gx, gh: the pre-activations of the input and of the state (B, G*H);
#     h, c: the state entering the step (c is None without a cell state);
#     acts: what the backward needs, (B, A*H), as the C kernels save it:
#     LSTM i|f|g|o, GRU r|z|n|hn (hn = gh_n), RNN h_new.
# backward(acts, h, c, c_new, dh, dc) -> (dgx, dgh, dh_direct, dc_prev)
#     dh, dc: dL/dh_new, dL/dc_new (dc None without a cell state);
#     dgx, dgh: dL/dgx, dL/dgh (the same array where the cell adds them);
#     dh_direct: dL/dh through h's use outside gh (GRU's z * h), or None;
#     dc_prev: dL/dc through the step, or None.
# --------------------------------------------------------------------------
def _lstm_forward(gx, gh, h, c):
    H = c.shape[1]
    gates = gx + gh
    i, f = sigmoid(gates[:, 0:H]), sigmoid(gates[:, H:2 * H])
    g, o = np.tanh(gates[:, 2 * H:3 * H]), sigmoid(gates[:, 3 * H:])
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new, np.concatenate([i, f, g, o], axis=1)


def _lstm_backward(acts, h, c, c_new, dh, dc):
    i, f, g, o = np.split(acts, 4, axis=1)
    tanh_c = np.tanh(c_new)
    dc_t = dc + dh * o * (1 - tanh_c ** 2)
    dgates = np.concatenate([dc_t * g * i * (1 - i),   # d/d(pre-activation of) i
                             dc_t * c * f * (1 - f),   # f
                             dc_t * i * (1 - g ** 2),  # g
                             dh * tanh_c * o * (1 - o)],  # o
                            axis=1)
    return dgates, dgates, None, dc_t * f


def _gru_forward(gx, gh, h, c):
    H = h.shape[1]
    r = sigmoid(gx[:, 0:H] + gh[:, 0:H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    hn = gh[:, 2 * H:]
    n = np.tanh(gx[:, 2 * H:] + r * hn)
    return (1 - z) * n + z * h, None, np.concatenate([r, z, n, hn], axis=1)


def _gru_backward(acts, h, c, c_new, dh, dc):
    r, z, n, hn = np.split(acts, 4, axis=1)
    d_pre_n = dh * (1 - z) * (1 - n ** 2)
    d_pre_z = dh * (h - n) * z * (1 - z)
    d_pre_r = d_pre_n * hn * r * (1 - r)
    dgx = np.concatenate([d_pre_r, d_pre_z, d_pre_n], axis=1)
    dgh = np.concatenate([d_pre_r, d_pre_z, d_pre_n * r], axis=1)
    return dgx, dgh, dh * z, None


def _rnn_tanh_forward(gx, gh, h, c):
    h_new = np.tanh(gx + gh)
    return h_new, None, h_new


def _rnn_tanh_backward(acts, h, c, c_new, dh, dc):
    d_pre = dh * (1 - acts ** 2)
    return d_pre, d_pre, None, None


def _rnn_relu_forward(gx, gh, h, c):
    h_new = np.maximum(gx + gh, 0)
    return h_new, None, h_new


def _rnn_relu_backward(acts, h, c, c_new, dh, dc):
    d_pre = np.where(acts > 0, dh, 0)  # relu'(pre) = 0 where pre <= 0, as torch
    return d_pre, d_pre, None, None


class _Cell(NamedTuple):
    gates: int        # G: w_ih has G*H rows
    has_c: bool       # a cell state c (LSTM only)
    forward: Callable
    backward: Callable


_CELLS = {
    "lstm": _Cell(4, True, _lstm_forward, _lstm_backward),
    "gru": _Cell(3, False, _gru_forward, _gru_backward),
    "rnn_tanh": _Cell(1, False, _rnn_tanh_forward, _rnn_tanh_backward),
    "rnn_relu": _Cell(1, False, _rnn_relu_forward, _rnn_relu_backward),
}


def _cell_spec(cell):
    if cell not in _CELLS:
        raise ValueError(f"cell: unknown cell {cell!r}, expected one of {CELLS}")
    return _CELLS[cell]


def num_gates(cell):
    """G, the number of H-row blocks of the cell's w_ih / w_hh / biases."""
    return _cell_spec(cell).gates


def _matmul(round_operands):
    if round_operands is None:
        return np.matmul
    return lambda a, b: np.matmul(round_operands(a), round_operands(b))


ROUND_SCOPES = ("all", "gates")


def _matmuls(round_operands, round_scope):
    """(gate products, projection, backward products, backward projection
    products) as functions: round_scope "all" rounds the operands of every
    matrix product, "gates" those of the products with the gate weights W_ih
    and W_hh, forward and backward, but not the projection's (the CPU's
    bfloat16 kernels)."""
    if round_scope not in ROUND_SCOPES:
        raise ValueError(f"round_scope: {round_scope!r} is not one of {ROUND_SCOPES}")
    mm = _matmul(round_operands)
    return (mm, mm, mm, mm) if round_scope == "all" else (mm, np.matmul, mm, np.matmul)


# --------------------------------------------------------------------------
# One direction of one layer over a time-major sequence: the loops shared by
# forward / backward and by the layer stacks.  Padded steps (mask False) carry
# the state over and output zero.  Optional: a projection w_hr (LSTM only,
# see the stacks below) and feed_output (x_t = h_{t-1} for t > 0; xs is
# written in place).
# --------------------------------------------------------------------------
def _direction_forward(xs, mask, w, h0, c0, dtype, *, cell="lstm", mm=np.matmul, feed_output=False,
                       mm_proj=None):
    spec = _cell_spec(cell)
    mm_proj = mm if mm_proj is None else mm_proj
    T, B, _ = xs.shape
    w_ih, w_hh, w_hr = w["w_ih"], w["w_hh"], w.get("w_hr")
    H = w_hh.shape[0] // spec.gates
    R = H if w_hr is None else w_hr.shape[0]
    b_ih = w["b_ih"] if w.get("b_ih") is not None else np.zeros(spec.gates * H, dtype)
    b_hh = w["b_hh"] if w.get("b_hh") is not None else np.zeros(spec.gates * H, dtype)
    hs = np.zeros((T + 1, B, R), dtype)
    hs[0] = h0
    cs = None
    if spec.has_c:
        cs = np.zeros((T + 1, B, H), dtype)
        cs[0] = c0
    acts, ms, y = None, np.zeros((T, B, H), dtype), np.zeros((T, B, R), dtype)
    for t in range(T):
        if feed_output and t > 0:
            xs[t] = hs[t]
        gx = mm(xs[t], w_ih.T) + b_ih
        gh = mm(hs[t], w_hh.T) + b_hh
        m_t, c, a = spec.forward(gx, gh, hs[t], None if cs is None else cs[t])
        if acts is None:
            acts = np.zeros((T,) + a.shape, dtype)
        h = m_t if w_hr is None else mm_proj(m_t, w_hr.T)
        keep = mask[t][:, None]
        if cs is not None:
            cs[t + 1] = np.where(keep, c, cs[t])
        hs[t + 1] = np.where(keep, h, hs[t])
        y[t] = np.where(keep, h, 0)
        acts[t] = a
        ms[t] = m_t
    return dict(y=y, hs=hs, cs=cs, acts=acts, ms=ms)


def _direction_backward(xs, mask, w, cache, dys, dh_n, dc_n, dtype, *, cell="lstm", mm=np.matmul,
                        mm_proj=np.matmul, feed_output=False):
    """-> dxs, dh0, dc0 (None without c), grads dict: w_ih, w_hh, b (of b_ih), b_hh, w_hr."""
    spec = _cell_spec(cell)
    T, B, _ = xs.shape
    w_ih, w_hh, w_hr = w["w_ih"], w["w_hh"], w.get("w_hr")
    hs, cs = cache["hs"], cache["cs"]
    H = w_hh.shape[0] // spec.gates
    dh = dh_n.copy()
    dc = dc_n.copy() if spec.has_c else None
    dxs = np.zeros_like(xs)
    grads = dict(w_ih=np.zeros_like(w_ih), w_hh=np.zeros_like(w_hh), b=np.zeros(spec.gates * H, dtype),
                 b_hh=np.zeros(spec.gates * H, dtype))
    if w_hr is not None:
        grads["w_hr"] = np.zeros_like(w_hr)
    for t in reversed(range(T)):
        keep = mask[t][:, None]
        dh_t = np.where(keep, dh + dys[t], 0)
        if w_hr is None:
            dm = dh_t
        else:
            dm = mm_proj(dh_t, w_hr)
            grads["w_hr"] += mm_proj(dh_t.T, cache["ms"][t])
        c_prev, c_new = (None, None) if cs is None else (cs[t], cs[t + 1])
        dgx, dgh, dh_direct, dc_prev = spec.backward(cache["acts"][t], hs[t], c_prev, c_new, dm, dc)
        dgx = np.where(keep, dgx, 0)  # padded step: nothing computed
        dgh = dgx if dgh is dgx else np.where(keep, dgh, 0)
        dxs[t] = mm(dgx, w_ih)
        grads["w_ih"] += mm(dgx.T, xs[t])
        grads["w_hh"] += mm(dgh.T, hs[t])
        grads["b"] += dgx.sum(axis=0)
        grads["b_hh"] += dgh.sum(axis=0)
        dh_prev = mm(dgh, w_hh)
        if dh_direct is not None:
            dh_prev = dh_prev + dh_direct
        dh = np.where(keep, dh_prev, dh)  # padded step: the state was carried over
        if dc is not None:
            dc = np.where(keep, dc_prev, dc)
        if feed_output and t > 0:
            dh = dh + dxs[t]  # x_t was h_{t-1}
    return dxs, dh, dc, grads


# --------------------------------------------------------------------------
# One layer, one direction: forward / backward with modes, feeds, lengths.
# --------------------------------------------------------------------------
@dataclass
class ForwardResult:
    y: np.ndarray
    h_n: np.ndarray
    c_n: Optional[np.ndarray]  # None for GRU / RNN
    # ---- cache for backward; all time-major, in the order the steps ran ----
    mode: str
    feed: str
    batch_first: bool
    w_ih: np.ndarray
    w_hh: np.ndarray
    has_b_ih: bool
    has_b_hh: bool
    xs: np.ndarray    # (T, B, I) the input actually fed at each step (0 at padded steps)
    mask: np.ndarray  # (T, B) True where step t belongs to sequence b
    hs: np.ndarray    # (T+1, B, H) hs[t] = hidden state entering step t (hs[0] = h0)
    cs: Optional[np.ndarray]  # (T+1, B, H) cell state entering step t (None for GRU / RNN)
    acts: np.ndarray  # (T, B, A*H) saved activations of step t (see the cell math above)
    round_operands: Optional[Callable] = None  # see forward
    cell: str = "lstm"
    rev: Optional[np.ndarray] = None  # reverse=True: (T, B) time reversal (xs etc. in run order)
    round_scope: str = "all"  # see forward


@dataclass
class Gradients:
    dx: np.ndarray
    dh0: np.ndarray
    dc0: Optional[np.ndarray]  # None for GRU / RNN
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: Optional[np.ndarray]  # None when b_ih was None
    db_hh: Optional[np.ndarray]  # None when b_hh was None; differs from db_ih for the GRU


def forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, mode="many_to_many",
            lengths=None, steps=None, feed="repeat", batch_first=False, reverse=False, cell="lstm",
            dtype=np.float64, round_operands=None, round_scope="all"):
    # round_operands: None, or a function applied to both operands of matrix products
    # (the tests' plain reduced-precision baseline: GEMM operands rounded to bfloat16 /
    # float16 / TF32, accumulation in `dtype`); round_scope: which products, "all"
    # (every product of forward and backward: CUDA's storage types) or "gates" (the
    # products with W_ih and W_hh, forward and backward; the projection's unrounded:
    # the CPU's bfloat16). See fusedlstm/tolerance.py.
    mm, mm_proj, _, _ = _matmuls(round_operands, round_scope)
    spec = _cell_spec(cell)
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}, expected one of {MODES}")
    if feed not in FEEDS:
        raise ValueError(f"feed: unknown feed {feed!r}, expected one of {FEEDS}")
    if not spec.has_c and c0 is not None:
        raise ValueError(f"c0: cell={cell!r} has no cell state")
    x, w_ih, w_hh = (np.asarray(a, dtype=dtype) for a in (x, w_ih, w_hh))
    H = w_hh.shape[1]
    if w_hh.shape[0] != spec.gates * H or w_ih.shape[0] != spec.gates * H:
        raise ValueError(f"w_ih, w_hh: cell={cell!r} needs {spec.gates}*H rows, got "
                         f"{w_ih.shape} and {w_hh.shape}")
    has_b_ih, has_b_hh = b_ih is not None, b_hh is not None
    w = dict(w_ih=w_ih, w_hh=w_hh, b_ih=np.asarray(b_ih, dtype) if has_b_ih else None,
             b_hh=np.asarray(b_hh, dtype) if has_b_hh else None)

    # ---- per-step inputs xs (T, B, I) and mask (T, B) ----
    if mode == "one_to_many":
        if lengths is not None:
            raise ValueError("lengths: not supported with mode='one_to_many'")
        if reverse:
            raise ValueError("reverse: not supported with mode='one_to_many'")
        if steps is None or steps < 1:
            raise ValueError("steps: mode='one_to_many' needs steps >= 1")
        if feed == "output" and x.shape[1] != H:
            raise ValueError("feed: feed='output' needs input size == hidden size")
        T, (B, I) = int(steps), x.shape
        xs = np.zeros((T, B, I), dtype)
        xs[:] = x if feed == "repeat" else 0
        xs[0] = x  # feed="output": xs[t>0] is filled with h_{t-1} in the loop
    else:
        xs = x.swapaxes(0, 1) if batch_first else x
        T, B, I = xs.shape
    mask = np.ones((T, B), dtype=bool)
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths: need shape ({B},) and 1 <= lengths <= {T}")
        mask = np.arange(T)[:, None] < lengths[None, :]
    xs = np.where(mask[:, :, None], xs, 0).astype(dtype)  # copy; padded inputs are never used
    rev = None
    if reverse:  # run the reversed sequences; the mask is invariant under the reversal
        rev = _time_reversal(T, np.full(B, T) if lengths is None else lengths)
        xs = _gather_time(xs, rev)

    h0 = np.zeros((B, H), dtype) if h0 is None else np.asarray(h0, dtype)
    c0 = None if not spec.has_c else (np.zeros((B, H), dtype) if c0 is None else np.asarray(c0, dtype))
    cache = _direction_forward(xs, mask, w, h0, c0, dtype, cell=cell, mm=mm, mm_proj=mm_proj,
                               feed_output=mode == "one_to_many" and feed == "output")
    hs, cs, y = cache["hs"], cache["cs"], cache["y"]
    if rev is not None:
        y = _gather_time(y, rev)
    if mode == "many_to_one":
        y_out = hs[T].copy()
    else:
        y_out = y.swapaxes(0, 1).copy() if batch_first else y
    return ForwardResult(y_out, hs[T].copy(), None if cs is None else cs[T].copy(), mode, feed, batch_first,
                         w_ih, w_hh, has_b_ih, has_b_hh, xs, mask, hs, cs, cache["acts"], round_operands,
                         cell, rev, round_scope)


def backward(res, dy=None, dh_n=None, dc_n=None):
    dtype = res.hs.dtype
    spec = _cell_spec(res.cell)
    T, B, H = res.hs.shape[0] - 1, res.hs.shape[1], res.hs.shape[2]
    if not spec.has_c and dc_n is not None:
        raise ValueError(f"dc_n: cell={res.cell!r} has no cell state")

    def grad(a, shape):
        out = np.zeros(shape, dtype) if a is None else np.array(a, dtype=dtype)
        if out.shape != shape:
            raise ValueError(f"upstream gradient has shape {out.shape}, expected {shape}")
        return out

    dh = grad(dh_n, (B, H))  # dL/dh, dL/dc of the final state
    dc = grad(dc_n, (B, H)) if spec.has_c else None
    if res.mode == "many_to_one":  # y is h_n
        dh += grad(dy, (B, H))
        dys = np.zeros((T, B, H), dtype)
    else:
        dys = grad(dy, (B, T, H) if res.batch_first else (T, B, H))
        dys = dys.swapaxes(0, 1) if res.batch_first else dys
        if res.rev is not None:
            dys = _gather_time(dys, res.rev)
    dys = np.where(res.mask[:, :, None], dys, 0)  # dy at padded steps is ignored

    w = dict(w_ih=res.w_ih, w_hh=res.w_hh)
    cache = dict(hs=res.hs, cs=res.cs, acts=res.acts)
    dxs, dh0, dc0, g = _direction_backward(res.xs, res.mask, w, cache, dys, dh, dc, dtype, cell=res.cell,
                                           mm=_matmuls(res.round_operands, res.round_scope)[2],
                                           mm_proj=_matmuls(res.round_operands, res.round_scope)[3],
                                           feed_output=res.mode == "one_to_many" and res.feed == "output")
    if res.rev is not None:
        dxs = _gather_time(dxs, res.rev)  # the reversal is its own inverse

    if res.mode != "one_to_many":
        dx = dxs.swapaxes(0, 1).copy() if res.batch_first else dxs
    elif res.feed == "repeat":
        dx = dxs.sum(axis=0)
    else:  # "first", "output": only step 0 saw x
        dx = dxs[0]
    return Gradients(dx, dh0, dc0, g["w_ih"], g["w_hh"],
                     g["b"] if res.has_b_ih else None, g["b_hh"] if res.has_b_hh else None)


# --------------------------------------------------------------------------
# Layer stacks: nn.LSTM's / nn.GRU's / nn.RNN's num_layers, bidirectional and
# (LSTM only) proj_size.
#
# With a projection (proj_size R > 0) each step also computes
#     m_t = o * tanh(c_t)          (B, H)
#     h_t = m_t @ W_hr.T           (B, R)     W_hr: weight_hr_l{k}, (R, H)
# and h_t (not m_t) is the recurrent state, the output y and h_n.
#
# The reverse direction runs each sequence backwards from its own last step
# (lengths[b] - 1) to step 0, starting from its own h0/c0; its outputs are
# stored at the time step they belong to.  Layer k >= 1 reads the outputs of
# layer k-1, both directions concatenated ([forward, reverse]), multiplied by
# that layer's dropout mask (the factors 0 or 1/(1-p) the caller drew).
# Weights are given per cell, cell index k*D + d, as a dict with keys
# "w_ih", "w_hh", "b_ih", "b_hh" (may be None) and "w_hr" (proj only).
# --------------------------------------------------------------------------
def _time_reversal(T, lengths):
    """Index (T, B) such that x[idx[t, b], b] is step t of sequence b reversed."""
    t = np.arange(T)[:, None]
    L = np.asarray(lengths)[None, :]
    return np.where(t < L, L - 1 - t, t)  # padded steps stay where they are


def _gather_time(a, idx):
    return np.take_along_axis(a, idx[:, :, None], axis=0)


@dataclass
class StackResult:
    y: np.ndarray    # (T, B, D*Hout), zero at padded steps
    h_n: np.ndarray  # (L*D, B, Hout)
    c_n: Optional[np.ndarray]  # (L*D, B, H); None for GRU / RNN
    cache: dict      # for stack_backward


def stack_forward(x, cells, h0=None, c0=None, *, num_layers=1, bidirectional=False, lengths=None,
                  dropout_masks=None, cell="lstm", dtype=np.float64, round_operands=None, round_scope="all",
                  round_storage=None):
    """x (T, B, I) time-major; cells: list of L*D weight dicts (see above);
    dropout_masks: None or (L-1, T, B, D*Hout) factors; round_operands and
    round_scope as forward's. round_storage: None, or a function rounding an
    array to the storage format of a stack whose arrays between layers are of
    a narrower type (the CPU's bfloat16): applied where such a stack stores
    one, to each layer output, the dropout product, and in backward to each
    direction's input gradient, their sum and its dropout product."""
    rs = round_storage or (lambda a: a)
    spec = _cell_spec(cell)
    mm, mm_proj, mm_back, mm_back_proj = _matmuls(round_operands, round_scope)
    if not spec.has_c and c0 is not None:
        raise ValueError(f"c0: cell={cell!r} has no cell state")
    x = np.asarray(x, dtype)
    T, B, _ = x.shape
    D, L = (2 if bidirectional else 1), num_layers
    cells = [{k: (None if v is None else np.asarray(v, dtype)) for k, v in c.items()} for c in cells]
    if not spec.has_c and any(c.get("w_hr") is not None for c in cells):
        raise ValueError(f"w_hr: cell={cell!r} has no projection")
    H = cells[0]["w_hh"].shape[0] // spec.gates
    Hout = H if cells[0].get("w_hr") is None else cells[0]["w_hr"].shape[0]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths, dtype=np.int64)
    mask = np.arange(T)[:, None] < lengths[None, :]
    rev = _time_reversal(T, lengths)
    h0 = np.zeros((L * D, B, Hout), dtype) if h0 is None else np.asarray(h0, dtype)
    if spec.has_c:
        c0 = np.zeros((L * D, B, H), dtype) if c0 is None else np.asarray(c0, dtype)
    h_n = np.zeros_like(h0)
    c_n = np.zeros_like(c0) if spec.has_c else None
    inputs, caches = [], []
    layer_in = np.where(mask[:, :, None], x, 0)
    for k in range(L):
        if k > 0 and dropout_masks is not None:
            layer_in = rs(layer_in * np.asarray(dropout_masks[k - 1], dtype))
        inputs.append(layer_in)
        outs = []
        for d in range(D):
            idx = k * D + d
            xs = layer_in if d == 0 else _gather_time(layer_in, rev)
            cache = _direction_forward(xs, mask, cells[idx], h0[idx], None if c0 is None else c0[idx], dtype,
                                       cell=cell, mm=mm, mm_proj=mm_proj)
            caches.append(cache)
            h_n[idx] = cache["hs"][T]
            if c_n is not None:
                c_n[idx] = cache["cs"][T]
            y_d = rs(cache["y"]) if k < L - 1 else cache["y"]  # the last layer's y is the caller's output
            outs.append(y_d if d == 0 else _gather_time(y_d, rev))
        layer_in = np.concatenate(outs, axis=2)
    return StackResult(layer_in, h_n, c_n,
                       dict(cells=cells, inputs=inputs, caches=caches, mask=mask, rev=rev, D=D, L=L,
                            masks=dropout_masks, dtype=dtype, cell=cell, mm_back=mm_back,
                            mm_back_proj=mm_back_proj, round_storage=rs))


def stack_backward(res, dy=None, dh_n=None, dc_n=None):
    """Gradients of a stack_forward: dict with dx, dh0, dc0 (None for GRU / RNN)
    and "cells", per cell a dict with w_ih, w_hh, b (the gradient of b_ih),
    b_hh (the gradient of b_hh: for the LSTM and the RNN equal to b) and w_hr."""
    c = res.cache
    dtype, D, L, mask, rev, cell = c["dtype"], c["D"], c["L"], c["mask"], c["rev"], c["cell"]
    has_c = _cell_spec(cell).has_c
    if not has_c and dc_n is not None:
        raise ValueError(f"dc_n: cell={cell!r} has no cell state")
    dout = np.zeros(res.y.shape, dtype) if dy is None else np.asarray(dy, dtype)
    dh_n = np.zeros(res.h_n.shape, dtype) if dh_n is None else np.asarray(dh_n, dtype)
    if has_c:
        dc_n = np.zeros(res.c_n.shape, dtype) if dc_n is None else np.asarray(dc_n, dtype)
    dh0 = np.zeros_like(dh_n)
    dc0 = np.zeros_like(dc_n) if has_c else None
    cell_grads = [None] * (L * D)
    Hout = res.h_n.shape[2]
    for k in reversed(range(L)):
        layer_in = c["inputs"][k]
        d_in = np.zeros_like(layer_in)
        for d in range(D):
            idx = k * D + d
            dys = dout[:, :, d * Hout:(d + 1) * Hout]
            xs = layer_in if d == 0 else _gather_time(layer_in, rev)
            if d == 1:
                dys = _gather_time(dys, rev)
            dxs, dh0[idx], dc0_idx, cell_grads[idx] = _direction_backward(
                xs, mask, c["cells"][idx], c["caches"][idx], dys, dh_n[idx],
                dc_n[idx] if has_c else None, dtype, cell=cell, mm=c.get("mm_back", np.matmul),
                mm_proj=c.get("mm_back_proj", np.matmul))
            if has_c:
                dc0[idx] = dc0_idx
            rs = c.get("round_storage", lambda a: a)
            d_in = rs(d_in + rs(dxs if d == 0 else _gather_time(dxs, rev)))  # the reversal is its own inverse
        if k > 0 and c["masks"] is not None:
            d_in = rs(d_in * np.asarray(c["masks"][k - 1], dtype))
        dout = d_in
    return dict(dx=np.where(mask[:, :, None], dout, 0), dh0=dh0, dc0=dc0, cells=cell_grads)
