"""Argument checking of fusedlstm, and NaN / Inf propagation.

Every bad input raises ValueError (shapes, values, modes) or TypeError (dtypes)
and the message names the offending argument as a whole word ("w_hh",
"lengths", "steps", "feed", "mode", "dy", ...).  Where two arguments disagree
(e.g. x has I columns, w_ih another number) either name is accepted.
"""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedlstm

T, B, I, H = 4, 3, 5, 6  # I != H, T != B on purpose
M2M, M2O, O2M = "many_to_many", "many_to_one", "one_to_many"


def base(mode=M2M, dtype=np.float64):
    """Valid inputs (dict x, w_ih, w_hh, b_ih, b_hh, h0, c0) and options."""
    rng = np.random.default_rng(1234)
    inputs = dict(
        x=rng.standard_normal((B, I) if mode == O2M else (T, B, I)),
        w_ih=rng.uniform(-0.5, 0.5, (4 * H, I)), w_hh=rng.uniform(-0.5, 0.5, (4 * H, H)),
        b_ih=rng.uniform(-0.5, 0.5, 4 * H), b_hh=rng.uniform(-0.5, 0.5, 4 * H),
        h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    inputs = {k: v.astype(dtype) for k, v in inputs.items()}
    options = dict(mode=mode)
    if mode == O2M:
        options["steps"] = T
    return inputs, options


def forward(inputs, options, training=False):
    inputs = dict(inputs)
    x, w_ih, w_hh = inputs.pop("x"), inputs.pop("w_ih"), inputs.pop("w_hh")
    return fusedlstm.lstm_forward(x, w_ih, w_hh, **inputs, **options, training=training)


def assert_names(excinfo, names):
    msg = str(excinfo.value)
    found = [n for n in names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg)]
    assert found, f"the message {msg!r} names none of {names}"


def setter(**changes):
    """Mutation: set inputs/options; values may be functions of the old value."""
    def mutate(inputs, options):
        for key, value in changes.items():
            target = inputs if key in inputs else options
            target[key] = value(target.get(key)) if callable(value) else value
    return mutate


def grow(axis, by=1):
    def fn(a):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, by)
        return np.pad(a, pad)
    return fn


def shrink(axis):
    return lambda a: np.delete(a, -1, axis=axis)


# (id, mode of the base problem, mutation, exception, accepted names)
FORWARD_ERRORS = [
    ("x-2d", M2M, setter(x=lambda a: a[0]), ValueError, ["x"]),
    ("x-4d", M2M, setter(x=lambda a: a[None]), ValueError, ["x"]),
    ("x-2d-many_to_one", M2O, setter(x=lambda a: a[0]), ValueError, ["x"]),
    ("x-3d-one_to_many", O2M, setter(x=lambda a: a[None]), ValueError, ["x"]),
    ("w_ih-1d", M2M, setter(w_ih=lambda a: a[0]), ValueError, ["w_ih"]),
    ("w_ih-rows", M2M, setter(w_ih=grow(0, 4)), ValueError, ["w_ih", "w_hh"]),
    ("w_ih-cols", M2M, setter(w_ih=grow(1)), ValueError, ["w_ih", "x"]),
    ("w_ih-cols-one_to_many", O2M, setter(w_ih=shrink(1)), ValueError, ["w_ih", "x"]),
    ("w_hh-3d", M2M, setter(w_hh=lambda a: a[None]), ValueError, ["w_hh"]),
    ("w_hh-cols", M2M, setter(w_hh=grow(1)), ValueError, ["w_hh"]),
    ("w_hh-rows", M2M, setter(w_hh=grow(0, 4)), ValueError, ["w_hh", "w_ih"]),
    ("b_ih-short", M2M, setter(b_ih=shrink(0)), ValueError, ["b_ih"]),
    ("b_ih-2d", M2M, setter(b_ih=lambda a: a[None]), ValueError, ["b_ih"]),
    ("b_hh-long", M2M, setter(b_hh=grow(0)), ValueError, ["b_hh"]),
    ("h0-batch", M2M, setter(h0=grow(0)), ValueError, ["h0"]),
    ("h0-hidden", M2M, setter(h0=grow(1)), ValueError, ["h0"]),
    ("h0-3d-torch-style", M2M, setter(h0=lambda a: a[None]), ValueError, ["h0"]),
    ("c0-hidden", O2M, setter(c0=shrink(1)), ValueError, ["c0"]),
    ("c0-1d", M2M, setter(c0=lambda a: a[0]), ValueError, ["c0"]),
    ("h0-batch_first-mismatch", M2M, setter(batch_first=True), ValueError, ["h0", "c0", "x"]),
    ("lengths-zero", M2M, setter(lengths=np.array([T, 0, 1])), ValueError, ["lengths"]),
    ("lengths-negative", M2O, setter(lengths=np.array([T, -1, 1])), ValueError, ["lengths"]),
    ("lengths-too-long", M2M, setter(lengths=np.array([T, T + 1, 1])), ValueError, ["lengths"]),
    ("lengths-too-long-many_to_one", M2O, setter(lengths=np.array([1, 2, T + 1])), ValueError,
     ["lengths"]),
    ("lengths-size-plus", M2M, setter(lengths=np.array([1, 2, 3, 4])), ValueError, ["lengths"]),
    ("lengths-size-minus", M2O, setter(lengths=np.array([1, 2])), ValueError, ["lengths"]),
    ("lengths-2d", M2M, setter(lengths=np.array([[1, 2, 3]])), ValueError, ["lengths"]),
    ("lengths-one_to_many", O2M, setter(lengths=np.array([1, 2, 3])), ValueError, ["lengths"]),
    ("lengths-float", M2M, setter(lengths=np.array([1.0, 2.0, 3.0])), (TypeError, ValueError),
     ["lengths"]),
    ("steps-missing", O2M, setter(steps=None), ValueError, ["steps"]),
    ("steps-zero", O2M, setter(steps=0), ValueError, ["steps"]),
    ("steps-negative", O2M, setter(steps=-2), ValueError, ["steps"]),
    ("feed-output-I!=H", O2M, setter(feed="output"), ValueError, ["feed"]),
    ("feed-unknown", O2M, setter(feed="bogus"), ValueError, ["feed"]),
    ("feed-with-many_to_many", M2M, setter(feed="first"), ValueError, ["feed"]),
    ("steps-with-many_to_one", M2O, setter(steps=T), ValueError, ["steps"]),
    ("mode-unknown", M2M, setter(mode="bogus"), ValueError, ["mode"]),
    ("mode-empty", M2M, setter(mode=""), ValueError, ["mode"]),
]


@pytest.mark.parametrize("mode, mutate, exc, names",
                         [pytest.param(*c[1:], id=c[0]) for c in FORWARD_ERRORS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_forward_errors(mode, mutate, exc, names, dtype):
    inputs, options = base(mode, dtype)
    forward(inputs, options)  # the unmodified problem is valid
    mutate(inputs, options)
    with pytest.raises(exc) as excinfo:
        forward(inputs, options)
    assert_names(excinfo, names)


MIXABLE = ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


@pytest.mark.parametrize("name", MIXABLE)
@pytest.mark.parametrize("dtype, other", [(np.float64, np.float32), (np.float32, np.float64)],
                         ids=["f64-with-f32", "f32-with-f64"])
@pytest.mark.parametrize("mode", [M2M, O2M])
def test_mixed_dtypes(name, dtype, other, mode):
    inputs, options = base(mode, dtype)
    inputs[name] = inputs[name].astype(other)
    with pytest.raises(TypeError) as excinfo:
        forward(inputs, options)
    assert_names(excinfo, [name])


@pytest.mark.parametrize("name", ["x", "w_ih", "w_hh", "b_hh", "h0"])
@pytest.mark.parametrize("bad", [np.int64, np.int32, np.bool_, np.complex128, np.float16])
def test_non_float_argument(name, bad):
    inputs, options = base()
    inputs[name] = inputs[name].astype(bad)
    with pytest.raises(TypeError) as excinfo:
        forward(inputs, options)
    assert_names(excinfo, [name])


@pytest.mark.parametrize("bad", [np.int64, np.float16, np.complex64])
def test_all_arrays_of_unsupported_dtype(bad):
    inputs, options = base()
    inputs = {k: v.astype(bad) for k, v in inputs.items()}
    with pytest.raises(TypeError) as excinfo:
        forward(inputs, options)
    assert_names(excinfo, list(inputs))


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------
def test_backward_without_training():
    res = forward(*base(), training=False)
    with pytest.raises(ValueError) as excinfo:
        fusedlstm.lstm_backward(res, dy=np.ones((T, B, H)))
    assert_names(excinfo, ["training", "result"])


# (id, mode, batch_first, upstream, exception, names); shapes of valid upstream:
# dy (T, B, H) / (B, T, H) / many_to_one (B, H); dh_n, dc_n (B, H)
BACKWARD_ERRORS = [
    ("dy-hidden", M2M, False, dict(dy=np.ones((T, B, H + 1))), ValueError, ["dy"]),
    ("dy-time", M2M, False, dict(dy=np.ones((T + 1, B, H))), ValueError, ["dy"]),
    ("dy-2d", M2M, False, dict(dy=np.ones((B, H))), ValueError, ["dy"]),
    ("dy-not-batch_first", M2M, True, dict(dy=np.ones((T, B, H))), ValueError, ["dy"]),
    ("dy-3d-many_to_one", M2O, False, dict(dy=np.ones((T, B, H))), ValueError, ["dy"]),
    ("dy-batch-many_to_one", M2O, False, dict(dy=np.ones((B + 1, H))), ValueError, ["dy"]),
    ("dy-one_to_many", O2M, False, dict(dy=np.ones((T, B, I))), ValueError, ["dy"]),
    ("dy-one_to_many-batch_first", O2M, True, dict(dy=np.ones((T, B, H))), ValueError, ["dy"]),
    ("dh_n-hidden", M2M, False, dict(dh_n=np.ones((B, H + 1))), ValueError, ["dh_n"]),
    ("dh_n-3d", O2M, False, dict(dh_n=np.ones((1, B, H))), ValueError, ["dh_n"]),
    ("dc_n-batch", M2O, False, dict(dc_n=np.ones((B + 1, H))), ValueError, ["dc_n"]),
    ("dy-float32", M2M, False, dict(dy=np.ones((T, B, H), np.float32)), TypeError, ["dy"]),
    ("dh_n-int", M2M, False, dict(dh_n=np.ones((B, H), np.int64)), TypeError, ["dh_n"]),
    ("dc_n-float32", O2M, False, dict(dc_n=np.ones((B, H), np.float32)), TypeError, ["dc_n"]),
]


@pytest.mark.parametrize("mode, batch_first, upstream, exc, names",
                         [pytest.param(*c[1:], id=c[0]) for c in BACKWARD_ERRORS])
def test_backward_errors(mode, batch_first, upstream, exc, names):
    inputs, options = base(mode)
    if batch_first and mode != O2M:
        inputs["x"] = np.ascontiguousarray(inputs["x"].swapaxes(0, 1))
    res = forward(inputs, dict(options, batch_first=batch_first), training=True)
    with pytest.raises(exc) as excinfo:
        fusedlstm.lstm_backward(res, **upstream)
    assert_names(excinfo, names)


# --------------------------------------------------------------------------------------
# lstm_cell
# --------------------------------------------------------------------------------------
def cell_base(dtype=np.float64):
    inputs, _ = base(O2M, dtype)
    return dict(x=inputs["x"], h=inputs["h0"], c=inputs["c0"], w_ih=inputs["w_ih"],
                w_hh=inputs["w_hh"], b_ih=inputs["b_ih"], b_hh=inputs["b_hh"])


def cell(a):
    return fusedlstm.lstm_cell(a["x"], a["h"], a["c"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])


CELL_ERRORS = [
    ("x-3d", "x", lambda a: a[None], ValueError, ["x"]),
    ("x-cols", "x", grow(1), ValueError, ["x", "w_ih"]),
    ("h-hidden", "h", grow(1), ValueError, ["h"]),
    ("h-batch", "h", grow(0), ValueError, ["h"]),
    ("c-hidden", "c", shrink(1), ValueError, ["c"]),
    ("c-1d", "c", lambda a: a[0], ValueError, ["c"]),
    ("w_hh-cols", "w_hh", grow(1), ValueError, ["w_hh"]),
    ("b_ih-short", "b_ih", shrink(0), ValueError, ["b_ih"]),
    ("h-float32", "h", lambda a: a.astype(np.float32), TypeError, ["h"]),
    ("c-float32", "c", lambda a: a.astype(np.float32), TypeError, ["c"]),
    ("x-int", "x", lambda a: a.astype(np.int64), TypeError, ["x"]),
    ("b_hh-float32", "b_hh", lambda a: a.astype(np.float32), TypeError, ["b_hh"]),
]


@pytest.mark.parametrize("name, change, exc, names",
                         [pytest.param(*c[1:], id=c[0]) for c in CELL_ERRORS])
def test_cell_errors(name, change, exc, names):
    args = cell_base()
    cell(args)  # valid
    args[name] = change(args[name])
    with pytest.raises(exc) as excinfo:
        cell(args)
    assert_names(excinfo, names)


# --------------------------------------------------------------------------------------
# NaN / Inf propagation
# --------------------------------------------------------------------------------------
def check_nonfinite_then_policy(name, got, ref64, plain32, dtype, policy):
    """Same NaN / +Inf / -Inf positions as the reference; the rest by the policy."""
    assert got.shape == ref64.shape, name
    for test in (np.isnan, np.isposinf, np.isneginf):
        mismatch = test(got) != test(ref64)
        assert not mismatch.any(), (f"{name}: {test.__name__} differs from the reference at "
                                    f"{np.argwhere(mismatch)[:5].tolist()}")
    finite = np.isfinite(ref64)
    zero = lambda a: None if a is None else np.where(finite, a, 0).astype(a.dtype)  # noqa: E731
    policy.check(name, zero(got), zero(ref64), zero(plain32), dtype=dtype)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", [M2M, M2O])
def test_nonfinite_input_propagates(value, dtype, mode, isa, threads, make_problem,
                                    reference_outputs, policy):
    Tn, Bn = 6, 4
    p = make_problem(mode=mode, T=Tn, B=Bn, I=5, H=13, dtype=dtype)
    t0, b0 = 2, 1
    p.args[0][t0, b0, 0] = value
    with_grads = np.isnan(value)  # Inf inputs: forward only (saturated gates give 0 * inf in BPTT)
    up = p.upstream if with_grads else None
    ref64, plain32 = reference_outputs(p.args, p.kwargs, up, dtype=dtype)
    # the test is meaningful: the reference has the expected pattern
    h_ref = ref64["h_n"]
    if np.isnan(value):
        assert np.isnan(h_ref[b0]).all() and np.isfinite(np.delete(h_ref, b0, axis=0)).all()
        if mode == M2M:
            assert np.isnan(ref64["y"][t0:, b0]).all() and np.isfinite(ref64["y"][:t0]).all()
    with threads(2):
        res = fusedlstm.lstm_forward(*p.args, **p.kwargs, training=with_grads)
        got = {k: getattr(res, k) for k in ("y", "h_n", "c_n")}
        if with_grads:
            grads = fusedlstm.lstm_backward(res, **up)
            got.update({k: getattr(grads, k) for k in ref64 if k not in got})
    for name in ref64:
        check_nonfinite_then_policy(name, got[name], ref64[name],
                                    None if plain32 is None else plain32[name], dtype, policy)


# --------------------------------------------------------------------------------------
# thread / ISA controls
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bogus", "", "AVX2 ", "sse9"])
def test_set_isa_unknown(name):
    previous = fusedlstm.get_isa()
    with pytest.raises(ValueError):
        fusedlstm.set_isa(name)
    assert fusedlstm.get_isa() == previous


def test_set_isa_unsupported():
    unsupported = [n for n in ("avx512", "avx2", "generic") if n not in fusedlstm.available_isas()]
    if not unsupported:
        pytest.skip("this CPU runs every known ISA path")
    previous = fusedlstm.get_isa()
    for name in unsupported:
        with pytest.raises(ValueError):
            fusedlstm.set_isa(name)
        assert fusedlstm.get_isa() == previous


@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_invalid(n):
    previous = fusedlstm.get_num_threads()
    with pytest.raises(ValueError):
        fusedlstm.set_num_threads(n)
    assert fusedlstm.get_num_threads() == previous


# --------------------------------------------------------------------------------------
# the C API below the Python checks (fusedlstm._core): sizes the Python layer
# would refuse reach the core's own checks (tests/c/test_capi.c drives the rest)
# --------------------------------------------------------------------------------------
def core_forward(T, B=1, I=1, H=1, training=True, mode=1, **device):
    """_core.forward on arrays the binding accepts (sizes below 1 are left to
    the core): only the values the core itself checks are wrong."""
    arr = lambda *shape: np.zeros([max(n, 1) for n in shape])  # noqa: E731
    x = arr(T, B, I)
    return fusedlstm._core.forward(x=x, x_strides=(x.strides[0] // 8, x.strides[1] // 8), w_ih=arr(4 * H, I),
                                   w_hh=arr(4 * H, H), h_n=arr(B, H), c_n=arr(B, H), mode=mode, T=T, B=B, I=I,
                                   H=H, training=training, dtype=fusedlstm._core.FLOAT64, **device)


@pytest.mark.parametrize("T, B", [(2**63 - 1, 1), (2**32, 2**32)], ids=["T-int64-max", "T*B-wraps-to-0"])
def test_binding_refuses_sizes_its_arrays_do_not_have(T, B):
    # Before: many_to_one training with zero strides and these sizes overflowed
    # the heap in the state copy (SIGSEGV). The binding now checks each array's
    # element count against the sizes; the core's own overflow checks on such
    # sizes are driven through the C API by tests/c/test_capi.c.
    one = np.zeros((1, 1, 1))
    with pytest.raises(ValueError, match=r"^x (must have \d+ elements|: array sizes overflow)|overflow int64"):
        fusedlstm._core.forward(x=one, x_strides=(0, 0), w_ih=np.zeros((4, 1)), w_hh=np.zeros((4, 1)),
                                h_n=np.zeros((1, 1)), c_n=np.zeros((1, 1)), mode=1, T=T, B=B, I=1, H=1,
                                training=True, dtype=fusedlstm._core.FLOAT64)


def test_binding_refuses_strides_that_are_not_the_arrays_own():
    x = np.zeros((3, 1, 1))
    with pytest.raises(ValueError, match="^x: the strides passed with it are not its own"):
        fusedlstm._core.forward(x=x, x_strides=(2**62, 0), w_ih=np.zeros((4, 1)), w_hh=np.zeros((4, 1)),
                                h_n=np.zeros((1, 1)), c_n=np.zeros((1, 1)), mode=1, T=3, B=1, I=1, H=1,
                                training=True, dtype=fusedlstm._core.FLOAT64)


def test_core_out_of_memory_is_a_memory_error_naming_what_and_bytes():
    # The inputs fit under the address-space limit set after they exist; the
    # training state's saved activations (about 6x x here) do not.
    code = textwrap.dedent("""
        import resource, numpy as np, fusedlstm
        from fusedlstm import _core
        fusedlstm.set_num_threads(1)
        T, B, H = 1500, 32, 256
        w = np.zeros((4 * H, H)); x = np.zeros((T, B, H)); h = np.zeros((B, H)); c = np.zeros((B, H))
        call = dict(w_ih=w, w_hh=w, h_n=h, c_n=c, mode=0, B=B, I=H, H=H, training=True, dtype=_core.FLOAT64)
        _core.forward(x=x[:1], x_strides=(B * H, H), T=1, **call)  # the pool and workspaces exist before the limit
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (x.nbytes * 3) // 2, resource.RLIM_INFINITY))
        try:
            _core.forward(x=x, x_strides=(B * H, H), T=T, **call)
        except MemoryError as e:
            print("MemoryError:", e)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^MemoryError: out of host memory allocating \d+ bytes for ", out.stdout), out.stdout


@pytest.mark.parametrize("arg", ["T", "B", "I", "H"])
def test_core_size_below_one_names_the_argument(arg):
    sizes = dict(T=3, B=1, I=1, H=1)
    sizes[arg] = 0
    with pytest.raises(ValueError, match=rf"^{arg} = 0 must be >= 1$"):
        core_forward(**sizes)


@pytest.mark.parametrize("mode", [3, -1])
def test_core_bad_mode_is_a_value_error(mode):
    with pytest.raises(ValueError, match=rf"^mode = {mode} is not one of"):
        core_forward(3, mode=mode)


def test_core_stack_reserve_bytes_of_impossible_shapes_is_a_value_error():
    reserve = lambda f64, *shape: fusedlstm._core.stack_reserve_bytes(  # noqa: E731
        dtype=fusedlstm._core.FLOAT64 if f64 else fusedlstm._core.FLOAT32,
        **dict(zip(("T", "B", "H", "proj_size", "num_layers", "num_directions"), shape)))
    assert reserve(False, 3, 2, 4, 0, 1, 1) > 0
    # Before: a wrapped (negative or small) number. The C API returns -1
    # (tests/c/test_capi.c); the binding raises with its message.
    with pytest.raises(ValueError, match="overflows int64"):
        reserve(False, 2**56, 2, 4, 0, 2, 2)
    with pytest.raises(ValueError, match="overflows int64"):
        reserve(True, 2**32, 2**32, 4, 0, 1, 1)


# --------------------------------------------------------------------------------------
# on CUDA: what the C API checks without touching the device, and what differs
# --------------------------------------------------------------------------------------
def _cuda_backend(emulated=None):
    n, why = fusedlstm._core.cuda_device_count()
    if not n:
        pytest.skip(f"no CUDA backend loads: {why}")
    if emulated is not None and (fusedlstm._core.cuda_info("backend") == "cuda-emulated") != emulated:
        pytest.skip(f"needs the {'emulated' if emulated else 'GPU'} CUDA backend")


_NOWHERE = 1 << 40  # a device "pointer" never dereferenced: the checks below refuse the call first


def cuda_core_forward(T=3, B=2, I=4, H=5, dtype=0, mode=0, x_stride_t=8, x=_NOWHERE):
    """_core.forward on CUDA with pointers to nowhere: the C API checks its
    arguments before it touches a device, so this runs on any backend that loads."""
    _cuda_backend()
    fusedlstm._core.forward(x=x, x_strides=(x_stride_t, I), w_ih=_NOWHERE, w_hh=_NOWHERE, y=_NOWHERE,
                            y_strides=(10, 5), h_n=_NOWHERE, c_n=_NOWHERE, mode=mode, T=T, B=B, I=I, H=H,
                            training=True, dtype=dtype, device_type=fusedlstm._core.DEVICE_CUDA)


@pytest.mark.parametrize("change, match", [
    (dict(T=2**32, B=2**32), r"overflows int64"),
    (dict(H=2**62), r"overflows int64"),
    (dict(x_stride_t=2**62), r"x_stride_t"),
    (dict(dtype=7), r"^dtype = 7 is not one of"),
    (dict(mode=-1), r"^mode = -1 is not one of"),
    (dict(I=0), r"^I = 0 must be >= 1$"),
], ids=["T*B-wraps", "H-overflows", "x_stride_t", "dtype", "mode", "I-zero"])
def test_cuda_core_checks_sizes_and_enums(change, match):
    with pytest.raises(ValueError, match=match):
        cuda_core_forward(**change)


def test_cuda_null_pointer_is_named():
    with pytest.raises(ValueError, match=r"^x, w_ih, w_hh and h_n are required"):
        cuda_core_forward(x=0)


def test_cuda_numpy_arrays_only_where_device_memory_is_host_memory(rng):
    """A numpy array with device_type=DEVICE_CUDA is refused, naming it, unless
    the backend runs on host memory (the emulation), where it is used."""
    _cuda_backend()
    host = fusedlstm._core.cuda_backend_host_memory()
    assert host == (fusedlstm._core.cuda_info("backend") == "cuda-emulated")
    cuda = dict(device_type=fusedlstm._core.DEVICE_CUDA)
    if host:
        core_forward(3, **cuda)
    else:
        with pytest.raises(TypeError, match="^x is a numpy array .* CUDA device 0: pass a device pointer"):
            core_forward(3, **cuda)


def _emulated_problem(rng, T=4, B=3, I=2, H=5):
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = 0.5 * rng.standard_normal((4 * H, I)), 0.5 * rng.standard_normal((4 * H, H))
    return dict(x=x, x_strides=(B * I, I), w_ih=w_ih, w_hh=w_hh, mode=0, T=T, B=B, I=I, H=H,
                dtype=fusedlstm._core.FLOAT64, device_type=fusedlstm._core.DEVICE_CUDA)


def _outputs(p):
    T, B, H = p["T"], p["B"], p["H"]
    return dict(y=np.full((T, B, H), np.nan), y_strides=(B * H, H), h_n=np.full((B, H), np.nan),
                c_n=np.full((B, H), np.nan))


def test_cuda_emulated_device_pointers_equal_numpy_arrays(rng):
    """The pointer path of the binding (ints, as the device path passes them) on
    the emulated backend, whose device memory is host memory: the same results
    as the same arrays passed as numpy arrays."""
    _cuda_backend(emulated=True)
    p = _emulated_problem(rng)
    arrays, pointers = _outputs(p), _outputs(p)
    fusedlstm._core.forward(**p, **arrays)
    ptr = {k: (v.ctypes.data if isinstance(v, np.ndarray) else v) for k, v in dict(p, **pointers).items()}
    fusedlstm._core.forward(**ptr)
    for k in ("y", "h_n", "c_n"):
        assert np.array_equal(arrays[k], pointers[k]), k


def test_cuda_device_lengths_are_clamped_not_checked(rng):
    """Lengths on the device are never read by the host: out of [1, T] they are
    clamped to it by the kernels (fusedlstm.h), where the CPU refuses them. The
    numpy API checks host lengths on both backends (test_forward_errors)."""
    _cuda_backend(emulated=True)
    p = _emulated_problem(rng)
    T = p["T"]
    clamped, given = _outputs(p), _outputs(p)
    fusedlstm._core.forward(**p, **clamped, lengths=np.array([T, 1, 2], np.int64))
    fusedlstm._core.forward(**p, **given, lengths=np.array([T + 5, 0, 2], np.int64))
    for k in ("y", "h_n", "c_n"):
        assert np.array_equal(clamped[k], given[k]), k
    with pytest.raises(ValueError, match="lengths"):
        cpu = dict(p, device_type=fusedlstm._core.DEVICE_CPU)
        fusedlstm._core.forward(**cpu, **_outputs(p), lengths=np.array([T + 5, 0, 2], np.int64))


@pytest.mark.backends("cuda-emulated-torch", "cuda")
def test_device_path_checks_host_lengths_and_clamps_device_ones(backend):
    """Through the numpy API's device path: host lengths are checked as on the
    CPU; device lengths are not read by the host (no sync), so out-of-range
    values are clamped to [1, T] by the kernels (same results as the clamped
    values), while their dtype and shape are still checked."""
    inputs, options = base(M2M)
    x, w_ih, w_hh = backend.to((inputs["x"], inputs["w_ih"], inputs["w_hh"]))

    def run(lengths):
        res = fusedlstm.lstm_forward(x, w_ih, w_hh, lengths=lengths)
        return backend.numpy((res.y, res.h_n, res.c_n))

    expected = run(backend.to(np.array([T, 1, 2])))
    got = run(backend.to(np.array([T + 5, 0, 2])))
    for name, e, g in zip(("y", "h_n", "c_n"), expected, got):
        assert np.array_equal(e, g), name
    with pytest.raises(ValueError, match=r"^lengths must lie in \[1, T\]"):
        run(np.array([T + 5, 0, 2]))
    with pytest.raises(TypeError, match="^lengths must be an integer array"):
        run(backend.to(np.array([1.0, 2.0, 3.0])))
    with pytest.raises(ValueError, match=r"^lengths must have shape \(B,\)"):
        run(backend.to(np.array([1, 2])))
