"""The functional API of the GRU and the Elman RNN (fusedlstm.gru_forward /
gru_backward / gru_cell, rnn_forward / rnn_backward / rnn_cell) against the
float64 reference (fusedlstm.reference with cell="gru", "rnn_tanh",
"rnn_relu"), with the tolerance policy of conftest.py.

Each case runs for each of the three cells, in float32 and float64, on every
ISA path of fusedlstm.available_isas(), with 1 and 2 threads (bitwise equal):
every mode and feed, lengths, reverse, batch_first, missing biases, partial
upstream gradients and odd sizes; forward outputs and every gradient are
checked, padded positions are exactly zero, inputs are not modified.  Also:
non-contiguous inputs give the contiguous results bitwise, a training
result keeps its own copies, the result and gradient types (no c_n / dc0,
the GRU's two bias gradients differ, the RNN's are equal), and the errors:
shapes (messages name the argument and the cell's gate rows), the
nonlinearity, a result handed to another cell's backward.  On a CUDA
backend (a GPU, or the CPU emulation of the CUDA backend, as CI runs it) a
subset of the problems goes through the device array path (the CUDA fallback
path runs GRU and RNN).
"""

import numpy as np
import pytest

import fusedlstm
from fusedlstm import _core, _host
from test_forward_backward import assert_bitwise_equal, snapshot, time_major  # the LSTM's, shared

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
CELLS = ["gru", "rnn_tanh", "rnn_relu"]
GATES = {"gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
OUTPUTS = ("y", "h_n")
GRADS = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")

M2M, M2O, O2M, CELL = "many_to_many", "many_to_one", "one_to_many", "cell"


# --------------------------------------------------------------------------------------
# calling the library by cell
# --------------------------------------------------------------------------------------
def nonlinearity(cell):
    return cell[len("rnn_"):]


def forward(cell, *args, **kwargs):
    if cell == "gru":
        return fusedlstm.gru_forward(*args, **kwargs)
    return fusedlstm.rnn_forward(*args, nonlinearity=nonlinearity(cell), **kwargs)


def backward(cell, res, **upstream):
    return (fusedlstm.gru_backward if cell == "gru" else fusedlstm.rnn_backward)(res, **upstream)


def step(cell, *args, **kwargs):
    if cell == "gru":
        return fusedlstm.gru_cell(*args, **kwargs)
    return fusedlstm.rnn_cell(*args, nonlinearity=nonlinearity(cell), **kwargs)


# --------------------------------------------------------------------------------------
# random problems
# --------------------------------------------------------------------------------------
class Problem:
    """forward(cell, *args, **kwargs); backward(cell, res, **upstream); the
    reference gets kwargs + cell (ref_kwargs)."""

    def __init__(self, cell, args, kwargs, upstream, lengths, T):
        self.cell, self.args, self.kwargs, self.upstream, self.lengths, self.T = (
            cell, args, kwargs, upstream, lengths, T)

    @property
    def ref_kwargs(self):
        return dict(self.kwargs, cell=self.cell)

    def padded(self):
        if self.lengths is None:
            return None
        return np.arange(self.T)[:, None] >= np.asarray(self.lengths)[None, :]


def make_problem(rng, cell, *, mode=M2M, T=3, B=2, I=3, H=5, feed="repeat", lengths=False, init=True,
                 bias="both", batch_first=False, reverse=False, upstream="all", dtype=np.float64,
                 lengths_dtype=np.int64):
    """As conftest.make_problem, for a cell of G gate blocks and no cell state.
    upstream: "all" (dy, dh_n), "dy", "states" (dh_n) or "none"."""
    G = GATES[cell]
    scale = 1.5 / np.sqrt(H)
    x = rng.standard_normal((B, I) if mode == O2M else ((B, T, I) if batch_first else (T, B, I)))
    w_ih = rng.uniform(-scale, scale, (G * H, I))
    w_hh = rng.uniform(-scale, scale, (G * H, H))
    b_ih = rng.uniform(-0.5, 0.5, G * H) if bias in ("both", "ih") else None
    b_hh = rng.uniform(-0.5, 0.5, G * H) if bias in ("both", "hh") else None
    h0 = 0.5 * rng.standard_normal((B, H)) if init else None
    lens = None
    if lengths is True:
        lens = rng.integers(1, T + 1, B)
        lens[1 % B] = 1
    elif lengths is not False and lengths is not None:
        lens = np.asarray(lengths)
    if lens is not None:
        lens = lens.astype(lengths_dtype)
    y_shape = (B, H) if mode == M2O else ((B, T, H) if batch_first else (T, B, H))
    dy = rng.standard_normal(y_shape)
    if lens is not None and mode == M2M:  # large at padded steps: must be ignored
        pad = np.arange(T)[:, None] >= lens[None, :]
        (dy.swapaxes(0, 1) if batch_first else dy)[pad] = 100.0 * rng.standard_normal((int(pad.sum()), H))
    ups = {"dy": dy, "dh_n": rng.standard_normal((B, H))}
    ups = {"all": ups, "dy": {"dy": dy}, "states": {"dh_n": ups["dh_n"]}, "none": None}[upstream]
    cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
    args = (cast(x), cast(w_ih), cast(w_hh))
    kwargs = dict(b_ih=cast(b_ih), b_hh=cast(b_hh), h0=cast(h0), mode=mode, batch_first=batch_first)
    if reverse:
        kwargs["reverse"] = True
    if lens is not None:
        kwargs["lengths"] = lens
    if mode == O2M:
        kwargs.update(steps=T, feed=feed)
    if ups is not None:
        ups = {k: cast(v) for k, v in ups.items()}
    return Problem(cell, args, kwargs, ups, lens, T)


def run_library(p, training=True):
    res = forward(p.cell, *p.args, **p.kwargs, training=training)
    out = {k: getattr(res, k) for k in OUTPUTS}
    if p.upstream is not None:
        grads = backward(p.cell, res, **p.upstream)
        out.update({k: getattr(grads, k) for k in GRADS})
    return out


def run_step(p):
    x, w_ih, w_hh = p.args
    kw = p.kwargs
    return {"h_n": step(p.cell, x[0], kw["h0"], w_ih, w_hh, kw["b_ih"], kw["b_hh"])}


def reference(p, reference_outputs, dtype):
    """(ref64, plain32) keyed like run_library's outputs."""
    ref64, plain = reference_outputs(p.args, p.ref_kwargs, p.upstream, dtype=dtype)
    for table in (ref64, plain):
        if table is not None:
            assert table.get("c_n") is None and table.get("dc0") is None, "the reference has a cell state"
    return ref64, plain


# --------------------------------------------------------------------------------------
# against the reference
# --------------------------------------------------------------------------------------
CASES = [
    # many_to_many
    dict(mode=M2M),
    dict(mode=M2M, T=1, B=1, I=1, H=1),
    dict(mode=M2M, T=4, B=3, I=7, H=13, lengths=True),
    dict(mode=M2M, T=5, B=4, I=6, H=37, lengths=True, batch_first=True, init=False, upstream="dy"),
    dict(mode=M2M, T=2, B=1, I=16, H=16, bias="ih", upstream="states"),
    dict(mode=M2M, T=6, B=5, I=3, H=8, lengths=[3, 1, 4, 2, 1], batch_first=True, bias="hh"),
    dict(mode=M2M, T=12, B=9, I=20, H=70, lengths=True),  # the larger case
    dict(mode=M2M, T=5, B=7, I=9, H=130),
    dict(mode=M2M, T=3, B=2, I=5, H=5, lengths=True, lengths_dtype=np.int32, bias="none"),
    dict(mode=M2M, T=7, B=3, I=2, H=17, upstream="none"),  # forward only, training=False
    dict(mode=M2M, T=5, B=4, I=6, H=11, reverse=True),
    dict(mode=M2M, T=6, B=5, I=4, H=19, reverse=True, lengths=True, batch_first=True),
    # many_to_one
    dict(mode=M2O),
    dict(mode=M2O, T=5, B=4, I=7, H=13, lengths=True, batch_first=True),
    dict(mode=M2O, T=1, B=1, I=2, H=1, init=False),
    dict(mode=M2O, T=9, B=6, I=5, H=37, lengths=True, upstream="dy", bias="ih"),
    dict(mode=M2O, T=4, B=3, I=3, H=5, upstream="states", batch_first=True),
    dict(mode=M2O, T=5, B=4, I=3, H=9, reverse=True, lengths=True),
    # one_to_many
    dict(mode=O2M, feed="repeat"),
    dict(mode=O2M, feed="repeat", T=6, B=5, I=7, H=37, batch_first=True, init=False),
    dict(mode=O2M, feed="repeat", T=1, B=1, I=1, H=1),
    dict(mode=O2M, feed="first", T=4, B=2, I=3, H=13),
    dict(mode=O2M, feed="first", T=7, B=1, I=6, H=5, batch_first=True, bias="hh", upstream="dy"),
    dict(mode=O2M, feed="output", T=4, B=3, I=5, H=5),
    dict(mode=O2M, feed="output", T=6, B=1, I=13, H=13, batch_first=True, init=False),
    dict(mode=O2M, feed="output", T=5, B=7, I=37, H=37, upstream="states"),
    # one step (forward only)
    dict(mode=CELL, B=1, I=1, H=1),
    dict(mode=CELL, B=3, I=7, H=13),
    dict(mode=CELL, B=7, I=9, H=130, bias="none"),
    dict(mode=CELL, B=17, I=40, H=70, bias="ih"),
]


def case_id(case):
    parts = [case["mode"] + ("-" + case["feed"] if "feed" in case else "")]
    parts += [f"{k}{case[k]}" for k in "TBIH" if k in case]
    for key in ("lengths", "batch_first", "reverse", "init", "bias", "upstream", "lengths_dtype"):
        if key in case:
            value = case[key]
            value = "given" if isinstance(value, list) else getattr(value, "__name__", value)
            parts.append(f"{key}={value}")
    return "-".join(str(p) for p in parts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, case, dtype, isa, rng, reference_outputs, policy, threads):
    case = dict(case)
    is_step = case["mode"] == CELL
    if is_step:
        case.update(mode=M2M, T=1, init=True, upstream="none")
    p = make_problem(rng, cell, **case, dtype=dtype)
    ref64, plain32 = reference(p, reference_outputs, dtype)
    before = snapshot(p)

    results = {}
    for n in (1, 2):
        with threads(n):
            results[n] = run_step(p) if is_step else run_library(p, p.upstream is not None)

    out = results[1]
    policy.check_all(out, ref64, plain32, dtype=dtype, names=list(out))
    assert_bitwise_equal(results[1], results[2], "1 and 2 threads")
    for original, copy in before:
        assert np.array_equal(original, copy), "the library modified an input array"

    if case["mode"] == M2O:
        assert np.array_equal(out["y"], out["h_n"]), "many_to_one: y must equal h_n"
    if p.lengths is not None and case["mode"] == M2M:
        pad = p.padded()
        bf = case.get("batch_first", False)
        assert np.all(time_major(out["y"], bf)[pad] == 0), "y is not exactly zero at padded steps"
        if "dx" in out:
            assert np.all(time_major(out["dx"], bf)[pad] == 0), "dx is not exactly zero at padded steps"
    if p.lengths is not None and case["mode"] == M2O and "dx" in out:
        assert np.all(time_major(out["dx"], case.get("batch_first", False))[p.padded()] == 0)
    if "db_hh" in out and out["db_ih"] is not None and out["db_hh"] is not None:
        assert out["db_ih"] is not out["db_hh"], "db_ih and db_hh must be separate arrays"
        if cell != "gru":
            assert np.array_equal(out["db_ih"], out["db_hh"]), "an RNN's two bias gradients must be equal"


INFERENCE_CASES = [
    dict(mode=M2M, T=5, B=3, I=4, H=13, lengths=True),
    dict(mode=M2M, T=5, B=3, I=4, H=13, lengths=True, reverse=True, batch_first=True),
    dict(mode=M2O, T=5, B=3, I=4, H=13, lengths=True, batch_first=True),
    dict(mode=O2M, feed="repeat", T=5, B=3, I=4, H=13),
    dict(mode=O2M, feed="first", T=5, B=3, I=4, H=13, batch_first=True),
    dict(mode=O2M, feed="output", T=5, B=3, I=13, H=13, init=False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", INFERENCE_CASES, ids=case_id)
@pytest.mark.parametrize("cell", CELLS)
def test_inference_forward_matches_reference(cell, case, dtype, isa, num_threads, rng, reference_outputs, policy):
    p = make_problem(rng, cell, **case, dtype=dtype, upstream="none")
    ref64, plain32 = reference(p, reference_outputs, dtype)
    policy.check_all(run_library(p, training=False), ref64, plain32, dtype=dtype, names=OUTPUTS)


@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_one_step_sequence(cell, rng):
    """gru_cell / rnn_cell and a T = 1 forward are the same math: they agree to
    float64 rounding (each meets the policy in test_matches_reference)."""
    p = make_problem(rng, cell, mode=M2M, T=1, B=5, I=6, H=9, upstream="none")
    h_step = run_step(p)["h_n"]
    h_seq = run_library(p, training=False)["h_n"]
    np.testing.assert_allclose(h_step, h_seq, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------
# layouts, copies
# --------------------------------------------------------------------------------------
def stepped(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def swapped_memory(a):
    return np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)


def reversed_view(a):
    return np.ascontiguousarray(a[::-1])[::-1]


NONCONTIG = {
    "x": lambda a: swapped_memory(stepped(a)) if a.ndim == 3 else np.asfortranarray(stepped(a)),
    "w_ih": np.asfortranarray,
    "w_hh": lambda a: reversed_view(stepped(a)),
    "b_ih": stepped,
    "b_hh": reversed_view,
    "h0": lambda a: np.asfortranarray(a) if a.shape[0] > 1 else stepped(a),
    "lengths": stepped,
    "dy": lambda a: swapped_memory(stepped(a)) if a.ndim == 3 else np.asfortranarray(stepped(a)),
    "dh_n": stepped,
}

NONCONTIG_CASES = [
    dict(mode=M2M, T=5, B=4, I=6, H=13, lengths=True),
    dict(mode=M2M, T=5, B=4, I=6, H=13, batch_first=True, reverse=True),
    dict(mode=M2O, T=4, B=3, I=5, H=7, lengths=True, batch_first=True),
    dict(mode=O2M, feed="repeat", T=4, B=3, I=5, H=7),
    dict(mode=O2M, feed="output", T=4, B=3, I=7, H=7, batch_first=True),
    dict(mode=CELL, B=3, I=5, H=7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", NONCONTIG_CASES, ids=case_id)
@pytest.mark.parametrize("cell", CELLS)
def test_noncontiguous_inputs(cell, case, dtype, rng):
    case = dict(case)
    is_step = case["mode"] == CELL
    if is_step:
        case.update(mode=M2M, T=1, init=True, upstream="none")
    p = make_problem(rng, cell, **case, dtype=dtype)

    def convert(name, a):
        if not isinstance(a, np.ndarray):
            return a
        out = NONCONTIG[name](a)
        assert np.array_equal(out, a) and out.dtype == a.dtype
        assert out.size <= 1 or not out.flags.c_contiguous, name
        return out

    expected = run_step(p) if is_step else run_library(p)
    kw = {k: convert(k, v) if k in NONCONTIG else v for k, v in p.kwargs.items()}
    if is_step:
        got = {"h_n": step(cell, convert("x", p.args[0][0]), kw["h0"], convert("w_ih", p.args[1]),
                           convert("w_hh", p.args[2]), kw["b_ih"], kw["b_hh"])}
    else:
        nc = Problem(cell, tuple(convert(k, a) for k, a in zip(("x", "w_ih", "w_hh"), p.args)), kw,
                     {k: convert(k, v) for k, v in p.upstream.items()}, p.lengths, p.T)
        got = run_library(nc)
    assert_bitwise_equal(got, expected, "non-contiguous and contiguous inputs")


@pytest.mark.parametrize("mode", [M2M, O2M])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_unaffected_by_inputs_changed_after_forward(cell, mode, rng):
    p = make_problem(rng, cell, mode=mode, T=5, B=3, I=7, H=6)
    expected = run_library(p)
    res = forward(cell, *p.args, **p.kwargs, training=True)
    for a in list(p.args) + [p.kwargs["h0"], p.kwargs["b_ih"], p.kwargs["b_hh"]]:
        a *= -3.0
    grads = backward(cell, res, **p.upstream)
    for name in GRADS:
        assert np.array_equal(getattr(grads, name), expected[name]), name


# --------------------------------------------------------------------------------------
# result and gradient types
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_result_and_gradient_types(cell, rng):
    p = make_problem(rng, cell, T=4, B=3, I=5, H=6, dtype=np.float32)
    res = forward(cell, *p.args, **p.kwargs, training=True)
    kind = "GRU" if cell == "gru" else "RNN"
    assert type(res).__name__ == f"{kind}Result"
    assert isinstance(res, getattr(fusedlstm, f"{kind}Result"))
    assert res.training and res.saved_nbytes > 0 and res.cell == cell
    assert not hasattr(res, "c_n"), "a GRU / RNN result has no cell state"
    text = repr(res)
    assert text.startswith(f"{kind}Result(y(4, 3, 6), h_n(3, 6)") and "float32" in text and "training=True" in text
    if cell != "gru":
        assert res.nonlinearity == nonlinearity(cell) and f"nonlinearity={nonlinearity(cell)!r}" in text
    assert "c_n" not in text
    eval_res = forward(cell, *p.args, **p.kwargs)
    assert not eval_res.training and eval_res.saved_nbytes == 0

    grads = backward(cell, res, **p.upstream)
    assert type(grads).__name__ == f"{kind}Grads"
    assert not hasattr(grads, "dc0") and not hasattr(grads, "dw_hr")
    rows = GATES[cell] * 6
    assert repr(grads) == (f"{kind}Grads(dx=(4, 3, 5), dh0=(3, 6), dw_ih=({rows}, 5), dw_hh=({rows}, 6), "
                           f"db_ih=({rows},), db_hh=({rows},))")
    if cell == "gru":  # the n rows differ (b_hn sits inside r * (...)); r and z rows are equal
        assert not np.array_equal(grads.db_ih[12:], grads.db_hh[12:])
        np.testing.assert_allclose(grads.db_ih[:12], grads.db_hh[:12], rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(grads.db_ih, grads.db_hh) and grads.db_ih is not grads.db_hh

    for bias, present in (("none", (False, False)), ("ih", (True, False)), ("hh", (False, True))):
        q = make_problem(rng, cell, T=3, B=2, I=3, H=4, bias=bias)
        g = backward(cell, forward(cell, *q.args, **q.kwargs, training=True), **q.upstream)
        assert (g.db_ih is not None, g.db_hh is not None) == present, bias


def test_one_step_returns_an_array(rng):
    for cell in CELLS:
        p = make_problem(rng, cell, T=1, B=2, I=3, H=4)
        h = run_step(p)["h_n"]
        assert isinstance(h, np.ndarray) and h.shape == (2, 4) and h.dtype == np.float64


def test_exported_names():
    for name in ("gru_forward", "gru_backward", "gru_cell", "rnn_forward", "rnn_backward", "rnn_cell",
                 "GRUResult", "GRUGrads", "RNNResult", "RNNGrads", "GRU", "RNN"):
        assert name in fusedlstm.__all__ and hasattr(fusedlstm, name), name


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
T_, B_, I_, H_ = 4, 3, 5, 6


def base(cell, mode=M2M):
    p = make_problem(np.random.default_rng(7), cell, mode=mode, T=T_, B=B_, I=I_, H=H_)
    return p


def call_forward(p, **changes):
    args = dict(zip(("x", "w_ih", "w_hh"), p.args), **p.kwargs)
    args.update(changes)
    x, w_ih, w_hh = args.pop("x"), args.pop("w_ih"), args.pop("w_hh")
    return forward(p.cell, x, w_ih, w_hh, **args, training=True)


FORWARD_ERRORS = [
    # id, mode, changes (a function of G, the cell's gate count), exception, regex the
    # message must match ({rows}: "3H" or "H"; {a_cell}: "a GRU" or "an RNN")
    ("w_hh-cols", M2M, lambda G: dict(w_hh=np.zeros((G * H_, H_ + 1))), ValueError,
     r"w_hh must have shape \({rows}, H\) for {a_cell}"),
    ("w_hh-rows", M2M, lambda G: dict(w_hh=np.zeros((G * H_ + 2, H_))), ValueError, r"w_hh.*\({rows}, H\)"),
    ("w_hh-1d", M2M, lambda G: dict(w_hh=np.zeros(G * H_)), ValueError, r"w_hh"),
    ("w_ih-rows", M2M, lambda G: dict(w_ih=np.zeros((G * H_ + G, I_))), ValueError,
     r"w_ih must have shape \({rows}, I\) = \(\d+, I\) for {a_cell}"),
    ("w_ih-cols", M2M, lambda G: dict(w_ih=np.zeros((G * H_, I_ + 1))), ValueError, r"\bx\b|w_ih"),
    ("b_ih-short", M2M, lambda G: dict(b_ih=np.zeros(G * H_ - 1)), ValueError,
     r"b_ih must have shape .*\({rows},\)"),
    ("b_hh-2d", M2M, lambda G: dict(b_hh=np.zeros((1, G * H_))), ValueError, r"b_hh"),
    ("h0-hidden", M2M, lambda G: dict(h0=np.zeros((B_, H_ + 1))), ValueError, r"h0"),
    ("h0-3d", M2M, lambda G: dict(h0=np.zeros((1, B_, H_))), ValueError, r"h0"),
    ("x-2d", M2M, lambda G: dict(x=np.zeros((B_, I_))), ValueError, r"\bx\b"),
    ("x-none", M2M, lambda G: dict(x=None), TypeError, r"\bx\b"),
    ("lengths-zero", M2M, lambda G: dict(lengths=np.array([T_, 0, 1])), ValueError, r"lengths"),
    ("lengths-over-T", M2O, lambda G: dict(lengths=np.array([T_, T_ + 1, 1])), ValueError, r"lengths"),
    ("lengths-float", M2M, lambda G: dict(lengths=np.array([1.0, 2.0, 3.0])), TypeError, r"lengths"),
    ("lengths-one_to_many", O2M, lambda G: dict(lengths=np.array([1, 2, 3])), ValueError, r"lengths"),
    ("steps-missing", O2M, lambda G: dict(steps=None), ValueError, r"steps"),
    ("steps-with-many_to_one", M2O, lambda G: dict(steps=T_), ValueError, r"steps"),
    ("feed-output-I!=H", O2M, lambda G: dict(feed="output"), ValueError, r"feed"),
    ("feed-unknown", O2M, lambda G: dict(feed="bogus"), ValueError, r"feed"),
    ("reverse-one_to_many", O2M, lambda G: dict(reverse=True), ValueError, r"reverse"),
    ("reverse-not-bool", M2M, lambda G: dict(reverse=1), TypeError, r"reverse"),
    ("mode-unknown", M2M, lambda G: dict(mode="bogus"), ValueError, r"mode"),
    ("batch_first-str", M2M, lambda G: dict(batch_first="False"), TypeError, r"batch_first"),
    ("h0-float32", M2M, lambda G: dict(h0=np.zeros((B_, H_), np.float32)), TypeError, r"h0"),
    ("w_hh-int", M2M, lambda G: dict(w_hh=np.zeros((G * H_, H_), np.int64)), TypeError, r"w_hh"),
    ("c0-given", M2M, lambda G: dict(c0=np.zeros((B_, H_))), TypeError, r"c0"),
    ("w_hr-given", M2M, lambda G: dict(w_hr=np.zeros((2, H_))), TypeError, r"w_hr"),
    ("stream-on-host", M2M, lambda G: dict(stream=1), ValueError, r"stream"),
]


def _fill(template, cell):
    G = GATES[cell]
    return template.format(rows="H" if G == 1 else f"{G}H", a_cell="a GRU" if cell == "gru" else "an RNN")


@pytest.mark.parametrize("mode, changes, exc, pattern", [pytest.param(*e[1:], id=e[0]) for e in FORWARD_ERRORS])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_errors(cell, mode, changes, exc, pattern):
    p = base(cell, mode)
    call_forward(p)  # the unmodified problem is valid
    with pytest.raises(exc, match=_fill(pattern, cell)):
        call_forward(p, **changes(GATES[cell]))


@pytest.mark.parametrize("cell", CELLS)
def test_lstm_weights_are_named_as_such(cell):
    """An LSTM's weights handed to a GRU / RNN: the message says whose they look like."""
    p = base(cell)
    with pytest.raises(ValueError) as e:
        call_forward(p, w_ih=np.zeros((4 * H_, I_)), w_hh=np.zeros((4 * H_, H_)), b_ih=None, b_hh=None)
    msg = str(e.value)
    rows = "3H" if cell == "gru" else "H"
    assert f"({rows}, H)" in msg and ("a GRU" if cell == "gru" else "an RNN") in msg and "an LSTM" in msg, msg
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4H, H\) for an LSTM.*a GRU's weights"):
        fusedlstm.lstm_forward(p.args[0], np.zeros((3 * H_, I_)), np.zeros((3 * H_, H_)))


@pytest.mark.parametrize("bad", ["sigmoid", "TANH", "", None, 1])
def test_bad_nonlinearity(bad, rng):
    p = make_problem(rng, "rnn_tanh", T=2, B=2, I=3, H=4)
    x, w_ih, w_hh = p.args
    for call in (lambda: fusedlstm.rnn_forward(x, w_ih, w_hh, nonlinearity=bad),
                 lambda: fusedlstm.rnn_cell(x[0], p.kwargs["h0"], w_ih, w_hh, nonlinearity=bad),
                 lambda: fusedlstm.RNN(3, 4, nonlinearity=bad)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "nonlinearity" in msg and "'tanh'" in msg and "'relu'" in msg, msg


@pytest.mark.parametrize("cell", CELLS)
def test_backward_errors(cell):
    p = base(cell)
    res = call_forward(p)
    with pytest.raises(ValueError, match="training=False"):
        backward(cell, forward(cell, *p.args, **p.kwargs), dy=p.upstream["dy"])
    for kw, exc, text in [(dict(dy=np.ones((T_, B_, H_ + 1))), ValueError, "dy"),
                          (dict(dy=np.ones((B_, H_))), ValueError, "dy"),
                          (dict(dh_n=np.ones((B_ + 1, H_))), ValueError, "dh_n"),
                          (dict(dh_n=np.ones((1, B_, H_))), ValueError, "dh_n"),
                          (dict(dy=np.ones((T_, B_, H_), np.float32)), TypeError, "dy"),
                          (dict(dh_n=np.ones((B_, H_), np.int64)), TypeError, "dh_n"),
                          (dict(dc_n=np.ones((B_, H_))), TypeError, "dc_n")]:
        with pytest.raises(exc, match=text):
            backward(cell, res, **kw)
    backward(cell, res, **p.upstream)  # a valid call still works


def test_results_go_to_their_own_backward(rng):
    """A result of another cell's forward is a TypeError naming the right backward."""
    results = {}
    for cell in CELLS:
        p = make_problem(rng, cell, T=3, B=2, I=3, H=4)
        results[cell] = forward(cell, *p.args, **p.kwargs, training=True)
    q = make_problem(rng, "gru", T=3, B=2, I=3, H=4)
    lstm_res = fusedlstm.lstm_forward(q.args[0], np.zeros((16, 3)), np.zeros((16, 4)), training=True)
    cases = [(fusedlstm.lstm_backward, results["gru"], "LSTMResult of lstm_forward", "gru_backward"),
             (fusedlstm.lstm_backward, results["rnn_relu"], "LSTMResult of lstm_forward", "rnn_backward"),
             (fusedlstm.gru_backward, lstm_res, "GRUResult of gru_forward", "lstm_backward"),
             (fusedlstm.gru_backward, results["rnn_tanh"], "GRUResult of gru_forward", "rnn_backward"),
             (fusedlstm.rnn_backward, results["gru"], "RNNResult of rnn_forward", "gru_backward"),
             (fusedlstm.rnn_backward, lstm_res, "RNNResult of rnn_forward", "lstm_backward")]
    for fn, res, expected, hint in cases:
        with pytest.raises(TypeError) as e:
            fn(res)
        assert expected in str(e.value) and hint in str(e.value), str(e.value)
    with pytest.raises(TypeError, match="GRUResult"):
        fusedlstm.gru_backward((results["gru"].y, results["gru"].h_n))


CELL_ERRORS = [
    ("x-3d", "x", lambda a: a[None], ValueError, "x"),
    ("x-cols", "x", lambda a: np.zeros((a.shape[0], a.shape[1] + 1)), ValueError, r"\bx\b|w_ih"),
    ("h-hidden", "h", lambda a: np.zeros((a.shape[0], a.shape[1] + 1)), ValueError, r"\bh\b"),
    ("h-batch", "h", lambda a: np.zeros((a.shape[0] + 1, a.shape[1])), ValueError, r"\bh\b"),
    ("h-none", "h", lambda a: None, TypeError, r"\bh\b"),
    ("w_hh-cols", "w_hh", lambda a: np.zeros((a.shape[0], a.shape[1] + 1)), ValueError, "w_hh"),
    ("b_ih-short", "b_ih", lambda a: a[:-1], ValueError, "b_ih"),
    ("h-float32", "h", lambda a: a.astype(np.float32), TypeError, r"\bh\b"),
    ("b_hh-int", "b_hh", lambda a: a.astype(np.int64), TypeError, "b_hh"),
]


@pytest.mark.parametrize("name, change, exc, pattern", [pytest.param(*e[1:], id=e[0]) for e in CELL_ERRORS])
@pytest.mark.parametrize("cell", CELLS)
def test_step_errors(cell, name, change, exc, pattern):
    p = base(cell)
    x, w_ih, w_hh = p.args
    args = dict(x=x[0], h=p.kwargs["h0"], w_ih=w_ih, w_hh=w_hh, b_ih=p.kwargs["b_ih"], b_hh=p.kwargs["b_hh"])
    step(cell, *args.values())  # valid
    args[name] = change(args[name])
    with pytest.raises(exc, match=pattern):
        step(cell, *args.values())


# --------------------------------------------------------------------------------------
# CUDA backends (a GPU, or the CPU emulation of the CUDA backend): the fallback path
# --------------------------------------------------------------------------------------
CUDA_CASES = [
    dict(mode=M2M, T=5, B=3, I=4, H=13, lengths=True),
    dict(mode=M2M, T=4, B=3, I=5, H=7, reverse=True, lengths=True, batch_first=True),
    dict(mode=M2O, T=4, B=3, I=5, H=7, lengths=True),
    dict(mode=O2M, feed="repeat", T=4, B=3, I=5, H=7),
    dict(mode=O2M, feed="first", T=4, B=2, I=5, H=6),
    dict(mode=O2M, feed="output", T=4, B=3, I=7, H=7),
]


@pytest.mark.backends("cuda-emulated", "cuda-emulated-torch", "cuda")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CUDA_CASES, ids=case_id)
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_backends_match_reference(cell, case, dtype, backend, rng, reference_outputs, policy):
    """The same problems through the device array path on a CUDA backend: forward,
    backward and one step against the float64 reference."""
    p = make_problem(rng, cell, **case, dtype=dtype)
    ref64, plain32 = reference(p, reference_outputs, dtype)
    to = backend.to
    res = forward(cell, *to(p.args), **to(p.kwargs), training=True)
    out = {k: getattr(res, k) for k in OUTPUTS}
    grads = backward(cell, res, **to(p.upstream))
    out.update({k: getattr(grads, k) for k in GRADS})
    policy.check_all(backend.numpy(out), ref64, plain32, dtype=dtype, names=list(out))
    if case["mode"] == M2M and not case.get("reverse"):
        q = make_problem(rng, cell, mode=M2M, T=1, B=3, I=4, H=9, upstream="none", dtype=dtype)
        ref64, plain32 = reference(q, reference_outputs, dtype)
        x, w_ih, w_hh = to(q.args)
        kw = to(q.kwargs)
        h_new = step(cell, x[0], kw["h0"], w_ih, w_hh, kw["b_ih"], kw["b_hh"])
        policy.check_all({"h_n": backend.numpy(h_new)}, ref64, plain32, dtype=dtype, names=["h_n"])
