"""CUDA dispatch: lstm_forward / lstm_backward / lstm_cell on GPU arrays.

The public functions in :mod:`fusedlstm.api` call into here when ``x`` is a
CUDA array (``x.__dlpack_device__()`` is CUDA). Arrays are used zero-copy:

* torch tensors: ``data_ptr()``, ``stride()``, ``dtype``, ``device`` (this
  covers bfloat16, which ``__cuda_array_interface__`` cannot describe);
* CuPy arrays: ``data.ptr``, ``strides``, ``dtype``, ``device``;
* any other DLPack producer on a CUDA device: imported through
  ``torch.from_dlpack`` (or ``cupy.from_dlpack`` without torch), zero-copy,
  and treated as that library's array.

Outputs are allocated by the library of ``x`` on ``x``'s device (torch in,
torch out; CuPy in, CuPy out). An argument from another library on the same
device is imported through DLPack; an argument on another device (or on the
host) is a ``ValueError`` naming it.

Streams: the work runs on the caller's current stream
(``torch.cuda.current_stream(device)`` / CuPy's current stream) and nothing
synchronizes the host, except a ``lengths`` given as a device array, which is
copied to the host first (a wait for the current stream). ``stream=``
(a torch/CuPy stream object or a raw ``cudaStream_t`` int) runs the work there
instead: it first waits for the current stream (so inputs and the freshly
allocated outputs are ready), and torch outputs are ``record_stream``-ed on it;
ordering later uses of the outputs after ``stream`` is the caller's job.

dtypes: float32 (strict; ``allow_tf32=True`` lets the GEMMs use TF32 tensor
cores), float64, float16 and bfloat16 (storage; float32 accumulation, float32
cell state and gate math). ``allow_tf32`` is ignored for other dtypes.
"""

from __future__ import annotations

import operator

try:
    from . import _cuda
    _IMPORT_ERROR = None
except Exception as exc:  # ImportError, OSError (missing libcublas), ...
    _cuda = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

try:
    from . import _cuda_build as _build
except ImportError:  # source checkout without a build
    _build = None

_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


# ------------------------------------------------------------- availability
def _device_count():
    if _cuda is None:
        return 0, _IMPORT_ERROR or "the CUDA module is not built"
    try:
        return _cuda.device_count()
    except Exception as exc:  # never let a probe crash the import
        return 0, f"{type(exc).__name__}: {exc}"


def cuda_available() -> bool:
    """True when the CUDA backend is compiled in and a CUDA device is usable."""
    return _device_count()[0] > 0


def cuda_build_info() -> dict:
    """What this build has for CUDA, and why it is unusable when it is."""
    compiled = bool(_build is not None and _build.CUDA_BUILT)
    n, why = _device_count()
    info = {
        "compiled": compiled,
        "archs": (_build.CUDA_ARCHS.split(";") if compiled and _build.CUDA_ARCHS else []),
        "nvcc": getattr(_build, "NVCC_VERSION", "") if compiled else "",
        "importable": _cuda is not None,
        "devices": n,
        "path": _cuda.path() if _cuda is not None else None,
    }
    if not compiled:
        info["reason"] = (getattr(_build, "SKIP_REASON", "") or "not compiled") if _build else \
            "no build information (source checkout)"
    elif _cuda is None:
        info["reason"] = f"the _cuda module failed to import: {_IMPORT_ERROR}"
    elif n == 0:
        info["reason"] = f"no usable CUDA device: {why}"
    return info


def is_cuda_array(a) -> bool:
    """True for an array whose DLPack device is a CUDA GPU."""
    dev = getattr(a, "__dlpack_device__", None)
    if dev is None or isinstance(a, type):
        return False
    try:
        return int(dev()[0]) in _DLPACK_CUDA
    except Exception:
        return False


def _require_backend():
    if not cuda_available():
        info = cuda_build_info()
        raise RuntimeError(f"fusedlstm: got CUDA arrays but the CUDA backend is unusable: "
                           f"{info.get('reason', 'unknown reason')}")


# ------------------------------------------------------------------ arrays
class _Lib:
    """The array library of x: dtype codes, allocation, streams."""

    def __init__(self, x):
        mod = type(x).__module__.split(".")[0]
        if mod == "torch":
            import torch
            self.name, self.mod = "torch", torch
            self.codes = {torch.float32: _cuda.FLOAT32, torch.float64: _cuda.FLOAT64,
                          torch.float16: _cuda.FLOAT16, torch.bfloat16: _cuda.BFLOAT16}
        elif mod == "cupy":
            import cupy
            self.name, self.mod = "cupy", cupy
            self.codes = {cupy.dtype("float32"): _cuda.FLOAT32, cupy.dtype("float64"): _cuda.FLOAT64,
                          cupy.dtype("float16"): _cuda.FLOAT16}
        else:
            raise TypeError(f"CUDA arrays of type {type(x).__module__}.{type(x).__name__} are "
                            f"imported through torch or cupy; pass them through torch.from_dlpack")

    def device(self, a):
        return a.device.index if self.name == "torch" else a.device.id

    def is_mine(self, a):
        return type(a).__module__.split(".")[0] == self.name

    def imported(self, a):
        return self.mod.from_dlpack(a)

    def ptr(self, a):
        return a.data_ptr() if self.name == "torch" else a.data.ptr

    def strides(self, a):
        """a's strides in elements (CuPy's bytes may not be whole elements: a view
        of a wider dtype; those arrays are never passed by stride, see rows_ok)."""
        if self.name == "torch":
            return tuple(a.stride())
        return tuple(s // a.itemsize for s in a.strides)

    def rows_ok(self, a):
        """Whether the kernels can read a through its strides: the last axis
        contiguous, no negative strides, every stride a whole element."""
        if self.name != "torch" and any(s % a.itemsize for s in a.strides):
            return False
        s = self.strides(a)
        return s[-1] == 1 and min(s) >= 0

    def contiguous(self, a):
        return a.contiguous() if self.name == "torch" else self.mod.ascontiguousarray(a)

    def empty(self, shape, like, poison):
        if self.name == "torch":
            f = self.mod.full if poison else self.mod.empty
            args = (shape, float("nan")) if poison else (shape,)
            return f(*args, dtype=like.dtype, device=like.device)
        with self.mod.cuda.Device(like.device.id):
            return self.mod.full(shape, float("nan"), like.dtype) if poison else self.mod.empty(shape, like.dtype)

    def copy(self, a, stream_obj=None):
        """A copy of a, enqueued on stream_obj (None: the current stream)."""
        if stream_obj is None:
            return a.clone() if self.name == "torch" else a.copy()
        if self.name == "torch":
            with self.mod.cuda.stream(stream_obj):
                out = a.clone()
            out.record_stream(stream_obj)
            return out
        with stream_obj:
            return a.copy()

    def to_host_ints(self, a):
        # A device -> host copy: waits for the current stream (documented).
        return [int(v) for v in (a.cpu().tolist() if self.name == "torch" else a.get().tolist())]

    def stream(self, device, stream):
        """(raw handle, stream object or None) on which to run."""
        if self.name == "torch":
            torch = self.mod
            current = torch.cuda.current_stream(device)
            if stream is None:
                return current.cuda_stream, None
            s = stream if isinstance(stream, torch.cuda.Stream) else \
                torch.cuda.ExternalStream(_stream_handle(stream), device=device)
            s.wait_stream(current)
            return s.cuda_stream, s
        cupy = self.mod
        with cupy.cuda.Device(device):
            current = cupy.cuda.get_current_stream()
            if stream is None:
                return current.ptr, None
            s = stream if isinstance(stream, cupy.cuda.Stream) else \
                cupy.cuda.ExternalStream(_stream_handle(stream))
            s.wait_event(current.record())
            return s.ptr, s

    def mark_outputs(self, stream_obj, arrays):
        if self.name == "torch" and stream_obj is not None:
            for a in arrays:
                if a is not None:
                    a.record_stream(stream_obj)


def _stream_handle(stream):
    for attr in ("cuda_stream", "ptr"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    try:
        return operator.index(stream)
    except TypeError:
        raise TypeError(f"stream must be a torch/CuPy stream or a cudaStream_t int, "
                        f"got {type(stream).__name__}") from None


class _Call:
    """Checks and converts the arrays of one call against x."""

    def __init__(self, x):
        _require_backend()
        if not (type(x).__module__.split(".")[0] in ("torch", "cupy")):
            x = _import_foreign(x)
        self.lib = _Lib(x)
        self.device = self.lib.device(x)
        self.dtype = x.dtype
        if x.dtype not in self.lib.codes:
            raise TypeError(f"x must have dtype float32, float64, float16 or bfloat16, got {x.dtype}")
        self.code = self.lib.codes[x.dtype]
        self.x = x

    def arr(self, name, a, shape=None, meaning="", contiguous=True):
        if a is None:
            return None
        if not is_cuda_array(a):
            where = "the host" if hasattr(a, "__array__") or hasattr(a, "__len__") else type(a).__name__
            raise ValueError(f"{name} is on {where} but x is on cuda:{self.device}: all arrays of one call "
                             f"must be on x's device")
        if not self.lib.is_mine(a):
            a = self.lib.imported(a)
        if self.lib.device(a) != self.device:
            raise ValueError(f"{name} is on cuda:{self.lib.device(a)} but x is on cuda:{self.device}: all "
                             f"arrays of one call must be on one device")
        if a.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {self.dtype}: all arrays of one "
                            f"call must share a dtype")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} {meaning}, got {tuple(a.shape)}")
        # Every array handed to the CUDA API passes here: dense (contiguous=True:
        # weights, biases, states, the cell's arrays) or read through its
        # strides (x, dy); a view in another layout is copied, never passed as is.
        if contiguous or a.ndim and not self.lib.rows_ok(a):
            a = self.lib.contiguous(a)
        return a

    def ptr(self, a):
        return 0 if a is None else self.lib.ptr(a)

    def out(self, shape):
        from .api import _debug_poison
        return self.lib.empty(tuple(shape), self.x, _debug_poison)


def _import_foreign(x):
    try:
        import torch
        return torch.from_dlpack(x)
    except ImportError:
        import cupy
        return cupy.from_dlpack(x)


def _weights(c, w_ih, w_hh, b_ih, b_hh):
    w_hh = c.arr("w_hh", w_hh)
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"w_hh must have shape (4*H, H) with H >= 1 (gate rows i, f, g, o), "
                         f"got {tuple(w_hh.shape)}")
    H = w_hh.shape[1]
    w_ih = c.arr("w_ih", w_ih)
    if w_ih.ndim != 2 or w_ih.shape[0] != 4 * H:
        raise ValueError(f"w_ih must have shape (4*H, I) = ({4 * H}, I) to match w_hh "
                         f"{tuple(w_hh.shape)}, got {tuple(w_ih.shape)}")
    b_ih = c.arr("b_ih", b_ih, (4 * H,), "(4*H,)")
    b_hh = c.arr("b_hh", b_hh, (4 * H,), "(4*H,)")
    return w_ih, w_hh, b_ih, b_hh, H, w_ih.shape[1]


def _lengths(c, lengths, B, T):
    if lengths is None:
        return None
    if is_cuda_array(lengths):
        lib = c.lib if c.lib.is_mine(lengths) else None
        if lib is None:
            lengths = c.lib.imported(lengths)
        if lengths.dtype.is_floating_point if c.lib.name == "torch" else lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
        lens = c.lib.to_host_ints(lengths)
    else:
        import numpy as np
        arr = np.asarray(lengths)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths must be an integer array, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths must have shape (B,) = ({B},), got {arr.shape}")
        lens = [int(v) for v in arr.tolist()]
    if lens and (min(lens) < 1 or max(lens) > T):
        raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got min {min(lens)} max {max(lens)}")
    return lens


# ---------------------------------------------------------------- forward
def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, mode, lengths, steps, feed, batch_first, training,
                 allow_tf32=False, stream=None):
    from .api import LSTMResult, _FEED_CODE, _MODE_CODE, _sequence_shape

    c = _Call(x)
    x = c.x
    w_ih, w_hh, b_ih, b_hh, H, I = _weights(c, w_ih, w_hh, b_ih, b_hh)
    one_to_many = mode == "one_to_many"
    T, B = _sequence_shape(x, w_ih, I, H, mode=mode, steps=steps, lengths=lengths, feed=feed,
                           batch_first=batch_first)
    x = c.arr("x", x, contiguous=False)
    h0 = c.arr("h0", h0, (B, H), "(B, H)")
    c0 = c.arr("c0", c0, (B, H), "(B, H)")
    lens = _lengths(c, lengths, B, T)

    xs = c.lib.strides(x)
    rows = (B, T) if batch_first else (T, B)
    if one_to_many and B > 1 and xs[0] < I or not one_to_many and any(
            n > 1 and st <= 0 for n, st in zip(rows, xs[:2])) or not one_to_many and B > 1 and \
            xs[0 if batch_first else 1] < I:
        x = c.lib.contiguous(x)  # broadcast or overlapping rows: cuBLAS needs ld >= I
        xs = c.lib.strides(x)
    if B == 1:  # a size-1 axis may carry any stride; cuBLAS wants ld >= I
        xs = (max(xs[0], I),) + xs[1:] if (one_to_many or batch_first) else (xs[0], max(xs[1], I), xs[2])
    if one_to_many:
        x_st, x_sb = 0, xs[0]
    else:
        x_st, x_sb = (xs[1], xs[0]) if batch_first else (xs[0], xs[1])
    h_n, c_n = c.out((B, H)), c.out((B, H))
    if mode == "many_to_one":
        y, y_st, y_sb = None, 0, 0
    else:
        y = c.out((B, T, H) if batch_first else (T, B, H))
        y_st, y_sb = (H, T * H) if batch_first else (B * H, H)
    handle, sobj = c.lib.stream(c.device, stream)
    state = _cuda.forward(c.code, bool(allow_tf32), c.device, handle, _MODE_CODE[mode], _FEED_CODE[feed],
                          T, B, I, H, c.ptr(x), x_st, x_sb, c.ptr(w_ih), c.ptr(w_hh), c.ptr(b_ih),
                          c.ptr(b_hh), c.ptr(h0), c.ptr(c0), lens, c.ptr(y), y_st, y_sb, c.ptr(h_n),
                          c.ptr(c_n), bool(training))
    c.lib.mark_outputs(sobj, (y, h_n, c_n))
    if mode == "many_to_one":
        y = c.lib.copy(h_n, sobj)  # on the stream the kernels ran on
    ctx = None
    if training:
        ctx = dict(backend="cuda", lib=c.lib, device=c.device, mode=mode, batch_first=batch_first,
                   x_shape=tuple(x.shape), T=T, B=B, I=I, H=H, dtype=c.dtype, like=h_n,
                   has_b_ih=b_ih is not None, has_b_hh=b_hh is not None)
    return LSTMResult(y, h_n, c_n, state, ctx)


# --------------------------------------------------------------- backward
def lstm_backward(result, dy=None, dh_n=None, dc_n=None, *, stream=None):
    from .api import LSTMGrads

    ctx = result._ctx
    c = _Call(ctx["like"])  # an output of the forward: its library, device and dtype
    B, H, T, I = ctx["B"], ctx["H"], ctx["T"], ctx["I"]
    mode, batch_first = ctx["mode"], ctx["batch_first"]
    dy_st = dy_sb = 0
    if dy is not None:
        dy = c.arr("dy", dy, tuple(result.y.shape), "(the shape of result.y)",
                   contiguous=mode == "many_to_one")
        if mode != "many_to_one":
            s = c.lib.strides(dy)
            dy_st, dy_sb = (s[1], s[0]) if batch_first else (s[0], s[1])
    dh_n = c.arr("dh_n", dh_n, (B, H), "(B, H), the shape of result.h_n")
    dc_n = c.arr("dc_n", dc_n, (B, H), "(B, H), the shape of result.c_n")

    dx = c.out(ctx["x_shape"])
    if mode == "one_to_many":
        dx_st, dx_sb = 0, I
    else:
        dx_st, dx_sb = (I, T * I) if batch_first else (B * I, I)
    dh0, dc0 = c.out((B, H)), c.out((B, H))
    dw_ih, dw_hh = c.out((4 * H, I)), c.out((4 * H, H))
    has_bias = ctx["has_b_ih"] or ctx["has_b_hh"]
    db = c.out((4 * H,)) if has_bias else None
    handle, sobj = c.lib.stream(c.device, stream)
    _cuda.backward(result._state, handle, c.ptr(dy), dy_st, dy_sb, c.ptr(dh_n), c.ptr(dc_n), c.ptr(dx),
                   dx_st, dx_sb, c.ptr(dh0), c.ptr(dc0), c.ptr(dw_ih), c.ptr(dw_hh), c.ptr(db))
    c.lib.mark_outputs(sobj, (dx, dh0, dc0, dw_ih, dw_hh, db))
    db_ih = db if ctx["has_b_ih"] else None
    db_hh = (c.lib.copy(db, sobj) if ctx["has_b_ih"] else db) if ctx["has_b_hh"] else None
    return LSTMGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)


# ------------------------------------------------------------------- cell
def lstm_cell(x, h, c_state, w_ih, w_hh, b_ih=None, b_hh=None, *, allow_tf32=False, stream=None):
    c = _Call(x)
    w_ih, w_hh, b_ih, b_hh, H, I = _weights(c, w_ih, w_hh, b_ih, b_hh)
    x = c.x
    if x.ndim != 2 or x.shape[1] != I:
        raise ValueError(f"x must have shape (B, I) with I = {I} (from w_ih), got {tuple(x.shape)}")
    B = x.shape[0]
    if B < 1:
        raise ValueError(f"x must have at least one batch row, got shape {tuple(x.shape)}")
    x = c.arr("x", x)
    h = c.arr("h", h, (B, H), "(B, H)")
    c_state = c.arr("c", c_state, (B, H), "(B, H)")
    h_new, c_new = c.out((B, H)), c.out((B, H))
    handle, sobj = c.lib.stream(c.device, stream)
    _cuda.cell(c.code, bool(allow_tf32), c.device, handle, B, I, H, c.ptr(x), c.ptr(h), c.ptr(c_state),
               c.ptr(w_ih), c.ptr(w_hh), c.ptr(b_ih), c.ptr(b_hh), c.ptr(h_new), c.ptr(c_new))
    c.lib.mark_outputs(sobj, (h_new, c_new))
    return h_new, c_new
