"""bfloat16 on the CPU through fusedlstm.torch (issue 12): modules converted with
.to(torch.bfloat16), and float32 modules under torch.autocast("cpu", bfloat16), run the
CPU's bfloat16 kernels with nn's output dtypes; values and gradients against the float64
reference under the policy's bfloat16 CPU rule (tests/test_bf16.py's check_all, with its
handling of the backward's known precision question). Outputs are NaN-poisoned before
the kernels run (the operators' outputs follow fusedlstm's debug poison)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fusedlstm.torch as ft  # noqa: E402
from conftest import reference, tolerance  # noqa: E402
from test_bf16 import check_all  # noqa: E402

if ft._ops._NUMPY_BF16 is None:  # pragma: no cover
    pytest.skip("the CPU bfloat16 kernels take torch tensors through ml_dtypes (pip install ml_dtypes)",
                allow_module_level=True)

STACKS = [
    # (id, nn class, cell, kwargs)
    ("lstm-L2-bidir", "LSTM", "lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm-proj", "LSTM", "lstm", dict(num_layers=2, proj_size=3)),
    ("gru-L2-bidir", "GRU", "gru", dict(num_layers=2, bidirectional=True)),
    ("rnn-tanh", "RNN", "rnn_tanh", dict(num_layers=2)),
    ("rnn-relu-bidir", "RNN", "rnn_relu", dict(bidirectional=True, nonlinearity="relu")),
]
PREC = "bfloat16_cpu"


def _np(t):
    return t.detach().float().numpy()


def _reference_stack(module, cell, x, h0, c0, dy, dh_n, dc_n, *, rounded):
    """(ref64, plain) dicts of the stack on the module's parameters (rounded to
    bfloat16 when `rounded`: what autocast hands the kernels); the plain stack keeps
    its layer outputs and input gradients in bfloat16, as the library's does."""
    rnd = tolerance.rounder(7)
    p = {k: (rnd(_np(v)) if rounded else _np(v)) for k, v in module.named_parameters()}
    L, D = module.num_layers, 2 if module.bidirectional else 1
    cells = []
    for k in range(L):
        for s in ("", "_reverse")[:D]:
            s = f"_l{k}{s}"
            cells.append(dict(w_ih=p["weight_ih" + s], w_hh=p["weight_hh" + s], b_ih=p["bias_ih" + s],
                              b_hh=p["bias_hh" + s], **({"w_hr": p["weight_hr" + s]} if "weight_hr" + s in p else {})))

    def run(dtype, operands=None, scope="all", storage=None):
        r = reference.stack_forward(x, cells, h0, c0, num_layers=L, bidirectional=D == 2, cell=cell, dtype=dtype,
                                    round_operands=operands, round_scope=scope, round_storage=storage)
        g = reference.stack_backward(r, dy, dh_n, dc_n)
        out = dict(y=r.y, h_n=r.h_n, c_n=r.c_n, dx=g["dx"])
        for name in p:
            kind, rest = name.split("_l")
            c = g["cells"][int(rest.split("_")[0]) * D + rest.endswith("_reverse")]
            out["d:" + name] = c[{"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b", "bias_hh": "b_hh",
                                  "weight_hr": "w_hr"}[kind]]
        return out

    storage = tolerance.rounder(7)
    plain = {k: None if v is None else storage(v) for k, v in run(np.float32, rnd, "gates", storage).items()}
    return run(np.float64), plain


def _inputs(module, cell, seed, T=5, B=3):
    g = torch.Generator().manual_seed(seed)
    L, D, H = module.num_layers, 2 if module.bidirectional else 1, module.hidden_size
    hout = module.proj_size or H
    bf = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16)  # noqa: E731
    x, h0 = bf(T, B, module.input_size), 0.5 * bf(L * D, B, hout)
    c0 = bf(L * D, B, H) if cell == "lstm" else None
    dy, dh_n = bf(T, B, D * hout), bf(L * D, B, hout)
    dc_n = bf(L * D, B, H) if cell == "lstm" else None
    return x, h0.to(torch.bfloat16), c0, dy, dh_n, dc_n


def _loss(outs, grads):
    return sum((o.float() * g.float()).sum() for o, g in zip(outs, grads) if g is not None)


@pytest.mark.parametrize("stack", STACKS, ids=[s[0] for s in STACKS])
def test_module_to_bfloat16(stack, seed):
    """module.to(torch.bfloat16): outputs and gradients bfloat16, within the policy."""
    _, cls, cell, kw = stack
    torch.manual_seed(seed)
    m = getattr(ft, cls)(7, 9, **kw).to(torch.bfloat16)
    x, h0, c0, dy, dh_n, dc_n = _inputs(m, cell, seed)
    x.requires_grad_(True)
    y, hx = m(x, (h0, c0) if cell == "lstm" else h0)
    states = list(hx) if cell == "lstm" else [hx]
    _loss([y, *states], [dy, dh_n, dc_n]).backward()
    got = dict(y=y, h_n=states[0], c_n=states[1] if cell == "lstm" else None, dx=x.grad,
               **{"d:" + n: p.grad for n, p in m.named_parameters()})
    for k, v in got.items():
        assert v is None or v.dtype == torch.bfloat16, k
    got = {k: None if v is None else _np(v).astype(ml_bf16()) for k, v in got.items()}
    ref64, plain = _reference_stack(m, cell, *(None if t is None else _np(t)
                                                           for t in (x, h0, c0, dy, dh_n, dc_n)), rounded=False)
    check_all(f"{cls} .to(bf16)", got, ref64, plain, dtype=ml_bf16(), precision=PREC)


def ml_bf16():
    return ft._ops._NUMPY_BF16


@pytest.mark.parametrize("stack", STACKS, ids=[s[0] for s in STACKS])
def test_autocast_like_nn(stack, seed):
    """A float32 module under CPU autocast (bf16): the output dtypes of its nn counterpart
    (LSTM, RNN: bfloat16, an LSTM with proj_size its c_n float32; GRU: float32 as nn.GRU),
    values within the policy against float64 on the bfloat16-rounded values autocast hands
    the kernels, float32 gradients on the float32 parameters within it too."""
    _, cls, cell, kw = stack
    torch.manual_seed(seed)
    ref = getattr(nn, cls)(7, 9, **kw)
    m = getattr(ft, cls)(7, 9, **kw)
    m.load_state_dict(ref.state_dict())
    x, h0, c0, dy, dh_n, dc_n = _inputs(m, cell, seed)
    x, h0 = x.float(), h0.float()
    c0 = None if c0 is None else c0.float()
    hx = (h0, c0) if cell == "lstm" else h0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.utils._pytree.tree_leaves(ref(x, hx))
        got = torch.utils._pytree.tree_leaves(m(x, hx))
    assert [t.dtype for t in got] == [t.dtype for t in want]
    if got[0].dtype == torch.float32:  # GRU: no autocast, as nn.GRU on the CPU
        plain = torch.utils._pytree.tree_leaves(m(x, hx))
        assert all(torch.equal(a, b) for a, b in zip(got, plain))
        return
    _loss(got, [dy, dh_n, dc_n]).backward()
    out = dict(y=got[0], h_n=got[1], c_n=got[2] if cell == "lstm" else None,
               **{"d:" + n: p.grad for n, p in m.named_parameters()})
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())
    rnd = tolerance.rounder(7)
    ref64, plain = _reference_stack(m, cell, rnd(_np(x)), rnd(_np(h0)),
                                               None if c0 is None else rnd(_np(c0)), _np(dy), _np(dh_n),
                                               None if dc_n is None else _np(dc_n), rounded=True)
    for d in (ref64, plain):
        d.pop("dx")
    # outputs are compared as bfloat16 (c_n of a projection LSTM is float32 holding bfloat16 values)
    out = {k: None if v is None else _np(v).astype(ml_bf16()) for k, v in out.items()}
    check_all(f"{cls} autocast", out, ref64, plain, dtype=ml_bf16(), precision=PREC)


@pytest.mark.parametrize("cls, cell", [("LSTMCell", "lstm"), ("GRUCell", "gru"), ("RNNCell", "rnn_tanh")])
@pytest.mark.parametrize("B", [3, 16, 21], ids=["B3", "B16-unpacked", "B21-packed"])
def test_cell_to_bfloat16(cls, cell, B, seed):
    """The cells in bfloat16: the single step and its backward (cell_train_forward and
    cell_backward up to _CELL_UNPACKED_MAX_ROWS rows, the stack above), within the policy."""
    torch.manual_seed(seed)
    m = getattr(ft, cls)(7, 13).to(torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    bf = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16)  # noqa: E731
    x, h, c, dh, dc = bf(B, 7).requires_grad_(True), bf(B, 13), bf(B, 13), bf(B, 13), bf(B, 13)
    out = m(x, (h, c) if cell == "lstm" else h)
    outs = list(out) if cell == "lstm" else [out]
    _loss(outs, [dh, dc]).backward()
    got = dict(y=outs[0], c_n=outs[1] if cell == "lstm" else None, dx=x.grad,
               **{"d:" + n: p.grad for n, p in m.named_parameters()})
    assert all(v is None or v.dtype == torch.bfloat16 for v in got.values())
    got = {k: None if v is None else _np(v).astype(ml_bf16()) for k, v in got.items()}
    p = {n: _np(v) for n, v in m.named_parameters()}
    rnd = tolerance.rounder(7)

    def run(dtype, operands=None, scope="all"):
        r = reference.forward(_np(x)[None], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], _np(h),
                              _np(c) if cell == "lstm" else None, cell=cell, dtype=dtype, round_operands=operands,
                              round_scope=scope)
        gr = reference.backward(r, dh_n=_np(dh), dc_n=_np(dc) if cell == "lstm" else None)
        return dict(y=r.h_n, c_n=r.c_n, dx=gr.dx[0], **{"d:weight_ih": gr.dw_ih, "d:weight_hh": gr.dw_hh,
                                                        "d:bias_ih": gr.db_ih, "d:bias_hh": gr.db_hh})

    st = lambda d: {k: None if v is None else rnd(v) for k, v in d.items()}  # noqa: E731
    check_all(f"{cls} B={B}", got, run(np.float64), st(run(np.float32, rnd, "gates")), dtype=ml_bf16(),
              precision=PREC)


def test_operator_autocast_follows_aten():
    """Called directly under CPU autocast, fusedlstm::stack_forward runs the LSTM in the
    autocast dtype (as aten::lstm) and the GRU in float32 (aten::gru is not on the list)."""
    x, lstm, gru = torch.randn(4, 2, 3), ft.LSTM(3, 5), ft.GRU(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h, c, _ = torch.ops.fusedlstm.stack_forward(x, lstm._flat_weights, torch.zeros(1, 2, 5),
                                                       torch.zeros(1, 2, 5), None, None, 1, False, 0, True, False,
                                                       False)
        yg, *_ = torch.ops.fusedlstm.stack_forward(x, gru._flat_weights, torch.zeros(1, 2, 5), None, None, None, 1,
                                                   False, 0, True, False, False, ft._ops.CELL_GRU)
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    assert yg.dtype == torch.float32
