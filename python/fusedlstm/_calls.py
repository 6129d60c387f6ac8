"""The forward, backward and one-step calls of every cell (LSTM, GRU, Elman
RNN), written once for both paths.

Each function takes an ``arrays`` object, :class:`fusedlstm._host.HostArrays`
(numpy) or :class:`fusedlstm._device.DeviceArrays` (torch / CuPy on a GPU),
which adopts the arguments, lays them out, allocates the outputs and hands
them to ``_core``; the order of the checks and the call itself are here.
``cell`` is one of ``_checks.CELLS``: the LSTM's cell state (c0, c_n, dc_n,
dc0) and projection (w_hr) exist for it only.
"""

from __future__ import annotations

from . import _checks, _core
from ._checks import check_shape


def _weight_sizes(arrays, a, cell):
    shape = arrays.shape
    return _checks.weight_sizes(shape(a["w_ih"]), shape(a["w_hh"]),
                                None if a.get("w_hr") is None else shape(a["w_hr"]),
                                None if a["b_ih"] is None else shape(a["b_ih"]),
                                None if a["b_hh"] is None else shape(a["b_hh"]), cell=cell)


def forward(arrays, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, *, cell, mode, lengths, steps, feed, batch_first,
            training, reverse):
    """c0 and w_hr: None unless cell == "lstm" (the public functions of the
    other cells do not take them)."""
    _checks.required(x=x, w_ih=w_ih, w_hh=w_hh)
    lstm = _checks.has_cell_state(cell)
    a = arrays.adopt(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0, w_hr=w_hr)
    shape = arrays.shape
    H, I, R = _weight_sizes(arrays, a, cell)
    Hout = R or H
    x = a["x"]
    T, B = _checks.sequence_shape(shape(x), arrays.itemsize, I, H, Hout, mode=mode, steps=steps,
                                  lengths=lengths, feed=feed, batch_first=batch_first)
    for name, width in (("h0", Hout), ("c0", H)):
        if a[name] is not None:
            check_shape(name, shape(a[name]), (B, width), f"(B, {'Hout' if name == 'h0' and lstm else 'H'})")
    weights = {k: arrays.dense(a[k]) for k in ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr")}
    lens = arrays.lengths(lengths, B, T)

    x, xs = arrays.rows(x)
    x_strides = (0, xs[0]) if mode == "one_to_many" else _checks.time_batch(xs, batch_first)
    h_n, c_n = arrays.empty((B, Hout)), (arrays.empty((B, H)) if lstm else None)
    y, y_strides = None, (0, 0)
    if mode != "many_to_one":
        y_shape, y_strides = _checks.sequence_layout(T, B, Hout, batch_first)
        y = arrays.empty(y_shape)
    core = arrays.core
    state = _core.forward(
        x=core(x), x_strides=x_strides, **{k: core(v) for k, v in weights.items()}, lengths=core(lens),
        y=core(y), y_strides=y_strides, h_n=core(h_n), c_n=core(c_n), mode=_checks.MODE_CODE[mode],
        feed=_checks.FEED_CODE[feed], T=T, B=B, I=I, H=H, proj_size=R, reverse=reverse, training=training,
        **_checks.core_cell(cell), **arrays.call())
    arrays.done(x, *weights.values(), lens, y, h_n, c_n)
    if mode == "many_to_one":
        y = arrays.copy(h_n)
    ctx = None
    if training:
        ctx = dict(arrays=arrays, cell=cell, mode=mode, batch_first=batch_first, x_shape=tuple(shape(x)), T=T,
                   B=B, I=I, H=H, R=R, has_b_ih=a["b_ih"] is not None, has_b_hh=a["b_hh"] is not None)
    return _checks.make_result(cell, y, h_n, c_n, state, ctx)


def backward(result, dy, dh_n, dc_n, *, family, stream):
    """family: "lstm", "gru" or "rnn", the backward function called (dc_n:
    None unless "lstm")."""
    _checks.check_result(result, family)
    ctx = result._ctx
    cell = ctx["cell"]
    lstm = _checks.has_cell_state(cell)
    arrays = ctx["arrays"].for_backward(stream)
    B, H, T, I, R = ctx["B"], ctx["H"], ctx["T"], ctx["I"], ctx["R"]
    G = _checks.GATES[cell]
    Hout = R or H
    mode, batch_first = ctx["mode"], ctx["batch_first"]
    works_in = "the forward (result)"

    dy_strides = (0, 0)
    if dy is not None:
        dy = arrays.adopt_one("dy", dy, works_in)
        check_shape("dy", arrays.shape(dy), arrays.shape(result.y), "(the shape of result.y)")
        if mode == "many_to_one":
            dy = arrays.dense(dy)
        else:
            dy, s = arrays.rows(dy)
            dy_strides = _checks.time_batch(s, batch_first)
    dh_n = arrays.adopt_one("dh_n", dh_n, works_in)
    dc_n = arrays.adopt_one("dc_n", dc_n, works_in)
    for name, g, width in (("dh_n", dh_n, Hout), ("dc_n", dc_n, H)):
        if g is not None:
            check_shape(name, arrays.shape(g), (B, width), f"(B, {width}), the shape of result.{name[1:]}")
    dh_n, dc_n = arrays.dense(dh_n), arrays.dense(dc_n)

    dx = arrays.empty(ctx["x_shape"])
    if mode == "one_to_many":
        dx_strides = (0, I)
    else:
        dx_strides = _checks.sequence_layout(T, B, I, batch_first)[1]
    dh0, dc0 = arrays.empty((B, Hout)), (arrays.empty((B, H)) if lstm else None)
    dw_ih, dw_hh = arrays.empty((G * H, I)), arrays.empty((G * H, Hout))
    dw_hr = arrays.empty((R, H)) if R else None
    has_b_ih, has_b_hh = ctx["has_b_ih"], ctx["has_b_hh"]
    if cell == "gru":  # the gradients of b_ih and b_hh differ (the n rows): the core writes each
        db = arrays.empty((G * H,)) if has_b_ih else None
        db_hh = arrays.empty((G * H,)) if has_b_hh else None
        extra = dict(db_hh=arrays.core(db_hh))
    else:  # both biases enter the gates alike: one gradient, copied below
        db = arrays.empty((G * H,)) if has_b_ih or has_b_hh else None
        db_hh, extra = None, {}
    core = arrays.core
    _core.backward(result._state, dy=core(dy), dy_strides=dy_strides, dh_n=core(dh_n), dc_n=core(dc_n),
                   dx=core(dx), dx_strides=dx_strides, dh0=core(dh0), dc0=core(dc0), dw_ih=core(dw_ih),
                   dw_hh=core(dw_hh), db=core(db), dw_hr=core(dw_hr), **extra, stream=arrays.call()["stream"])
    arrays.done(dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, db_hh)
    if cell == "gru":
        return _checks.GRUGrads(dx, dh0, dw_ih, dw_hh, db, db_hh)
    db_ih, db_hh = _checks.bias_grads(db, has_b_ih, has_b_hh, arrays.copy)
    if lstm:
        return _checks.LSTMGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    return _checks.RNNGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


def cell(arrays, x, h, c, w_ih, w_hh, b_ih, b_hh, *, cell):
    """One step: (h_new, c_new) for the LSTM, h_new for the others (c: None)."""
    lstm = _checks.has_cell_state(cell)
    if lstm:
        _checks.required(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh)
    else:
        _checks.required(x=x, h=h, w_ih=w_ih, w_hh=w_hh)
    a = arrays.adopt(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    shape = arrays.shape
    H, I, _ = _weight_sizes(arrays, a, cell)
    x_shape = tuple(shape(a["x"]))
    if len(x_shape) != 2 or x_shape[1] != I:
        raise ValueError(f"x must have shape (B, I) with I = {I} (from w_ih), got {x_shape}")
    B = x_shape[0]
    if B < 1:
        raise ValueError(f"x must have at least one batch row, got shape {x_shape}")
    check_shape("h", shape(a["h"]), (B, H), "(B, H)")
    if lstm:
        check_shape("c", shape(a["c"]), (B, H), "(B, H)")
    d = {k: arrays.dense(v) for k, v in a.items()}
    h_new, c_new = arrays.empty((B, H)), (arrays.empty((B, H)) if lstm else None)
    core = arrays.core
    _core.cell(**{k: core(v) for k, v in d.items()}, h_new=core(h_new), c_new=core(c_new), B=B, I=I, H=H,
               **_checks.core_cell(cell), **arrays.call())
    arrays.done(*d.values(), h_new, c_new)
    return (h_new, c_new) if lstm else h_new
