"""The Python CUDA dispatch layer (fusedlstm/_cuda_dispatch.py), run without a GPU.

torch CPU tensors stand in for CUDA tensors, and the compiled _cuda module is
replaced by an emulator that turns the raw pointers, sizes and strides it
receives back into numpy views and runs the CPU core (_core) on them: the
CUDA C API has the same contract as the CPU one (fusedlstm_cuda.h vs
fusedlstm.h). So any wrong pointer, stride, shape, argument order or output
allocation in the dispatch shows as a difference from the numpy API on the
same inputs (which must match bitwise: same core, same inputs).

What this does NOT test: the CUDA kernels, streams, devices, fp16/bf16 (see
tests/test_cuda.py, which needs a GPU).
"""

import ctypes

import numpy as np
import pytest

import fusedlstm
from fusedlstm import _core

torch = pytest.importorskip("torch")


def _view(ptr, dtype, shape, strides):
    """numpy view of raw memory: strides in elements."""
    if not ptr:
        return None
    dtype = np.dtype(dtype)
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    buf = (ctypes.c_char * (extent * dtype.itemsize)).from_address(ptr)
    base = np.frombuffer(buf, dtype=dtype, count=extent)
    return np.lib.stride_tricks.as_strided(base, shape, [s * dtype.itemsize for s in strides])


class _State:
    def __init__(self, core_state, dtype, mode, T, B, I, H):
        self.core, self.dtype, self.mode, self.dims = core_state, dtype, mode, (T, B, I, H)

    @property
    def nbytes(self):
        return self.core.nbytes


class FakeCuda:
    """Stands in for the compiled fusedlstm._cuda module."""

    FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3
    calls = []

    def device_count(self):
        return 1, ""

    def path(self):
        return "fallback"

    def last_forward_path(self):
        return "fallback"

    def _dt(self, code):
        assert code in (0, 1), "the emulator runs float32/float64 only"
        return np.float32 if code == 0 else np.float64

    def forward(self, code, tf32, device, stream, mode, feed, T, B, I, H, x, x_st, x_sb, w_ih, w_hh, b_ih, b_hh,
                h0, c0, lens, y, y_st, y_sb, h_n, c_n, training):
        self.calls.append(("forward", device, stream, tf32))
        dt = self._dt(code)
        if mode == _core.ONE_TO_MANY:
            xv = _view(x, dt, (B, I), (x_sb, 1))
        else:
            xv = _view(x, dt, (T, B, I), (x_st, x_sb, 1))
        G = 4 * H
        args = [_view(w_ih, dt, (G, I), (I, 1)), _view(w_hh, dt, (G, H), (H, 1)), _view(b_ih, dt, (G,), (1,)),
                _view(b_hh, dt, (G,), (1,)), _view(h0, dt, (B, H), (H, 1)), _view(c0, dt, (B, H), (H, 1))]
        lengths = None if lens is None else np.asarray(lens, np.int64)
        yv = _view(y, dt, (T, B, H), (y_st, y_sb, 1))
        st = _core.forward(xv, *args, mode, feed, T, B, I, H, lengths, x_st, x_sb, yv, y_st, y_sb,
                           _view(h_n, dt, (B, H), (H, 1)), _view(c_n, dt, (B, H), (H, 1)), training)
        return _State(st, dt, mode, T, B, I, H) if training else None

    def backward(self, state, stream, dy, dy_st, dy_sb, dh_n, dc_n, dx, dx_st, dx_sb, dh0, dc0, dw_ih, dw_hh, db):
        self.calls.append(("backward", stream))
        dt, (T, B, I, H) = state.dtype, state.dims
        G = 4 * H
        if state.mode == _core.MANY_TO_ONE:
            dyv = _view(dy, dt, (B, H), (H, 1))
        else:
            dyv = _view(dy, dt, (T, B, H), (dy_st, dy_sb, 1))
        if state.mode == _core.ONE_TO_MANY:
            dxv = _view(dx, dt, (B, I), (dx_sb, 1))
        else:
            dxv = _view(dx, dt, (T, B, I), (dx_st, dx_sb, 1))
        _core.backward(state.core, dyv, dy_st, dy_sb, _view(dh_n, dt, (B, H), (H, 1)),
                       _view(dc_n, dt, (B, H), (H, 1)), dxv, dx_st, dx_sb, _view(dh0, dt, (B, H), (H, 1)),
                       _view(dc0, dt, (B, H), (H, 1)), _view(dw_ih, dt, (G, I), (I, 1)),
                       _view(dw_hh, dt, (G, H), (H, 1)), _view(db, dt, (G,), (1,)))

    def cell(self, code, tf32, device, stream, B, I, H, x, h, c, w_ih, w_hh, b_ih, b_hh, h_new, c_new):
        self.calls.append(("cell", stream))
        dt = self._dt(code)
        G = 4 * H
        _core.cell(_view(x, dt, (B, I), (I, 1)), _view(h, dt, (B, H), (H, 1)), _view(c, dt, (B, H), (H, 1)),
                   _view(w_ih, dt, (G, I), (I, 1)), _view(w_hh, dt, (G, H), (H, 1)), _view(b_ih, dt, (G,), (1,)),
                   _view(b_hh, dt, (G,), (1,)), _view(h_new, dt, (B, H), (H, 1)), _view(c_new, dt, (B, H), (H, 1)))


@pytest.fixture
def emulated(monkeypatch):
    from fusedlstm import _cuda_dispatch as d
    fake = FakeCuda()
    FakeCuda.calls = []
    monkeypatch.setattr(d, "_cuda", fake)
    monkeypatch.setattr(d, "is_cuda_array", lambda a: isinstance(a, torch.Tensor))
    monkeypatch.setattr(d._Lib, "device", lambda self, a: 0)
    monkeypatch.setattr(d._Lib, "stream", lambda self, device, stream: (12345 if stream is None else int(stream),
                                                                        None))
    return fake


def _t(a):
    return None if a is None else torch.from_numpy(np.array(a))


def _same(name, a, b):
    if b is None:
        assert a is None, name
        return
    assert isinstance(a, torch.Tensor), f"{name}: {type(a)}"
    assert a.dtype == torch.from_numpy(b).dtype and tuple(a.shape) == b.shape, name
    np.testing.assert_array_equal(a.numpy(), b, err_msg=name)


_CASES = [(m, "repeat", ln, bf) for m in ("many_to_many", "many_to_one") for ln in (False, True)
          for bf in (False, True)] + [("one_to_many", f, False, False) for f in ("repeat", "first", "output")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,feed,lengths,batch_first", _CASES)
@pytest.mark.parametrize("bias", ["both", "ih", "none"])
def test_dispatch_matches_numpy_api(emulated, make_problem, dtype, mode, feed, lengths, batch_first, bias):
    I = 7 if feed == "output" else 4
    prob = make_problem(mode=mode, feed=feed, T=5, B=3, I=I, H=7, lengths=lengths, batch_first=batch_first,
                        bias=bias, dtype=dtype)
    ins = prob.inputs
    want = fusedlstm.lstm_forward(*prob.args, **prob.kwargs, training=True)
    want_g = fusedlstm.lstm_backward(want, **prob.upstream)

    kw = dict(prob.kwargs)
    for k in ("b_ih", "b_hh", "h0", "c0"):
        kw[k] = _t(kw[k])
    x = _t(ins["x"])
    if x.ndim == 3:  # a non-contiguous view with the same values: strides must be honoured
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    got = fusedlstm.lstm_forward(x, _t(ins["w_ih"]), _t(ins["w_hh"]), **kw, training=True)
    for name in ("y", "h_n", "c_n"):
        _same(name, getattr(got, name), getattr(want, name))
    ups = {k: _t(v) for k, v in prob.upstream.items()}
    if ups["dy"].ndim == 3:
        ups["dy"] = ups["dy"].transpose(0, 1).contiguous().transpose(0, 1)
    got_g = fusedlstm.lstm_backward(got, **ups)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        _same(name, getattr(got_g, name), getattr(want_g, name))
    assert [c[0] for c in FakeCuda.calls] == ["forward", "backward"]
    assert FakeCuda.calls[0][2] == 12345  # the library's current stream


def test_dispatch_cell_and_stream(emulated, rng):
    B, I, H = 3, 4, 5
    arrs = [rng.standard_normal(s) for s in ((B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    want = fusedlstm.lstm_cell(*arrs)
    got = fusedlstm.lstm_cell(*[_t(a) for a in arrs], stream=777)
    _same("h_new", got[0], want[0])
    _same("c_new", got[1], want[1])
    assert FakeCuda.calls == [("cell", 777)]


def test_dispatch_lengths_as_tensor_and_errors(emulated, make_problem):
    prob = make_problem(T=4, B=3, I=2, H=3, lengths=True)
    ins = prob.inputs
    want = fusedlstm.lstm_forward(*prob.args, **prob.kwargs)
    kw = {k: (_t(v) if k in ("b_ih", "b_hh", "h0", "c0") else v) for k, v in prob.kwargs.items()}
    kw["lengths"] = torch.from_numpy(np.asarray(prob.lengths))
    got = fusedlstm.lstm_forward(_t(ins["x"]), _t(ins["w_ih"]), _t(ins["w_hh"]), **kw)
    _same("y", got.y, want.y)
    x, w_ih, w_hh = _t(ins["x"]), _t(ins["w_ih"]), _t(ins["w_hh"])
    with pytest.raises(ValueError, match="w_hh is on the host"):
        fusedlstm.lstm_forward(x, w_ih, ins["w_hh"])
    with pytest.raises(TypeError, match="w_ih has dtype"):
        fusedlstm.lstm_forward(x, w_ih.float(), w_hh)
    with pytest.raises(ValueError, match="lengths must lie"):
        fusedlstm.lstm_forward(x, w_ih, w_hh, lengths=[0, 1, 1])
    with pytest.raises(ValueError, match="h0 must have shape"):
        fusedlstm.lstm_forward(x, w_ih, w_hh, h0=torch.zeros(2, 3, dtype=x.dtype))
    with pytest.raises(ValueError, match="w_ih has I = 1"):
        fusedlstm.lstm_forward(x, w_ih[:, :1], w_hh)


def _relaid(t, kind):
    """A tensor equal to t in another layout (asserted non-contiguous)."""
    if kind == "transposed":
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif kind == "strided":
        buf = torch.full(t.shape[:-1] + (2 * t.shape[-1],), float("nan"), dtype=t.dtype)
        out = buf[..., ::2]
        out.copy_(t)
    else:  # "expanded": t is equal along axis 0
        out = t[:1].expand_as(t)
    assert torch.equal(out, t) and not out.is_contiguous()
    return out


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one", "one_to_many"])
def test_dispatch_any_layout(emulated, make_problem, mode):
    """Every array of forward, backward and cell through the dispatch in another
    layout (the emulator reads weights and states as dense, like the CUDA API):
    the numpy API's bits on the same values."""
    prob = make_problem(mode=mode, T=5, B=3, I=4, H=7, lengths=mode != "one_to_many", dtype=np.float64)
    ins = dict(prob.inputs)
    ins["c0"] = np.repeat(ins["c0"][:1], ins["c0"].shape[0], axis=0)  # equal rows: may be expanded
    ups = dict(prob.upstream)
    ups["dy"] = np.repeat(ups["dy"][:1], ups["dy"].shape[0], axis=0)
    want = fusedlstm.lstm_forward(ins["x"], ins["w_ih"], ins["w_hh"], **dict(prob.kwargs, c0=ins["c0"]),
                                  training=True)
    want_g = fusedlstm.lstm_backward(want, **ups)
    kinds = dict(x="transposed", w_ih="transposed", w_hh="transposed", b_ih="strided", b_hh="strided",
                 h0="transposed", c0="expanded")
    t = {k: _relaid(_t(v), kinds[k]) for k, v in ins.items()}
    kw = dict(prob.kwargs, **{k: t[k] for k in ("b_ih", "b_hh", "h0", "c0")})
    got = fusedlstm.lstm_forward(t["x"], t["w_ih"], t["w_hh"], **kw, training=True)
    for name in ("y", "h_n", "c_n"):
        _same(name, getattr(got, name), getattr(want, name))
    got_g = fusedlstm.lstm_backward(got, dy=_relaid(_t(ups["dy"]), "expanded"),
                                    dh_n=_relaid(_t(ups["dh_n"]), "transposed"),
                                    dc_n=_relaid(_t(ups["dc_n"]), "strided"))
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        _same(name, getattr(got_g, name), getattr(want_g, name))
    if mode == "one_to_many":
        cell_in = [ins[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")]
        want_c = fusedlstm.lstm_cell(*cell_in)
        got_c = fusedlstm.lstm_cell(*(t[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")))
        _same("h_new", got_c[0], want_c[0])
        _same("c_new", got_c[1], want_c[1])
