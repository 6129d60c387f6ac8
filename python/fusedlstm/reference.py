"""Readable numpy reference of the fused LSTM: the ground truth for the tests.

Plain numpy, one Python loop over time for the forward pass and one for the
hand-written back-propagation through time.  No dependency on the compiled
module or on torch.  The semantics are those of ``fusedlstm.lstm_forward`` /
``fusedlstm.lstm_backward``; this file doubles as their documentation.

Equations (``torch.nn.LSTM`` compatible, gate order i, f, g, o)::

    gates = x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh          # (B, 4H)
    i = sigmoid(gates[:, 0:H])      f = sigmoid(gates[:, H:2H])
    g = tanh(gates[:, 2H:3H])       o = sigmoid(gates[:, 3H:4H])
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Shapes: W_ih (4H, I), W_hh (4H, H), b_ih, b_hh (4H,), h0, c0 (B, H)
(``nn.LSTM``'s ``weight_ih_l0`` etc.; missing biases / states are zero).

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

``dtype``: every computation is done in this dtype (inputs are cast to it).
float64 is the truth; float32 is "a plain float32 numpy implementation of the
same equations", the error baseline of the test-suite's tolerance policy.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = ["MODES", "FEEDS", "ForwardResult", "Gradients", "forward", "backward", "sigmoid",
           "StackResult", "stack_forward", "stack_backward"]

MODES = ("many_to_many", "many_to_one", "one_to_many")
FEEDS = ("repeat", "first", "output")


def sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) -> inf for very negative z gives 0, correctly
        return 1 / (1 + np.exp(-z))


@dataclass
class ForwardResult:
    y: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray
    # ---- cache for backward; all time-major ----
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
    cs: np.ndarray    # (T+1, B, H) cell state entering step t
    acts: np.ndarray  # (T, B, 4H) activated gates i, f, g, o of step t
    round_operands: Optional[Callable] = None  # see forward


def _matmul(round_operands):
    if round_operands is None:
        return np.matmul
    return lambda a, b: np.matmul(round_operands(a), round_operands(b))


@dataclass
class Gradients:
    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: Optional[np.ndarray]
    db_hh: Optional[np.ndarray]


def forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, mode="many_to_many",
            lengths=None, steps=None, feed="repeat", batch_first=False, dtype=np.float64,
            round_operands=None):
    # round_operands: None, or a function applied to both operands of every matrix
    # product of forward and backward (the tests' plain reduced-precision baseline:
    # GEMM operands rounded to bfloat16 / float16 / TF32, accumulation in `dtype`).
    mm = _matmul(round_operands)
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}, expected one of {MODES}")
    if feed not in FEEDS:
        raise ValueError(f"feed: unknown feed {feed!r}, expected one of {FEEDS}")
    x, w_ih, w_hh = (np.asarray(a, dtype=dtype) for a in (x, w_ih, w_hh))
    H = w_hh.shape[1]
    has_b_ih, has_b_hh = b_ih is not None, b_hh is not None
    b_ih = np.asarray(b_ih, dtype) if has_b_ih else np.zeros(4 * H, dtype)
    b_hh = np.asarray(b_hh, dtype) if has_b_hh else np.zeros(4 * H, dtype)

    # ---- per-step inputs xs (T, B, I) and mask (T, B) ----
    if mode == "one_to_many":
        if lengths is not None:
            raise ValueError("lengths: not supported with mode='one_to_many'")
        if steps is None or steps < 1:
            raise ValueError("steps: mode='one_to_many' needs steps >= 1")
        if feed == "output" and x.shape[1] != H:
            raise ValueError("feed: feed='output' needs input size == hidden size")
        T, (B, I) = int(steps), x.shape
        xs = np.zeros((T, B, I), dtype)
        xs[:] = x if feed == "repeat" else 0
        xs[0] = x  # feed="output": xs[t>0] is filled with h_{t-1} in the loop below
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

    # ---- forward loop ----
    hs = np.zeros((T + 1, B, H), dtype)
    cs = np.zeros((T + 1, B, H), dtype)
    hs[0] = 0 if h0 is None else np.asarray(h0, dtype)
    cs[0] = 0 if c0 is None else np.asarray(c0, dtype)
    acts = np.zeros((T, B, 4 * H), dtype)
    y = np.zeros((T, B, H), dtype)
    for t in range(T):
        if mode == "one_to_many" and feed == "output" and t > 0:
            xs[t] = hs[t]
        gates = mm(xs[t], w_ih.T) + b_ih + mm(hs[t], w_hh.T) + b_hh
        i, f = sigmoid(gates[:, 0:H]), sigmoid(gates[:, H:2 * H])
        g, o = np.tanh(gates[:, 2 * H:3 * H]), sigmoid(gates[:, 3 * H:])
        c = f * cs[t] + i * g
        h = o * np.tanh(c)
        m = mask[t][:, None]
        cs[t + 1] = np.where(m, c, cs[t])  # padded step: carry the state over
        hs[t + 1] = np.where(m, h, hs[t])
        y[t] = np.where(m, h, 0)
        acts[t] = np.concatenate([i, f, g, o], axis=1)

    if mode == "many_to_one":
        y_out = hs[T].copy()
    else:
        y_out = y.swapaxes(0, 1).copy() if batch_first else y
    return ForwardResult(y_out, hs[T].copy(), cs[T].copy(), mode, feed, batch_first, w_ih, w_hh,
                         has_b_ih, has_b_hh, xs, mask, hs, cs, acts, round_operands)


def backward(res, dy=None, dh_n=None, dc_n=None):
    dtype = res.hs.dtype
    mm = _matmul(res.round_operands)
    T, B, H = res.hs.shape[0] - 1, res.hs.shape[1], res.hs.shape[2]

    def grad(a, shape):
        out = np.zeros(shape, dtype) if a is None else np.array(a, dtype=dtype)
        if out.shape != shape:
            raise ValueError(f"upstream gradient has shape {out.shape}, expected {shape}")
        return out

    dh = grad(dh_n, (B, H))  # running dL/dh, dL/dc of the state entering the current step
    dc = grad(dc_n, (B, H))
    if res.mode == "many_to_one":  # y is h_n
        dh += grad(dy, (B, H))
        dys = np.zeros((T, B, H), dtype)
    else:
        dys = grad(dy, (B, T, H) if res.batch_first else (T, B, H))
        dys = dys.swapaxes(0, 1) if res.batch_first else dys
    dys = np.where(res.mask[:, :, None], dys, 0)  # dy at padded steps is ignored

    dxs = np.zeros_like(res.xs)
    dw_ih, dw_hh = np.zeros_like(res.w_ih), np.zeros_like(res.w_hh)
    db = np.zeros(4 * H, dtype)
    for t in reversed(range(T)):
        m = res.mask[t][:, None]
        i, f, g, o = np.split(res.acts[t], 4, axis=1)
        tanh_c = np.tanh(res.cs[t + 1])
        dh_t = dh + dys[t]
        dc_t = dc + dh_t * o * (1 - tanh_c ** 2)
        dgates = np.concatenate([dc_t * g * i * (1 - i),          # d/d(pre-activation of) i
                                 dc_t * res.cs[t] * f * (1 - f),  # f
                                 dc_t * i * (1 - g ** 2),         # g
                                 dh_t * tanh_c * o * (1 - o)],    # o
                                axis=1)
        dgates = np.where(m, dgates, 0)  # padded step: nothing computed
        dxs[t] = mm(dgates, res.w_ih)
        dw_ih += mm(dgates.T, res.xs[t])
        dw_hh += mm(dgates.T, res.hs[t])
        db += dgates.sum(axis=0)
        dh = np.where(m, mm(dgates, res.w_hh), dh)  # padded step: state was carried over
        dc = np.where(m, dc_t * f, dc)
        if res.mode == "one_to_many" and res.feed == "output" and t > 0:
            dh += dxs[t]  # x_t was h_{t-1}

    if res.mode != "one_to_many":
        dx = dxs.swapaxes(0, 1).copy() if res.batch_first else dxs
    elif res.feed == "repeat":
        dx = dxs.sum(axis=0)
    else:  # "first", "output": only step 0 saw x
        dx = dxs[0]
    return Gradients(dx, dh, dc, dw_ih, dw_hh,
                     db.copy() if res.has_b_ih else None, db.copy() if res.has_b_hh else None)


# --------------------------------------------------------------------------
# Layer stacks: nn.LSTM's num_layers, bidirectional and proj_size.
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


def _time_reversal(T, lengths):
    """Index (T, B) such that x[idx[t, b], b] is step t of sequence b reversed."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)  # padded steps stay where they are


def _gather_time(a, idx):
    return np.take_along_axis(a, idx[:, :, None], axis=0)


def _direction_forward(xs, mask, w, h0, c0, dtype):
    T, B, _ = xs.shape
    w_ih, w_hh = w["w_ih"], w["w_hh"]
    H = w_hh.shape[0] // 4
    w_hr = w.get("w_hr")
    R = H if w_hr is None else w_hr.shape[0]
    b = np.zeros(4 * H, dtype)
    for key in ("b_ih", "b_hh"):
        if w.get(key) is not None:
            b = b + w[key]
    hs = np.zeros((T + 1, B, R), dtype)
    cs = np.zeros((T + 1, B, H), dtype)
    hs[0], cs[0] = h0, c0
    acts = np.zeros((T, B, 4 * H), dtype)
    ms = np.zeros((T, B, H), dtype)
    y = np.zeros((T, B, R), dtype)
    for t in range(T):
        gates = xs[t] @ w_ih.T + hs[t] @ w_hh.T + b
        i, f = sigmoid(gates[:, :H]), sigmoid(gates[:, H:2 * H])
        g, o = np.tanh(gates[:, 2 * H:3 * H]), sigmoid(gates[:, 3 * H:])
        c = f * cs[t] + i * g
        m_t = o * np.tanh(c)
        h = m_t if w_hr is None else m_t @ w_hr.T
        keep = mask[t][:, None]
        cs[t + 1] = np.where(keep, c, cs[t])
        hs[t + 1] = np.where(keep, h, hs[t])
        y[t] = np.where(keep, h, 0)
        acts[t] = np.concatenate([i, f, g, o], axis=1)
        ms[t] = m_t
    return dict(y=y, hs=hs, cs=cs, acts=acts, ms=ms)


def _direction_backward(xs, mask, w, cache, dys, dh_n, dc_n, dtype):
    T, B, _ = xs.shape
    w_ih, w_hh, w_hr = w["w_ih"], w["w_hh"], w.get("w_hr")
    H = w_hh.shape[0] // 4
    dh, dc = dh_n.copy(), dc_n.copy()
    dxs = np.zeros_like(xs)
    grads = dict(w_ih=np.zeros_like(w_ih), w_hh=np.zeros_like(w_hh), b=np.zeros(4 * H, dtype))
    if w_hr is not None:
        grads["w_hr"] = np.zeros_like(w_hr)
    for t in reversed(range(T)):
        keep = mask[t][:, None]
        i, f, g, o = np.split(cache["acts"][t], 4, axis=1)
        tanh_c = np.tanh(cache["cs"][t + 1])
        dh_t = np.where(keep, dh + dys[t], 0)
        if w_hr is None:
            dm = dh_t
        else:
            dm = dh_t @ w_hr
            grads["w_hr"] += dh_t.T @ cache["ms"][t]
        dc_t = dc + dm * o * (1 - tanh_c ** 2)
        dgates = np.concatenate([dc_t * g * i * (1 - i), dc_t * cache["cs"][t] * f * (1 - f),
                                 dc_t * i * (1 - g ** 2), dm * tanh_c * o * (1 - o)], axis=1)
        dgates = np.where(keep, dgates, 0)
        dxs[t] = dgates @ w_ih
        grads["w_ih"] += dgates.T @ xs[t]
        grads["w_hh"] += dgates.T @ cache["hs"][t]
        grads["b"] += dgates.sum(axis=0)
        dh = np.where(keep, dgates @ w_hh, dh)
        dc = np.where(keep, dc_t * f, dc)
    return dxs, dh, dc, grads


@dataclass
class StackResult:
    y: np.ndarray    # (T, B, D*Hout), zero at padded steps
    h_n: np.ndarray  # (L*D, B, Hout)
    c_n: np.ndarray  # (L*D, B, H)
    cache: dict      # for stack_backward


def stack_forward(x, cells, h0=None, c0=None, *, num_layers=1, bidirectional=False, lengths=None,
                  dropout_masks=None, dtype=np.float64):
    """x (T, B, I) time-major; cells: list of L*D weight dicts (see above);
    dropout_masks: None or (L-1, T, B, D*Hout) factors."""
    x = np.asarray(x, dtype)
    T, B, _ = x.shape
    D, L = (2 if bidirectional else 1), num_layers
    cells = [{k: (None if v is None else np.asarray(v, dtype)) for k, v in c.items()} for c in cells]
    H = cells[0]["w_hh"].shape[0] // 4
    Hout = H if cells[0].get("w_hr") is None else cells[0]["w_hr"].shape[0]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths, dtype=np.int64)
    mask = np.arange(T)[:, None] < lengths[None, :]
    rev = _time_reversal(T, lengths)
    h0 = np.zeros((L * D, B, Hout), dtype) if h0 is None else np.asarray(h0, dtype)
    c0 = np.zeros((L * D, B, H), dtype) if c0 is None else np.asarray(c0, dtype)
    h_n, c_n = np.zeros_like(h0), np.zeros_like(c0)
    inputs, caches = [], []
    layer_in = np.where(mask[:, :, None], x, 0)
    for k in range(L):
        if k > 0 and dropout_masks is not None:
            layer_in = layer_in * np.asarray(dropout_masks[k - 1], dtype)
        inputs.append(layer_in)
        outs = []
        for d in range(D):
            xs = layer_in if d == 0 else _gather_time(layer_in, rev)
            cache = _direction_forward(xs, mask, cells[k * D + d], h0[k * D + d], c0[k * D + d], dtype)
            caches.append(cache)
            h_n[k * D + d], c_n[k * D + d] = cache["hs"][T], cache["cs"][T]
            outs.append(cache["y"] if d == 0 else _gather_time(cache["y"], rev))
        layer_in = np.concatenate(outs, axis=2)
    return StackResult(layer_in, h_n, c_n,
                       dict(cells=cells, inputs=inputs, caches=caches, mask=mask, rev=rev, D=D, L=L,
                            masks=dropout_masks, dtype=dtype))


def stack_backward(res, dy=None, dh_n=None, dc_n=None):
    """Gradients of a stack_forward: dict with dx, dh0, dc0 and per cell
    dicts with w_ih, w_hh, b (gradient of each bias) and w_hr."""
    c = res.cache
    dtype, D, L, mask, rev = c["dtype"], c["D"], c["L"], c["mask"], c["rev"]
    dout = np.zeros(res.y.shape, dtype) if dy is None else np.asarray(dy, dtype)
    dh_n = np.zeros(res.h_n.shape, dtype) if dh_n is None else np.asarray(dh_n, dtype)
    dc_n = np.zeros(res.c_n.shape, dtype) if dc_n is None else np.asarray(dc_n, dtype)
    dh0, dc0 = np.zeros_like(dh_n), np.zeros_like(dc_n)
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
            dxs, dh0[idx], dc0[idx], cell_grads[idx] = _direction_backward(
                xs, mask, c["cells"][idx], c["caches"][idx], dys, dh_n[idx], dc_n[idx], dtype)
            d_in += dxs if d == 0 else _gather_time(dxs, rev)  # the reversal is its own inverse
        if k > 0 and c["masks"] is not None:
            d_in = d_in * np.asarray(c["masks"][k - 1], dtype)
        dout = d_in
    return dict(dx=np.where(mask[:, :, None], dout, 0), dh0=dh0, dc0=dc0, cells=cell_grads)
