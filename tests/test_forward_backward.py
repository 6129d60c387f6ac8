"""fusedlstm (the compiled library) against the numpy reference.

Every case runs on every backend (conftest.py's ``backend``: the CPU on every
ISA path of fusedlstm.available_isas(), the CPU emulation of the CUDA backend,
a GPU) and in float32 and float64; forward outputs and every gradient are
compared with the tolerance policy of conftest.py, and each case is run with 1
and 2 threads, whose results must be bitwise identical (on the GPU: once).  The cases are a hand-picked sample (not a cartesian
product) covering every mode / feed, lengths, h0/c0 given or not, batch_first,
missing biases, partial upstream gradients and odd sizes.  Also: padded
positions are exactly zero, non-contiguous inputs give the same results as
contiguous ones, inputs are not modified, and the thread / ISA controls.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fusedlstm

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
OUTPUTS = ("y", "h_n", "c_n")
GRADS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")

M2M, M2O, O2M, CELL = "many_to_many", "many_to_one", "one_to_many", "cell"
CASES = [
    # many_to_many
    dict(mode=M2M),
    dict(mode=M2M, T=1, B=1, I=1, H=1),
    dict(mode=M2M, T=4, B=3, I=7, H=13, lengths=True),
    dict(mode=M2M, T=5, B=4, I=6, H=37, lengths=True, batch_first=True, init=False, upstream="dy"),
    dict(mode=M2M, T=2, B=1, I=16, H=16, bias="ih", upstream="states"),
    dict(mode=M2M, T=6, B=5, I=3, H=8, lengths=[3, 1, 4, 2, 1], batch_first=True, bias="hh"),
    dict(mode=M2M, T=20, B=17, I=40, H=70, lengths=True),  # the larger case
    dict(mode=M2M, T=6, B=7, I=9, H=130),
    dict(mode=M2M, T=3, B=2, I=5, H=5, lengths=True, lengths_dtype=np.int32, bias="none"),
    dict(mode=M2M, T=7, B=3, I=2, H=17, upstream="none"),  # forward only, training=False
    # many_to_one
    dict(mode=M2O),
    dict(mode=M2O, T=5, B=4, I=7, H=13, lengths=True, batch_first=True),
    dict(mode=M2O, T=1, B=1, I=2, H=1, init=False),
    dict(mode=M2O, T=9, B=6, I=5, H=37, lengths=True, upstream="dy", bias="ih"),
    dict(mode=M2O, T=8, B=7, I=11, H=130, lengths=True),
    dict(mode=M2O, T=4, B=3, I=3, H=5, upstream="states", batch_first=True),
    # one_to_many
    dict(mode=O2M, feed="repeat"),
    dict(mode=O2M, feed="repeat", T=6, B=5, I=7, H=37, batch_first=True, init=False),
    dict(mode=O2M, feed="repeat", T=1, B=1, I=1, H=1),
    dict(mode=O2M, feed="repeat", T=12, B=9, I=20, H=70, bias="none"),
    dict(mode=O2M, feed="first", T=4, B=2, I=3, H=13),
    dict(mode=O2M, feed="first", T=7, B=1, I=6, H=5, batch_first=True, bias="hh", upstream="dy"),
    dict(mode=O2M, feed="first", T=5, B=7, I=10, H=130),
    dict(mode=O2M, feed="output", T=4, B=3, I=5, H=5),
    dict(mode=O2M, feed="output", T=6, B=1, I=13, H=13, batch_first=True, init=False),
    dict(mode=O2M, feed="output", T=1, B=2, I=1, H=1, upstream="none"),
    dict(mode=O2M, feed="output", T=5, B=7, I=37, H=37, upstream="states"),
    # lstm_cell (forward only)
    dict(mode=CELL, B=1, I=1, H=1),
    dict(mode=CELL, B=3, I=7, H=13),
    dict(mode=CELL, B=7, I=9, H=130, bias="none"),
    dict(mode=CELL, B=17, I=40, H=70, bias="ih"),
    dict(mode=CELL, B=40, I=21, H=37),
]


def case_id(case):
    parts = [case["mode"] + ("-" + case["feed"] if "feed" in case else "")]
    parts += [f"{k}{case[k]}" for k in "TBIH" if k in case]
    for key in ("lengths", "batch_first", "init", "bias", "upstream", "lengths_dtype"):
        if key in case:
            value = case[key]
            value = "given" if isinstance(value, list) else getattr(value, "__name__", value)
            parts.append(f"{key}={value}")
    return "-".join(str(p) for p in parts)


def run_library(p, training=True, backend=None):
    """fusedlstm forward (+ backward when p.upstream is given) on `backend`
    (None: the CPU) -> dict of numpy arrays."""
    to = backend.to if backend else (lambda a: a)
    res = fusedlstm.lstm_forward(*to(p.args), **to(p.kwargs), training=training)
    out = {k: getattr(res, k) for k in OUTPUTS}
    if p.upstream is not None:
        grads = fusedlstm.lstm_backward(res, **to(p.upstream))
        out.update({k: getattr(grads, k) for k in GRADS})
    return backend.numpy(out) if backend else out


def run_cell(p, backend=None):
    to = backend.to if backend else (lambda a: a)
    x, w_ih, w_hh = p.args
    h_new, c_new = fusedlstm.lstm_cell(*to((x[0], p.kwargs["h0"], p.kwargs["c0"], w_ih, w_hh,
                                            p.kwargs["b_ih"], p.kwargs["b_hh"])))
    out = {"h_n": h_new, "c_n": c_new}
    return backend.numpy(out) if backend else out


def assert_bitwise_equal(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, f"{key}: None in only one of {what}"
            continue
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key]), (
            f"{key}: results differ between {what} "
            f"(max diff {np.nanmax(np.abs(a[key].astype(float) - b[key])):.3e})")


def snapshot(p):
    arrays = list(p.args) + [v for v in p.kwargs.values() if isinstance(v, np.ndarray)]
    arrays += list((p.upstream or {}).values())
    return [(a, a.copy()) for a in arrays]


def time_major(a, batch_first):
    return a.swapaxes(0, 1) if batch_first else a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, dtype, backend, isa, make_problem, reference_outputs, policy, threads):
    case = dict(case)
    is_cell = case["mode"] == CELL
    if is_cell:
        case.update(mode=M2M, T=1, init=True, upstream="none")
    p = make_problem(**case, dtype=dtype)
    ref64, plain32 = reference_outputs(p.args, p.kwargs, p.upstream, dtype=dtype)
    before = snapshot(p)

    results = {}
    for n in (1, 2) if backend.name != "cuda" else (1,):
        with threads(n):
            results[n] = run_cell(p, backend) if is_cell else run_library(p, p.upstream is not None, backend)

    names = ("h_n", "c_n") if is_cell else None  # None: every output of the reference
    policy.check_all(results[1], ref64, plain32, dtype=dtype, names=names)
    if 2 in results:
        assert_bitwise_equal(results[1], results[2], "1 and 2 threads")
    for original, copy in before:
        assert np.array_equal(original, copy), "the library modified an input array"

    out = results[1]
    if case["mode"] == M2O:
        assert np.array_equal(out["y"], out["h_n"]), "many_to_one: y must equal h_n"
    if p.lengths is not None and case["mode"] == M2M:
        pad = p.padded()
        bf = case.get("batch_first", False)
        assert np.all(time_major(out["y"], bf)[pad] == 0), "y is not exactly zero at padded steps"
        if "dx" in out:
            assert np.all(time_major(out["dx"], bf)[pad] == 0), "dx is not exactly zero at padded steps"
    if p.lengths is not None and case["mode"] == M2O and "dx" in out:
        pad = p.padded()
        assert np.all(time_major(out["dx"], case.get("batch_first", False))[pad] == 0)


# --------------------------------------------------------------------------------------
# training=False forward
# --------------------------------------------------------------------------------------
INFERENCE_CASES = [
    dict(mode=M2M, T=5, B=3, I=4, H=13, lengths=True),
    dict(mode=M2O, T=5, B=3, I=4, H=13, lengths=True, batch_first=True),
    dict(mode=O2M, feed="repeat", T=5, B=3, I=4, H=13),
    dict(mode=O2M, feed="first", T=5, B=3, I=4, H=13, batch_first=True),
    dict(mode=O2M, feed="output", T=5, B=3, I=13, H=13, init=False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", INFERENCE_CASES, ids=case_id)
def test_inference_forward_matches_reference(case, dtype, backend, isa, num_threads, make_problem,
                                             reference_outputs, policy):
    p = make_problem(**case, dtype=dtype, upstream="none")
    ref64, plain32 = reference_outputs(p.args, p.kwargs, dtype=dtype)
    policy.check_all(run_library(p, False, backend), ref64, plain32, dtype=dtype)


# --------------------------------------------------------------------------------------
# non-contiguous inputs
# --------------------------------------------------------------------------------------
def stepped(a):
    """Same values, every other element of a larger buffer along the last axis."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def swapped_memory(a):
    """Same values, first two axes swapped in memory (a transposed view)."""
    return np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)


def reversed_view(a):
    """Same values, negative stride along the first axis."""
    return np.ascontiguousarray(a[::-1])[::-1]


NONCONTIG = {  # how each argument is made non-contiguous
    "x": lambda a: swapped_memory(stepped(a)) if a.ndim == 3 else np.asfortranarray(stepped(a)),
    "w_ih": np.asfortranarray,
    "w_hh": lambda a: reversed_view(stepped(a)),
    "b_ih": stepped,
    "b_hh": reversed_view,
    "h0": lambda a: np.asfortranarray(a) if a.shape[0] > 1 else stepped(a),
    "c0": lambda a: reversed_view(a) if a.shape[0] > 1 else stepped(a),
    "lengths": stepped,
    "dy": lambda a: swapped_memory(stepped(a)) if a.ndim == 3 else np.asfortranarray(stepped(a)),
    "dh_n": stepped,
    "dc_n": lambda a: np.asfortranarray(a) if a.shape[0] > 1 else stepped(a),
}

NONCONTIG_CASES = [
    dict(mode=M2M, T=5, B=4, I=6, H=13, lengths=True),
    dict(mode=M2M, T=5, B=4, I=6, H=13, batch_first=True),
    dict(mode=M2O, T=4, B=3, I=5, H=7, lengths=True, batch_first=True),
    dict(mode=O2M, feed="repeat", T=4, B=3, I=5, H=7),
    dict(mode=O2M, feed="output", T=4, B=3, I=7, H=7, batch_first=True),
    dict(mode=CELL, B=3, I=5, H=7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", NONCONTIG_CASES, ids=case_id)
def test_noncontiguous_inputs(case, dtype, backend, isa, make_problem, reference_outputs, policy):
    case = dict(case)
    is_cell = case["mode"] == CELL
    if is_cell:
        case.update(mode=M2M, T=1, init=True, upstream="none")
    p = make_problem(**case, dtype=dtype)

    def convert(name, a):
        if a is None or not isinstance(a, np.ndarray):
            return a
        out = NONCONTIG[name](a)
        assert np.array_equal(out, a) and out.dtype == a.dtype
        assert out.size <= 1 or not out.flags.c_contiguous, name
        return out

    nc_args = (None if is_cell else convert("x", p.args[0]),
               convert("w_ih", p.args[1]), convert("w_hh", p.args[2]))
    nc_kwargs = {k: convert(k, v) if k in NONCONTIG else v for k, v in p.kwargs.items()}
    nc_up = None if p.upstream is None else {k: convert(k, v) for k, v in p.upstream.items()}

    to = backend.to
    if is_cell:
        ref = run_cell(p, backend)
        _, w_ih, w_hh = nc_args
        # for the cell x is (B, I): a non-contiguous 2-D view
        h_new, c_new = fusedlstm.lstm_cell(*to((convert("x", p.args[0][0]), nc_kwargs["h0"], nc_kwargs["c0"],
                                                w_ih, w_hh, nc_kwargs["b_ih"], nc_kwargs["b_hh"])))
        got = backend.numpy({"h_n": h_new, "c_n": c_new})
    else:
        ref = run_library(p, True, backend)
        res = fusedlstm.lstm_forward(*to(nc_args), **to(nc_kwargs), training=True)
        grads = fusedlstm.lstm_backward(res, **to(nc_up))
        got = {k: getattr(res, k) for k in OUTPUTS}
        got.update({k: getattr(grads, k) for k in GRADS})
        got = backend.numpy(got)
    if backend.name != "cuda":  # a GPU may sum in another order for another layout
        assert_bitwise_equal(got, ref, "non-contiguous and contiguous inputs")
    # and (in case both are wrong the same way) against the reference
    ref64, plain32 = reference_outputs(p.args, p.kwargs, p.upstream, dtype=dtype)
    policy.check_all(got, ref64, plain32, dtype=dtype, names=list(got))


# --------------------------------------------------------------------------------------
# thread and ISA controls
# --------------------------------------------------------------------------------------
def test_num_threads_roundtrip(threads):
    previous = fusedlstm.get_num_threads()
    assert isinstance(previous, int) and previous >= 1
    for n in (1, 2, 3):
        with threads(n):
            assert fusedlstm.get_num_threads() == n
    assert fusedlstm.get_num_threads() == previous


def test_isa_roundtrip():
    isas = list(fusedlstm.available_isas())
    assert isas and all(isinstance(n, str) for n in isas)
    assert len(set(isas)) == len(isas)
    assert "generic" in isas, "the portable path must always be available"
    previous = fusedlstm.get_isa()
    assert previous in isas
    try:
        for name in isas:
            fusedlstm.set_isa(name)
            assert fusedlstm.get_isa() == name
    finally:
        fusedlstm.set_isa(previous)


def _python_with_env(code, **env):
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fusedlstm.__file__)))
    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = os.pathsep.join([package_parent] + sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_env_num_threads():
    code = "import fusedlstm; print(fusedlstm.get_num_threads())"
    assert _python_with_env(code, FUSEDLSTM_NUM_THREADS="3") == "3"


@pytest.mark.parametrize("name", list(fusedlstm.available_isas()))
def test_env_isa(name):
    code = "import fusedlstm; print(fusedlstm.get_isa())"
    assert _python_with_env(code, FUSEDLSTM_ISA=name) == name


def test_non_native_byte_order_matches_native(rng):
    """A big-endian float32 array is still float32: same results as native."""
    x = rng.standard_normal((4, 3, 6)).astype(np.float32)
    w_ih = (0.3 * rng.standard_normal((20, 6))).astype(np.float32)
    w_hh = (0.3 * rng.standard_normal((20, 5))).astype(np.float32)
    native = fusedlstm.lstm_forward(x, w_ih, w_hh)
    swapped = fusedlstm.lstm_forward(x.astype(">f4"), w_ih.astype(">f4"), w_hh.astype(">f4"))
    assert swapped.y.dtype == np.float32
    assert np.array_equal(native.y, swapped.y)


@pytest.mark.parametrize("mode", ["many_to_many", "one_to_many"])
def test_backward_unaffected_by_inputs_changed_after_forward(mode, backend, rng):
    """The training result keeps its own copies: changing the caller's arrays
    between forward and backward must not change the gradients."""
    T, B, I, H = 5, 3, 7, 6
    x = rng.standard_normal((B, I) if mode == "one_to_many" else (T, B, I))
    w_ih = 0.3 * rng.standard_normal((4 * H, I))
    w_hh = 0.3 * rng.standard_normal((4 * H, H))
    h0 = rng.standard_normal((B, H))
    kw = dict(mode=mode, steps=T) if mode == "one_to_many" else {}
    x, w_ih, w_hh, h0 = backend.to((x, w_ih, w_hh, h0))
    res = fusedlstm.lstm_forward(x, w_ih, w_hh, h0=h0, training=True, **kw)
    dy = backend.to(rng.standard_normal(tuple(res.y.shape)))
    grads = fusedlstm.lstm_backward(res, dy=dy)
    expected = {k: backend.numpy(getattr(grads, k)) for k in ("dx", "dh0", "dc0", "dw_ih", "dw_hh")}
    res2 = fusedlstm.lstm_forward(x, w_ih, w_hh, h0=h0, training=True, **kw)
    for a in (x, w_ih, w_hh, h0):
        a *= -3.0
    got = fusedlstm.lstm_backward(res2, dy=dy)
    for name in expected:
        assert np.array_equal(backend.numpy(getattr(got, name)), expected[name]), name


# Hidden sizes below, at and above every SIMD width (4 generic, 4/8 AVX2, 8/16 AVX-512),
# odd ones leave padded lanes in the last vector.
NONFINITE_HIDDEN = [1, 3, 5, 8, 13, 16, 17]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", NONFINITE_HIDDEN)
@pytest.mark.parametrize("where", ["x", "w_ih", "w_hh", "b_ih", "h0", "c0"])
@pytest.mark.parametrize("mode", [M2M, M2O, CELL])
def test_nonfinite_inputs_match_reference(mode, where, H, dtype, backend, isa, make_problem, reference_outputs,
                                          policy):
    """An Inf / NaN in one input spreads exactly as in the reference, whatever
    the SIMD width: the padded lanes of the last hidden block (H not a multiple
    of the width) never turn it into NaN in real units (issue 10, defect 6:
    +Inf in h0 gave NaN in dx/dh0/db of the whole row when H % width != 0)."""
    for value in (np.inf, -np.inf, np.nan):
        if mode == CELL:  # B = 20 takes lstm_cell's packed (sequence kernel) path
            for B in (3, 20):
                p = make_problem(mode=M2M, T=1, B=B, I=4, H=H, dtype=dtype, upstream="none")
                p.inputs[where].flat[p.inputs[where].size // 2] = value
                with np.errstate(all="ignore"):
                    ref64, plain32 = reference_outputs(p.args, p.kwargs, dtype=dtype)
                policy.check_all(run_cell(p, backend), ref64, plain32, dtype=dtype, names=("h_n", "c_n"),
                                 prefix=f"B={B}, {where}[...]={value}: ")
            continue
        # No lengths: at padded steps the reference multiplies zero gate
        # gradients by the (possibly non-finite) weights and carried state,
        # NaN where the documented result (dx = 0, no contribution) is exact.
        p = make_problem(mode=mode, T=3, B=3, I=4, H=H, dtype=dtype)
        p.inputs[where].flat[p.inputs[where].size // 2] = value
        with np.errstate(all="ignore"):
            ref64, plain32 = reference_outputs(p.args, p.kwargs, p.upstream, dtype=dtype)
        policy.check_all(run_library(p, True, backend), ref64, plain32, dtype=dtype,
                         prefix=f"{where}[...]={value}: ")


def test_backend_runs_where_it_says(backend, rng):
    """The backend fixture's calls reach the device it names: the training
    state lives there (a cuda-emulated run that silently ran on the CPU would
    make every parity test above a second CPU test)."""
    x, w_ih, w_hh = backend.to((rng.standard_normal((3, 2, 4)), rng.standard_normal((20, 4)),
                                rng.standard_normal((20, 5))))
    res = fusedlstm.lstm_forward(x, w_ih, w_hh, training=True)
    expected = fusedlstm._core.DEVICE_CUDA if backend.is_cuda else fusedlstm._core.DEVICE_CPU
    assert res._state.device_type == expected
    if backend.is_cuda:
        assert fusedlstm._core.cuda_info("last_forward_path") in ("persistent", "fallback")


# --------------------------------------------------------------------------------------
# projection (w_hr) and the reverse direction of the single-sequence API
# --------------------------------------------------------------------------------------
def _stack_reference(x_tm, w, h0, c0, lengths, reverse, upstream, dtype):
    """The stack reference (fusedlstm.reference) run as one direction: the
    reverse one is direction 1 of a bidirectional layer whose forward
    direction gets no upstream gradient (so it adds nothing to dx)."""
    from fusedlstm import reference as R
    D = 2 if reverse else 1
    d = D - 1
    R_ = w["w_hh"].shape[1]
    H = w["w_hh"].shape[0] // 4
    T, B, _ = x_tm.shape
    zeros = lambda *s: np.zeros(s)  # noqa: E731
    h0s, c0s = zeros(D, B, R_), zeros(D, B, H)
    h0s[d], c0s[d] = h0, c0
    res = R.stack_forward(x_tm, [w] * D, h0s, c0s, bidirectional=reverse, lengths=lengths, dtype=dtype)
    out = dict(y=res.y[:, :, d * R_:], h_n=res.h_n[d], c_n=res.c_n[d])
    dy, dh, dc = zeros(T, B, D * R_), zeros(D, B, R_), zeros(D, B, H)
    dy[:, :, d * R_:] = upstream["dy"]
    dh[d], dc[d] = upstream["dh_n"], upstream["dc_n"]
    g = R.stack_backward(res, dy=dy, dh_n=dh, dc_n=dc)
    cell = g["cells"][d]
    out.update(dx=g["dx"], dh0=g["dh0"][d], dc0=g["dc0"][d], dw_ih=cell["w_ih"], dw_hh=cell["w_hh"],
               db_ih=cell["b"], db_hh=cell["b"])
    if "w_hr" in cell:
        out["dw_hr"] = cell["w_hr"]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", [M2M, M2O])
@pytest.mark.parametrize("proj, reverse, lengths, batch_first", [
    (True, False, False, False), (True, False, True, True), (False, True, True, False),
    (True, True, True, True), (True, True, False, False), (False, True, False, True),
], ids=["proj", "proj-lengths-bf", "reverse-lengths", "proj-reverse-lengths-bf", "proj-reverse", "reverse-bf"])
def test_projection_and_reverse_match_reference(proj, reverse, lengths, batch_first, mode, dtype, backend,
                                                rng, policy):
    T, B, I, H = 5, 4, 3, 9
    R_ = 4 if proj else H
    s = 1.2 / np.sqrt(H)
    w = dict(w_ih=rng.uniform(-s, s, (4 * H, I)), w_hh=rng.uniform(-s, s, (4 * H, R_)),
             b_ih=rng.uniform(-0.5, 0.5, 4 * H), b_hh=rng.uniform(-0.5, 0.5, 4 * H))
    if proj:
        w["w_hr"] = rng.uniform(-s, s, (R_, H))
    x_tm = rng.standard_normal((T, B, I))
    h0, c0 = 0.5 * rng.standard_normal((B, R_)), rng.standard_normal((B, H))
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, B)
        lens[1] = 1
    ups = dict(dy=rng.standard_normal((T, B, R_)), dh_n=rng.standard_normal((B, R_)),
               dc_n=rng.standard_normal((B, H)))
    if mode == M2O:  # the gradient of y (= h_n) is added to dh_n's
        ups_ref = dict(ups, dy=np.zeros((T, B, R_)), dh_n=2 * ups["dh_n"])
    else:
        ups_ref = ups
    cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
    w, x_tm, h0, c0 = {k: cast(v) for k, v in w.items()}, cast(x_tm), cast(h0), cast(c0)
    ref64 = _stack_reference(x_tm, w, h0, c0, lens, reverse, ups_ref, np.float64)
    plain = None if dtype == np.float64 else _stack_reference(x_tm, w, h0, c0, lens, reverse, ups_ref, np.float32)
    bf = (lambda a: a.swapaxes(0, 1)) if batch_first else (lambda a: a)
    for table in (ref64, plain):
        if table is not None:
            table["y"] = table["h_n"] if mode == M2O else bf(table["y"])
            table["dx"] = bf(table["dx"])

    to = backend.to
    res = fusedlstm.lstm_forward(*to((bf(x_tm), w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], h0, c0)),
                                 w_hr=to(w.get("w_hr")), reverse=reverse, lengths=to(lens), mode=mode,
                                 batch_first=batch_first, training=True)
    up = dict(ups, dy=ups["dh_n"] if mode == M2O else bf(ups["dy"]))
    grads = fusedlstm.lstm_backward(res, **to({k: cast(v) for k, v in up.items()}))
    got = {k: getattr(res, k) for k in OUTPUTS}
    got.update({k: getattr(grads, k) for k in GRADS + (("dw_hr",) if proj else ())})
    assert (grads.dw_hr is None) == (not proj)
    policy.check_all(backend.numpy(got), ref64, plain, dtype=dtype)
