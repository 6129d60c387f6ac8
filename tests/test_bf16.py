"""bfloat16 on the CPU through the numpy API (issue 12): arrays of ml_dtypes.bfloat16
in every function and layer class (all-bfloat16: outputs and gradients in bfloat16),
and compute="bf16" on float32 arrays (bfloat16 GEMM operands, float32 outputs).

Every output is held to the tolerance policy's bfloat16 rule (fusedlstm/tolerance.py,
tests/conftest.py): error against the float64 reference on the same (bfloat16) values at
most twice that of the plain implementation that rounds x, W_ih, W_hh and h_{t-1} to
bfloat16 before each gate product and accumulates in float32 ("bfloat16_cpu";
"float32_bf16" for compute="bf16", whose outputs are not rounded: the kernels' own
precision shows). Every test runs on every ISA path (the `isa` fixture: avx512_bf16's
vdpbf16ps kernels, the emulated ones of avx512 / avx2 / generic), with fresh random
inputs, odd sizes and outputs NaN-poisoned before the kernels run (conftest's autouse
debug_poison), so a kernel that skips or miscomputes an element fails.

Skipped, saying so, without ml_dtypes (pip install ml_dtypes); the TypeError naming it
is tested without it.
"""

import os
import sys

import numpy as np
import pytest

from conftest import assert_policy, reference, tolerance

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - the extras install it
    ml_dtypes = None

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
FAMILY = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}
G = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
LAYER = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


@pytest.fixture
def BF16():
    if ml_dtypes is None:
        pytest.skip("bfloat16 numpy arrays need ml_dtypes (pip install ml_dtypes)")
    return np.dtype(ml_dtypes.bfloat16)


def _f32(a):
    return None if a is None else np.asarray(a, np.float32)


# --------------------------------------------------------------------------------------
# one layer, one direction: the functional API
# --------------------------------------------------------------------------------------
def make_inputs(rng, cell, *, T, B, I, H, mode="many_to_many", feed="repeat", lengths=False, batch_first=False,
                dtype):
    """x, weights, states and upstream gradients of one call, in dtype (bfloat16 values
    are rounded from float32 draws: the library and the references see the same ones)."""
    s = 1.5 / np.sqrt(H)
    if mode == "one_to_many":
        x = rng.standard_normal((B, I))
    else:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    a = dict(x=x, w_ih=rng.uniform(-s, s, (G[cell] * H, I)), w_hh=rng.uniform(-s, s, (G[cell] * H, H)),
             b_ih=rng.uniform(-0.5, 0.5, G[cell] * H), b_hh=rng.uniform(-0.5, 0.5, G[cell] * H),
             h0=0.5 * rng.standard_normal((B, H)))
    if cell == "lstm":
        a["c0"] = rng.standard_normal((B, H))
    opts = dict(mode=mode, batch_first=batch_first)
    if mode == "one_to_many":
        opts.update(steps=T, feed=feed)
    if lengths:
        lens = rng.integers(1, T + 1, B)
        lens[1 % B] = 1
        opts["lengths"] = lens
    y_shape = (B, H) if mode == "many_to_one" else ((B, T, H) if batch_first else (T, B, H))
    ups = dict(dy=rng.standard_normal(y_shape), dh_n=rng.standard_normal((B, H)))
    if cell == "lstm":
        ups["dc_n"] = rng.standard_normal((B, H))
    cast = lambda v: np.asarray(np.asarray(v, np.float32), dtype)  # noqa: E731
    return {k: cast(v) for k, v in a.items()}, opts, {k: cast(v) for k, v in ups.items()}


def run_library(fl, cell, arrays, opts, ups, **extra):
    fam = FAMILY[cell]
    kw = dict(opts, **extra)
    if fam == "rnn":
        kw["nonlinearity"] = cell[4:]
    res = getattr(fl, f"{fam}_forward")(**arrays, training=True, **kw)
    grads = getattr(fl, f"{fam}_backward")(res, **ups)
    out = dict(y=res.y, h_n=res.h_n, c_n=getattr(res, "c_n", None))
    out.update({k: getattr(grads, k, None) for k in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")})
    return out


def run_reference(cell, arrays, opts, ups, *, precision, scope=None):
    """(ref64, plain) for the policy: float64 on the same values, and the plain
    implementation of `precision` (tolerance.PRECISIONS; scope: another round_scope)."""
    def run(dtype, round_operands=None, scope="all"):
        res = reference.forward(**arrays, cell=cell, dtype=dtype, round_operands=round_operands,
                                round_scope=scope, **opts)
        g = reference.backward(res, **ups)
        return dict(y=res.y, h_n=res.h_n, c_n=res.c_n, dx=g.dx, dh0=g.dh0, dc0=g.dc0, dw_ih=g.dw_ih,
                    dw_hh=g.dw_hh, db_ih=g.db_ih, db_hh=g.db_hh)

    ref64 = run(np.float64)
    arithmetic, operands, storage = tolerance.plain_precision(precision)
    plain = run(arithmetic, operands, scope or tolerance.plain_scope(precision))
    if storage is not None:
        plain = {k: None if v is None else storage(v) for k, v in plain.items()}
    return ref64, plain


def check_all(label, got, ref64, plain, *, dtype, precision):
    """The policy (tolerance.check) for every output and gradient."""
    for name, want in ref64.items():
        if want is None:
            assert got[name] is None, f"{label} {name}: expected None"
            continue
        assert_policy(f"{label} {name}", got[name], want, plain[name], dtype=dtype, precision=precision)


CONFIGS = [
    # (id, T, B, I, H, options)
    ("m2m", 5, 3, 7, 9, dict()),
    ("m2m-len-bf", 6, 5, 13, 17, dict(lengths=True, batch_first=True)),
    ("m2m-rev-len", 7, 4, 5, 11, dict(lengths=True, reverse=True)),
    ("m2o-len", 6, 3, 9, 19, dict(mode="many_to_one", lengths=True)),
    ("m2o-rev", 4, 2, 3, 33, dict(mode="many_to_one", reverse=True)),
    ("o2m-repeat", 5, 3, 7, 9, dict(mode="one_to_many", feed="repeat")),
    ("o2m-first", 4, 5, 6, 13, dict(mode="one_to_many", feed="first")),
    ("o2m-output", 5, 3, 15, 15, dict(mode="one_to_many", feed="output")),
    ("wide", 3, 17, 64, 70, dict()),  # more than one SIMD block of H and of B
]


CONFIG_IDS = [c[0] for c in CONFIGS]


def _split(opts):
    make = {k: v for k, v in opts.items() if k in ("mode", "feed", "lengths", "batch_first")}
    return make, {k: v for k, v in opts.items() if k == "reverse"}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_bf16_arrays_forward_backward(cfg, cell, isa, rng, fl, BF16):
    """bfloat16 arrays: outputs and gradients in bfloat16, within the bfloat16 rule."""
    _, T, B, I, H, opts = cfg
    make, extra = _split(opts)
    arrays, o, ups = make_inputs(rng, cell, T=T, B=B, I=I, H=H, dtype=BF16, **make)
    o.update(extra)
    got = run_library(fl, cell, arrays, o, ups)
    ref64, plain = run_reference(cell, arrays, o, ups, precision="bfloat16_cpu")
    check_all(f"{cell} {cfg[0]} isa={isa}", got, ref64, plain, dtype=BF16, precision="bfloat16_cpu")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_compute_bf16_on_float32(cfg, cell, isa, rng, fl):
    """compute="bf16" on float32 arrays: float32 outputs and gradients; the forward
    within the plain bf16-operand implementation's bound (no output rounding to hide
    behind), the backward float32 on its values. No ml_dtypes needed."""
    _, T, B, I, H, opts = cfg
    make, extra = _split(opts)
    arrays, o, ups = make_inputs(rng, cell, T=T, B=B, I=I, H=H, dtype=np.float32, **make)
    o.update(extra)
    got = run_library(fl, cell, arrays, o, ups, compute="bf16")
    ref64, plain = run_reference(cell, arrays, o, ups, precision="float32_bf16")
    # the operands were rounded: strict float32 differs by about bfloat16's precision, far
    # more than float32's (so compute="bf16" cannot have been dropped on the way)
    strict = run_library(fl, cell, arrays, o, ups)
    scale = max(1.0, float(np.abs(ref64["y"]).max()))
    assert float(np.abs(got["y"] - strict["y"]).max()) > 2.0 ** -16 * scale
    check_all(f"{cell} {cfg[0]} isa={isa}", got, ref64, plain, dtype=np.float32, precision="float32_bf16")


def test_compute_bf16_refusals(fl, rng):
    arrays, o, _ = make_inputs(rng, "lstm", T=2, B=2, I=3, H=4, dtype=np.float64)
    with pytest.raises(TypeError, match="float64"):
        fl.lstm_forward(**arrays, compute="bf16")
    with pytest.raises(ValueError, match="compute"):
        fl.lstm_forward(**arrays, compute="bfloat16")
    with pytest.raises(TypeError, match="float64"):
        fl.LSTM(3, 4, dtype=np.float64).forward(arrays["x"], compute="bf16")


def test_mixed_dtypes_name_ml_dtypes(fl, rng, BF16):
    arrays, _, _ = make_inputs(rng, "lstm", T=2, B=2, I=3, H=4, dtype=BF16)
    arrays["x"] = arrays["x"].astype(np.float32)
    with pytest.raises(TypeError, match=r"x.*float32.*bfloat16.*ml_dtypes\.bfloat16"):
        fl.lstm_forward(**arrays)


@pytest.mark.parametrize("cell", CELLS)
def test_lstm_projection_bf16(cell, isa, rng, fl, BF16):
    """proj_size (the LSTM's w_hr; the projection stays float32 inside): lstm_forward with
    w_hr against the reference stack of one layer. Other cells have no projection: their
    bfloat16 grid is test_bf16_arrays_forward_backward's."""
    if cell != "lstm":
        pytest.skip("proj_size is the LSTM's only")
    T, B, I, H, R = 6, 5, 7, 13, 5
    s = 1.5 / np.sqrt(H)
    cast = lambda v: np.asarray(np.asarray(v, np.float32), BF16)  # noqa: E731
    x = cast(rng.standard_normal((T, B, I)))
    w = dict(w_ih=cast(rng.uniform(-s, s, (4 * H, I))), w_hh=cast(rng.uniform(-s, s, (4 * H, R))),
             b_ih=cast(rng.uniform(-0.5, 0.5, 4 * H)), b_hh=cast(rng.uniform(-0.5, 0.5, 4 * H)),
             w_hr=cast(rng.uniform(-s, s, (R, H))))
    h0, c0 = cast(0.5 * rng.standard_normal((B, R))), cast(rng.standard_normal((B, H)))
    lens = rng.integers(1, T + 1, B)
    dy, dh_n, dc_n = cast(rng.standard_normal((T, B, R))), cast(rng.standard_normal((B, R))), \
        cast(rng.standard_normal((B, H)))
    res = fl.lstm_forward(x, h0=h0, c0=c0, lengths=lens, training=True, **w)
    g = fl.lstm_backward(res, dy, dh_n, dc_n)
    got = dict(y=res.y, h_n=res.h_n, c_n=res.c_n, dx=g.dx, dh0=g.dh0, dc0=g.dc0, dw_ih=g.dw_ih, dw_hh=g.dw_hh,
               db_ih=g.db_ih, dw_hr=g.dw_hr)

    def run(dtype, rnd=None, scope="all"):
        r = reference.stack_forward(x, [w], h0[None], c0[None], lengths=lens, dtype=dtype, round_operands=rnd,
                                    round_scope=scope)
        gr = reference.stack_backward(r, dy, dh_n[None], dc_n[None])
        c = gr["cells"][0]
        return dict(y=r.y, h_n=r.h_n[0], c_n=r.c_n[0], dx=gr["dx"], dh0=gr["dh0"][0], dc0=gr["dc0"][0],
                    dw_ih=c["w_ih"], dw_hh=c["w_hh"], db_ih=c["b"], dw_hr=c["w_hr"])

    _, operands, storage = tolerance.plain_precision("bfloat16_cpu")
    ref64 = run(np.float64)
    plain = {k: storage(v) for k, v in run(np.float32, operands, "gates").items()}
    check_all(f"lstm proj isa={isa}", got, ref64, plain, dtype=BF16, precision="bfloat16_cpu")


# --------------------------------------------------------------------------------------
# the single step
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B, I, H", [(1, 3, 5), (5, 17, 33), (16, 64, 70)])
@pytest.mark.parametrize("dtype", ["bfloat16", "compute"])
def test_cell_step(dtype, B, I, H, cell, isa, rng, fl, BF16):
    """lstm_cell / gru_cell / rnn_cell: one step, against the reference's T = 1 (the
    single step's backward: test_torch_bf16.py, through the torch cell operators)."""
    bf = dtype == "bfloat16"
    arrays, _, _ = make_inputs(rng, cell, T=1, B=B, I=I, H=H, dtype=BF16 if bf else np.float32)
    x = arrays.pop("x")[0]
    fam = FAMILY[cell]
    extra = {} if bf else {"compute": "bf16"}
    if fam == "rnn":
        extra["nonlinearity"] = cell[4:]
    h0, c0 = arrays.pop("h0"), arrays.pop("c0", None)
    if cell == "lstm":
        h, c = fl.lstm_cell(x, h0, c0, **arrays, **extra)
    else:
        h, c = getattr(fl, f"{fam}_cell")(x, h0, **arrays, **extra), None
    precision = "bfloat16_cpu" if bf else "float32_bf16"

    def run(dt, rnd=None, scope="all"):
        r = reference.forward(x[None], h0=h0, c0=c0, cell=cell, dtype=dt, round_operands=rnd, round_scope=scope,
                              **arrays)
        return dict(h=r.h_n, c=r.c_n)

    _, operands, storage = tolerance.plain_precision(precision)
    plain = run(np.float32, operands, "gates")
    if storage is not None:
        plain = {k: None if v is None else storage(v) for k, v in plain.items()}
    check_all(f"{cell}_cell isa={isa}", dict(h=h, c=c), run(np.float64), plain,
              dtype=BF16 if bf else np.float32, precision=precision)
    if not bf:  # compute="bf16" reached the step: its operands were rounded (strict float32 differs)
        strict = (fl.lstm_cell(x, h0, c0, **arrays)[0] if cell == "lstm" else
                  getattr(fl, f"{fam}_cell")(x, h0, **arrays, **{k: v for k, v in extra.items() if k != "compute"}))
        assert float(np.abs(h - strict).max()) > 2.0 ** -16 * max(1.0, float(np.abs(strict).max()))


# --------------------------------------------------------------------------------------
# layer stacks: fusedlstm.LSTM / GRU / RNN
# --------------------------------------------------------------------------------------
STACKS = [
    # (id, num_layers, bidirectional, dropout, proj_size, lengths)
    ("L2", 2, False, 0.0, 0, False),
    ("L1-bidir-len", 1, True, 0.0, 0, True),
    ("L2-bidir-drop-len", 2, True, 0.5, 0, True),
    ("L2-proj", 2, True, 0.0, 3, False),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("stack", STACKS, ids=[s[0] for s in STACKS])
@pytest.mark.parametrize("dtype", ["bfloat16", "compute"])
def test_layer_stack(dtype, stack, cell, isa, rng, fl, BF16):
    """The layer classes with dtype=bfloat16 (outputs and gradients bfloat16) and float32
    layers with compute="bf16", forward and gradients of every parameter."""
    name, L, bidir, p, R, with_lengths = stack
    if R and cell != "lstm":
        pytest.skip("proj_size is the LSTM's only")
    bf = dtype == "bfloat16"
    dt = BF16 if bf else np.dtype(np.float32)
    T, B, I, H = 5, 3, 7, 9
    kw = dict(num_layers=L, bidirectional=bidir, dropout=p, dtype=dt, seed=int(rng.integers(2**31)))
    if R:
        kw["proj_size"] = R
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    layer = getattr(fl, LAYER[cell])(I, H, **kw)
    assert all(v.dtype == dt for v in layer.params.values())
    D, hout = (2 if bidir else 1), (R or H)
    cast = lambda v: np.asarray(np.asarray(v, np.float32), dt)  # noqa: E731
    x = cast(rng.standard_normal((T, B, I)))
    h0 = cast(0.5 * rng.standard_normal((L * D, B, hout)))
    c0 = cast(rng.standard_normal((L * D, B, H))) if cell == "lstm" else None
    lens = None
    if with_lengths:
        lens = rng.integers(1, T + 1, B)
        lens[1 % B] = 1
    dy = cast(rng.standard_normal((T, B, D * hout)))
    dh_n = cast(rng.standard_normal((L * D, B, hout)))
    dc_n = cast(rng.standard_normal((L * D, B, H))) if cell == "lstm" else None
    mask_seed = int(rng.integers(2**31))
    masks = None
    if p > 0:  # as layers.py draws them (p = 0.5: the factor 2 is exact in bfloat16)
        masks = (np.random.default_rng(mask_seed).random((L - 1, T, B, D * hout)) < 1 - p) / (1 - p)
    hx = (h0, c0) if cell == "lstm" else h0
    res = layer.forward(x, hx, lengths=lens, training=True, rng=np.random.default_rng(mask_seed),
                        compute=None if bf else "bf16")
    grads = layer.backward(res, dy, dh_n, dc_n) if cell == "lstm" else layer.backward(res, dy, dh_n)
    got = dict(y=res.y, h_n=res.h_n, c_n=getattr(res, "c_n", None), dx=grads["x"], dh0=grads["h0"],
               dc0=grads.get("c0"), **{"d:" + k: grads[k] for k in layer.params})

    cells = []
    for k in range(L):
        for suffix in ("", "_reverse")[:D]:
            s = f"_l{k}{suffix}"
            cells.append(dict(w_ih=layer.params["weight_ih" + s], w_hh=layer.params["weight_hh" + s],
                              b_ih=layer.params["bias_ih" + s], b_hh=layer.params["bias_hh" + s],
                              **({"w_hr": layer.params["weight_hr" + s]} if R else {})))

    def run(dtype, rnd=None, scope="all", storage=None):
        r = reference.stack_forward(x, cells, h0, c0, num_layers=L, bidirectional=bidir, lengths=lens,
                                    dropout_masks=masks, cell=cell, dtype=dtype, round_operands=rnd,
                                    round_scope=scope, round_storage=storage)
        g = reference.stack_backward(r, dy, dh_n, dc_n)
        out = dict(y=r.y, h_n=r.h_n, c_n=r.c_n, dx=g["dx"], dh0=g["dh0"], dc0=g["dc0"])
        for pname in layer.params:
            kind, rest = pname.split("_l")
            c = g["cells"][int(rest.split("_")[0]) * D + rest.endswith("_reverse")]
            out["d:" + pname] = c[{"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b", "bias_hh": "b_hh",
                                   "weight_hr": "w_hr"}[kind]]
        return out

    precision = "bfloat16_cpu" if bf else "float32_bf16"
    _, operands, storage = tolerance.plain_precision(precision)
    # bfloat16 arrays: the stack keeps its layer outputs and input gradients in bfloat16 too
    plain = run(np.float32, operands, "gates", storage)
    if storage is not None:
        plain = {k: None if v is None else storage(v) for k, v in plain.items()}
    check_all(f"{LAYER[cell]} {name} isa={isa}", got, run(np.float64), plain, dtype=dt, precision=precision)


# --------------------------------------------------------------------------------------
# ml_dtypes missing, ISAs
# --------------------------------------------------------------------------------------
def test_without_ml_dtypes_a_clear_type_error(fl, monkeypatch):
    """No ml_dtypes: asking for bfloat16 is a TypeError naming it; compute="bf16" on
    float32 arrays does not need it."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes -> ImportError
    with pytest.raises(TypeError, match="ml_dtypes"):
        fl.LSTM(3, 4, dtype="bfloat16")
    x = np.ones((2, 1, 3), np.float32)
    w = np.full((16, 3), 0.1, np.float32), np.full((16, 4), 0.1, np.float32)
    assert fl.lstm_forward(x, *w, compute="bf16").y.dtype == np.float32


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_avx512_bf16_is_offered_where_the_cpu_has_it(fl):
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags to read")
    need = {"avx512_bf16", "avx512f", "avx512dq", "avx512vl", "avx512bw"}
    if os.environ.get("FUSEDLSTM_ISA"):
        pytest.skip("FUSEDLSTM_ISA is set (it may narrow the paths offered)")
    if not need <= flags:
        assert "avx512_bf16" not in fl.available_isas()
        pytest.skip(f"this CPU lacks {sorted(need - flags)}")
    assert fl.available_isas()[0] == "avx512_bf16"
    assert "avx512_bf16" in fl.build_info()["cpu_isas"]


def test_amx_is_not_implemented(fl):
    """No AMX kernels yet: no path is offered under that name, whatever the CPU (an AMX
    CPU runs the avx512_bf16 path)."""
    assert not [n for n in fl.available_isas() if "amx" in n.lower()]
    with pytest.raises(ValueError):
        fl.set_isa("amx")
    pytest.skip("no AMX path yet")
