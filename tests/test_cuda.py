"""The CUDA backend.

Two parts:

* Tests that run everywhere: the CUDA backend library's presence is reported
  by build_info(), cuda_available() answers without raising (no driver, a
  library that does not load, a broken install), host arrays reject stream=.
  With FUSEDLSTM_EXPECT_CUDA=1 (CI sets it) the CUDA backend library must
  have been built and must load.
* Device tests: the CPU suite's cases on torch tensors through the device
  path (fusedlstm/_device.py) against the float64 reference, every dtype and
  both recurrences, outputs poisoned with NaN (conftest's autouse
  debug_poison), fresh random inputs each run. They run on a GPU (backend
  "cuda") and on the CPU emulation of the CUDA backend with torch CPU tensors
  standing for CUDA ones ("cuda-emulated-torch", conftest.py; GPU-sized shapes
  and streams only on a GPU).

Tolerance on CUDA: the suite's one policy (fusedlstm/tolerance.py, via conftest),
against the float64 reference evaluated on the same inputs (rounded to the
storage dtype): float64 and float32 as on the CPU; TF32, float16 and bfloat16
at most 2x the error of the plain implementation in that precision (the numpy
reference in float32 with every GEMM operand rounded to the format and the
outputs stored in it; see tolerance.PRECISIONS).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedlstm

DTYPES = ["float32", "float64", "tf32", "float16", "bfloat16"]


# ------------------------------------------------------------ build / host
def _assert_cpu_package_works(make_problem, reference_outputs, policy):
    """A CPU forward + backward (numpy arrays) still matches the reference."""
    p = make_problem(T=3, B=2, I=3, H=5, lengths=True)
    res = fusedlstm.lstm_forward(*p.args, **p.kwargs, training=True)
    grads = fusedlstm.lstm_backward(res, **p.upstream)
    out = {**{k: getattr(res, k) for k in ("y", "h_n", "c_n")},
           **{k: getattr(grads, k) for k in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")}}
    ref64, _ = reference_outputs(p.args, p.kwargs, p.upstream, dtype=np.float64)
    policy.check_all(out, ref64, dtype=np.float64)


def test_unimportable_device_path_is_reported_not_raised(monkeypatch, make_problem, reference_outputs, policy):
    """Even the device path failing to import (a broken install) leaves
    cuda_available() False, build_info() naming the error, the CPU package working."""
    monkeypatch.setitem(sys.modules, "fusedlstm._device", None)  # its import now raises ImportError
    assert fusedlstm.cuda_available() is False
    info = fusedlstm.build_info()
    assert info["backends"] == ["cpu"]
    assert info["cuda"]["devices"] == 0 and "fusedlstm._device" in info["cuda"]["reason"], info["cuda"]
    _assert_cpu_package_works(make_problem, reference_outputs, policy)


@pytest.mark.parametrize("raise_it", [False, True], ids=["reported", "raised"])
def test_missing_driver_is_reported_not_raised(monkeypatch, raise_it, make_problem, reference_outputs, policy):
    """A machine without a usable driver (the C API's probe reports it, or a
    broken one raises): cuda_available() is False, build_info() gives the
    driver's message, CUDA arrays are refused with it, and the CPU package works."""
    from fusedlstm import _core, _device
    why = "CUDA driver version is insufficient for CUDA runtime version (libcuda.so.1 not found)"

    def no_driver():
        if raise_it:
            raise RuntimeError(why)
        return 0, why

    monkeypatch.setattr(_core, "cuda_device_count", no_driver)
    assert fusedlstm.cuda_available() is False
    info = fusedlstm.build_info()
    assert info["cuda"]["devices"] == 0 and info["backends"] == ["cpu"]
    reason = info["cuda"]["reason"]
    assert reason.startswith("no usable CUDA device") and "libcuda.so.1 not found" in reason, reason
    if raise_it:
        assert "RuntimeError" in reason
    with pytest.raises(RuntimeError, match="libcuda.so.1 not found"):
        _device._require_backend()
    _assert_cpu_package_works(make_problem, reference_outputs, policy)


def test_backend_library_that_does_not_load_is_reported(tmp_path):
    """FUSEDLSTM_CUDA_LIBRARY naming a file that is not there: no CUDA, the
    reason names the path, the CPU works (a fresh process: the C API loads the
    backend once)."""
    code = textwrap.dedent("""
        import numpy as np, fusedlstm
        info = fusedlstm.build_info()["cuda"]
        print(fusedlstm.cuda_available(), repr(info["backend"]), "|", info["reason"].replace(chr(10), " "))
        print(fusedlstm.lstm_forward(np.ones((2, 1, 3)), np.ones((8, 3)), np.ones((8, 2))).y.shape)
        """)
    missing = tmp_path / "libfusedlstm_cuda.so"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, FUSEDLSTM_CUDA_LIBRARY=str(missing)))
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith("False '' | no usable CUDA device") and str(missing) in first, first
    assert second == "(2, 1, 2)"


def test_reduced_precision_baselines(make_problem, reference_outputs, rng):
    """The plain implementations the TF32 / float16 / bfloat16 bounds are derived
    from (runs without a GPU): the roundings are the formats' own, and each
    baseline is less accurate than plain float32 and more accurate than bfloat16
    needs, so a broken baseline cannot make a GPU bound silently loose or absurd."""
    from conftest import tolerance

    a = (rng.standard_normal(10000) * 10.0 ** rng.integers(-20, 20, 10000)).astype(np.float32)
    in_range = a[np.abs(a) < 65504]  # float16's largest
    assert np.array_equal(tolerance.rounder("float16")(in_range), in_range.astype(np.float16).astype(np.float32))
    bits = a.view(np.uint32)
    for mantissa, precision in ((10, "tf32"), (7, "bfloat16")):
        r = tolerance.round_mantissa(a, mantissa)
        assert np.all(r.view(np.uint32) & np.uint32((1 << (23 - mantissa)) - 1) == 0), precision
        assert np.all(np.abs(r - a) <= np.abs(a) * 2.0 ** -(mantissa + 1)), f"{precision}: not nearest"
        halfway = (bits & np.uint32((1 << (23 - mantissa)) - 1)) == (1 << (22 - mantissa))
        assert np.all(r[halfway].view(np.uint32) & np.uint32(1 << (23 - mantissa)) == 0), "ties to even"
    p = make_problem(T=6, B=4, I=7, H=9, lengths=True)
    args = tuple(tolerance.rounder(7)(a).astype(np.float64) for a in p.args)  # exact in every format
    kwargs = {k: tolerance.rounder(7)(v).astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
              else v for k, v in p.kwargs.items()}
    ups = {k: tolerance.rounder(7)(v).astype(np.float64) for k, v in p.upstream.items()}
    errors = {}
    for precision in ("float32", "tf32", "float16", "bfloat16"):
        ref64, plain = reference_outputs(args, kwargs, ups, dtype=np.float64, precision=precision)
        errors[precision] = {k: float(np.max(np.abs(plain[k] - ref64[k])) / max(1.0, np.max(np.abs(ref64[k]))))
                             for k in ref64 if ref64[k] is not None}
    for name, e32 in errors["float32"].items():
        for precision, bound in (("tf32", 2.0 ** -8), ("float16", 2.0 ** -8), ("bfloat16", 2.0 ** -5)):
            e = errors[precision][name]
            assert e32 < e <= bound, f"{name}: plain {precision} error {e:.2e} (float32 {e32:.2e})"
        assert errors["bfloat16"][name] > errors["float16"][name], name


def test_build_info_reports_cuda():
    info = fusedlstm.build_info()
    cuda = info["cuda"]
    assert "cpu" in info["backends"]
    if cuda["backend"] == "cuda":
        assert cuda["archs"], "a CUDA build must list its GPU archs"
        assert any(a.startswith("80") for a in cuda["archs"]) and any(a.startswith("90") for a in cuda["archs"])
        assert any(a.endswith("virtual") for a in cuda["archs"]), "PTX must be embedded"
    if not fusedlstm.cuda_available():
        assert cuda.get("reason"), "build_info must say why CUDA is unusable"
    else:
        assert "cuda" in info["backends"]


@pytest.mark.skipif(os.environ.get("FUSEDLSTM_EXPECT_CUDA") != "1",
                    reason="FUSEDLSTM_EXPECT_CUDA=1 not set (CI sets it: the CUDA backend must be built)")
def test_cuda_backend_built_and_loadable():
    """The installed package's own libfusedlstm_cuda.so loads (in a fresh
    interpreter without FUSEDLSTM_CUDA_LIBRARY, which CI points at the
    emulated backend for the rest of the suite)."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "FUSEDLSTM_CUDA_LIBRARY"}
    code = ("import json, fusedlstm; from fusedlstm import _core; n, why = _core.cuda_device_count(); "
            "print(json.dumps([n, why, _core.cuda_info('backend'), fusedlstm.build_info()['cuda']['archs']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd="/")
    n, why, backend, archs = json.loads(out.stdout.strip().splitlines()[-1])
    assert n >= 0 and isinstance(why, str)
    assert backend == "cuda", why
    assert archs, "the backend library lists no GPU archs"


def test_cuda_path_setting_is_validated(monkeypatch):
    """A FUSEDLSTM_CUDA_PATH other than auto / persistent / fallback is a
    ValueError naming the variable, raised before any device memory is touched
    (pointers to nowhere; so this runs on the emulated backend too)."""
    from fusedlstm import _core
    if not _core.cuda_device_count()[0]:
        pytest.skip("no CUDA backend loads here")
    monkeypatch.setenv("FUSEDLSTM_CUDA_PATH", "fastest")
    nowhere = 1 << 40
    with pytest.raises(ValueError, match="FUSEDLSTM_CUDA_PATH must be 'fallback', 'persistent' or 'auto'"):
        _core.forward(x=nowhere, x_strides=(8, 4), w_ih=nowhere, w_hh=nowhere, y=nowhere, y_strides=(10, 5),
                      h_n=nowhere, c_n=nowhere, mode=0, T=3, B=2, I=4, H=5, dtype=_core.FLOAT32,
                      device_type=_core.DEVICE_CUDA)


def test_host_arrays_reject_stream(rng):
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    w_ih = rng.standard_normal((20, 4)).astype(np.float32)
    w_hh = rng.standard_normal((20, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="stream"):
        fusedlstm.lstm_forward(x, w_ih, w_hh, stream=1)
    h = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="stream"):
        fusedlstm.lstm_cell(x[0], h, h, w_ih, w_hh, stream=1)
    res = fusedlstm.lstm_forward(x, w_ih, w_hh, training=True)
    with pytest.raises(ValueError, match="stream"):
        fusedlstm.lstm_backward(res, stream=1)


def test_host_arrays_are_not_cuda_arrays():
    from fusedlstm._checks import is_cuda_array
    assert not is_cuda_array(np.zeros(3))
    assert not is_cuda_array([1.0])
    torch = pytest.importorskip("torch")
    assert not is_cuda_array(torch.zeros(3))


# ------------------------------------------------------------------ GPU
# On a GPU (backend "cuda"), and on the emulated backend through the device
# path with torch CPU tensors standing for CUDA tensors ("cuda-emulated-torch",
# conftest.py): every dtype, both recurrences.
ON_DEVICE = pytest.mark.backends("cuda-emulated-torch", "cuda")


def _torch_cuda():
    """For the tests that need a real GPU (streams, CuPy)."""
    if not fusedlstm.cuda_available() or fusedlstm.build_info()["cuda"]["backend"] != "cuda":
        pytest.skip(f"no GPU here: {fusedlstm.build_info()['cuda'].get('reason', 'the emulated backend')}")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


def _on_device(backend):
    """(torch, the device of the backend's tensors)."""
    import torch
    return torch, backend.device


def _sync(torch, device):
    if device == "cuda":
        _sync(torch, device)


def _tdtype(torch, name):
    return {"float32": torch.float32, "tf32": torch.float32, "float64": torch.float64,
            "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _to_dev(torch, a, dt, device):
    return None if a is None else torch.as_tensor(np.asarray(a)).to(device).to(dt)


def _to_np(torch, t):
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


def _check(name, actual64, ref64, plain, dtname):
    """actual64: the CUDA output as float64 numpy; plain: the plain implementation
    in dtname's precision (None for float64)."""
    from conftest import assert_policy

    assert actual64 is not None or ref64 is None, name
    if ref64 is None:
        assert actual64 is None, f"{name}: expected None"
        return
    assert actual64.shape == ref64.shape, f"{name}: shape {actual64.shape} != {ref64.shape}"
    assert np.all(np.isfinite(actual64)), f"{name}: NaN/Inf (an unwritten element?)"
    if dtname == "float32":
        assert_policy(name, actual64.astype(np.float32), ref64, plain, dtype=np.float32)
    else:  # float64, or a reduced precision held here exactly in float64
        assert_policy(name, actual64, ref64, plain, dtype=np.float64, precision=dtname)


@pytest.fixture(params=["fallback", "persistent"])
def cuda_path(request, monkeypatch):
    """Runs a test with FUSEDLSTM_CUDA_PATH = fallback and = persistent."""
    monkeypatch.setenv("FUSEDLSTM_CUDA_PATH", request.param)
    return request.param


def _assert_path(forward, backward=None):
    """The path the last forward (and backward, where given) call took."""
    from fusedlstm import _core
    assert _core.cuda_info("last_forward_path") == forward
    if backward is not None:
        assert _core.cuda_info("last_backward_path") == backward


def _run_case(torch, device, prob, dtname, reference_outputs, *, backward=True, batch_first=False):
    dt = _tdtype(torch, dtname)
    ins = prob.inputs
    dev = {k: _to_dev(torch, v, dt, device) for k, v in ins.items()}
    # The reference sees the inputs as the GPU sees them (rounded to the storage dtype).
    rounded = {k: _to_np(torch, v) for k, v in dev.items()}
    opts = prob.options
    kwargs = {k: rounded[k] for k in ("b_ih", "b_hh", "h0", "c0")}
    kwargs.update(opts)
    args = (rounded["x"], rounded["w_ih"], rounded["w_hh"])
    ups = prob.upstream if backward else None
    ups_dev = ups_r = None
    if ups is not None:
        ups_dev = {k: _to_dev(torch, v, dt, device) for k, v in ups.items()}
        ups_r = {k: _to_np(torch, v) for k, v in ups_dev.items()}
    ref_dtype = np.float32 if dtname == "float32" else np.float64
    ref64, plain = reference_outputs(tuple(a.astype(ref_dtype) for a in args),
                                     {k: (v.astype(ref_dtype) if isinstance(v, np.ndarray) and
                                          v.dtype.kind == "f" else v) for k, v in kwargs.items()},
                                     None if ups_r is None else {k: v.astype(ref_dtype) for k, v in
                                                                 ups_r.items()},
                                     dtype=ref_dtype, precision=dtname)
    fkw = dict(opts)
    res = fusedlstm.lstm_forward(dev["x"], dev["w_ih"], dev["w_hh"], dev["b_ih"], dev["b_hh"], dev["h0"],
                                 dev["c0"], training=ups is not None, allow_tf32=dtname == "tf32", **fkw)
    _sync(torch, device)
    for name in ("y", "h_n", "c_n"):
        out = getattr(res, name)
        assert isinstance(out, torch.Tensor) and out.device.type == device and out.dtype == dt, name
        _check(name, _to_np(torch, out), ref64[name], None if plain is None else plain[name], dtname)
    if ups is not None:
        g = fusedlstm.lstm_backward(res, **ups_dev)
        _sync(torch, device)
        for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
            _check(name, _to_np(torch, getattr(g, name)), ref64[name],
                   None if plain is None else plain[name], dtname)
    return res


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@ON_DEVICE
def test_cuda_sequence(backend, make_problem, reference_outputs, dtname, mode, lengths, batch_first, cuda_path):
    torch, device = _on_device(backend)
    prob = make_problem(mode=mode, T=7, B=5, I=9, H=13, lengths=lengths, batch_first=batch_first)
    _run_case(torch, device, prob, dtname, reference_outputs)
    _assert_path(cuda_path, cuda_path)  # small shapes always fit the persistent kernels


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("feed", ["repeat", "first", "output"])
@pytest.mark.parametrize("init", [False, True])
@ON_DEVICE
def test_cuda_one_to_many(backend, make_problem, reference_outputs, dtname, feed, init, cuda_path):
    torch, device = _on_device(backend)
    I = 11 if feed == "output" else 6
    prob = make_problem(mode="one_to_many", T=6, B=3, I=I, H=11, feed=feed, init=init)
    _run_case(torch, device, prob, dtname, reference_outputs)
    expected = "fallback" if feed == "output" else cuda_path  # feed='output' has no persistent kernel
    _assert_path(expected, expected)


@pytest.mark.parametrize("bias", ["both", "ih", "hh", "none"])
@pytest.mark.parametrize("upstream", ["all", "dy", "states"])
@ON_DEVICE
def test_cuda_bias_and_upstream(backend, make_problem, reference_outputs, bias, upstream):
    torch, device = _on_device(backend)
    prob = make_problem(T=5, B=4, I=7, H=9, bias=bias, upstream=upstream, lengths=True, init=False)
    _run_case(torch, device, prob, "float32", reference_outputs)


@pytest.mark.parametrize("dtname", ["float32", "float64", "tf32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 17, 33), (20, 33, 40, 70), (50, 64, 128, 128)])
@ON_DEVICE
def test_cuda_sizes(backend, make_problem, reference_outputs, dtname, shape):
    torch, device = _on_device(backend)
    T, B, I, H = shape
    if backend.name != "cuda" and T * B * H > 20000:
        pytest.skip("a GPU's size: seconds per case under the emulation")
    prob = make_problem(T=T, B=B, I=I, H=H, lengths=B > 1)
    _run_case(torch, device, prob, dtname, reference_outputs)


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("shape", [(20, 16, 64, 1024), (9, 3, 33, 300), (4, 40, 8, 129)])
@pytest.mark.backends("cuda")  # minutes under the emulation's fibers
def test_cuda_persistent_large(backend, make_problem, reference_outputs, dtname, shape, monkeypatch):
    """Shapes where the persistent kernel spreads W_hh over many CTAs (it runs
    when W_hh's slices fit in shared memory; the test reports which path ran)."""
    torch, device = _on_device(backend)
    monkeypatch.setenv("FUSEDLSTM_CUDA_PATH", "persistent")
    T, B, I, H = shape
    prob = make_problem(T=T, B=B, I=I, H=H, lengths=True)
    _run_case(torch, device, prob, dtname, reference_outputs)
    from fusedlstm import _core
    print("paths: forward", _core.cuda_info("last_forward_path"), "backward", _core.cuda_info("last_backward_path"))


@pytest.mark.parametrize("B, H, expected", [(4, 24, "persistent"), (200, 200, "fallback")])
@ON_DEVICE
def test_cuda_auto_path(backend, make_problem, reference_outputs, monkeypatch, B, H, expected):
    """Unset FUSEDLSTM_CUDA_PATH (auto): the persistent kernels run where they
    fit and B * ceil(H / #SMs) * H <= 32768 (4 * 1 * 24 on any GPU); larger
    shares take the per-step fallback (200 * 2 * 200 on 132 SMs, more on fewer)."""
    torch, device = _on_device(backend)
    monkeypatch.delenv("FUSEDLSTM_CUDA_PATH", raising=False)
    prob = make_problem(T=6, B=B, I=10, H=H, lengths=True)
    _run_case(torch, device, prob, "float32", reference_outputs)
    _assert_path(expected, expected)


@pytest.mark.parametrize("dtname", DTYPES)
@ON_DEVICE
def test_cuda_cell(backend, rng, dtname, reference_outputs):
    torch, device = _on_device(backend)
    dt = _tdtype(torch, dtname)
    B, I, H = 5, 7, 10
    arrs = [rng.standard_normal(s) * sc for s, sc in (((B, I), 1), ((B, H), .5), ((B, H), 1),
                                                       ((4 * H, I), .4), ((4 * H, H), .4), ((4 * H,), .5),
                                                       ((4 * H,), .5))]
    dev = [_to_dev(torch, a, dt, device) for a in arrs]
    r = [_to_np(torch, d) for d in dev]
    h_new, c_new = fusedlstm.lstm_cell(*dev, allow_tf32=dtname == "tf32")
    ref_dtype = np.float32 if dtname == "float32" else np.float64
    r = [a.astype(ref_dtype) for a in r]
    ref64, plain = reference_outputs((r[0][None], r[3], r[4]), dict(b_ih=r[5], b_hh=r[6], h0=r[1], c0=r[2]),
                                     dtype=ref_dtype, precision=dtname)
    _check("h_new", _to_np(torch, h_new), ref64["h_n"], plain and plain["h_n"], dtname)
    _check("c_new", _to_np(torch, c_new), ref64["c_n"], plain and plain["c_n"], dtname)


def test_cuda_lengths_on_device_and_stream(make_problem, reference_outputs):
    torch = _torch_cuda()
    prob = make_problem(T=6, B=4, I=5, H=7, lengths=True)
    base = _run_case(torch, "cuda", prob, "float32", reference_outputs)
    dev = {k: _to_dev(torch, v, torch.float32, "cuda") for k, v in prob.inputs.items()}
    lens = torch.as_tensor(prob.lengths, device="cuda")
    s = torch.cuda.Stream()
    res = fusedlstm.lstm_forward(dev["x"], dev["w_ih"], dev["w_hh"], dev["b_ih"], dev["b_hh"], dev["h0"],
                                 dev["c0"], lengths=lens, stream=s)
    s.synchronize()
    # Same math as the training run above, but other buffers: cuBLAS may pick
    # another kernel (pointer alignment), so float32 closeness, not bitwise.
    torch.testing.assert_close(res.y, base.y)
    torch.testing.assert_close(res.h_n, base.h_n)
    torch.testing.assert_close(res.c_n, base.c_n)


@ON_DEVICE
def test_cuda_backward_after_inputs_change_and_twice(backend, make_problem):
    torch, device = _on_device(backend)
    prob = make_problem(T=5, B=3, I=4, H=6)
    dev = {k: _to_dev(torch, v, torch.float64, device) for k, v in prob.inputs.items()}
    ups = {k: _to_dev(torch, v, torch.float64, device) for k, v in prob.upstream.items()}
    res = fusedlstm.lstm_forward(dev["x"], dev["w_ih"], dev["w_hh"], dev["b_ih"], dev["b_hh"], dev["h0"],
                                 dev["c0"], training=True)
    g1 = fusedlstm.lstm_backward(res, **ups)
    for v in dev.values():
        if v is not None:
            v.fill_(7.0)
    g2 = fusedlstm.lstm_backward(res, **ups)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih"):
        torch.testing.assert_close(getattr(g1, name), getattr(g2, name), rtol=0, atol=0)
    assert res.saved_nbytes > 0


@ON_DEVICE
def test_cuda_errors(backend, rng):
    torch, device = _on_device(backend)
    x = torch.randn(3, 2, 4, device=device)
    w_ih, w_hh = torch.randn(20, 4, device=device), torch.randn(20, 5, device=device)
    with pytest.raises(ValueError, match="w_hh"):
        fusedlstm.lstm_forward(x, w_ih, w_hh.cpu().numpy())
    with pytest.raises(ValueError, match="h0 is on the host"):
        fusedlstm.lstm_forward(x, w_ih, w_hh, h0=np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="w_ih"):
        fusedlstm.lstm_forward(x, w_ih.double(), w_hh)
    with pytest.raises(ValueError, match="lengths"):
        fusedlstm.lstm_forward(x, w_ih, w_hh, lengths=[1, 4])
    with pytest.raises(ValueError, match="w_ih"):
        fusedlstm.lstm_forward(x, torch.randn(20, 3, device=device), w_hh)
    with pytest.raises(TypeError, match="dtype"):
        fusedlstm.lstm_forward(x.to(torch.int32), w_ih, w_hh)


def test_cuda_cupy_arrays(rng, policy):
    _torch_cuda()
    cupy = pytest.importorskip("cupy")
    from fusedlstm import reference
    T, B, I, H = 4, 3, 5, 6
    x, w_ih, w_hh = rng.standard_normal((T, B, I)), rng.standard_normal((4 * H, I)) * .4, \
        rng.standard_normal((4 * H, H)) * .4
    res = fusedlstm.lstm_forward(cupy.asarray(x), cupy.asarray(w_ih), cupy.asarray(w_hh), training=True)
    assert isinstance(res.y, cupy.ndarray)
    dy = rng.standard_normal((T, B, H))
    g = fusedlstm.lstm_backward(res, dy=cupy.asarray(dy))
    r = reference.forward(x, w_ih, w_hh)
    rg = reference.backward(r, dy=dy)
    policy.check("y", cupy.asnumpy(res.y), r.y, dtype=np.float64)
    policy.check("dw_hh", cupy.asnumpy(g.dw_hh), rg.dw_hh, dtype=np.float64)
    assert isinstance(g.dx, cupy.ndarray)
