"""Shared fixtures, helpers and THE tolerance policy of the fusedlstm test-suite.

Fixtures
--------
seed, rng        a fresh random seed per test (secrets.randbits), shown in the
                 report of a failing test; set FUSEDLSTM_TEST_SEED=<n> to replay.
ref              the numpy reference module (fusedlstm.reference, or loaded from
                 python/fusedlstm/reference.py by path when the package cannot be
                 imported because the compiled core is not built).
fl               the fusedlstm package (library tests only).
isa              parametrizes a test over fusedlstm.available_isas() (outside the
                 bf16 tests without avx512_bf16 where avx512 is there: see _isas);
                 selects the path for the test and restores the previous one afterwards.
num_threads      parametrizes a test over THREAD_COUNTS; sets/restores the count.
backend          parametrizes a test over the backends "cpu", "cuda-emulated" and
                 "cuda" (see BACKENDS below; an unavailable one skips, saying why);
                 with isa, the cpu backend runs on every ISA path, the others once.
threads          a context manager factory: ``with threads(2): ...`` sets the
                 thread count for the block and restores it.
thread_runtime   autouse: own thread pool for numpy tests, torch's OpenMP team for
                 test_torch_*.py (as fusedlstm.torch sets it up).
debug_poison     autouse: fusedlstm._set_debug_poison(True) for every test (the
                 library fills every output it allocates with NaN before the
                 kernel runs), restored afterwards.  No-op when the library is
                 not importable.
policy           the tolerance policy (see TOLERANCE_POLICY below).
reference_outputs  runs the reference in float64 (truth) and, for float32, in
                 float32 (the error baseline) on the same inputs; for another
                 precision its plain implementation (tolerance.PRECISIONS: e.g.
                 "bfloat16_cpu" for bfloat16 arrays on the CPU, "float32_bf16" for
                 float32 arrays with compute="bf16").
torch_lstm       (skips the test when torch is absent) nn.LSTM forward/backward
                 in float64 on the same inputs, as a second, independent truth.
"""

import contextlib
import importlib.util
import os
import pathlib
import secrets
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Lets an in-place build (extension next to python/fusedlstm/__init__.py) be found;
# appended, so an installed package always wins.
sys.path.append(str(ROOT / "python"))

try:
    import fusedlstm as _fl
except Exception as exc:  # core not built (yet): only the reference tests can run
    _fl = None
    _FL_IMPORT_ERROR = exc
else:
    _FL_IMPORT_ERROR = None


def _load_package_module(name):
    """fusedlstm.<name>, or the file loaded by path when the package cannot be imported."""
    try:
        return importlib.import_module(f"fusedlstm.{name}")
    except Exception:
        path = ROOT / "python" / "fusedlstm" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_fusedlstm_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up here
        spec.loader.exec_module(mod)
        return mod


reference = _load_package_module("reference")

THREAD_COUNTS = (1, 2)
OUTPUT_NAMES = ("y", "h_n", "c_n")
GRAD_NAMES = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


# --------------------------------------------------------------------------------------
# pytest configuration (pyproject.toml additionally sets --strict-markers,
# xfail_strict = true and testpaths = ["tests"])
# --------------------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line("markers", "torch: compares against PyTorch (skipped without torch)")
    config.addinivalue_line("markers", "backends(*names): run the test on these of BACKENDS only")


def pytest_report_header(config):
    if _fl is None:
        return [f"fusedlstm: NOT importable ({_FL_IMPORT_ERROR!r}); only reference tests can run"]
    lines = [f"fusedlstm: {getattr(_fl, '__file__', '?')}"]
    with contextlib.suppress(Exception):
        lines.append(f"fusedlstm ISA paths: {list(_fl.available_isas())} (default {_fl.get_isa()}),"
                     f" threads: {_fl.get_num_threads()}")
    with contextlib.suppress(Exception):
        loaded, why = _cuda_backend_name()
        lines.append(f"fusedlstm CUDA backend: {loaded or 'none'}" + ("" if loaded else f" ({why.splitlines()[0]})"))
    return lines


def _parametrized_by_marker(metafunc, name):
    return any(name in [n.strip() for n in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])]
               for m in metafunc.definition.iter_markers("parametrize"))


def _isas(metafunc):
    """The ISA paths a test runs on: all of them for the bfloat16 tests; for the
    others avx512_bf16 only where avx512 is missing, since its float32 and
    float64 kernels are avx512's (the same source, another translation unit)."""
    isas = list(_require_fl().available_isas())
    if "bf16" not in metafunc.module.__name__ and "avx512" in isas:
        isas = [n for n in isas if n != "avx512_bf16"]
    return isas


def pytest_generate_tests(metafunc):
    names = [n for n in metafunc.fixturenames if n != "backend" or not _parametrized_by_marker(metafunc, n)]
    only = metafunc.definition.get_closest_marker("backends")
    backends = [b for b in BACKENDS if only is None or b in only.args]
    if "backend" in names and "isa" in names:
        isas = _isas(metafunc)
        combos = [("cpu", n) for n in isas if "cpu" in backends] + [(b, isas[0]) for b in backends if b != "cpu"]
        metafunc.parametrize(("backend", "isa"), combos, indirect=True,
                             ids=[f"cpu-isa={n}" if b == "cpu" else b for b, n in combos])
    elif "backend" in names:
        metafunc.parametrize("backend", backends, indirect=True)
    elif "isa" in names:
        isas = _isas(metafunc)
        metafunc.parametrize("isa", isas, indirect=True, ids=[f"isa={n}" for n in isas])
    if "num_threads" in names:
        metafunc.parametrize("num_threads", THREAD_COUNTS, indirect=True,
                             ids=[f"threads={n}" for n in THREAD_COUNTS])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "_fusedlstm_seed", None)
    if seed is not None and report.failed:
        report.sections.append(
            ("random seed", f"seed = {seed}   (replay: FUSEDLSTM_TEST_SEED={seed} pytest ...)"))


def _require_fl():
    if _fl is None:
        raise RuntimeError(f"the fusedlstm package cannot be imported: {_FL_IMPORT_ERROR!r}")
    return _fl


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
@pytest.fixture
def seed(request):
    env = os.environ.get("FUSEDLSTM_TEST_SEED")
    value = int(env) if env else secrets.randbits(32)
    request.node._fusedlstm_seed = value
    print(f"random seed = {value}")
    return value


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture
def ref():
    return reference


@pytest.fixture
def fl():
    return _require_fl()


@pytest.fixture
def isa(request):
    lib = _require_fl()
    previous = lib.get_isa()
    lib.set_isa(request.param)
    assert lib.get_isa() == request.param
    yield request.param
    lib.set_isa(previous)


@pytest.fixture
def threads():
    """``with threads(n): ...`` runs the block with n library threads."""
    lib = _require_fl()

    @contextlib.contextmanager
    def use(n):
        previous = lib.get_num_threads()
        lib.set_num_threads(n)
        try:
            yield n
        finally:
            lib.set_num_threads(previous)

    return use


@pytest.fixture
def num_threads(request):
    lib = _require_fl()
    previous = lib.get_num_threads()
    lib.set_num_threads(request.param)
    yield request.param
    lib.set_num_threads(previous)


@pytest.fixture(autouse=True)
def thread_runtime(request):
    """Which threads run the core's parallel regions: fusedlstm's own pool for the
    numpy tests, torch's OpenMP team (what fusedlstm.torch selects at import) for
    the tests of the torch front end (test_torch_*.py). Importing fusedlstm.torch
    anywhere during collection would otherwise move every test onto the team."""
    if _fl is None:
        yield
        return
    core = _fl._core
    before = core.using_openmp()
    core.use_openmp(request.node.module.__name__.split(".")[-1].startswith("test_torch"))
    yield
    core.use_openmp(before)


@pytest.fixture(autouse=True)
def debug_poison():
    if _fl is None:
        yield False
        return
    getter = getattr(_fl, "_get_debug_poison", None)
    previous = getter() if getter is not None else None
    returned = _fl._set_debug_poison(True)
    if previous is None:
        previous = returned if isinstance(returned, bool) else False
    try:
        yield True
    finally:
        _fl._set_debug_poison(previous)


# --------------------------------------------------------------------------------------
# backends: the same test bodies on the CPU and on CUDA
#   cpu            the CPU backend, numpy arrays.
#   cuda-emulated  the CPU emulation of the CUDA backend (tests/emu/): runs when
#                  FUSEDLSTM_CUDA_LIBRARY points at libfusedlstm_cuda_emu.so
#                  (bash tests/emu/build.sh OUTDIR). Its "device" memory is host
#                  memory, so the tests hand numpy arrays to the numpy API, which
#                  passes them to _core with device_type=DEVICE_CUDA
#                  (fusedlstm._host.set_host_device).
#   cuda-emulated-torch  the same emulated backend, driven through the device path
#                  (fusedlstm/_device.py: pointers, strides, lengths, allocation)
#                  with torch CPU tensors standing for CUDA tensors; what only a GPU
#                  has (the CUDA-ness of a tensor, device index, streams, pinned
#                  copies) is replaced for the test (emulated_device_path below).
#   cuda           a GPU: torch CUDA tensors (or CuPy arrays without torch) through
#                  the device path (fusedlstm/_device.py).
# --------------------------------------------------------------------------------------
BACKENDS = ("cpu", "cuda-emulated", "cuda-emulated-torch", "cuda")


class Backend:
    """Moves a test's numpy inputs to the backend and its outputs back."""

    def __init__(self, name, lib=None):
        self.name, self.lib = name, lib

    @property
    def is_cuda(self):
        return self.name != "cpu"

    @property
    def device(self):
        """Where the backend's torch tensors live."""
        return "cpu" if self.name in ("cpu", "cuda-emulated-torch") else "cuda"

    def synchronize(self):
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()

    def to(self, a):
        """a (a numpy array, or a tuple / list / dict of them; other values as
        they are) as arrays of the backend; a view keeps its strides where the
        backend's library can have them."""
        if isinstance(a, dict):
            return {k: self.to(v) for k, v in a.items()}
        if isinstance(a, (tuple, list)):
            return type(a)(self.to(v) for v in a)
        if self.lib is None or not isinstance(a, np.ndarray):
            return a
        if self.lib == "cupy":
            import cupy
            return cupy.asarray(a)
        import torch
        device = "cpu" if self.name == "cuda-emulated-torch" else "cuda"
        dense = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        strides = [s // a.itemsize for s in a.strides]
        if a.size > 1 and min(strides) > 0 and all(s * a.itemsize == b for s, b in zip(strides, a.strides)):
            out = torch.empty_strided(a.shape, strides, dtype=dense.dtype, device=device)
            out.copy_(dense)
            return out
        return dense

    def numpy(self, a):
        """a (a backend array, a dict or tuple of them, or None) as numpy."""
        if isinstance(a, dict):
            return {k: self.numpy(v) for k, v in a.items()}
        if isinstance(a, (tuple, list)):
            return type(a)(self.numpy(v) for v in a)
        if a is None or isinstance(a, np.ndarray) or self.lib is None:
            return a
        if self.lib == "cupy":
            import cupy
            return cupy.asnumpy(a)
        return a.detach().cpu().numpy()


def _cuda_backend_name():
    """The loaded CUDA backend ("cuda", "cuda-emulated", or "" and why not)."""
    n, why = _fl._core.cuda_device_count()
    return (_fl._core.cuda_info("backend") if n else ""), why


def _gpu_array_library():
    try:
        import torch
        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy"
    except Exception:
        pass
    return None


@contextlib.contextmanager
def emulated_device_path(monkeypatch):
    """fusedlstm/_device.py on torch CPU tensors over the emulated backend (whose
    device memory is host memory): a CPU tensor counts as a tensor of CUDA
    device 0, the current stream is the default one (0), and what the device
    path allocates or copies to the device is a CPU tensor (the reserve 256-byte
    aligned, as on a GPU). Everything else of the device path runs as it is."""
    import torch
    from fusedlstm import _checks, _device

    is_cuda = _checks.is_cuda_array
    monkeypatch.setattr(_checks, "is_cuda_array", lambda a: isinstance(a, torch.Tensor) or is_cuda(a))
    lib = _device._Lib
    monkeypatch.setattr(lib, "device", lambda self, a: 0)
    monkeypatch.setattr(lib, "stream", lambda self, device, stream: (0, None))

    def empty(self, shape, dtype, device, poison):
        return torch.full(shape, float("nan"), dtype=dtype) if poison else torch.empty(shape, dtype=dtype)

    def empty_bytes(self, nbytes, device):
        raw = torch.empty(nbytes + 256, dtype=torch.uint8)
        skip = -raw.data_ptr() % 256
        return raw[skip:skip + nbytes]

    monkeypatch.setattr(lib, "empty", empty)
    monkeypatch.setattr(lib, "empty_bytes", empty_bytes)
    monkeypatch.setattr(lib, "from_host", lambda self, a, dtype, device: torch.from_numpy(np.array(a)).to(dtype))
    monkeypatch.setattr(lib, "host_lengths", lambda self, lens, device: torch.from_numpy(lens.copy()))
    yield


@pytest.fixture
def backend(request, monkeypatch):
    name = request.param
    lib = _require_fl()
    if name == "cpu":
        yield Backend(name)
        return
    loaded, why = _cuda_backend_name()
    if name == "cuda-emulated-torch":
        if loaded != "cuda-emulated":
            pytest.skip(f"cuda-emulated-torch: FUSEDLSTM_CUDA_LIBRARY does not point at the emulated backend "
                        f"(bash tests/emu/build.sh OUTDIR); loaded: {loaded or why!r}")
        pytest.importorskip("torch")
        with emulated_device_path(monkeypatch):
            yield Backend(name, "torch")
        return
    if name == "cuda-emulated":
        if loaded != "cuda-emulated":
            pytest.skip(f"cuda-emulated: FUSEDLSTM_CUDA_LIBRARY does not point at the emulated backend "
                        f"(bash tests/emu/build.sh OUTDIR; then FUSEDLSTM_CUDA_LIBRARY=OUTDIR/"
                        f"libfusedlstm_cuda_emu.so); loaded: {loaded or why!r}")
        from fusedlstm import _host
        previous = _host.set_host_device(lib._core.DEVICE_CUDA)
        try:
            yield Backend(name)
        finally:
            _host.set_host_device(previous)
        return
    array_lib = _gpu_array_library()
    if loaded != "cuda" or array_lib is None:
        pytest.skip(f"cuda: no GPU backend ({loaded or why!r}) or no torch/CuPy with CUDA")
    yield Backend(name, array_lib)


# --------------------------------------------------------------------------------------
# the tolerance policy: written once, in fusedlstm/tolerance.py (python -m fusedlstm uses
# it too); TOLERANCE_POLICY is its text.
#
# bfloat16 on the CPU (precisions "bfloat16_cpu" and "float32_bf16"): error against the
# float64 reference at most twice that of a plain implementation that rounds the same
# operands to bfloat16 (x, W_ih, W_hh and h_{t-1} before the two gate products of each
# step) and accumulates in float32; its backward is plain float32 on those values, and
# its outputs are rounded to bfloat16 when the call's arrays are bfloat16. Reason: the
# CPU kernels round exactly those operands (the cell state, gate math, projection and
# backward stay float32), so this is the naive implementation of the same arithmetic;
# CUDA's plain bfloat16 (every product rounded) would be looser than the CPU's design.
# --------------------------------------------------------------------------------------
tolerance = _load_package_module("tolerance")
TOLERANCE_POLICY = tolerance.__doc__


def assert_policy(name, actual, ref64, plain32=None, *, dtype, precision=None):
    """Assert `actual` (a library output) meets the tolerance policy.

    name: label used in the message; ref64: reference in float64 on the same
    inputs; plain32: the plain implementation in the same precision (the
    reference in float32 for float32; see tolerance.PRECISIONS), required for
    every precision but float64; dtype: the dtype the output must have (that of
    the inputs); precision: the arithmetic (a key of tolerance.PRECISIONS),
    by default the dtype's name.
    """
    dtype = np.dtype(dtype)
    if ref64 is None:
        assert actual is None, f"{name}: expected None, got {type(actual).__name__}"
        return
    assert isinstance(actual, np.ndarray), f"{name}: expected ndarray, got {type(actual).__name__}"
    assert actual.shape == ref64.shape, f"{name}: shape {actual.shape} != expected {ref64.shape}"
    assert actual.dtype == dtype, f"{name}: dtype {actual.dtype} != input dtype {dtype}"
    precision = precision or dtype.name
    assert precision in tolerance.PRECISIONS, f"{name}: unsupported dtype {dtype}"
    problem = tolerance.check(name, actual, ref64, plain32, precision=precision)
    assert problem is None, problem


def assert_policy_all(actual, ref64, plain32=None, *, dtype, names=None, prefix=""):
    """assert_policy for every key of the dict `ref64` (or `names`)."""
    for key in names if names is not None else ref64:
        assert_policy(prefix + key, actual[key], ref64[key],
                      None if plain32 is None else plain32[key], dtype=dtype)


class _Policy:
    text = TOLERANCE_POLICY
    check = staticmethod(assert_policy)
    check_all = staticmethod(assert_policy_all)


@pytest.fixture
def policy():
    return _Policy


# --------------------------------------------------------------------------------------
# reference / library evaluation helpers
# --------------------------------------------------------------------------------------
def as_dict(fwd=None, grads=None):
    """Collect y, h_n, c_n (from a forward result) and the gradients into one dict."""
    out = {}
    if fwd is not None:
        out.update({k: getattr(fwd, k) for k in OUTPUT_NAMES})
    if grads is not None:
        out.update({k: getattr(grads, k) for k in GRAD_NAMES})
    return out


def run_reference(args, kwargs, upstream=None, *, dtype, round_operands=None, round_scope="all"):
    """Reference forward (+ backward when `upstream` is a dict) in `dtype`."""
    res = reference.forward(*args, dtype=dtype, round_operands=round_operands, round_scope=round_scope, **kwargs)
    grads = None if upstream is None else reference.backward(res, **upstream)
    return as_dict(res, grads)


def reference_outputs(args, kwargs, upstream=None, *, dtype, precision=None):
    """(ref64, plain) for inputs of `dtype`: plain is the plain implementation in
    `precision` (default: the dtype's; see tolerance.PRECISIONS), None for float64."""
    ref64 = run_reference(args, kwargs, upstream, dtype=np.float64)
    precision = precision or np.dtype(dtype).name
    if precision == "float64":
        return ref64, None
    arithmetic, operands, storage = tolerance.plain_precision(precision)
    plain = run_reference(args, kwargs, upstream, dtype=arithmetic, round_operands=operands,
                          round_scope=tolerance.plain_scope(precision))
    if storage is not None:
        plain = {k: None if v is None else storage(v) for k, v in plain.items()}
    return ref64, plain


@pytest.fixture(name="reference_outputs")
def reference_outputs_fixture():
    return reference_outputs


def torch_lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, lengths=None,
               batch_first=False, dy=None, dh_n=None, dc_n=None):
    """torch.nn.LSTM (float64, CPU) forward + autograd backward on the given arrays.

    many_to_many semantics; with `lengths` the input is packed with
    pack_padded_sequence(enforce_sorted=False) and y unpacked with
    pad_packed_sequence(total_length=T).  Returns a dict like as_dict();
    db_ih / db_hh are None when that bias is None.
    """
    import torch

    f64 = torch.float64
    x = np.asarray(x, np.float64)
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    H, I = w_hh.shape[1], w_ih.shape[1]
    lstm = torch.nn.LSTM(I, H, num_layers=1, bias=True, batch_first=batch_first).to(f64)
    t = lambda a: torch.tensor(np.asarray(a, np.float64), dtype=f64)  # noqa: E731
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(t(w_ih))
        lstm.weight_hh_l0.copy_(t(w_hh))
        lstm.bias_ih_l0.copy_(t(b_ih) if b_ih is not None else torch.zeros(4 * H, dtype=f64))
        lstm.bias_hh_l0.copy_(t(b_hh) if b_hh is not None else torch.zeros(4 * H, dtype=f64))
    xt = t(x).requires_grad_(True)
    h0t = (t(h0) if h0 is not None else torch.zeros(B, H, dtype=f64)).unsqueeze(0).requires_grad_(True)
    c0t = (t(c0) if c0 is not None else torch.zeros(B, H, dtype=f64)).unsqueeze(0).requires_grad_(True)
    if lengths is None:
        yt, (hn, cn) = lstm(xt, (h0t, c0t))
    else:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        packed = pack_padded_sequence(xt, torch.as_tensor(np.asarray(lengths, np.int64)),
                                      batch_first=batch_first, enforce_sorted=False)
        out, (hn, cn) = lstm(packed, (h0t, c0t))
        yt, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    hn, cn = hn[0], cn[0]
    loss = 0 * yt.sum()
    for value, grad in ((yt, dy), (hn, dh_n), (cn, dc_n)):
        if grad is not None:
            loss = loss + (value * t(grad)).sum()
    loss.backward()
    g = lambda p: p.grad.detach().numpy().copy()  # noqa: E731
    return {
        "y": yt.detach().numpy().copy(), "h_n": hn.detach().numpy().copy(),
        "c_n": cn.detach().numpy().copy(),
        "dx": g(xt), "dh0": g(h0t)[0], "dc0": g(c0t)[0],
        "dw_ih": g(lstm.weight_ih_l0), "dw_hh": g(lstm.weight_hh_l0),
        "db_ih": g(lstm.bias_ih_l0) if b_ih is not None else None,
        "db_hh": g(lstm.bias_hh_l0) if b_hh is not None else None,
    }


@pytest.fixture(name="torch_lstm")
def torch_lstm_fixture():
    pytest.importorskip("torch")
    return torch_lstm



# --------------------------------------------------------------------------------------
# random problems
# --------------------------------------------------------------------------------------
class Problem:
    """Inputs of one call: ``forward(*args, **kwargs)``, ``backward(res, **upstream)``."""

    def __init__(self, args, kwargs, upstream, lengths, T):
        self.args, self.kwargs, self.upstream, self.lengths, self.T = args, kwargs, upstream, lengths, T

    @property
    def inputs(self):
        """x, w_ih, w_hh, b_ih, b_hh, h0, c0 as a dict."""
        return dict(zip(("x", "w_ih", "w_hh"), self.args),
                    **{k: self.kwargs[k] for k in ("b_ih", "b_hh", "h0", "c0")})

    @property
    def options(self):
        return {k: v for k, v in self.kwargs.items() if k not in ("b_ih", "b_hh", "h0", "c0")}

    def padded(self):
        """(T, B) bool mask of padded steps (time-major), or None without lengths."""
        if self.lengths is None:
            return None
        return np.arange(self.T)[:, None] >= np.asarray(self.lengths)[None, :]


def make_problem(rng, *, mode="many_to_many", T=3, B=2, I=3, H=5, feed="repeat", lengths=False,
                 init=True, bias="both", batch_first=False, upstream="all", dtype=np.float64,
                 lengths_dtype=np.int64):
    """A random problem.

    lengths: False / True (random, row 1 has length 1) / an explicit array.
    init: pass h0 and c0.  bias: "both", "ih", "hh" or "none".
    upstream: "all" (dy, dh_n, dc_n), "dy", "states" (dh_n, dc_n) or "none".
    dy at padded positions is large on purpose (it must be ignored).
    """
    scale = 1.5 / np.sqrt(H)
    if mode == "one_to_many":
        x = rng.standard_normal((B, I))
    else:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    w_ih = rng.uniform(-scale, scale, (4 * H, I))
    w_hh = rng.uniform(-scale, scale, (4 * H, H))
    b_ih = rng.uniform(-0.5, 0.5, 4 * H) if bias in ("both", "ih") else None
    b_hh = rng.uniform(-0.5, 0.5, 4 * H) if bias in ("both", "hh") else None
    h0 = 0.5 * rng.standard_normal((B, H)) if init else None
    c0 = rng.standard_normal((B, H)) if init else None

    lens = None
    if lengths is True:
        lens = rng.integers(1, T + 1, B)
        lens[1 % B] = 1
    elif lengths is not False and lengths is not None:
        lens = np.asarray(lengths)
    if lens is not None:
        lens = lens.astype(lengths_dtype)

    y_shape = (B, H) if mode == "many_to_one" else ((B, T, H) if batch_first else (T, B, H))
    dy = rng.standard_normal(y_shape)
    if lens is not None and mode == "many_to_many":
        pad = np.arange(T)[:, None] >= lens[None, :]
        dy_tm = dy.swapaxes(0, 1) if batch_first else dy
        dy_tm[pad] = 100.0 * rng.standard_normal((int(pad.sum()), H))
    ups = {"dy": dy, "dh_n": rng.standard_normal((B, H)), "dc_n": rng.standard_normal((B, H))}
    ups = {"all": ups, "dy": {"dy": dy}, "states": {"dh_n": ups["dh_n"], "dc_n": ups["dc_n"]},
           "none": None}[upstream]

    cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
    args = (cast(x), cast(w_ih), cast(w_hh))
    kwargs = dict(b_ih=cast(b_ih), b_hh=cast(b_hh), h0=cast(h0), c0=cast(c0), mode=mode,
                  batch_first=batch_first)
    if lens is not None:
        kwargs["lengths"] = lens
    if mode == "one_to_many":
        kwargs.update(steps=T, feed=feed)
    if ups is not None:
        ups = {k: cast(v) for k, v in ups.items()}
    return Problem(args, kwargs, ups, lens, T)


@pytest.fixture(name="make_problem")
def make_problem_fixture(rng):
    return lambda **kw: make_problem(rng, **kw)
