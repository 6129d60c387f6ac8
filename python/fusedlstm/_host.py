"""The host path: numpy arrays, run on the CPU.

:class:`HostArrays` is what the calls of :mod:`fusedlstm._calls` and
:mod:`fusedlstm.layers` need of an array library (the device path,
:mod:`fusedlstm._device`, has the same methods for torch and CuPy arrays):
it adopts the arguments (float32, float64 or bfloat16 of one dtype; lists are
converted),
lays them out as the core reads them (dense, or rows with strides passed),
allocates outputs and hands the arrays to ``_core``.

Tests may run host arrays on the CPU emulation of the CUDA backend
(:func:`set_host_device`): its "device" memory is host memory, so numpy
arrays go to ``_core`` with ``device_type=DEVICE_CUDA`` unchanged.

bfloat16: numpy has no bfloat16 of its own; arrays of ``ml_dtypes.bfloat16``
(an optional dependency: ``pip install fusedlstm[bf16]``; the dtype JAX,
TensorFlow and ONNX tooling use) run the CPU's bfloat16 kernels, all-bfloat16
like float32 and float64 (outputs in bfloat16). ``compute="bf16"`` on float32
arrays (the core's ``allow_bf16``) runs the same kernels (forward and backward) with float32
arrays and outputs, and needs no ml_dtypes.
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_DTYPE_CODE = {np.dtype(np.float32): _core.FLOAT32, np.dtype(np.float64): _core.FLOAT64}
COMPUTES = (None, "bf16")  # the compute= option: None (the arrays' own precision) or "bf16"


def is_bfloat16(dtype) -> bool:
    """Whether a numpy dtype is bfloat16 (ml_dtypes' type, registered with numpy by name)."""
    return getattr(dtype, "name", None) == "bfloat16"


def bfloat16_dtype():
    """numpy's bfloat16 dtype, from ml_dtypes; TypeError naming ml_dtypes without it."""
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("bfloat16 numpy arrays need the ml_dtypes package (pip install ml_dtypes, or "
                        "pip install fusedlstm[bf16]); float32 arrays with compute='bf16' run the same "
                        "bfloat16 kernels without it") from None
    return np.dtype(ml_dtypes.bfloat16)


def float_dtype(dtype, name="dtype"):
    """A dtype argument (float32, float64, bfloat16: a numpy dtype, type or name) as a
    numpy dtype; "bfloat16" and ml_dtypes.bfloat16 need ml_dtypes (TypeError naming it)."""
    if isinstance(dtype, str) and dtype == "bfloat16" or is_bfloat16(dtype) or \
            getattr(dtype, "__name__", None) == "bfloat16":
        return bfloat16_dtype()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32, float64 or bfloat16 (ml_dtypes), got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64 or bfloat16 (ml_dtypes), got {dt}")
    return dt


def dtype_code(dtype):
    """The core's dtype code of a numpy float dtype."""
    return _core.BFLOAT16 if is_bfloat16(dtype) else _DTYPE_CODE[dtype]


def astype_hint(dtype):
    """How to convert to dtype, for messages: np.float32, or ml_dtypes.bfloat16."""
    return "ml_dtypes.bfloat16" if is_bfloat16(dtype) else f"np.{dtype}"


def compute_arg(compute):
    """The compute= option, checked: None or "bf16"."""
    if compute not in COMPUTES:
        raise ValueError(f"compute must be None (the arrays' own precision) or 'bf16' (bfloat16 GEMM "
                         f"operands on float32 arrays, CPU), got {compute!r}")
    return compute
_RESERVE_ALIGNMENT = 256  # what the CUDA backend needs; any alignment does on the CPU

_host_device = _core.DEVICE_CPU


def set_host_device(device_type: int) -> int:
    """Where calls on host (numpy) arrays run: DEVICE_CPU (the default), or
    DEVICE_CUDA, which works only while the loaded CUDA backend's memory is
    host memory (the CPU emulation; for tests). Returns the previous setting."""
    global _host_device
    if device_type not in (_core.DEVICE_CPU, _core.DEVICE_CUDA):
        raise ValueError(f"device_type must be DEVICE_CPU or DEVICE_CUDA, got {device_type!r}")
    if device_type == _core.DEVICE_CUDA and not _core.cuda_backend_host_memory():
        raise RuntimeError(f"the loaded CUDA backend ({_core.cuda_info('backend') or 'none'}) does not run on "
                           f"host memory: numpy arrays cannot run on it")
    previous, _host_device = _host_device, device_type
    return previous


def _as_array(name, a):
    """np.asarray(a), with numpy's refusal (a ragged list, say) named."""
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name} must be an array or a nested sequence of one shape: {e}") from None


def float_array(name, a, dtype=None, *, works_in="the call"):
    """a as an ndarray of float32/float64/bfloat16; dtype, when given, must match
    (works_in says whose dtype it is, for the message)."""
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = a if isinstance(a, np.ndarray) else _as_array(name, a)
    if arr.dtype.kind == "f" and not arr.dtype.isnative:  # same dtype, other byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in _FLOAT_DTYPES and not is_bfloat16(arr.dtype):
        raise TypeError(f"{name} must have dtype float32, float64 or bfloat16 (ml_dtypes), got {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but {works_in} works in {dtype}: convert {name} "
                        f"(e.g. {name}.astype({astype_hint(dtype)}))")
    return arr


def _same_dtype(arrays):
    """{name: array or None} as float arrays of one dtype (None stays None).
    When they differ, the message names the arrays off the majority's dtype,
    the ones to convert, and the others (on a tie, both sides)."""
    arrs = {name: None if a is None else float_array(name, a) for name, a in arrays.items()}
    by_dtype = {}
    for name, a in arrs.items():
        if a is not None:
            by_dtype.setdefault(a.dtype, []).append(name)
    if len(by_dtype) > 1:
        (major, majority), (minor, minority) = sorted(by_dtype.items(), key=lambda kv: -len(kv[1]))
        fix = f"convert {', '.join(minority)} (e.g. {minority[0]}.astype({astype_hint(major)}))"
        if len(minority) == len(majority):
            fix += f", or {', '.join(majority)} (e.g. {majority[0]}.astype({astype_hint(minor)}))"
        raise TypeError(f"all arrays of one call must share a dtype: {', '.join(minority)} "
                        f"{'is' if len(minority) == 1 else 'are'} {minor} but {', '.join(majority)} "
                        f"{'is' if len(majority) == 1 else 'are'} {major}; {fix}")
    return arrs


def dense(arr):
    """arr as the core reads weights, states and masks: C-contiguous and
    aligned (a copy only when it is not)."""
    flags = arr.flags
    if flags.c_contiguous and flags.aligned:  # the common case, without np.require's per-call cost
        return arr
    return np.require(arr, requirements="CA")


def alloc(shape, dtype):
    return np.full(shape, np.nan, dtype) if _checks.debug_poison() else np.empty(shape, dtype)


class HostArrays:
    """numpy arrays of one float dtype (float32, float64 or bfloat16), on the host.
    compute="bf16": bfloat16 GEMM operands for float32 arrays (the core's allow_bf16)."""

    library = "numpy"

    def __init__(self, *, dtype=None, stream=None, allow_tf32=False, compute=None):
        if stream is not None:
            raise ValueError("stream= applies only to CUDA arrays; x is a host array")
        self.dtype = None if dtype is None else float_dtype(dtype)
        self.allow_tf32 = _checks.bool_arg("allow_tf32", allow_tf32)
        self.compute = compute_arg(compute)
        self.device_type = _host_device
        if self.dtype is not None:
            self._check_compute()

    def _check_compute(self):
        if self.compute == "bf16" and self.dtype == np.float64:
            raise TypeError("compute='bf16' rounds float32 GEMM operands to bfloat16; the arrays are float64: "
                            "convert them to float32 (or to ml_dtypes.bfloat16), or leave compute=None")
        if self.compute == "bf16" and self.device_type != _core.DEVICE_CPU:
            raise ValueError("compute='bf16' runs on the CPU backend only")

    @property
    def allow_bf16(self):
        return self.compute == "bf16" and self.dtype == np.float32

    def for_backward(self, stream=None):
        """The arrays of a backward of a forward run with these (stream: the backward's)."""
        other = HostArrays(dtype=self.dtype, stream=stream, allow_tf32=self.allow_tf32, compute=self.compute)
        other.device_type = self.device_type
        return other

    # ------------------------------------------------------------ arguments
    def adopt(self, **arrays):
        """{name: array-like or None} as arrays of one float dtype (self.dtype,
        which the first call sets when not given)."""
        if self.dtype is None:
            arrs = _same_dtype(arrays)
            self.dtype = next(a.dtype for a in arrs.values() if a is not None)
            self._check_compute()
            return arrs
        return {name: self.adopt_one(name, a) for name, a in arrays.items()}

    def adopt_one(self, name, a, works_in="the call"):
        return None if a is None else float_array(name, a, self.dtype, works_in=works_in)

    def from_host(self, a):
        """A numpy array the library made (a dropout mask), as an array of this path."""
        return a

    @staticmethod
    def shape(a):
        return a.shape

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @staticmethod
    def dense(a):
        return None if a is None else dense(a)

    @staticmethod
    def rows(a):
        """a as the core reads x, y, dy and dx: copied if needed so that it is
        aligned, its last axis is contiguous and every stride is a whole number
        of elements (other strides, zero and negative ones included, are
        passed); returns (arr, strides in elements)."""
        item = a.itemsize
        if a.strides[-1] != item or any(s % item for s in a.strides) or not a.flags.aligned:
            a = dense(a)
        return a, tuple(s // item for s in a.strides)

    @staticmethod
    def lengths(lengths, B, T):
        """Host lengths: checked (values in [1, T]), as int64."""
        return None if lengths is None else _checks.lengths_values(lengths, B, T)

    @staticmethod
    def swapaxes01(a):
        return a.swapaxes(0, 1)

    # ------------------------------------------------------------ outputs
    def empty(self, shape):
        return alloc(shape, self.dtype)

    @staticmethod
    def empty_bytes(nbytes):
        """nbytes of uint8, 256-byte aligned."""
        raw = np.empty(nbytes + _RESERVE_ALIGNMENT, np.uint8)
        skip = -raw.ctypes.data % _RESERVE_ALIGNMENT
        return raw[skip:skip + nbytes]

    @staticmethod
    def copy(a):
        return None if a is None else a.copy()

    @staticmethod
    def to_numpy(a):
        return a

    # ------------------------------------------------------------ the call
    @staticmethod
    def core(a):
        """The argument _core takes for a: the array itself (None stays None)."""
        return a

    def call(self):
        """The keyword arguments of the device of a _core call."""
        return dict(dtype=dtype_code(self.dtype), device_type=self.device_type, device_index=0, stream=0,
                    allow_tf32=self.allow_tf32, allow_bf16=self.allow_bf16)

    @staticmethod
    def done(*used):
        """After the call: nothing to do on the host."""
