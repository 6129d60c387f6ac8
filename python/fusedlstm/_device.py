"""The device path: CUDA arrays (torch tensors, CuPy arrays, other DLPack
producers), run on the GPU through the one C API (``device_type=DEVICE_CUDA``).

:class:`DeviceArrays` has the methods of :class:`fusedlstm._host.HostArrays`
that :mod:`fusedlstm._calls` and :mod:`fusedlstm.layers` use. Arrays are used
zero-copy:

* torch tensors: ``data_ptr()``, ``stride()``, ``dtype``, ``device`` (this
  covers bfloat16, which ``__cuda_array_interface__`` cannot describe);
* CuPy arrays: ``data.ptr``, ``strides``, ``dtype``, ``device``;
* any other DLPack producer on a CUDA device: imported through
  ``torch.from_dlpack`` (or ``cupy.from_dlpack`` without torch), zero-copy,
  and treated as that library's array.

Outputs are allocated by the library of ``x`` on ``x``'s device (torch in,
torch out; CuPy in, CuPy out). An argument from another library on the same
device is imported through DLPack; an argument on another device (or on the
host) is a ``ValueError`` naming it. Views the kernels cannot read through
their strides (last axis not contiguous, negative or overlapping rows) are
copied first.

Streams: the work runs on the caller's current stream
(``torch.cuda.current_stream(device)`` / CuPy's current stream) and nothing
synchronises the host. ``stream=`` (a torch/CuPy stream object or a raw
``cudaStream_t`` int) runs the kernels there instead: it first waits for the
current stream (so inputs and the freshly allocated outputs are ready), and
torch outputs are ``record_stream``-ed on it; ordering later uses of the
outputs after ``stream`` is the caller's job.

Lengths: a device array (any integer dtype, shape (B,)) is used where it is,
converted to int64 on the device if needed, and NOT checked on the host
(reading it would synchronise): the kernels clamp each value to [1, T]. A
host array or list is checked (values in [1, T]) and copied to the device on
the current stream: with torch from pinned memory without a host wait; with
CuPy a plain host-to-device copy, which waits for that stream.

dtypes: float32 (strict; ``allow_tf32=True`` lets the GEMMs use TF32 tensor
cores), float64, float16 and bfloat16 (storage; float32 accumulation, float32
cell state and gate math). ``allow_tf32`` is ignored for other dtypes.
``compute="bf16"`` (bfloat16 GEMM operands on float32 arrays) is the CPU's:
on CUDA pass bfloat16 arrays, or float32 with ``allow_tf32=True``.
"""

from __future__ import annotations

import operator

import numpy as np

from . import _checks, _core

try:
    from . import _cuda_build as _build
except ImportError:  # source checkout without a build
    _build = None


# ------------------------------------------------------------- availability
def device_count():
    """(usable CUDA devices, why none) from the C API's CUDA backend probe."""
    try:
        return _core.cuda_device_count()
    except Exception as exc:  # never let a probe crash the import
        return 0, f"{type(exc).__name__}: {exc}"


def cuda_available() -> bool:
    """True when the CUDA backend library loads and a CUDA device is usable."""
    return device_count()[0] > 0


def cuda_build_info() -> dict:
    """What this build has for CUDA, and why it is unusable when it is."""
    compiled = bool(_build is not None and getattr(_build, "CUDA_BUILT", False))
    n, why = device_count()
    archs = _core.cuda_info("build_archs")
    info = {
        "compiled": compiled,
        "archs": [a for a in archs.replace(",", ";").split(";") if a],
        "nvcc": getattr(_build, "NVCC_VERSION", "") if compiled else "",
        "backend": _core.cuda_info("backend"),
        "devices": n,
        "path": _core.cuda_info("path") or None,
    }
    if n == 0:
        info["reason"] = f"no usable CUDA device: {why}"
    return info


def _require_backend():
    n, why = device_count()
    if n == 0:
        raise RuntimeError(f"fusedlstm: got CUDA arrays but the CUDA backend is unusable: {why}")


# ------------------------------------------------------------------ arrays
def _library_of(a):
    return type(a).__module__.split(".")[0]


class _Lib:
    """The array library of x (torch or CuPy): dtype codes, allocation, streams."""

    def __init__(self, x):
        self.name = _library_of(x)
        if self.name == "torch":
            import torch
            self.mod = torch
            self.codes = {torch.float32: _core.FLOAT32, torch.float64: _core.FLOAT64,
                          torch.float16: _core.FLOAT16, torch.bfloat16: _core.BFLOAT16}
        elif self.name == "cupy":
            import cupy
            self.mod = cupy
            self.codes = {cupy.dtype("float32"): _core.FLOAT32, cupy.dtype("float64"): _core.FLOAT64,
                          cupy.dtype("float16"): _core.FLOAT16}
        else:
            raise TypeError(f"CUDA arrays of type {type(x).__module__}.{type(x).__name__} are "
                            f"imported through torch or cupy; pass them through torch.from_dlpack")

    def device(self, a):
        return a.device.index if self.name == "torch" else a.device.id

    def is_mine(self, a):
        return _library_of(a) == self.name

    def imported(self, a):
        return self.mod.from_dlpack(a)

    def ptr(self, a):
        return a.data_ptr() if self.name == "torch" else a.data.ptr

    def itemsize(self, a):
        return a.element_size() if self.name == "torch" else a.itemsize

    def strides(self, a):
        """a's strides in elements (CuPy's bytes may not be whole elements: a view
        of a wider dtype; those arrays are never passed by stride, see rows_ok)."""
        if self.name == "torch":
            return tuple(a.stride())
        return tuple(s // a.itemsize for s in a.strides)

    def rows_ok(self, a):
        """Whether the kernels can read a through its strides: the last axis
        contiguous, and every other axis of more than one element a positive
        whole number of elements at least a row apart (cuBLAS's leading
        dimension), so rows never overlap."""
        if self.name != "torch" and any(s % a.itemsize for s in a.strides):
            return False
        s, n = self.strides(a), tuple(a.shape)
        if n and n[-1] > 1 and s[-1] != 1:
            return False
        return all(size <= 1 or st >= n[-1] for size, st in zip(n[:-1], s[:-1]))

    def is_dense(self, a):
        return a.is_contiguous() if self.name == "torch" else a.flags.c_contiguous

    def contiguous(self, a):
        return a.contiguous() if self.name == "torch" else self.mod.ascontiguousarray(a)

    def empty(self, shape, dtype, device, poison):
        if self.name == "torch":
            dev = self.mod.device("cuda", device)
            if poison:
                return self.mod.full(shape, float("nan"), dtype=dtype, device=dev)
            return self.mod.empty(shape, dtype=dtype, device=dev)
        with self.mod.cuda.Device(device):
            return self.mod.full(shape, float("nan"), dtype) if poison else self.mod.empty(shape, dtype)

    def empty_bytes(self, nbytes, device):
        if self.name == "torch":
            return self.mod.empty(nbytes, dtype=self.mod.uint8, device=self.mod.device("cuda", device))
        with self.mod.cuda.Device(device):
            return self.mod.empty(nbytes, self.mod.uint8)

    def from_host(self, a, dtype, device):
        """numpy a copied to the device (on the current stream), in dtype."""
        if a.dtype.name == "bfloat16":  # ml_dtypes' (a bfloat16 layer's weights): torch reads float32, exact
            a = np.asarray(a, np.float32)
        if self.name == "torch":
            return self.mod.from_numpy(np.ascontiguousarray(a)).to(self.mod.device("cuda", device), dtype)
        with self.mod.cuda.Device(device):
            return self.mod.asarray(np.ascontiguousarray(a, dtype))

    def host_lengths(self, lens, device):
        """Checked host lengths (int64 numpy) on the device, on the current stream."""
        if self.name == "torch":
            torch = self.mod
            return torch.from_numpy(lens).pin_memory().to(torch.device("cuda", device), non_blocking=True)
        with self.mod.cuda.Device(device):
            return self.mod.asarray(lens)  # waits for the current stream (a pageable host copy)

    def int64(self, a):
        if self.name == "torch":
            return a.to(self.mod.int64).contiguous()
        return self.mod.ascontiguousarray(a, self.mod.int64)

    def swapaxes01(self, a):
        return a.transpose(0, 1) if self.name == "torch" else a.swapaxes(0, 1)

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


def _import_foreign(x):
    try:
        import torch
        return torch.from_dlpack(x)
    except ImportError:
        import cupy
        return cupy.from_dlpack(x)


class DeviceArrays:
    """CUDA arrays of one library, device and dtype (those of x)."""

    device_type = _core.DEVICE_CUDA

    def __init__(self, x, *, stream=None, allow_tf32=False, dtype=None, compute=None, _of=None):
        self.allow_tf32 = _checks.bool_arg("allow_tf32", allow_tf32)
        if compute is not None:
            from ._host import compute_arg
            compute_arg(compute)
            raise ValueError(f"compute={compute!r} runs on the CPU only (float32 numpy arrays); on CUDA pass "
                             f"bfloat16 arrays, or float32 ones with allow_tf32=True")
        self._stream, self._handle, self._sobj = stream, None, None
        if _of is not None:  # for_backward: the forward's library, device and dtype
            self.lib, self.device, self.dtype, self.code = _of.lib, _of.device, _of.dtype, _of.code
            return
        _require_backend()
        if _library_of(x) not in ("torch", "cupy"):
            x = _import_foreign(x)
        self.lib = _Lib(x)
        self.device = self.lib.device(x)
        self.dtype = x.dtype
        if x.dtype not in self.lib.codes:
            raise TypeError(f"x must have dtype float32, float64, float16 or bfloat16, got {x.dtype}")
        if dtype is not None and str(x.dtype).split(".")[-1] != dtype.name:
            raise TypeError(f"x has dtype {x.dtype} but the call works in {dtype}")
        self.code = self.lib.codes[x.dtype]
        self.itemsize = self.lib.itemsize(x)

    @property
    def library(self):
        return self.lib.name

    def for_backward(self, stream=None):
        other = DeviceArrays(None, stream=stream, allow_tf32=self.allow_tf32, _of=self)
        other.itemsize = self.itemsize
        return other

    # ------------------------------------------------------------ arguments
    def _on_device(self, name, a):
        if not _checks.is_cuda_array(a):
            where = "the host" if hasattr(a, "__array__") or hasattr(a, "__len__") else type(a).__name__
            raise ValueError(f"{name} is on {where} but x is on cuda:{self.device}: all arrays of one call "
                             f"must be on x's device")
        if not self.lib.is_mine(a):
            a = self.lib.imported(a)
        if self.lib.device(a) != self.device:
            raise ValueError(f"{name} is on cuda:{self.lib.device(a)} but x is on cuda:{self.device}: all "
                             f"arrays of one call must be on one device")
        return a

    def adopt(self, **arrays):
        return {name: self.adopt_one(name, a) for name, a in arrays.items()}

    def adopt_one(self, name, a, works_in="x"):
        if a is None:
            return None
        a = self._on_device(name, a)
        if a.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {works_in} has dtype {self.dtype}: all arrays of "
                            f"one call must share a dtype")
        return a

    def from_host(self, a):
        return self.lib.from_host(a, self.dtype, self.device)

    @staticmethod
    def shape(a):
        return tuple(a.shape)

    def dense(self, a):
        return a if a is None or self.lib.is_dense(a) else self.lib.contiguous(a)

    def rows(self, a):
        """a readable through its strides (else a dense copy), and those strides in
        elements; a size-1 axis reports at least a row's width (cuBLAS's ld)."""
        if not self.lib.rows_ok(a):
            a = self.lib.contiguous(a)
        n, s = tuple(a.shape), self.lib.strides(a)
        return a, tuple(st if size > 1 or k == len(n) - 1 else max(st, n[-1])
                        for k, (size, st) in enumerate(zip(n, s)))

    def lengths(self, lengths, B, T):
        if lengths is None:
            return None
        if _checks.is_cuda_array(lengths):
            lengths = self._on_device("lengths", lengths)
            _checks.lengths_header(lengths.dtype, tuple(lengths.shape), B)
            return self.lib.int64(lengths)  # not read on the host: the kernels clamp to [1, T]
        return self.lib.host_lengths(_checks.lengths_values(lengths, B, T), self.device)

    def swapaxes01(self, a):
        return self.lib.swapaxes01(a)

    # ------------------------------------------------------------ outputs
    def empty(self, shape):
        return self.lib.empty(tuple(shape), self.dtype, self.device, _checks.debug_poison())

    def empty_bytes(self, nbytes):
        return self.lib.empty_bytes(nbytes, self.device)

    def copy(self, a):
        return None if a is None else self.lib.copy(a, self._sobj)

    # ------------------------------------------------------------ the call
    def core(self, a):
        """The argument _core takes for a: its device pointer (0 for None)."""
        return 0 if a is None else self.lib.ptr(a)

    def call(self):
        """The keyword arguments of the device of a _core call. The first call
        makes `stream` (when given) wait for the current stream."""
        if self._handle is None:
            self._handle, self._sobj = self.lib.stream(self.device, self._stream)
        return dict(dtype=self.code, device_type=_core.DEVICE_CUDA, device_index=self.device, stream=self._handle,
                    allow_tf32=self.allow_tf32)

    def done(self, *used):
        """After the call: every array it used (outputs, and the copies made for
        it, which are freed when this returns) is recorded on `stream` (torch),
        so that the caching allocator does not hand its memory out before the
        kernels on `stream` are done with it."""
        self.lib.mark_outputs(self._sobj, used)
