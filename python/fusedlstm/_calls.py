"""lstm_forward / lstm_backward / lstm_cell, written once for both paths.

Each function takes an ``arrays`` object, :class:`fusedlstm._host.HostArrays`
(numpy) or :class:`fusedlstm._device.DeviceArrays` (torch / CuPy on a GPU),
which adopts the arguments, lays them out, allocates the outputs and hands
them to ``_core``; the order of the checks and the call itself are here.
"""

from __future__ import annotations

from . import _checks, _core
from ._checks import LSTMGrads, LSTMResult, check_shape


def forward(arrays, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, *, mode, lengths, steps, feed, batch_first,
            training, reverse):
    _checks.required(x=x, w_ih=w_ih, w_hh=w_hh)
    a = arrays.adopt(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0, w_hr=w_hr)
    shape = arrays.shape
    H, I, R = _checks.weight_sizes(shape(a["w_ih"]), shape(a["w_hh"]),
                                   None if a["w_hr"] is None else shape(a["w_hr"]),
                                   None if a["b_ih"] is None else shape(a["b_ih"]),
                                   None if a["b_hh"] is None else shape(a["b_hh"]))
    Hout = R or H
    x = a["x"]
    T, B = _checks.sequence_shape(shape(x), arrays.itemsize, I, H, Hout, mode=mode, steps=steps,
                                  lengths=lengths, feed=feed, batch_first=batch_first)
    for name, width in (("h0", Hout), ("c0", H)):
        if a[name] is not None:
            check_shape(name, shape(a[name]), (B, width), f"(B, {'Hout' if name == 'h0' else 'H'})")
    weights = {k: arrays.dense(a[k]) for k in ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr")}
    lens = arrays.lengths(lengths, B, T)

    x, xs = arrays.rows(x)
    x_strides = (0, xs[0]) if mode == "one_to_many" else _checks.time_batch(xs, batch_first)
    h_n, c_n = arrays.empty((B, Hout)), arrays.empty((B, H))
    y, y_strides = None, (0, 0)
    if mode != "many_to_one":
        y_shape, y_strides = _checks.sequence_layout(T, B, Hout, batch_first)
        y = arrays.empty(y_shape)
    core = arrays.core
    state = _core.forward(
        x=core(x), x_strides=x_strides, **{k: core(v) for k, v in weights.items()}, lengths=core(lens),
        y=core(y), y_strides=y_strides, h_n=core(h_n), c_n=core(c_n), mode=_checks.MODE_CODE[mode],
        feed=_checks.FEED_CODE[feed], T=T, B=B, I=I, H=H, proj_size=R, reverse=reverse, training=training,
        **arrays.call())
    arrays.done(x, *weights.values(), lens, y, h_n, c_n)
    if mode == "many_to_one":
        y = arrays.copy(h_n)
    ctx = None
    if training:
        ctx = dict(arrays=arrays, mode=mode, batch_first=batch_first, x_shape=tuple(shape(x)), T=T, B=B, I=I,
                   H=H, R=R, has_b_ih=a["b_ih"] is not None, has_b_hh=a["b_hh"] is not None)
    return LSTMResult(y, h_n, c_n, state, ctx)


def backward(result, dy, dh_n, dc_n, *, stream):
    if not isinstance(result, LSTMResult):
        raise TypeError(f"result must be the LSTMResult of lstm_forward, got {type(result).__name__}")
    if result._state is None:
        raise ValueError("result was computed with training=False, which keeps nothing for backward; "
                         "call lstm_forward(..., training=True)")
    ctx = result._ctx
    arrays = ctx["arrays"].for_backward(stream)
    B, H, T, I, R = ctx["B"], ctx["H"], ctx["T"], ctx["I"], ctx["R"]
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
    dh0, dc0 = arrays.empty((B, Hout)), arrays.empty((B, H))
    dw_ih, dw_hh = arrays.empty((4 * H, I)), arrays.empty((4 * H, Hout))
    dw_hr = arrays.empty((R, H)) if R else None
    db = arrays.empty((4 * H,)) if ctx["has_b_ih"] or ctx["has_b_hh"] else None
    core = arrays.core
    _core.backward(result._state, dy=core(dy), dy_strides=dy_strides, dh_n=core(dh_n), dc_n=core(dc_n),
                   dx=core(dx), dx_strides=dx_strides, dh0=core(dh0), dc0=core(dc0), dw_ih=core(dw_ih),
                   dw_hh=core(dw_hh), db=core(db), dw_hr=core(dw_hr), stream=arrays.call()["stream"])
    arrays.done(dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr)
    db_ih, db_hh = _checks.bias_grads(db, ctx["has_b_ih"], ctx["has_b_hh"], arrays.copy)
    return LSTMGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)


def cell(arrays, x, h, c, w_ih, w_hh, b_ih, b_hh):
    _checks.required(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh)
    a = arrays.adopt(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    shape = arrays.shape
    H, I, _ = _checks.weight_sizes(shape(a["w_ih"]), shape(a["w_hh"]), None,
                                   None if a["b_ih"] is None else shape(a["b_ih"]),
                                   None if a["b_hh"] is None else shape(a["b_hh"]))
    x_shape = tuple(shape(a["x"]))
    if len(x_shape) != 2 or x_shape[1] != I:
        raise ValueError(f"x must have shape (B, I) with I = {I} (from w_ih), got {x_shape}")
    B = x_shape[0]
    if B < 1:
        raise ValueError(f"x must have at least one batch row, got shape {x_shape}")
    check_shape("h", shape(a["h"]), (B, H), "(B, H)")
    check_shape("c", shape(a["c"]), (B, H), "(B, H)")
    d = {k: arrays.dense(v) for k, v in a.items()}
    h_new, c_new = arrays.empty((B, H)), arrays.empty((B, H))
    core = arrays.core
    _core.cell(**{k: core(v) for k, v in d.items()}, h_new=core(h_new), c_new=core(c_new), B=B, I=I, H=H,
               **arrays.call())
    arrays.done(*d.values(), h_new, c_new)
    return h_new, c_new
