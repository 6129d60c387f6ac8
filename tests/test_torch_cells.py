"""fusedlstm.torch.GRU, RNN, GRUCell and RNNCell (and the cell argument of the
fusedlstm:: operators).

Truth is torch.nn.GRU / nn.RNN (tanh, relu) / nn.GRUCell / nn.RNNCell run in
float64 on the same values (float32 weights and inputs upcast exactly), with
the weights loaded from the nn module's state_dict. Results are judged with
the tolerance policy of conftest.py, where the "plain float32 implementation"
that sets the float32 error baseline is the nn module in float32 on the same
values. The patterns are test_torch_module.py's (the LSTM's).

Covered, for each cell kind (GRU, RNN tanh, RNN relu): parity of y (and the
PackedSequence fields), h_n, dx, dh0 and every parameter gradient (b_ih's and
b_hh's apart: they differ in the GRU) over drawn and fixed configurations
(layers 1-2, directions, bias, batch_first, padded / packed (unsorted) /
pack_sequence / unbatched input, with and without hx, dropout in eval mode,
float32 / float64); the no_grad path; dropout in training mode (seeded masks,
dropout=1 parity, gradcheck with the mask); the cells (both training paths,
no_grad, unbatched, no hx); state_dict round trips both ways;
torch.compile(fullgraph=True) on padded input; torch.library.opcheck of every
operator with the cell argument; gradcheck (float64, batched gradients);
vmap; double backward refused; autocast and low-precision modules; the fake
kernels' reserve size; parity on a CUDA device (a GPU or the emulated backend); errors raised
like nn's.
"""

import contextlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence  # noqa: E402

import fusedlstm.torch as ft  # noqa: E402
from fusedlstm.torch import _ops  # noqa: E402
from test_torch_module import DEVICES  # noqa: E402  (the LSTM tests' devices)

pytestmark = pytest.mark.torch

KINDS = ["gru", "rnn_tanh", "rnn_relu"]
CELL_CODE = {"gru": _ops.CELL_GRU, "rnn_tanh": _ops.CELL_RNN_TANH, "rnn_relu": _ops.CELL_RNN_RELU}
GATES = {"gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
INPUT_KINDS = ("padded", "packed", "sorted", "unbatched")
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
_ALL_CHECKS = {"test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"}


def _nonlinearity(kind):
    return {} if kind == "gru" else {"nonlinearity": kind[len("rnn_"):]}


def nn_stack(kind, *args, **kw):
    return (nn.GRU if kind == "gru" else nn.RNN)(*args, **_nonlinearity(kind), **kw)


def ft_stack(kind, *args, **kw):
    return (ft.GRU if kind == "gru" else ft.RNN)(*args, **_nonlinearity(kind), **kw)


def nn_cell(kind, *args, **kw):
    return (nn.GRUCell if kind == "gru" else nn.RNNCell)(*args, **_nonlinearity(kind), **kw)


def ft_cell(kind, *args, **kw):
    return (ft.GRUCell if kind == "gru" else ft.RNNCell)(*args, **_nonlinearity(kind), **kw)


def _ids(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


@pytest.fixture(params=DEVICES[1:])  # test_torch_module's: cuda (a GPU), cuda-emulated
def cuda_device(request):
    """A CUDA device for the modules: a GPU, or "cpu" inside _ops.emulate_cuda_on_cpu()
    (the CUDA implementation of every op on CPU tensors, over the emulated backend)."""
    if request.param == "cuda-emulated":
        with _ops.emulate_cuda_on_cpu():
            yield "cpu"
    else:
        with torch.cuda.device(0):
            yield "cuda"


# --------------------------------------------------------------------------------------
# helpers (test_torch_module.py's, with one hidden state)
# --------------------------------------------------------------------------------------
def _np(t):
    return None if t is None else t.detach().cpu().numpy()


def check(policy, name, got, truth, plain, dtype):
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    assert tuple(got.shape) == tuple(truth.shape), f"{name}: shape {list(got.shape)} != {list(truth.shape)}"
    policy.check(name, _np(got), _np(truth).astype(np.float64),
                 None if plain is None else _np(plain), dtype=NP_DTYPE[dtype])


def check_all(policy, got, truth, plain, dtype, prefix=""):
    assert got.keys() == truth.keys(), (sorted(got), sorted(truth))
    for k in truth:
        check(policy, prefix + k, got[k], truth[k], None if plain is None else plain[k], dtype)


def draw_config(rng, kind):
    L = int(rng.integers(1, 3))
    return dict(
        kind=kind,
        num_layers=L,
        bidirectional=bool(rng.integers(2)),
        bias=bool(rng.integers(4)),  # mostly with bias
        batch_first=bool(rng.integers(2)),
        hx=bool(rng.integers(2)),
        dropout=0.3 if L > 1 and rng.integers(2) else 0.0,  # such models run in eval mode
        I=int(rng.integers(1, 12)),
        H=int(rng.integers(1, 20)),
        T=int(rng.integers(1, 8)),
        B=1 if kind == "unbatched" else int(rng.integers(1, 7)),
    )


class Data:
    """The values of one problem, float64 tensors already rounded to `dtype`."""

    def __init__(self, cfg, dtype, gen):
        T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
        D = 2 if cfg["bidirectional"] else 1
        LD = cfg["num_layers"] * D
        r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype).double()  # noqa: E731
        self.cfg = cfg
        self.lengths = None
        if cfg["kind"] == "unbatched":
            self.x, self.h0 = r(T, I), 0.5 * r(LD, H)
            self.dy, self.dhn = r(T, D * H), r(LD, H)
            return
        bf = cfg["batch_first"]
        self.x = r(B, T, I) if bf else r(T, B, I)
        self.h0 = 0.5 * r(LD, B, H)
        self.dy = r(B, T, D * H) if bf else r(T, B, D * H)
        self.dhn = r(LD, B, H)
        if cfg["kind"] in ("packed", "sorted"):
            lengths = torch.randint(1, T + 1, (B,), generator=gen)
            if cfg["kind"] == "sorted":
                lengths = lengths.sort(descending=True).values
            self.lengths = lengths

    def pack(self, a):
        bf = self.cfg["batch_first"]
        if self.cfg["kind"] == "packed":
            return pack_padded_sequence(a, self.lengths, batch_first=bf, enforce_sorted=False)
        seqs = [(a[i] if bf else a[:, i])[: int(n)] for i, n in enumerate(self.lengths)]
        return pack_sequence(seqs, enforce_sorted=True)


def make_models(cell, cfg, dtype):
    """(ours in dtype, nn float64 truth, nn float32 baseline or None): equal weights, ours
    loaded from the nn module's state_dict."""
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
              dropout=cfg["dropout"], bidirectional=cfg["bidirectional"])
    src = nn_stack(cell, cfg["I"], cfg["H"], dtype=dtype, **kw)
    ours = ft_stack(cell, cfg["I"], cfg["H"], dtype=dtype, **kw)
    ours.load_state_dict(src.state_dict(), strict=True)
    truth = nn_stack(cell, cfg["I"], cfg["H"], dtype=torch.float64, **kw)
    truth.load_state_dict({k: v.double() for k, v in src.state_dict().items()}, strict=True)
    plain = src if dtype == torch.float32 else None
    if cfg["dropout"] > 0:
        for m in (ours, truth, plain):
            if m is not None:
                m.eval()
    return ours, truth, plain


def run_model(model, data, dtype, device="cpu"):
    """forward + backward of `model` on `data` in `dtype` (tensors on `device`): outputs, input
    and parameter grads."""
    cfg = data.cfg
    x = data.x.to(device=device, dtype=dtype).requires_grad_(True)
    inputs, hx = [x], None
    if cfg["hx"]:
        hx = data.h0.to(device=device, dtype=dtype).requires_grad_(True)
        inputs.append(hx)
    packed = cfg["kind"] in ("packed", "sorted")
    y, hn = model(data.pack(x) if packed else x, hx)
    assert isinstance(hn, torch.Tensor)
    out = {}
    if packed:
        assert isinstance(y, PackedSequence)
        out["_packed_meta"] = (y.batch_sizes, y.sorted_indices, y.unsorted_indices)
        ydata, dy = y.data, data.pack(data.dy.to(device=device, dtype=dtype)).data
    else:
        ydata, dy = y, data.dy.to(device=device, dtype=dtype)
    loss = (ydata * dy).sum() + (hn * data.dhn.to(device=device, dtype=dtype)).sum()
    params = list(model.named_parameters())
    grads = torch.autograd.grad(loss, inputs + [p for _, p in params])
    out.update(y=ydata, h_n=hn, dx=grads[0])
    if cfg["hx"]:
        out["dh0"] = grads[1]
    for (name, _), g in zip(params, grads[len(inputs):]):
        out["d" + name] = g
    return out


def compare_runs(policy, got, truth, plain, dtype):
    meta, meta_truth = got.pop("_packed_meta", None), truth.pop("_packed_meta", None)
    if plain is not None:
        plain.pop("_packed_meta", None)
    assert (meta is None) == (meta_truth is None)
    if meta is not None:
        for name, a, b in zip(("batch_sizes", "sorted_indices", "unsorted_indices"), meta, meta_truth):
            assert (a is None) == (b is None), name
            if a is not None:
                assert torch.equal(a, b), f"{name}: {a} != {b}"
    check_all(policy, got, truth, plain, dtype)


def _check_parity(cell, cfg, dtype, seed, policy, device="cpu"):
    """ours (on `device`) vs nn on the CPU (float64 truth, same-dtype nn as the plain baseline)."""
    torch.manual_seed(seed)
    ours, truth_m, plain_m = make_models(cell, cfg, dtype)
    data = Data(cfg, dtype, torch.Generator().manual_seed(seed))
    got = run_model(ours.to(device), data, dtype, device)
    truth = run_model(truth_m, data, torch.float64)
    plain = None if plain_m is None else run_model(plain_m, data, dtype)
    compare_runs(policy, got, truth, plain, dtype)
    return got


# --------------------------------------------------------------------------------------
# parity with nn.GRU / nn.RNN
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("draw", range(2))
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_matches_nn_random(cell, dtype, kind, draw, rng, seed, policy):
    cfg = draw_config(rng, kind)
    print("config:", cfg)
    _check_parity(cell, cfg, dtype, seed, policy)


FIXED = [
    dict(num_layers=2, bidirectional=True, bias=True, batch_first=True, hx=True, dropout=0.3, I=7, H=9, T=6, B=5),
    dict(num_layers=2, bidirectional=True, bias=False, batch_first=False, hx=False, dropout=0.0, I=1, H=1, T=1,
         B=1),
    dict(num_layers=1, bidirectional=False, bias=True, batch_first=False, hx=True, dropout=0.0, I=33, H=37, T=9,
         B=6),
    dict(num_layers=1, bidirectional=True, bias=True, batch_first=True, hx=True, dropout=0.0, I=4, H=17, T=5,
         B=3),
]


@pytest.mark.parametrize("fixed", range(len(FIXED)))
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_matches_nn_fixed(cell, dtype, kind, fixed, seed, policy):
    cfg = dict(FIXED[fixed], kind=kind)
    if kind == "unbatched":
        cfg["B"] = 1
    got = _check_parity(cell, cfg, dtype, seed, policy)
    if cell == "gru" and cfg["bias"]:  # b_ih's and b_hh's gradients differ in their n rows only
        H = cfg["H"]
        torch.testing.assert_close(got["dbias_ih_l0"][:2 * H], got["dbias_hh_l0"][:2 * H])
        assert not torch.allclose(got["dbias_ih_l0"][2 * H:], got["dbias_hh_l0"][2 * H:])


@pytest.mark.parametrize("cell", KINDS)
def test_packed_lengths_shorter_than_padding(cell, seed, policy):
    """max(lengths) < T of the padded tensor: the extra steps get zero gradient, as in nn."""
    cfg = dict(FIXED[0], kind="packed", dropout=0.0)
    torch.manual_seed(seed)
    data = Data(cfg, torch.float64, torch.Generator().manual_seed(seed))
    data.lengths = torch.tensor([2, 4, 1, 3, 2])  # T = 6
    ours, truth_m, _ = make_models(cell, cfg, torch.float64)
    got = run_model(ours, data, torch.float64)
    compare_runs(policy, got, run_model(truth_m, data, torch.float64), None, torch.float64)
    assert torch.count_nonzero(got["dx"][:, 4:]) == 0


@pytest.mark.parametrize("used", ["y", "h_n"])
@pytest.mark.parametrize("cell", KINDS)
def test_only_one_output_used(cell, used, seed, policy):
    cfg = dict(FIXED[0], kind="packed", dropout=0.0)
    torch.manual_seed(seed)
    ours, truth_m, _ = make_models(cell, cfg, torch.float64)
    data = Data(cfg, torch.float64, torch.Generator().manual_seed(seed))
    results = []
    for m in (ours, truth_m):
        x = data.x.clone().requires_grad_(True)
        y, h = m(data.pack(x))
        out = {"y": y.data, "h_n": h}[used]
        results.append(dict(zip(["dx"] + [n for n, _ in m.named_parameters()],
                                torch.autograd.grad(out.pow(2).sum(), [x] + list(m.parameters())))))
    check_all(policy, results[0], results[1], None, torch.float64)


@pytest.mark.parametrize("cell", KINDS)
def test_noncontiguous_inputs(cell, seed, policy):
    cfg = dict(FIXED[0], kind="padded", dropout=0.0, batch_first=False)
    torch.manual_seed(seed)
    ours, truth_m, _ = make_models(cell, cfg, torch.float64)
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    h0 = r(4, B, 2 * H)[..., ::2]  # strided last dim
    for inp in (r(T, 2 * B, I)[:, ::2], r(T, 1, I).expand(T, B, I), r(B, T, I).transpose(0, 1)):
        assert not inp.is_contiguous()
        y, h = ours(inp, h0)
        y_t, h_t = truth_m(inp, h0)
        check_all(policy, {"y": y, "h_n": h}, {"y": y_t, "h_n": h_t}, None, torch.float64)


@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_no_grad_forward_matches_nn(cell, dtype, kind, seed, policy):
    """Inference (no reserve: the core's inference forward)."""
    cfg = dict(FIXED[0], kind=kind, hx=True, B=1 if kind == "unbatched" else 5)
    torch.manual_seed(seed)
    ours, truth_m, plain_m = make_models(cell, cfg, dtype)
    data = Data(cfg, dtype, torch.Generator().manual_seed(seed))
    results = []
    for m, dt in ((ours, dtype), (truth_m, torch.float64), (plain_m, dtype)):
        if m is None:
            results.append(None)
            continue
        x, hx = data.x.to(dt), data.h0.to(dt)
        with torch.no_grad():
            y, h = m(data.pack(x) if kind == "packed" else x, hx)
        results.append({"y": y.data if kind == "packed" else y, "h_n": h})
    assert not results[0]["y"].requires_grad
    check_all(policy, results[0], results[1], results[2], dtype)


@pytest.mark.parametrize("cell", KINDS)
def test_empty_batch_like_nn(cell):
    torch.manual_seed(0)
    ref = nn_stack(cell, 3, 4, num_layers=2)
    ours = ft_stack(cell, 3, 4, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 0, 3, requires_grad=True)
    y, h = ours(x)
    y_ref, h_ref = ref(x)
    assert y.shape == y_ref.shape and h.shape == h_ref.shape
    (y.sum() + h.sum()).backward()
    assert all(p.grad is not None and not p.grad.any() for p in ours.parameters())
    assert ft_cell(cell, 3, 4)(torch.randn(0, 3)).shape == nn_cell(cell, 3, 4)(torch.randn(0, 3)).shape


# --------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", KINDS)
def test_dropout_train_is_seeded_and_differs_from_eval(cell, seed):
    torch.manual_seed(1234)
    m = ft_stack(cell, 5, 6, num_layers=3, bidirectional=True, dropout=0.5, dtype=torch.float64)
    x = torch.randn(7, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    m.train()
    outs = []
    for s in (seed, seed, seed + 1):
        torch.manual_seed(s)
        outs.append(m(x))
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a, b)  # same seed -> same mask -> same result
    assert not torch.equal(outs[0][0], outs[2][0])  # another seed, another mask
    m.eval()
    y_eval, h_eval = m(x)
    assert not torch.allclose(outs[0][0], y_eval)
    assert torch.equal(outs[0][1][:2], h_eval[:2])  # the first layer sees no dropout
    assert torch.equal(m(x)[0], y_eval)  # eval is deterministic


@pytest.mark.parametrize("cell", KINDS)
def test_dropout_zero_train_equals_eval(cell, seed):
    torch.manual_seed(1234)
    m = ft_stack(cell, 5, 6, num_layers=3, bidirectional=True, dropout=0.0, dtype=torch.float64)
    x = torch.randn(7, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    m.train()
    y_tr, h_tr = m(x)
    m.eval()
    y_ev, h_ev = m(x)
    assert torch.equal(y_tr, y_ev) and torch.equal(h_tr, h_ev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_dropout_one_train_matches_nn(cell, dtype, seed, policy):
    """dropout=1 in training mode zeroes every layer's input but the first's,
    deterministically, in nn too: full parity of outputs and gradients."""
    cfg = dict(kind="padded", num_layers=3, bidirectional=True, bias=True, batch_first=False, hx=True,
               dropout=1.0, I=4, H=5, T=5, B=3)
    torch.manual_seed(seed)
    ours, truth_m, plain_m = make_models(cell, cfg, dtype)
    for m in (ours, truth_m, plain_m):
        if m is not None:
            m.train()
    data = Data(cfg, dtype, torch.Generator().manual_seed(seed))
    got = run_model(ours, data, dtype)
    plain = None if plain_m is None else run_model(plain_m, data, dtype)
    compare_runs(policy, got, run_model(truth_m, data, torch.float64), plain, dtype)
    assert torch.count_nonzero(got["dweight_ih_l1"]) == 0


@pytest.mark.parametrize("cell", KINDS)
def test_dropout_gradcheck(cell, seed):
    """Gradients with a dropout mask are those of the masked function (the mask
    re-drawn from the same seed in each evaluation)."""
    torch.manual_seed(seed)
    m = ft_stack(cell, 2, 3, num_layers=2, bidirectional=True, dropout=0.4, dtype=torch.float64)
    m.train()
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        torch.manual_seed(seed)
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    y_masked = f(x, *params)[0]
    m.eval()
    assert not torch.allclose(y_masked, m(x)[0])  # a mask did apply
    m.train()
    assert torch.autograd.gradcheck(f, (x,) + params)


# --------------------------------------------------------------------------------------
# GRUCell, RNNCell
# --------------------------------------------------------------------------------------
CELL_CASES = [
    dict(batched=True, hx=True, bias=True, B=4, I=7, H=13),
    dict(batched=False, hx=True, bias=True, B=1, I=5, H=3),
    dict(batched=True, hx=False, bias=True, B=3, I=2, H=9),
    dict(batched=False, hx=False, bias=True, B=1, I=3, H=4),
    dict(batched=True, hx=True, bias=False, B=5, I=6, H=11),
    dict(batched=True, hx=True, bias=True, B=1, I=1, H=1),
    dict(batched=True, hx=True, bias=True, B=7, I=33, H=70),
    # above _CELL_UNPACKED_MAX_ROWS: trains through stack_forward with T = 1
    dict(batched=True, hx=True, bias=True, B=17, I=6, H=19),
]


def _cell_run(cell, case, vals, dtype):
    x = vals["x"].to(dtype).requires_grad_(True)
    inputs, hx = [x], None
    if case["hx"]:
        hx = vals["h"].to(dtype).requires_grad_(True)
        inputs.append(hx)
    h1 = cell(x, hx)
    assert isinstance(h1, torch.Tensor)
    loss = (h1 * vals["dh"].to(dtype)).sum()
    params = list(cell.named_parameters())
    grads = torch.autograd.grad(loss, inputs + [p for _, p in params])
    out = {"h": h1, "dx": grads[0]}
    if case["hx"]:
        out["dh"] = grads[1]
    out.update({"d" + n: g for (n, _), g in zip(params, grads[len(inputs):])})
    return out


def _cell_models(cell, I, H, bias, dtype):
    src = nn_cell(cell, I, H, bias=bias, dtype=dtype)
    ours = ft_cell(cell, I, H, bias=bias, dtype=dtype)
    ours.load_state_dict(src.state_dict(), strict=True)
    truth = nn_cell(cell, I, H, bias=bias, dtype=torch.float64)
    truth.load_state_dict({k: v.double() for k, v in src.state_dict().items()}, strict=True)
    return ours, truth, src


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CELL_CASES, ids=_ids)
@pytest.mark.parametrize("cell", KINDS)
def test_cell_matches_nn_cell(cell, case, dtype, seed, policy):
    torch.manual_seed(seed)
    ours, truth, src = _cell_models(cell, case["I"], case["H"], case["bias"], dtype)
    g = torch.Generator().manual_seed(seed)
    lead = (case["B"],) if case["batched"] else ()
    r = lambda *s: torch.randn(*lead, *s, generator=g, dtype=torch.float64).to(dtype).double()  # noqa: E731
    vals = dict(x=r(case["I"]), h=r(case["H"]), dh=r(case["H"]))
    got = _cell_run(ours, case, vals, dtype)
    ref = _cell_run(truth, case, vals, torch.float64)
    plain = _cell_run(src, case, vals, dtype) if dtype == torch.float32 else None
    assert got["h"].shape == ref["h"].shape == lead + (case["H"],)
    check_all(policy, got, ref, plain, dtype)
    with torch.no_grad():  # the inference step (cell_forward)
        x, h = vals["x"].to(dtype), vals["h"].to(dtype) if case["hx"] else None
        h_inf = ours(x, h)
        want = truth(vals["x"], vals["h"] if case["hx"] else None)
        plain_inf = src(x, h) if dtype == torch.float32 else None
    assert not h_inf.requires_grad
    check_all(policy, {"h": h_inf}, {"h": want}, None if plain_inf is None else {"h": plain_inf}, dtype)


@pytest.mark.parametrize("B", [1, 5, 17])
@pytest.mark.parametrize("cell", KINDS)
def test_cell_every_isa(cell, B, isa, seed, policy):
    """Both training paths of the cell and the no_grad step on every SIMD path."""
    torch.manual_seed(seed)
    case = dict(batched=True, hx=True, bias=True, B=B, I=9, H=21)
    ours, truth, _ = _cell_models(cell, 9, 21, True, torch.float64)
    g = torch.Generator().manual_seed(seed)
    vals = {k: torch.randn(B, 9 if k == "x" else 21, generator=g, dtype=torch.float64) for k in ("x", "h", "dh")}
    check_all(policy, _cell_run(ours, case, vals, torch.float64), _cell_run(truth, case, vals, torch.float64),
              None, torch.float64)
    with torch.no_grad():
        check_all(policy, {"h": ours(vals["x"], vals["h"])}, {"h": truth(vals["x"], vals["h"])}, None,
                  torch.float64)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", KINDS)
def test_cell_train_ops_any_batch(cell, bias, seed, policy):
    """The unpacked step and its backward (called directly) also serve batches above the
    module's switch; cell_backward's db is [db_ih | db_hh] for the GRU, b_ih's (= b_hh's)
    gradient for the RNN; c and its gradients are None in, empty out."""
    torch.manual_seed(seed)
    B, I, H = 20, 6, 11
    truth = nn_cell(cell, I, H, bias=bias, dtype=torch.float64)
    w = [p.detach() for p in truth.parameters()] + ([] if bias else [None, None])
    g = torch.Generator().manual_seed(seed)
    x, h, dh = (torch.randn(B, n, generator=g, dtype=torch.float64) for n in (I, H, H))
    code = CELL_CODE[cell]
    h1, c1, acts = torch.ops.fusedlstm.cell_train_forward(x, h, None, *w, code)
    assert c1.numel() == 0 and acts.shape == (B, (4 if cell == "gru" else 1) * H)
    dx, dhp, dc, dw_ih, dw_hh, db = torch.ops.fusedlstm.cell_backward(x, h, None, w[0], w[1], acts, None, dh,
                                                                      None, bias, code)
    assert dc.numel() == 0
    xs = [t.clone().requires_grad_(True) for t in (x, h)]
    ref_h = truth(*xs)
    params = list(truth.parameters())
    ref = torch.autograd.grad((ref_h * dh).sum(), xs + params)
    got = {"h": h1, "dx": dx, "dh": dhp, "dw_ih": dw_ih, "dw_hh": dw_hh}
    want = dict(zip(["dx", "dh", "dw_ih", "dw_hh"], ref), h=ref_h)
    if bias:
        rows = GATES[cell] * H
        assert db.shape == ((2 if cell == "gru" else 1) * rows,)
        got.update(db_ih=db[:rows], db_hh=db[rows:] if cell == "gru" else db)
        want.update(db_ih=ref[4], db_hh=ref[5])
    else:
        assert db.numel() == 0
    check_all(policy, got, want, None, torch.float64)
    with torch.no_grad():
        h_inf, c_inf = torch.ops.fusedlstm.cell_forward(x, h, None, *w, code)
    assert c_inf.numel() == 0
    check_all(policy, {"h": h_inf}, {"h": ref_h}, None, torch.float64)


@pytest.mark.parametrize("cell", KINDS)
def test_cell_state_dict_and_constructor(cell):
    torch.manual_seed(0)
    src, ours = nn_cell(cell, 4, 6), ft_cell(cell, 4, 6)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in src.named_parameters()]
    ours.load_state_dict(src.state_dict(), strict=True)
    back = nn_cell(cell, 4, 6)
    back.load_state_dict(ours.state_dict(), strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    nb = ft_cell(cell, 4, 6, bias=False)
    assert nb.bias_ih is None and nb.bias_hh is None
    assert list(nb.state_dict()) == list(nn_cell(cell, 4, 6, bias=False).state_dict())
    for attr in ("input_size", "hidden_size", "bias") + (() if cell == "gru" else ("nonlinearity",)):
        assert getattr(ours, attr) == getattr(src, attr), attr
    with pytest.raises(RuntimeError):
        ours.load_state_dict(nn.LSTMCell(4, 6).state_dict(), strict=True)


def test_positional_arguments_like_nn():
    """nn.RNN takes nonlinearity 4th, nn.RNNCell 4th after bias."""
    ours, theirs = ft.RNN(3, 4, 2, "relu", False), nn.RNN(3, 4, 2, "relu", False)
    assert (ours.num_layers, ours.nonlinearity, ours.bias, ours.mode) == \
        (theirs.num_layers, theirs.nonlinearity, theirs.bias, theirs.mode) == (2, "relu", False, "RNN_RELU")
    cell = ft.RNNCell(3, 4, False, "relu")
    assert (cell.bias, cell.nonlinearity) == (False, "relu")
    assert ft.GRU(3, 4, 2, False, True).batch_first and ft.GRU(3, 4).mode == nn.GRU(3, 4).mode == "GRU"


# --------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------
SD_CASES = [
    dict(num_layers=1),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, bidirectional=True, bias=False),
    dict(num_layers=2, batch_first=True, dropout=0.2),
]


@pytest.mark.parametrize("kw", SD_CASES, ids=_ids)
@pytest.mark.parametrize("cell", KINDS)
def test_state_dict_round_trips(cell, kw):
    torch.manual_seed(0)
    ref, ours = nn_stack(cell, 5, 7, **kw), ft_stack(cell, 5, 7, **kw)
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours._flat_weights_names == ref._flat_weights_names
    assert [[tuple(w.shape) for w in c] for c in ours.all_weights] == \
        [[tuple(w.shape) for w in c] for c in ref.all_weights]
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size") + (() if cell == "gru" else ("nonlinearity",)):
        assert getattr(ours, attr) == getattr(ref, attr), attr

    # nn -> ours -> nn
    ours.load_state_dict(ref.state_dict(), strict=True)
    back = nn_stack(cell, 5, 7, **kw)
    back.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v) and torch.equal(back.state_dict()[k], v), k

    # ours -> nn -> ours
    torch.manual_seed(1)
    ours2, ref2 = ft_stack(cell, 5, 7, **kw), nn_stack(cell, 5, 7, **kw)
    ref2.load_state_dict(ours2.state_dict(), strict=True)
    ours3 = ft_stack(cell, 5, 7, **kw)
    ours3.load_state_dict(ref2.state_dict(), strict=True)
    for k, v in ours2.state_dict().items():
        assert torch.equal(ours3.state_dict()[k], v), k


@pytest.mark.parametrize("cell", KINDS)
def test_state_dict_strict_rejects_mismatch(cell):
    ours = ft_stack(cell, 5, 7, num_layers=2)
    with pytest.raises(RuntimeError):
        ours.load_state_dict(nn_stack(cell, 5, 7, num_layers=1).state_dict(), strict=True)
    with pytest.raises(RuntimeError):  # another cell kind: other gate counts
        ours.load_state_dict(nn.LSTM(5, 7, num_layers=2).state_dict(), strict=True)


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("cell", KINDS)
def test_compile_fullgraph(cell, backend):
    """Padded input, two sequence lengths (the second compiles with dynamic sizes): the
    same bits as eager for outputs and every gradient."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = ft_stack(cell, 3, 5, num_layers=2, bidirectional=True, batch_first=True)
    cm = torch.compile(m, fullgraph=True, backend=backend)
    for T in (3, 5):
        r = lambda *s, grad=False: torch.randn(*s).requires_grad_(grad)  # noqa: E731
        x, h0, dy, dh = r(2, T, 3, grad=True), r(4, 2, 5, grad=True), r(2, T, 10), r(4, 2, 5)
        results = []
        for model in (m, cm):
            y, h = model(x, h0)
            grads = torch.autograd.grad((y * dy).sum() + (h * dh).sum(), [x, h0] + list(m.parameters()))
            results.append([y, h, *grads])
        for i, (a, b) in enumerate(zip(*results)):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"T={T}, result {i}")


@pytest.mark.parametrize("cell", KINDS)
def test_compile_fullgraph_unbatched_no_hx_and_cell(cell):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = ft_stack(cell, 3, 4, num_layers=2)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 3)
    got, want = cm(x), m(x)
    assert got[1].shape == (2, 4) and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch.no_grad():
        assert torch.equal(cm(x)[0], want[0])
    c = ft_cell(cell, 3, 4)
    cc = torch.compile(c, fullgraph=True, backend="aot_eager")
    for B in (2, 20):  # the unpacked step and the sequence path
        xb = torch.randn(B, 3, requires_grad=True)
        a, b = c(xb), cc(xb)
        assert torch.equal(a, b)
        ga = torch.autograd.grad(a.pow(2).sum(), [xb] + list(c.parameters()))
        gb = torch.autograd.grad(b.pow(2).sum(), [xb] + list(c.parameters()))
        assert all(torch.equal(u, v) for u, v in zip(ga, gb))


# --------------------------------------------------------------------------------------
# opcheck, gradcheck, vmap, double backward
# --------------------------------------------------------------------------------------
def _op_args(cell, requires_grad, lengths, bidirectional, batch_first=False, dropout=False, bias=True,
             dtype=torch.float64):
    torch.manual_seed(0)
    T, B, I, H, L = 3, 2, 3, 4, 2
    D = 2 if bidirectional else 1
    m = ft_stack(cell, I, H, num_layers=L, bidirectional=bidirectional, bias=bias, dtype=dtype)
    w = [p.detach().clone().requires_grad_(requires_grad) for p in m._flat_weights]
    r = lambda *s: torch.randn(*s, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    x = r(*((B, T, I) if batch_first else (T, B, I)))
    h0 = r(L * D, B, H)
    lens = torch.tensor([3, 1]) if lengths else None
    mask = torch.empty(L - 1, T, B, D * H, dtype=dtype).bernoulli_(0.5).mul_(2) if dropout else None
    return (x, w, h0, None, lens, mask, L, bidirectional, 0, bias, batch_first, True, CELL_CODE[cell])


OP_CASES = [
    dict(requires_grad=False, lengths=False, bidirectional=False),
    dict(requires_grad=True, lengths=False, bidirectional=False),
    dict(requires_grad=True, lengths=True, bidirectional=True, batch_first=True, dropout=True),
    dict(requires_grad=True, lengths=False, bidirectional=True, bias=False),
    dict(requires_grad=False, lengths=True, bidirectional=True, dtype=torch.float32),
]


@pytest.mark.parametrize("case", OP_CASES, ids=_ids)
@pytest.mark.parametrize("cell", KINDS)
def test_opcheck_stack_forward(cell, case):
    res = torch.library.opcheck(torch.ops.fusedlstm.stack_forward.default, _op_args(cell, **case))
    assert set(res) == _ALL_CHECKS and all(v == "SUCCESS" for v in res.values()), res


@pytest.mark.parametrize("case", OP_CASES, ids=_ids)
@pytest.mark.parametrize("cell", KINDS)
def test_opcheck_stack_backward(cell, case):
    fargs = _op_args(cell, **dict(case, requires_grad=False))
    x, w, h0, c0, lens, mask, L, bidir, proj, has_bias, bf, _, code = fargs
    y, hn, cn, reserve = torch.ops.fusedlstm.stack_forward(*fargs)
    assert cn.numel() == 0
    torch.manual_seed(1)
    dy, dhn = torch.randn_like(y), torch.randn_like(hn)
    flat = torch.cat([t.reshape(-1) for t in w])
    for grads in ((dy, dhn), (dy, None), (None, dhn)):
        bargs = (x, flat, h0, None, lens, mask, reserve, *grads, None, L, bidir, proj, has_bias, bf, code)
        res = torch.library.opcheck(torch.ops.fusedlstm.stack_backward.default, bargs)
        assert set(res) == _ALL_CHECKS and all(v == "SUCCESS" for v in res.values()), res


def _cell_op_args(cell, B, requires_grad, bias=True):
    g = torch.Generator().manual_seed(B)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(requires_grad)  # noqa: E731
    I, H, rows = 5, 7, GATES[cell] * 7
    return (r(B, I), r(B, H), None, r(rows, I), r(rows, H), r(rows) if bias else None, r(rows) if bias else None,
            CELL_CODE[cell])


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", KINDS)
def test_opcheck_cell_ops(cell, requires_grad, bias):
    for op in (torch.ops.fusedlstm.cell_forward.default, torch.ops.fusedlstm.cell_train_forward.default):
        if op is torch.ops.fusedlstm.cell_forward.default and requires_grad:
            continue  # inference only: no autograd formula, by design
        res = torch.library.opcheck(op, _cell_op_args(cell, 3, requires_grad, bias))
        assert set(res) == _ALL_CHECKS and all(v == "SUCCESS" for v in res.values()), res
    x, h, _, w_ih, w_hh, b_ih, b_hh, code = _cell_op_args(cell, 3, False, bias)
    h1, _, acts = torch.ops.fusedlstm.cell_train_forward(x, h, None, w_ih, w_hh, b_ih, b_hh, code)
    for dh in (torch.randn_like(h1), None):
        res = torch.library.opcheck(torch.ops.fusedlstm.cell_backward.default,
                                    (x, h, None, w_ih, w_hh, acts, None, dh, None, bias, code))
        assert set(res) == _ALL_CHECKS and all(v == "SUCCESS" for v in res.values()), res


GRADCHECK_CASES = [
    dict(num_layers=2, bidirectional=True, lengths=True, batch_first=False, hx=True),
    dict(num_layers=2, bidirectional=False, lengths=False, batch_first=True, hx=True),
    dict(num_layers=1, bidirectional=True, lengths=True, batch_first=True, hx=False),
    dict(num_layers=2, bidirectional=True, lengths=False, batch_first=False, hx=False, bias=False),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=_ids)
@pytest.mark.parametrize("cell", KINDS)
def test_gradcheck(cell, case, seed):
    case = dict(case)
    use_lengths, hx = case.pop("lengths"), case.pop("hx")
    torch.manual_seed(seed)
    I, H, T, B = 2, 3, 3, 2  # small: gradcheck differentiates every input numerically
    m = ft_stack(cell, I, H, dtype=torch.float64, **case)
    D = 2 if case["bidirectional"] else 1
    names = [n for n, _ in m.named_parameters()]
    bf = case["batch_first"]
    lengths = torch.tensor([1, 3])
    x = torch.randn((B, T, I) if bf else (T, B, I), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(case["num_layers"] * D, B, H, dtype=torch.float64, requires_grad=hx)
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())

    def f(x, h0, *params):
        inp = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False) if use_lengths else x
        y, h = torch.func.functional_call(m, dict(zip(names, params)), (inp, h0 if hx else None))
        return (y.data if use_lengths else y), h

    assert torch.autograd.gradcheck(f, (x, h0) + params, check_batched_grad=True)


@pytest.mark.parametrize("B, bias", [(2, True), (2, False), (ft._CELL_UNPACKED_MAX_ROWS + 1, True)],
                         ids=["unpacked", "unpacked-no-bias", "stack-path"])
@pytest.mark.parametrize("cell", KINDS)
def test_gradcheck_cell(cell, B, bias, seed):
    torch.manual_seed(seed)
    c = ft_cell(cell, 3, 5, bias=bias, dtype=torch.float64)
    names = [n for n, _ in c.named_parameters()]
    x = torch.randn(B, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, 5, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in c.parameters())

    def f(x, h, *params):
        return torch.func.functional_call(c, dict(zip(names, params)), (x, h))

    assert torch.autograd.gradcheck(f, (x, h) + params, check_batched_grad=True,
                                    fast_mode=B > ft._CELL_UNPACKED_MAX_ROWS)


@pytest.mark.parametrize("module", ["stack", "cell"])
@pytest.mark.parametrize("cell", KINDS)
def test_vmap_and_double_backward(cell, module, seed):
    """torch.func.vmap over independent problems and over the backward: the same bits as
    a loop; differentiating the gradient is refused clearly."""
    torch.manual_seed(0)
    if module == "stack":
        m, shape = ft_stack(cell, 3, 4, num_layers=2, bidirectional=True, dtype=torch.float64), (5, 2, 3)
    else:
        m, shape = ft_cell(cell, 3, 4, dtype=torch.float64), (2, 3)

    def first(out):
        return out[0] if module == "stack" else out

    g = torch.Generator().manual_seed(seed)
    xb = torch.randn((3,) + shape, generator=g, dtype=torch.float64)
    assert torch.equal(torch.func.vmap(lambda x: first(m(x)))(xb), torch.stack([first(m(x)) for x in xb]))
    with torch.no_grad():
        assert torch.equal(torch.func.vmap(lambda x: first(m(x)))(xb), torch.stack([first(m(x)) for x in xb]))
    x = xb[0].clone().requires_grad_(True)
    y = first(m(x))
    v = torch.randn((3,) + tuple(y.shape), generator=g, dtype=torch.float64)
    inputs = [x] + list(m.parameters())
    batched = torch.func.vmap(lambda vi: torch.autograd.grad(y, inputs, vi, retain_graph=True))(v)
    for i, vi in enumerate(v):
        for k, want in enumerate(torch.autograd.grad(y, inputs, vi, retain_graph=True)):
            assert torch.equal(batched[k][i], want), (i, k)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.pow(2).sum().backward()


@pytest.mark.parametrize("cls", ["GRU", "RNN", "GRUCell", "RNNCell"])
def test_jit_script_refuses_trace_and_export_work(cls):
    torch.manual_seed(0)
    m = getattr(ft, cls)(3, 4)
    x = torch.randn(5, 2, 3) if not cls.endswith("Cell") else torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=f"cannot compile fusedlstm.torch.{cls}"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(m)
    with torch.no_grad():
        want = torch.utils._pytree.tree_leaves(m(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(m, (x,))
    for run in (traced, torch.export.export(m, (x,)).module()):
        with torch.no_grad():
            got = torch.utils._pytree.tree_leaves(run(x))
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


# --------------------------------------------------------------------------------------
# dtypes: autocast, low-precision modules
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["GRU", "RNN", "GRUCell", "RNNCell"])
def test_autocast_cpu_like_nn(cls, seed):
    """Under autocast("cpu", bf16) each module runs in the dtype its nn counterpart
    does: nn.GRU and nn.GRUCell stay float32 (aten::gru / gru_cell are not on CPU
    autocast's list), nn.RNN and nn.RNNCell give bf16 (their matmuls are). In float32
    ours equals its own run without autocast. In bf16 it computes in float32 on the
    bf16-rounded input and weights and rounds the result once: against float64 on
    those rounded values, |err| <= u |o| + 2**-20 max(1, max|o|) (u = 2**-8)."""
    torch.manual_seed(seed)
    kw = dict(num_layers=2, bidirectional=True) if not cls.endswith("Cell") else {}
    ref, ours = getattr(nn, cls)(3, 5, **kw), getattr(ft, cls)(3, 5, **kw)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((4, 2, 3) if kw else (2, 3), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = torch.utils._pytree.tree_leaves(ours(x)), torch.utils._pytree.tree_leaves(ref(x))
    assert [t.dtype for t in got] == [t.dtype for t in want]
    if got[0].dtype == torch.float32:
        plain = torch.utils._pytree.tree_leaves(ours(x))
        assert all(torch.equal(a, b) for a, b in zip(got, plain))
        return
    truth = getattr(nn, cls)(3, 5, **kw, dtype=torch.float64)
    truth.load_state_dict({k: v.to(torch.bfloat16).double() for k, v in ref.state_dict().items()})
    with torch.no_grad():
        exact = torch.utils._pytree.tree_leaves(truth(x.to(torch.bfloat16).double()))
    for a, b in zip(got, exact):
        if kw:  # a stack runs the CPU's bf16 kernels (issue 12): tests/test_torch_bf16.py's policy
            break
        bound = 2.0 ** -8 * b.abs() + 2.0 ** -20 * max(1.0, float(b.abs().max()))
        assert bool(((a.double() - b).abs() <= bound).all()), float(((a.double() - b).abs() / bound).max())
    sum(t.float().sum() for t in got).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.parametrize("dtype, u", [(torch.bfloat16, 2.0 ** -8), (torch.float16, 2.0 ** -11)])
@pytest.mark.parametrize("cell", KINDS)
def test_low_precision_module(cell, dtype, u, seed):
    """A module converted to bf16 / fp16 (no autocast): outputs and gradients keep that
    dtype; the values are exactly representable, so against float64 the only errors are
    the final rounding (<= u |o|) and the float32 arithmetic inside."""
    torch.manual_seed(seed)
    ours = ft_stack(cell, 3, 5, num_layers=2, bidirectional=True).to(dtype)
    truth = nn_stack(cell, 3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    truth.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(seed)).to(dtype).requires_grad_(True)
    y, h = ours(x)
    with torch.no_grad():
        y_t, h_t = truth(x.detach().double())
    for name, a, b in (("y", y, y_t), ("h_n", h, h_t)):
        assert a.dtype == dtype, name
        if dtype == torch.bfloat16:  # the CPU's bf16 kernels (issue 12): tests/test_torch_bf16.py's policy
            continue
        bound = u * b.abs() + 2.0 ** -20 * max(1.0, float(b.abs().max()))
        assert bool(((a.double() - b).abs() <= bound).all()), (name, float(((a.double() - b).abs() / bound).max()))
    (y.double().sum() + h.double().sum()).backward()
    assert x.grad.dtype == dtype
    for n, p in ours.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all(), n


# --------------------------------------------------------------------------------------
# reserve size, devices
# --------------------------------------------------------------------------------------
RESERVE_SHAPES = [dict(T=1, B=1, H=1, proj_size=0, num_layers=1, num_directions=1),
                  dict(T=7, B=3, H=13, proj_size=0, num_layers=3, num_directions=2),
                  dict(T=100, B=16, H=256, proj_size=0, num_layers=2, num_directions=1),
                  dict(T=33, B=5, H=70, proj_size=0, num_layers=1, num_directions=2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", KINDS)
def test_fake_reserve_size_is_the_c_apis(cell, dtype):
    """The fake kernels (torch.compile, opcheck) size a CPU reserve with fusedlstm.h's
    closed form for the cell kind: what the C API asks for."""
    core = _ops._core
    for shape in RESERVE_SHAPES:
        want = core.stack_reserve_bytes(dtype=_ops._core_dtype(dtype), **shape, device_type=core.DEVICE_CPU,
                                        cell=CELL_CODE[cell])
        assert _ops._reserve_nbytes(False, dtype, **shape, cell=CELL_CODE[cell]) == want, shape


def test_cell_codes_are_the_c_apis():
    core = _ops._core
    assert (_ops.CELL_LSTM, _ops.CELL_GRU, _ops.CELL_RNN_TANH, _ops.CELL_RNN_RELU) == \
        (core.CELL_LSTM, core.CELL_GRU, core.CELL_RNN_TANH, core.CELL_RNN_RELU)


@pytest.mark.parametrize("fixed", range(len(FIXED)))
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_cuda_devices_match_nn(cell, dtype, kind, fixed, cuda_device, seed, policy):
    """The modules on a CUDA device (a GPU, or the CPU emulation of the CUDA backend,
    where GRU and RNN take the fallback path) against nn on the CPU."""
    _check_parity(cell, dict(FIXED[fixed], kind=kind), dtype, seed, policy, cuda_device)


@pytest.mark.parametrize("cell", KINDS)
def test_cuda_device_cells_match_nn(cell, cuda_device, rng, policy):
    """GRUCell / RNNCell (their training step: acts saved, cell_backward) on a CUDA device."""
    torch.manual_seed(int(rng.integers(2**31)))
    src = nn_cell(cell, 6, 5, dtype=torch.float64)
    ours = ft_cell(cell, 6, 5, dtype=torch.float64)
    ours.load_state_dict(src.state_dict())
    ours = ours.to(cuda_device)
    x = torch.randn(3, 6, dtype=torch.float64)
    h = torch.randn(3, 5, dtype=torch.float64)
    xs, hs = x.clone().requires_grad_(True), h.clone().requires_grad_(True)
    xo, ho = x.to(cuda_device).requires_grad_(True), h.to(cuda_device).requires_grad_(True)
    want, got = src(xs, hs), ours(xo, ho)
    want.sum().backward()
    got.sum().backward()
    check(policy, "h'", got, want, None, torch.float64)
    check(policy, "dx", xo.grad, xs.grad, None, torch.float64)
    check(policy, "dh", ho.grad, hs.grad, None, torch.float64)
    for (name, a), (_, b) in zip(ours.named_parameters(), src.named_parameters()):
        check(policy, "d" + name, a.grad, b.grad, None, torch.float64)


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def _raises_like_nn(build_nn, build_ours):
    """Both calls fail, ours with an instance of the type nn's raised; ours is also a
    ValueError or TypeError, the library's rule for bad input. Returns our exception."""
    with pytest.raises(Exception) as theirs:
        build_nn()
    with pytest.raises(Exception) as ours:
        build_ours()
    assert isinstance(ours.value, theirs.type), (
        f"nn raised {theirs.type.__name__}: {theirs.value}; ours {ours.type.__name__}: {ours.value}")
    assert isinstance(ours.value, (ValueError, TypeError)), ours.value
    return ours.value


def _pair(make_nn, make_ours, cell, *args, **kw):
    torch.manual_seed(0)
    theirs, ours = make_nn(cell, *args, **kw), make_ours(cell, *args, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


_X, _H = torch.randn(5, 2, 3), torch.zeros(4, 2, 4)
_PACKED = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
BAD_INPUT = {  # nn.GRU / nn.RNN (3, 4, num_layers=2, bidirectional=True)
    "x-1d": (torch.randn(3),),
    "x-4d": (torch.randn(2, 3, 4, 3),),
    "x-input-size": (torch.randn(5, 2, 4),),
    "x-float64": (_X.double(),),
    "x-int64": (_X.long(),),
    "x-float16": (_X.half(),),
    "x-float64-and-hx": (_X.double(), _H.double()),
    "h0-layers": (_X, torch.zeros(2, 2, 4)),
    "h0-batch": (_X, torch.zeros(4, 3, 4)),
    "h0-hidden": (_X, torch.zeros(4, 2, 5)),
    "batched-x-2d-hx": (_X, _H[:, 0]),
    "batched-x-4d-hx": (_X, _H[None]),
    "unbatched-x-3d-hx": (torch.randn(5, 3), _H),
    "unbatched-hx-hidden": (torch.randn(5, 3), torch.zeros(4, 5)),
    "h0-float64": (_X, _H.double()),
    "h0-int64": (_X, _H.long()),
    "packed-input-size": (pack_padded_sequence(torch.randn(5, 2, 4), torch.tensor([5, 3])),),
    "packed-hx-batch": (_PACKED, torch.zeros(4, 3, 4)),
    "packed-float64": (pack_padded_sequence(torch.randn(5, 2, 3).double(), torch.tensor([5, 3])),),
}


@pytest.mark.parametrize("case", BAD_INPUT)
@pytest.mark.parametrize("cell", KINDS)
def test_bad_input_raises_like_nn(cell, case):
    theirs, ours = _pair(nn_stack, ft_stack, cell, 3, 4, num_layers=2, bidirectional=True)
    args = BAD_INPUT[case]
    _raises_like_nn(lambda: theirs(*args), lambda: ours(*args))
    ours(_X, _H)  # the good call works


@pytest.mark.parametrize("cell", KINDS)
def test_hx_not_a_tensor_is_a_type_error(cell):
    """nn.GRU / nn.RNN fail on hx.dim() (AttributeError) for an LSTM-style tuple; ours
    says what hx must be."""
    m = ft_stack(cell, 3, 4)
    with pytest.raises(TypeError, match="hx must be a tensor"):
        m(_X, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match="hx must be a tensor"):
        ft_cell(cell, 3, 4)(torch.randn(2, 3), (torch.zeros(2, 4),))


_CX, _CH = torch.randn(2, 3), torch.zeros(2, 4)
CELL_BAD_INPUT = {  # nn.GRUCell / nn.RNNCell (3, 4)
    "x-3d": (torch.randn(2, 3, 3),),
    "x-0d": (torch.tensor(1.0),),
    "x-input-size": (torch.randn(2, 5),),
    "h-hidden-size": (_CX, torch.zeros(2, 5)),
    "h-batch": (_CX, torch.zeros(3, 4)),
    "h-3d": (_CX, _CH[None]),
    "x-float64": (_CX.double(),),
    "x-int64": (_CX.long(),),
    "h-float64": (_CX, _CH.double()),
    "unbatched-x-batched-hx": (_CX[0], _CH),
    "batched-x-1d-hx": (_CX, _CH[0]),
}


@pytest.mark.parametrize("case", CELL_BAD_INPUT)
@pytest.mark.parametrize("cell", KINDS)
def test_cell_bad_input_raises_like_nn(cell, case):
    theirs, ours = _pair(nn_cell, ft_cell, cell, 3, 4)
    args = CELL_BAD_INPUT[case]
    _raises_like_nn(lambda: theirs(*args), lambda: ours(*args))
    ours(_CX, _CH)


CONSTRUCTOR_CASES = [
    ((3, 4), dict(bias=0)), ((3, 4), dict(bias="True")), ((3, 4), dict(batch_first=1)),
    ((3, 4), dict(dropout=-0.1)), ((3, 4), dict(dropout=1.5)), ((3, 4), dict(dropout=True)),
    ((3, 4), dict(dropout="0.5")), ((3, 4), dict(num_layers=0)), ((3, 4), dict(num_layers=2.5)),
    ((3, 0), {}), ((3, -1), {}), ((3, 4.0), {}), ((0, 4), {}), ((3.0, 4), {}),
    ((3, 4), dict(proj_size=0)), ((3, 4), dict(proj_size=2)), ((3, 4), dict(no_such_argument=1)),
]
_NN_CHECKS = ("dropout should be", "bias should be", "batch_first should be", "input_size", "hidden_size",
              "num_layers must", "proj_size argument")


@pytest.mark.parametrize("args, kw", CONSTRUCTOR_CASES, ids=[f"{a}-{k}" for a, k in CONSTRUCTOR_CASES])
@pytest.mark.parametrize("cell", KINDS)
def test_constructor_raises_like_nn(cell, args, kw):
    err = _raises_like_nn(lambda: nn_stack(cell, *args, **kw), lambda: ft_stack(cell, *args, **kw))
    with pytest.raises(type(err)) as theirs:
        nn_stack(cell, *args, **kw)
    if str(theirs.value).startswith(_NN_CHECKS):  # one of nn.RNNBase's own checks: its message too
        assert str(err) == str(theirs.value)


def test_bad_nonlinearity_raises_like_nn():
    """nn.RNN refuses it at construction (ValueError, same message here); nn.RNNCell at
    its first forward (RuntimeError): ours at construction, with an error that is both."""
    err = _raises_like_nn(lambda: nn.RNN(3, 4, nonlinearity="sigmoid"), lambda: ft.RNN(3, 4, nonlinearity="sigmoid"))
    with pytest.raises(ValueError) as theirs:
        nn.RNN(3, 4, nonlinearity="sigmoid")
    assert str(err) == str(theirs.value)
    _raises_like_nn(lambda: nn.RNNCell(3, 4, nonlinearity="sigmoid")(_CX),
                    lambda: ft.RNNCell(3, 4, nonlinearity="sigmoid"))
    _raises_like_nn(lambda: nn.RNN(3, 4, 1, "gelu"), lambda: ft.RNN(3, 4, 1, "gelu"))


@pytest.mark.parametrize("cell", KINDS)
def test_constructor_warns_like_nn(cell):
    with pytest.warns(UserWarning, match="num_layers"):
        ft_stack(cell, 3, 4, dropout=0.5)


@pytest.mark.parametrize("cell", KINDS)
def test_cell_constructor_refuses_empty_sizes(cell):
    for args in ((0, 4), (3, 0)):
        with pytest.raises(ValueError, match="_size must be greater than zero"):
            ft_cell(cell, *args)
