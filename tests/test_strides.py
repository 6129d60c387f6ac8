"""Arrays whose values are right but whose memory layout is not row-major, at
every boundary where an array crosses into the compiled core (issue 10, defect 1).

The core reads weights, biases, states, masks, lengths and reserves as dense
row-major arrays through raw pointers, and x / y / dy / dx through passed
strides. A front end that hands it a strided view without making it dense
gets a silently wrong answer, so every front end is run here with each such
array replaced by a non-contiguous copy of the same values (transposed
storage, a stride of 2, an as_strided view with an offset, negative strides,
zero strides, unaligned memory), and compared with nn.LSTM / nn.LSTMCell or the
float64 reference under the tolerance policy of conftest.py:

* fusedlstm.torch.LSTM (num_layers=2, bidirectional, proj_size, bias): every
  parameter in turn; h0 / c0; upstream gradients autograd hands over expanded
  (y.sum()) or transposed; bfloat16 autocast (bitwise equal to dense weights).
* fusedlstm.torch.LSTMCell: every parameter, on each of its three paths
  (no_grad step, unpacked training step, stack path for B > 16); states; dh.
* the custom operators called directly (stack_forward/backward, cell ops).
* the numpy functional API: lstm_forward / lstm_backward / lstm_cell.
* the binding itself (fusedlstm._core): an array in another layout, dtype or
  size is refused with ValueError / TypeError, whatever the Python layer did.

The numpy layer (fusedlstm.LSTM) is covered in test_layers.py, the CUDA path
of the numpy API on each backend in test_forward_backward.py.
"""

import numpy as np
import pytest

import fusedlstm
from fusedlstm import _core

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import fusedlstm.torch as ft  # noqa: E402

NP = {torch.float32: np.float32, torch.float64: np.float64}


# --------------------------------------------------------------------------------------
# same values, other layouts
# --------------------------------------------------------------------------------------
def relaid(t, kind):
    """A tensor equal to t whose strides are not row-major (asserted)."""
    t = t.detach()
    if kind == "transposed":  # column-major storage (2-D and more)
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif kind == "strided":  # every other element of a larger buffer
        buf = _filler(t.shape[:-1] + (2 * t.shape[-1],), t.dtype)
        out = buf[..., ::2]
        out.copy_(t)
    elif kind == "as_strided":  # reversed strides at a storage offset
        strides, step = [], 1
        for n in t.shape:
            strides.append(step)
            step *= n
        buf = _filler((t.numel() + 3,), t.dtype)
        out = buf.as_strided(t.shape, strides, storage_offset=3)
        out.copy_(t)
    else:
        raise ValueError(kind)
    assert torch.equal(out, t) and not out.is_contiguous(), (kind, t.shape, out.stride())
    return out


def _filler(shape, dtype):
    """A buffer whose unused elements are NaN (a gap read as data shows)."""
    return torch.full(shape, float("nan") if dtype.is_floating_point else 0, dtype=dtype)


def kinds_for(t):
    return ("transposed", "as_strided") if t.dim() >= 2 else ("strided",)


def _grads(outputs, upstream, inputs):
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream))
    return torch.autograd.grad(loss, inputs)


def check(policy, name, got, truth, dtype, plain=None):
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
    policy.check(name, got.detach().numpy(), truth.detach().double().numpy(),
                 None if plain is None else plain.detach().numpy(), dtype=NP[dtype])


# --------------------------------------------------------------------------------------
# fusedlstm.torch.LSTM
# --------------------------------------------------------------------------------------
LSTM_KW = dict(num_layers=2, bidirectional=True, proj_size=3, bias=True)
T, B, I, H, P = 4, 3, 3, 5, 3


def lstm_models(dtype, seed, **kw):
    """(ours in dtype, nn.LSTM float64 truth, nn.LSTM in dtype as the float32 baseline)."""
    kw = dict(LSTM_KW, **kw)
    torch.manual_seed(seed)
    src = nn.LSTM(I, H, dtype=dtype, **kw)
    ours = ft.LSTM(I, H, dtype=dtype, **kw)
    ours.load_state_dict(src.state_dict())
    truth = nn.LSTM(I, H, dtype=torch.float64, **kw)
    truth.load_state_dict({k: v.double() for k, v in src.state_dict().items()})
    return ours, truth, (src if dtype == torch.float32 else None)


def lstm_data(dtype, seed, batch_first=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    LD = 2 * LSTM_KW["num_layers"]
    x = r(B, T, I) if batch_first else r(T, B, I)
    dy = r(B, T, 2 * P) if batch_first else r(T, B, 2 * P)
    return dict(x=x, h0=0.5 * r(LD, B, P), c0=r(LD, B, H), dy=dy, dhn=r(LD, B, P), dcn=r(LD, B, H))


def run_lstm(model, d, dtype, *, x=None, h0=None, c0=None, upstream=None):
    """outputs and gradients (of x, h0, c0 and every parameter, by name)."""
    x, h0, c0 = (_input((d[k] if t is None else t).to(dtype)) for k, t in (("x", x), ("h0", h0), ("c0", c0)))
    leaves = [h0, c0]
    y, (hn, cn) = model(x, (h0, c0))
    ups = upstream or [d["dy"].to(dtype), d["dhn"].to(dtype), d["dcn"].to(dtype)]
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad([y, hn, cn], [x, *leaves] + params, grad_outputs=ups)
    out = dict(y=y, h_n=hn, c_n=cn, dx=grads[0], dh0=grads[1], dc0=grads[2])
    out.update({"d" + n: g for n, g in zip(names, grads[3:])})
    return out


def _input(t):
    """t itself (its strides kept) as something to differentiate by."""
    return t.detach().requires_grad_(True) if t.is_leaf else t


def compare(policy, got, truth, dtype, plain=None):
    assert got.keys() == truth.keys()
    for k in truth:
        assert got[k].shape == truth[k].shape, f"{k}: shape {tuple(got[k].shape)} != {tuple(truth[k].shape)}"
        check(policy, k, got[k], truth[k], dtype, None if plain is None else plain[k])


_LSTM_PARAMS = [(n, k) for n, p in ft.LSTM(I, H, **LSTM_KW).named_parameters() for k in kinds_for(p)]


@pytest.mark.parametrize("name, kind", _LSTM_PARAMS, ids=[f"{n}-{k}" for n, k in _LSTM_PARAMS])
def test_lstm_parameter_in_any_layout(name, kind, seed, policy):
    """Outputs and every gradient as nn.LSTM's with one parameter non-contiguous;
    its gradient comes back with the parameter's shape."""
    dtype = torch.float64
    ours, truth, _ = lstm_models(dtype, seed)
    setattr(ours, name, nn.Parameter(relaid(getattr(ours, name), kind)))
    d = lstm_data(dtype, seed)
    compare(policy, run_lstm(ours, d, dtype), run_lstm(truth, d, torch.float64), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kw", [LSTM_KW, dict(num_layers=2, bidirectional=False, proj_size=0, bias=False)],
                         ids=["bidir-proj-bias", "plain"])
def test_lstm_every_parameter_in_another_layout(kw, batch_first, dtype, seed, policy):
    """All parameters at once, float32 too (policy against nn.LSTM float32 as the baseline)."""
    ours, truth, plain = lstm_models(dtype, seed, batch_first=batch_first, **kw)
    for i, (name, p) in enumerate(list(ours.named_parameters())):
        kinds = kinds_for(p)
        setattr(ours, name, nn.Parameter(relaid(p, kinds[i % len(kinds)])))
    D = 2 if kw["bidirectional"] else 1
    hout = kw["proj_size"] or H
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    LD = kw["num_layers"] * D
    d = dict(x=r(B, T, I) if batch_first else r(T, B, I), h0=0.5 * r(LD, B, hout), c0=r(LD, B, H),
             dy=r(B, T, D * hout) if batch_first else r(T, B, D * hout), dhn=r(LD, B, hout), dcn=r(LD, B, H))
    got = run_lstm(ours, d, dtype)
    compare(policy, got, run_lstm(truth, d, torch.float64), dtype,
            None if plain is None else run_lstm(plain, d, dtype))


@pytest.mark.parametrize("state", ["h0", "c0"])
@pytest.mark.parametrize("kind", ["transposed", "strided", "as_strided", "expanded"])
def test_lstm_states_in_any_layout(state, kind, seed, policy):
    dtype = torch.float64
    ours, truth, _ = lstm_models(dtype, seed)
    d = lstm_data(dtype, seed)
    if kind == "expanded":  # one row for every sequence: zero batch stride
        base = d[state][:, :1].clone().requires_grad_(True)
        value = base.expand_as(d[state])
    else:
        value = relaid(d[state], kind).requires_grad_(True)
    got = run_lstm(ours, d, dtype, **{state: value})
    want = run_lstm(truth, d, torch.float64, **{state: value.detach().contiguous()})
    compare(policy, got, want, dtype)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["expanded", "transposed", "strided"])
def test_lstm_upstream_gradients_in_any_layout(kind, batch_first, seed, policy):
    """Autograd hands the backward what it has: an expanded tensor with zero
    strides for y.sum(), or the caller's own strided grad_outputs."""
    dtype = torch.float64
    ours, truth, _ = lstm_models(dtype, seed, batch_first=batch_first)
    d = lstm_data(dtype, seed, batch_first)
    if kind == "expanded":
        ups = [torch.ones(()).to(dtype).expand_as(d[k]) for k in ("dy", "dhn", "dcn")]
    else:
        ups = [relaid(d[k], kind) for k in ("dy", "dhn", "dcn")]
    compare(policy, run_lstm(ours, d, dtype, upstream=ups),
            run_lstm(truth, d, torch.float64, upstream=[u.contiguous() for u in ups]), dtype)
    # the loss autograd builds itself: y.sum() + h_n.sum() + c_n.sum()
    dx = []
    for model in (ours, truth):
        x = d["x"].clone().requires_grad_(True)
        y, (hn, cn) = model(x, (d["h0"], d["c0"]))
        dx.append(torch.autograd.grad(y.sum() + hn.sum() + cn.sum(), x)[0])
    check(policy, "dx of y.sum()", dx[0], dx[1], dtype)


def test_lstm_autocast_bf16_any_layout_is_bitwise_dense(seed):
    """Under autocast the weights are converted (w.to(bfloat16) keeps strides):
    the result must be that of dense weights, bit for bit."""
    ours, _, _ = lstm_models(torch.float32, seed)
    dense = ft.LSTM(I, H, **LSTM_KW)
    dense.load_state_dict(ours.state_dict())
    for name, p in list(ours.named_parameters()):
        setattr(ours, name, nn.Parameter(relaid(p, kinds_for(p)[0])))
    d = lstm_data(torch.float32, seed)
    results = []
    for model in (ours, dense):
        x = d["x"].clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (hn, cn) = model(x, (d["h0"], d["c0"]))
        assert y.dtype == torch.bfloat16
        loss = y.float().sum() + (hn.float() * d["dhn"]).sum() + (cn.float() * d["dcn"]).sum()
        results.append([y, hn, cn] + list(torch.autograd.grad(loss, [x] + list(model.parameters()))))
    for k, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), k


# --------------------------------------------------------------------------------------
# fusedlstm.torch.LSTMCell
# --------------------------------------------------------------------------------------
CI, CH = 4, 6


def cell_models(seed, bias=True):
    torch.manual_seed(seed)
    truth = nn.LSTMCell(CI, CH, bias=bias, dtype=torch.float64)
    ours = ft.LSTMCell(CI, CH, bias=bias, dtype=torch.float64)
    ours.load_state_dict(truth.state_dict())
    return ours, truth


def run_cell(cell, x, h, c, dh, dc, grad=True):
    if not grad:
        with torch.no_grad():
            h1, c1 = cell(x, (h, c))
        return dict(h=h1, c=c1)
    leaves = [_input(t) for t in (x, h, c)]
    h1, c1 = cell(leaves[0], (leaves[1], leaves[2]))
    params = list(cell.named_parameters())
    grads = torch.autograd.grad([h1, c1], leaves + [p for _, p in params], grad_outputs=[dh, dc])
    out = dict(h=h1, c=c1, dx=grads[0], dh=grads[1], dc=grads[2])
    out.update({"d" + n: g for (n, _), g in zip(params, grads[3:])})
    return out


def cell_data(seed, rows):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, n, generator=g, dtype=torch.float64) for n in (CI, CH, CH, CH, CH)]


# B = 3: the unpacked step (training) / cell_forward (no_grad); B = 20: the stack path
_CELL_PATHS = [(3, True), (20, True), (3, False)]
_CELL_PARAMS = [(n, k) for n, p in ft.LSTMCell(CI, CH).named_parameters() for k in kinds_for(p)]


@pytest.mark.parametrize("rows, grad", _CELL_PATHS, ids=["unpacked", "stack", "no_grad"])
@pytest.mark.parametrize("name, kind", _CELL_PARAMS, ids=[f"{n}-{k}" for n, k in _CELL_PARAMS])
def test_cell_parameter_in_any_layout(name, kind, rows, grad, seed, policy):
    ours, truth = cell_models(seed)
    setattr(ours, name, nn.Parameter(relaid(getattr(ours, name), kind)))
    args = cell_data(seed, rows)
    compare(policy, run_cell(ours, *args, grad=grad), run_cell(truth, *args, grad=grad), torch.float64)


@pytest.mark.parametrize("rows, grad", _CELL_PATHS, ids=["unpacked", "stack", "no_grad"])
@pytest.mark.parametrize("kind", ["transposed", "strided", "expanded"])
def test_cell_inputs_states_and_upstream_in_any_layout(kind, rows, grad, seed, policy):
    ours, truth = cell_models(seed)
    args = cell_data(seed, rows)
    if kind == "expanded":
        strided = [a[:1].expand_as(a) for a in args]
    else:
        strided = [relaid(a, kind) for a in args]
    compare(policy, run_cell(ours, *strided, grad=grad), run_cell(truth, *[a.contiguous() for a in strided],
                                                                   grad=grad), torch.float64)


# --------------------------------------------------------------------------------------
# the operators, called directly
# --------------------------------------------------------------------------------------
def test_stack_ops_any_layout_equal_dense(seed):
    """Every tensor argument of stack_forward / stack_backward in another
    layout: the same bits as dense arguments."""
    torch.manual_seed(seed)
    L, D = 2, 2
    m = ft.LSTM(I, H, num_layers=L, bidirectional=True, proj_size=P, dtype=torch.float64)
    w = [p.detach() for p in m._flat_weights]
    d = lstm_data(torch.float64, seed)
    lens = torch.tensor([4, 1, 3])
    mask = torch.empty(L - 1, T, B, D * P, dtype=torch.float64).bernoulli_(0.5).mul_(2)
    dense = (d["x"], w, d["h0"], d["c0"], lens, mask)
    other = (relaid(d["x"], "transposed"), [relaid(t, kinds_for(t)[-1]) for t in w], relaid(d["h0"], "as_strided"),
             relaid(d["c0"], "strided"), relaid(lens, "strided"), relaid(mask, "transposed"))
    cfg = (L, True, P, True, False)
    want = torch.ops.fusedlstm.stack_forward(*dense, *cfg, True)
    got = torch.ops.fusedlstm.stack_forward(*other, *cfg, True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    ups = (d["dy"], d["dhn"], d["dcn"])
    flat = torch.cat([t.reshape(-1) for t in w])  # stack_backward takes the weights flat
    want_g = torch.ops.fusedlstm.stack_backward(dense[0], flat, *dense[2:], want[3], *ups, *cfg)
    reserve = torch.empty(2 * want[3].numel(), dtype=torch.uint8)[::2]
    reserve.copy_(want[3])
    got_g = torch.ops.fusedlstm.stack_backward(other[0], relaid(flat, "strided"), *other[2:], reserve,
                                               *(relaid(u, "as_strided") for u in ups), *cfg)
    for k, (a, b) in enumerate(zip(got_g, want_g)):
        assert a.shape == b.shape and torch.equal(a, b), k


def test_cell_ops_any_layout_equal_dense(seed):
    torch.manual_seed(seed)
    w = [p.detach() for p in nn.LSTMCell(CI, CH, dtype=torch.float64).parameters()]
    x, h, c, dh, dc = cell_data(seed, 5)
    other_w = [relaid(t, kinds_for(t)[0]) for t in w]
    for op in (torch.ops.fusedlstm.cell_forward, torch.ops.fusedlstm.cell_train_forward):
        want = op(x, h, c, *w)
        got = op(relaid(x, "transposed"), relaid(h, "strided"), relaid(c, "as_strided"), *other_w)
        for a, b in zip(got, want):
            assert torch.equal(a, b), op
    h1, c1, acts = torch.ops.fusedlstm.cell_train_forward(x, h, c, *w)
    want = torch.ops.fusedlstm.cell_backward(x, h, c, w[0], w[1], acts, c1, dh, dc, True)
    got = torch.ops.fusedlstm.cell_backward(relaid(x, "strided"), h, relaid(c, "transposed"), other_w[0],
                                            other_w[1], relaid(acts, "transposed"), relaid(c1, "strided"),
                                            relaid(dh, "transposed"), relaid(dc, "as_strided"),
                                            True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# the numpy functional API
# --------------------------------------------------------------------------------------
def np_relaid(a, kind):
    """A numpy array equal to a in another layout (asserted)."""
    if kind == "negative":  # every stride negative
        out = a[(slice(None, None, -1),) * a.ndim].copy()[(slice(None, None, -1),) * a.ndim]
    elif kind == "fortran":
        out = np.asfortranarray(a)
    elif kind == "strided":
        big = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan if a.dtype.kind == "f" else 0, a.dtype)
        big[..., ::2] = a
        out = big[..., ::2]
    elif kind == "unaligned":
        raw = np.zeros(a.nbytes + 1, np.uint8)
        out = raw[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        assert not out.flags.aligned
    elif kind == "broadcast":  # zero strides: only for arrays equal along axis 0
        out = np.broadcast_to(a[:1], a.shape)
    else:
        raise ValueError(kind)
    assert np.array_equal(out, a, equal_nan=True)
    assert kind == "unaligned" or not out.flags.c_contiguous or a.ndim == 1 and kind == "fortran"
    return out


NP_KINDS = ["negative", "fortran", "strided", "unaligned"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", NP_KINDS)
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one", "one_to_many"])
def test_functional_api_any_layout(mode, kind, dtype, make_problem, reference_outputs, policy):
    p = make_problem(mode=mode, T=4, B=3, I=5, H=6, lengths=mode != "one_to_many", dtype=dtype)
    ref64, plain32 = reference_outputs(p.args, p.kwargs, p.upstream, dtype=dtype)
    args = [np_relaid(a, kind) for a in p.args]
    kwargs = {k: (np_relaid(v, kind) if isinstance(v, np.ndarray) and k != "lengths" else v)
              for k, v in p.kwargs.items()}
    if "lengths" in kwargs:
        kwargs["lengths"] = np_relaid(kwargs["lengths"].astype(np.int64), "strided")
    res = fusedlstm.lstm_forward(*args, **kwargs, training=True)
    grads = fusedlstm.lstm_backward(res, **{k: np_relaid(v, kind) for k, v in p.upstream.items()})
    got = {"y": res.y, "h_n": res.h_n, "c_n": res.c_n, **{k: getattr(grads, k) for k in
                                                          ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")}}
    policy.check_all(got, ref64, plain32, dtype=dtype)


def test_functional_api_zero_strides(make_problem, reference_outputs, policy):
    """x the same at every step and dy the same for every sequence (broadcast views)."""
    p = make_problem(T=4, B=3, I=5, H=6, dtype=np.float64)
    x = np.broadcast_to(p.args[0][:1], p.args[0].shape)
    dy = np.broadcast_to(p.upstream["dy"][:, :1], p.upstream["dy"].shape)
    args, ups = (x,) + p.args[1:], dict(p.upstream, dy=dy)
    ref64, _ = reference_outputs(args, p.kwargs, {k: np.ascontiguousarray(v) for k, v in ups.items()},
                                 dtype=np.float64)
    res = fusedlstm.lstm_forward(*args, **p.kwargs, training=True)
    grads = fusedlstm.lstm_backward(res, **ups)
    policy.check_all({"y": res.y, "h_n": res.h_n, "c_n": res.c_n, "dx": grads.dx, "dw_ih": grads.dw_ih},
                     ref64, dtype=np.float64, names=("y", "h_n", "c_n", "dx", "dw_ih"))


@pytest.mark.parametrize("kind", NP_KINDS)
def test_functional_cell_any_layout(kind, rng, policy):
    B_, I_, H_ = 3, 5, 6
    x, h, c = (rng.standard_normal((B_, n)) for n in (I_, H_, H_))
    w_ih, w_hh = rng.uniform(-0.5, 0.5, (4 * H_, I_)), rng.uniform(-0.5, 0.5, (4 * H_, H_))
    b_ih, b_hh = rng.uniform(-0.5, 0.5, 4 * H_), rng.uniform(-0.5, 0.5, 4 * H_)
    from fusedlstm import reference as R
    ref = R.forward(x[None], w_ih, w_hh, b_ih, b_hh, h, c, dtype=np.float64)
    h1, c1 = fusedlstm.lstm_cell(*(np_relaid(a, kind) for a in (x, h, c, w_ih, w_hh, b_ih, b_hh)))
    policy.check("h_new", h1, ref.h_n, dtype=np.float64)
    policy.check("c_new", c1, ref.c_n, dtype=np.float64)


# --------------------------------------------------------------------------------------
# the binding refuses what it cannot read
# --------------------------------------------------------------------------------------
def _cell_arrays(dtype=np.float64, B_=2, I_=3, H_=4):
    rng = np.random.default_rng(0)
    ins = [rng.standard_normal(s).astype(dtype) for s in ((B_, I_), (B_, H_), (B_, H_), (4 * H_, I_),
                                                          (4 * H_, H_), (4 * H_,), (4 * H_,))]
    outs = [np.zeros((B_, H_), dtype), np.zeros((B_, H_), dtype)]
    return ins, outs


_CELL_ARGS = ("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh", "h_new", "c_new")


def _cell_call(args, dtype=_core.FLOAT64, B_=2, I_=3, H_=4, **device):
    _core.cell(**dict(zip(_CELL_ARGS, args)), B=B_, I=I_, H=H_, dtype=dtype, **device)


@pytest.mark.parametrize("arg", _CELL_ARGS)
@pytest.mark.parametrize("bad, exc, text", [
    (lambda a: np.asfortranarray(a) if a.ndim == 2 else np.repeat(a, 2)[::2], ValueError, "C-contiguous"),
    (lambda a: a.astype(np.float32), TypeError, "dtype"),
    (lambda a: a.tolist(), TypeError, "numpy array"),
    (lambda a: a.reshape(-1)[:-1].copy(), ValueError, "elements"),
], ids=["strided", "dtype", "list", "short"])
def test_binding_refuses_arrays_it_cannot_read(arg, bad, exc, text):
    ins, outs = _cell_arrays()
    args = ins + outs
    k = _CELL_ARGS.index(arg)
    args[k] = bad(args[k])
    with pytest.raises(exc, match=text) as e:
        _cell_call(args)
    assert arg in str(e.value), e.value


def test_binding_refuses_read_only_and_unaligned():
    ins, outs = _cell_arrays()
    outs[0].flags.writeable = False
    with pytest.raises(ValueError, match="h_new.*read-only"):
        _cell_call(ins + outs)
    ins, outs = _cell_arrays()
    raw = np.zeros(ins[3].nbytes + 1, np.uint8)
    ins[3] = raw[1:].view(np.float64).reshape(ins[3].shape)
    with pytest.raises(ValueError, match="w_ih is not aligned"):
        _cell_call(ins + outs)


def _has_ml_dtypes():
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return False
    return True


def test_binding_takes_device_pointers_only_on_cuda():
    """An int is a device pointer: refused on the CPU, naming the argument (it
    would be read as host memory); a numpy array of float16 passes the dtype
    check, and so does one of bfloat16 (ml_dtypes' numpy dtype) for BFLOAT16."""
    ins, outs = _cell_arrays()
    args = ins + outs
    args[3] = args[3].ctypes.data
    with pytest.raises(TypeError, match="^w_ih is an int .*device pointer.*CPU"):
        _cell_call(args)
    bf16 = (r"^x has dtype float64 but the call works in bfloat16 \(dtype=BFLOAT16\)" if _has_ml_dtypes()
            else r"^x: bfloat16 numpy arrays need the ml_dtypes package")
    with pytest.raises(TypeError, match=bf16):
        _cell_call(ins + outs, dtype=_core.BFLOAT16)
    with pytest.raises(TypeError, match=r"^x has dtype float64 but the call works in float16 \(dtype=FLOAT16\)"):
        _cell_call(ins + outs, dtype=_core.FLOAT16)
    with pytest.raises(ValueError, match="^dtype = 9 is not one of"):
        _cell_call(ins + outs, dtype=9)
    with pytest.raises(TypeError, match="x must be a numpy array, a device pointer"):
        _cell_call([True] + args[1:])


def test_binding_checks_strides_passed_with_x():
    rng = np.random.default_rng(0)
    T_, B_, I_, H_ = 3, 2, 4, 5
    x = rng.standard_normal((T_, B_, I_))
    w_ih, w_hh = rng.standard_normal((4 * H_, I_)), rng.standard_normal((4 * H_, H_))
    h_n, c_n, y = np.empty((B_, H_)), np.empty((B_, H_)), np.empty((T_, B_, H_))
    ok = dict(x=x, x_strides=(B_ * I_, I_), w_ih=w_ih, w_hh=w_hh, y=y, y_strides=(B_ * H_, H_), h_n=h_n,
              c_n=c_n, mode=_core.MANY_TO_MANY, T=T_, B=B_, I=I_, H=H_, dtype=_core.FLOAT64)
    _core.forward(**ok)
    with pytest.raises(ValueError, match="x: the strides"):
        _core.forward(**dict(ok, x_strides=(2 * B_ * I_, I_)))  # a stride beyond x
    with pytest.raises(ValueError, match="y must have"):
        _core.forward(**dict(ok, y=np.empty((T_, B_, H_ - 1))))
    with pytest.raises(ValueError, match="w_hr must have 20 elements"):  # proj_size 4: w_hr (4, 5), w_hh (20, 4)
        _core.forward(**dict(ok, proj_size=4, w_hh=np.zeros((4 * H_, 4)), w_hr=np.zeros((5, 5)),
                             y=np.empty((T_, B_, 4)), y_strides=(B_ * 4, 4), h_n=np.empty((B_, 4))))


def test_binding_stack_needs_one_cell_per_layer_and_direction(seed):
    torch.manual_seed(seed)
    m = nn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    cells = [tuple(t.detach().numpy() for t in (c[0], c[1], c[2], c[3])) + (None,) for c in m.all_weights]
    x = np.zeros((T, B, I))
    call = dict(x=x, x_strides=(B * I, I), y=np.empty((T, B, H)), y_strides=(B * H, H), h_n=np.empty((2, B, H)),
                c_n=np.empty((2, B, H)), T=T, B=B, I=I, H=H, num_layers=2, dtype=_core.FLOAT64)
    _core.stack_forward(cells=cells, **call)
    with pytest.raises(ValueError, match="cells must hold"):
        _core.stack_forward(cells=cells[:1], **call)
    bad = [cells[0], (cells[1][0].T,) + cells[1][1:]]
    with pytest.raises(ValueError, match=r"cells\[1\].w_ih"):
        _core.stack_forward(cells=bad, **call)
    with pytest.raises(TypeError, match="cells: each cell must be a tuple"):
        _core.stack_forward(cells=[cells[0], list(cells[1])], **call)


@pytest.mark.parametrize("device, match", [
    (dict(stream=5), r"^device.stream must be NULL on the CPU"),
    (dict(device_index=3), r"^device.index = 3 must be 0 on the CPU"),
    (dict(device_type=7), r"^device.type = 7 is not one of"),
], ids=["stream", "index", "type"])
@pytest.mark.parametrize("call", ["forward", "cell", "stack_forward"])
def test_binding_fills_the_device_of_every_call(call, device, match):
    """device_type / device_index / stream reach fl_device of each params
    struct: the C API refuses what the CPU cannot have, naming the field."""
    ins, outs = _cell_arrays()
    if call == "cell":
        with pytest.raises(ValueError, match=match):
            _cell_call(ins + outs, **device)
        return
    T_, B_, I_, H_ = 3, 2, 3, 4
    x = np.zeros((T_, B_, I_))
    common = dict(x=x, x_strides=(B_ * I_, I_), T=T_, B=B_, I=I_, H=H_, dtype=_core.FLOAT64, **device)
    with pytest.raises(ValueError, match=match):
        if call == "forward":
            _core.forward(**common, w_ih=ins[3], w_hh=ins[4], h_n=outs[0], c_n=outs[1], mode=_core.MANY_TO_ONE)
        else:
            _core.stack_forward(**common, cells=[(ins[3], ins[4], None, None, None)], h_n=outs[0][None],
                                c_n=outs[1][None])
