"""The torch.library custom operators of fusedlstm.torch: fusedlstm::stack_forward,
stack_backward, cell_forward, cell_train_forward and cell_backward, with their
fake (meta) kernels, autograd rules and vmap rules.

Every operator serves every cell kind (LSTM, GRU, Elman RNN with tanh or relu):
its last argument ``cell`` is one of the codes CELL_LSTM (the default),
CELL_GRU, CELL_RNN_TANH and CELL_RNN_RELU (fusedlstm.h's fl_cell_kind). A cell
has G gate blocks of H rows in its weights (LSTM 4: i, f, g, o; GRU 3: r, z, n;
RNN 1) and, for the GRU and the RNN, no cell state c: their c arguments are
None and their c outputs empty. On CUDA, GRU and RNN take the fallback path (the
persistent kernels are the LSTM's).

One implementation per operator serves CPU and CUDA tensors: the tensors'
device picks the core's backend (``_core.DEVICE_CPU`` with numpy views of the
tensors, ``_core.DEVICE_CUDA`` with their ``data_ptr()`` on torch's current
stream). On CUDA every output, gradient and the reserve come from torch's
caching allocator (torch.empty on the tensor's device), and nothing reads
device memory on the host: the forward and the backward never synchronise.

Dtypes: on the CPU float32, float64 and bfloat16 run natively (bfloat16: the
CPU's bfloat16 kernels, bfloat16 GEMM operands with float32 sums, cell state
and gate math; the tensors reach the core as zero-copy numpy views of
ml_dtypes.bfloat16, so this needs ml_dtypes, without which bfloat16 runs in
float32 inside as float16 does); float16 tensors run in float32 inside and get
their results back in their dtype. On CUDA float32, float64, float16 and
bfloat16 all run natively (float16 and bfloat16 store in that type and compute
the cell in float32).

Autocast: the forward operators have an AutocastCPU kernel that runs them in
the autocast dtype as the aten operators of the same cell do on the CPU
(aten::lstm, aten::rnn_* and rnn_*_cell are on CPU autocast's lower-precision
list; aten::gru, lstm_cell and gru_cell are not): stack_forward for the LSTM
and the RNN, cell_forward / cell_train_forward for the RNN. The modules cast
for themselves (as their nn counterparts, on CPU and CUDA) and call the
operators with autocast off. CUDA float32
uses TF32 tensor cores in its GEMMs exactly when
``torch.backends.cuda.matmul.allow_tf32`` is True (torch's switch for its own
float32 matmuls, ``torch.set_float32_matmul_precision("high")`` sets it),
read at every call; it is False by default, so by default fusedlstm is strict
float32. nn.LSTM's cuDNN path follows ``torch.backends.cudnn.allow_tf32``
instead, which is True by default: compare like with like.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _checks, _core
from ..layers import stack_reserve_nbytes, weight_shapes

# Run the core's parallel regions on torch's own OpenMP team: torch's workers
# spin for milliseconds after each torch op, and our own threads started in
# that window would share cores with them (bench/NOTES.md, change 8).
# FUSEDLSTM_OPENMP=0 keeps fusedlstm's own threads.
if os.environ.get("FUSEDLSTM_OPENMP", "1") != "0":
    _core.use_openmp(True)

# The cell kinds (fl_cell_kind, fusedlstm.h; the core's codes), the `cell`
# argument of every operator, and their names in the numpy API.
CELL_LSTM, CELL_GRU, CELL_RNN_TANH, CELL_RNN_RELU = (_checks.CELL_CODE[name] for name in _checks.CELLS)
_NAME = {code: name for name, code in _checks.CELL_CODE.items()}
# Gate blocks of H rows in w_ih / w_hh / the biases, per cell kind.
GATES = {code: _checks.GATES[name] for code, name in _NAME.items()}
# Width (in H) of the activations one cell step keeps for its backward (acts
# [B, A*H]): LSTM i|f|g|o, GRU r|z|n|hn (hn = h W_hn^T + b_hn), RNN h_new.
ACTS = {CELL_LSTM: 4, CELL_GRU: 4, CELL_RNN_TANH: 1, CELL_RNN_RELU: 1}
CELL_NAMES = {CELL_LSTM: "LSTM", CELL_GRU: "GRU", CELL_RNN_TANH: "RNN (tanh)", CELL_RNN_RELU: "RNN (relu)"}


def _check_cell(cell):
    if cell not in GATES:
        raise ValueError(f"fusedlstm.torch: cell must be one of CELL_LSTM ({CELL_LSTM}), CELL_GRU ({CELL_GRU}), "
                         f"CELL_RNN_TANH ({CELL_RNN_TANH}), CELL_RNN_RELU ({CELL_RNN_RELU}); got {cell!r}")


def _has_c(cell):
    """Whether the cell has a cell state c (the LSTM only)."""
    return cell == CELL_LSTM


def _cell_kw(cell):
    """The core's `cell` keyword for this cell kind (LSTM calls leave it out)."""
    return {} if cell == CELL_LSTM else {"cell": cell}


def _numpy_bfloat16():
    """ml_dtypes' numpy bfloat16 dtype, or None without ml_dtypes."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    import numpy as np
    return np.dtype(ml_dtypes.bfloat16)


_NUMPY_BF16 = _numpy_bfloat16()
_CPU_NATIVE = (torch.float32, torch.float64) + ((torch.bfloat16,) if _NUMPY_BF16 is not None else ())
_CUDA_NATIVE = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _work_dtype(dtype, cuda):
    """The dtype the core runs a call of `dtype` tensors in."""
    return dtype if dtype in (_CUDA_NATIVE if cuda else _CPU_NATIVE) else torch.float32


def _core_dtype(dtype):
    return {torch.float32: _core.FLOAT32, torch.float64: _core.FLOAT64, torch.float16: _core.FLOAT16,
            torch.bfloat16: _core.BFLOAT16}[dtype]


# ----------------------------------------------------------------------------
# Where a call runs

# Tests only (see emulate_cuda_on_cpu): CPU tensors go to the CUDA backend.
_emulating_cuda = False


@contextlib.contextmanager
def emulate_cuda_on_cpu():
    """Inside, the operators hand CPU tensors to the core's CUDA backend
    (device_type DEVICE_CUDA, stream 0, their data_ptr()s as "device"
    pointers), which is only valid when that backend is the CPU emulation of
    the CUDA one (FUSEDLSTM_CUDA_LIBRARY pointing at libfusedlstm_cuda_emu.so,
    ``_core.cuda_backend_host_memory()`` True). For the tests: it runs the
    CUDA implementation of every operator without a GPU. Not thread-safe."""
    global _emulating_cuda
    if not _core.cuda_backend_host_memory():
        raise RuntimeError("emulate_cuda_on_cpu: the loaded CUDA backend does not use host memory (set "
                           "FUSEDLSTM_CUDA_LIBRARY to the CPU emulation, libfusedlstm_cuda_emu.so)")
    previous, _emulating_cuda = _emulating_cuda, True
    try:
        yield
    finally:
        _emulating_cuda = previous


class _TorchThreads:
    """CPU calls inside this use at most torch.get_num_threads() threads
    (capped by fusedlstm.set_num_threads), as nn.LSTM would: e.g. one per
    process under torchrun's OMP_NUM_THREADS=1."""

    def __enter__(self):
        self._previous = _core.limit_threads_on_this_thread(torch.get_num_threads())

    def __exit__(self, *exc):
        _core.limit_threads_on_this_thread(self._previous)


class _Call:
    """One call into the core for tensors on `device`: the backend, the dtype
    it runs in, and the arrays it is handed (numpy views on the CPU, data_ptr()
    ints on CUDA; the tensors behind the ints are held until the call ends)."""

    def __init__(self, device: torch.device, dtype):
        self.device = device
        self.cuda = device.type == "cuda" or (device.type == "cpu" and _emulating_cuda)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"fusedlstm.torch: tensors on {device} are not supported (CPU and CUDA only)")
        self.work = _work_dtype(dtype, self.cuda)
        self._held = []

    def common(self):
        """The keyword arguments every kernel call of the core takes."""
        if not self.cuda:
            return dict(dtype=_core_dtype(self.work), device_type=_core.DEVICE_CPU)
        real = self.device.type == "cuda"
        return dict(dtype=_core_dtype(self.work), device_type=_core.DEVICE_CUDA,
                    device_index=self.device.index if real else 0,
                    stream=torch.cuda.current_stream(self.device).cuda_stream if real else 0,
                    allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32) if real else False)

    def threads(self):
        """What the core call runs inside: on the CPU torch's thread count, on a GPU
        that GPU as the current device (as torch's own ops run)."""
        if not self.cuda:
            return _TorchThreads()
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def array(self, t: Optional[Tensor]):
        """t (already in the layout the core reads) as the core's argument."""
        if t is None:
            return None
        if t.device != self.device:  # a pointer of one device handed to another would be read as garbage
            raise ValueError(f"fusedlstm.torch: a tensor of shape {list(t.shape)} is on {t.device}, the call's "
                             f"other tensors on {self.device}: move them to one device")
        if not self.cuda:
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bytes as ml_dtypes' (zero-copy)
                return t.view(torch.int16).numpy().view(_NUMPY_BF16)
            return t.numpy()
        self._held.append(t)
        return t.data_ptr()

    def dense(self, t: Optional[Tensor], dtype=None):
        """t detached, in the call's dtype (or `dtype`), C-contiguous: the layout
        the C API reads weights, biases, states, masks, lengths and the reserve
        in. Copies only when it must. Every tensor that reaches the core goes
        through here or rows(): a parameter with the right values but other
        strides (w.t().contiguous().t(), a strided bias) would otherwise be read
        as if it were dense."""
        if t is None:
            return None
        t = t.detach()
        want = self.work if dtype is None else dtype
        if t.dtype != want:
            t = t.to(want)
        return self.array(t if t.is_contiguous() else t.contiguous())

    def rows(self, t: Optional[Tensor]):
        """(array, (stride_t, stride_b)) of a [T, B, K] tensor whose last axis
        only must be contiguous (x, y, dy, dx: the other strides are passed,
        zero strides included); (None, (0, 0)) for None."""
        if t is None:
            return None, (0, 0)
        t = t.detach()
        if t.dtype != self.work:
            t = t.to(self.work)
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            t = t.contiguous()
        return self.array(t), (t.stride(0), t.stride(1))

    def empty(self, shape, dtype=None):
        """An output of the core: NaN-filled under fusedlstm's debug poison (tests), so an
        element a kernel leaves unwritten shows."""
        dtype = self.work if dtype is None else dtype
        if dtype.is_floating_point and _checks.debug_poison():
            return torch.full(shape, float("nan"), dtype=dtype, device=self.device)
        return torch.empty(shape, dtype=dtype, device=self.device)

    def lengths(self, lengths: Optional[Tensor], T, B):
        """lengths as the core reads them: int64 [B] on the call's device. CPU
        lengths for a CUDA call are checked here on the host (the CUDA backend
        never reads them on the host, so it cannot) and uploaded pinned and
        non_blocking; lengths already on the GPU are passed as they are."""
        if lengths is None:
            return None
        if self.cuda and lengths.device.type == "cpu":
            lengths = to_device(checked_lengths(lengths, T, B), self.device)
        return self.dense(lengths, torch.int64)

    def reserve(self, nbytes):
        """A reserve of nbytes from torch's allocator on the call's device (an
        empty tensor for nbytes = 0). CUDA needs it 256-byte aligned: torch's
        caching allocator is; the CPU allocator of the emulated runs may not be."""
        if not self.cuda or self.device.type == "cuda" or nbytes == 0:
            return self.empty((nbytes,), torch.uint8)
        buf = self.empty((nbytes + 255,), torch.uint8)
        return buf[-buf.data_ptr() % 256:][:nbytes]

    def reserve_bytes(self, T, B, H, proj_size, num_layers, num_directions, cell):
        return _core.stack_reserve_bytes(dtype=_core_dtype(self.work), T=T, B=B, H=H, proj_size=proj_size,
                                         num_layers=num_layers, num_directions=num_directions,
                                         device_type=_core.DEVICE_CUDA if self.cuda else _core.DEVICE_CPU,
                                         **_cell_kw(cell))


def checked_lengths(lengths: Tensor, T, B):
    """Host lengths, int64 [B] with every value in [1, T]; ValueError otherwise.
    Reads a CPU tensor only (no device synchronisation)."""
    if lengths.device.type != "cpu":
        raise ValueError(f"lengths must be on the CPU to be checked on the host, got {lengths.device}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be integers, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape [B] = [{B}], got {list(lengths.shape)}")
    lengths = lengths.to(torch.int64)
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"lengths must be in [1, T] = [1, {T}], got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return lengths


def to_device(t: Tensor, device: torch.device):
    """A host tensor on `device`: on a GPU through pinned memory, non_blocking
    (an asynchronous copy on the current stream; the host does not wait)."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _reserve_nbytes(cuda, dtype, T, B, H, proj_size, num_layers, num_directions, cell=CELL_LSTM):
    """fl_lstm_stack_reserve_bytes's closed form (fusedlstm.h) for the backend and
    cell kind, in plain integer arithmetic, so it also works on symbolic sizes (the
    fake kernels under torch.compile); the real kernels ask the C API."""
    return stack_reserve_nbytes(torch.finfo(dtype).bits // 8, T, B, H, proj_size, num_layers, num_directions,
                                device="cuda" if cuda else "cpu", cell=_NAME[cell])


def _cells_per_layer(num_layers, bidirectional):
    return num_layers * (2 if bidirectional else 1)


def param_shapes(input_size, hidden_size, num_layers, bidirectional, bias, proj_size, cell=CELL_LSTM):
    """[(name, shape)] of the parameters of nn.LSTM / nn.GRU / nn.RNN, in their
    order (the flat weight list of the stack operators)."""
    return list(weight_shapes(input_size, hidden_size, num_layers, bidirectional, bias, proj_size,
                              cell=_NAME[cell]).items())


def _per_cell(weights, num_layers, bidirectional, has_bias, proj_size):
    """Split the flat weight list (nn.LSTM's / nn.GRU's order) into per-cell tuples
    (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None)."""
    per = 2 + (2 if has_bias else 0) + (1 if proj_size > 0 else 0)
    cells = []
    for k in range(_cells_per_layer(num_layers, bidirectional)):
        w = weights[k * per:(k + 1) * per]
        b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
        w_hr = w[-1] if proj_size > 0 else None
        cells.append((w[0], w[1], b_ih, b_hh, w_hr))
    return cells


def _time_major(a, batch_first):
    if a is None:
        return None
    return a.transpose(0, 1) if batch_first else a


class _StackInputs(NamedTuple):
    call: _Call
    xt: Tensor     # x time-major
    H: int
    D: int
    kwargs: dict   # the inputs stack_forward and stack_backward both hand to the core


def _stack_inputs(x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size, has_bias,
                  batch_first, cell):
    _check_cell(cell)
    call = _Call(x.device, x.dtype)
    xt = _time_major(x, batch_first)
    T, B, I = xt.shape
    H = weights[1].shape[0] // GATES[cell]
    D = 2 if bidirectional else 1
    x_arr, x_strides = call.rows(xt)
    cells = [tuple(call.dense(w) for w in c)
             for c in _per_cell(weights, num_layers, bidirectional, has_bias, proj_size)]
    kwargs = dict(x=x_arr, x_strides=x_strides, cells=cells, h0=call.dense(h0),
                  c0=call.dense(c0) if _has_c(cell) else None, lengths=call.lengths(lengths, T, B),
                  dropout_mask=call.dense(dropout_mask), T=T, B=B, I=I, H=H, proj_size=proj_size,
                  num_layers=num_layers, num_directions=D, **call.common(), **_cell_kw(cell))
    return _StackInputs(call, xt, H, D, kwargs)


def _back_to(dtype, *tensors):
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _no_c(x):
    """The c output of a cell kind without c (GRU, RNN): an empty tensor (an
    operator returns a fixed tuple of tensors)."""
    return x.new_empty((0,))


# ----------------------------------------------------------------------------
# Custom operators. x: [T, B, I] (or [B, T, I] when batch_first); weights: the
# flat nn.LSTM / nn.GRU / nn.RNN list; h0 [L*D, B, Hout], c0 [L*D, B, H] (None
# for GRU and RNN); lengths: int64 [B] (on the CPU, or on x's GPU) or None;
# dropout_mask: [L-1, T, B, D*Hout] factors or None; cell: the cell kind.
# Returns y (layout of x), h_n, c_n (empty for GRU and RNN) and the reserve
# (empty unless need_reserve).

_DEVICES = ("cpu", "cuda")


@torch.library.custom_op("fusedlstm::stack_forward", mutates_args=(), device_types=_DEVICES)
def _stack_forward(x: Tensor, weights: List[Tensor], h0: Tensor, c0: Optional[Tensor], lengths: Optional[Tensor],
                   dropout_mask: Optional[Tensor], num_layers: int, bidirectional: bool, proj_size: int,
                   has_bias: bool, batch_first: bool, need_reserve: bool, cell: int = CELL_LSTM
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    s = _stack_inputs(x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size, has_bias,
                      batch_first, cell)
    call, (T, B, _) = s.call, s.xt.shape
    hout = proj_size if proj_size > 0 else s.H
    y = call.empty((B, T, s.D * hout) if batch_first else (T, B, s.D * hout))
    h_n = call.empty((num_layers * s.D, B, hout))
    c_n = call.empty((num_layers * s.D, B, s.H)) if _has_c(cell) else _no_c(h_n)
    nbytes = call.reserve_bytes(T, B, s.H, proj_size, num_layers, s.D, cell) if need_reserve else 0
    reserve = call.reserve(nbytes)
    y_arr, y_strides = call.rows(_time_major(y, batch_first))
    with call.threads():
        _core.stack_forward(**s.kwargs, y=y_arr, y_strides=y_strides, h_n=call.array(h_n),
                            c_n=call.array(c_n) if _has_c(cell) else None,
                            reserve=call.array(reserve) if need_reserve else None, reserve_bytes=nbytes)
    return _back_to(x.dtype, y, h_n, c_n) + (reserve,)


@_stack_forward.register_fake
def _(x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size, has_bias, batch_first,
      need_reserve, cell=CELL_LSTM):
    _check_cell(cell)
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    H = weights[1].shape[0] // GATES[cell]
    D = 2 if bidirectional else 1
    hout = proj_size if proj_size > 0 else H
    cuda = x.device.type == "cuda"
    nbytes = (_reserve_nbytes(cuda, _work_dtype(x.dtype, cuda), T, B, H, proj_size, num_layers, D, cell)
              if need_reserve else 0)
    return (x.new_empty((B, T, D * hout) if batch_first else (T, B, D * hout)),
            x.new_empty((num_layers * D, B, hout)),
            x.new_empty((num_layers * D, B, H)) if _has_c(cell) else _no_c(x),
            x.new_empty((nbytes,), dtype=torch.uint8))


def _unflatten(flat, shapes):
    """The tensors of shapes, in order, as views of the 1-D flat."""
    return [part.reshape(shape) for part, shape in zip(flat.split([math.prod(s) for s in shapes]), shapes)]


def _weight_shapes(x, h0, c0, num_layers, bidirectional, proj_size, has_bias, cell):
    """The parameter shapes in nn's order, for x's input size and the hidden size
    (c0's; h0's for the cells without c, which have no projection)."""
    H = (c0 if _has_c(cell) else h0).shape[-1]
    return [shape for _, shape in param_shapes(x.shape[-1], H, num_layers, bidirectional, has_bias, proj_size,
                                               cell)]


# The weights and their gradients cross stack_backward as one flat tensor
# (nn.LSTM's parameters in order, each row-major): an operator without tensor
# lists is one torch's own vmap can loop over, and gradcheck's batched-gradient
# check and autograd.grad(is_grads_batched=True) run the backward under it.
@torch.library.custom_op("fusedlstm::stack_backward", mutates_args=(), device_types=_DEVICES)
def _stack_backward(x: Tensor, flat_weights: Tensor, h0: Tensor, c0: Optional[Tensor], lengths: Optional[Tensor],
                    dropout_mask: Optional[Tensor], reserve: Tensor, dy: Optional[Tensor],
                    dh_n: Optional[Tensor], dc_n: Optional[Tensor], num_layers: int, bidirectional: bool,
                    proj_size: int, has_bias: bool, batch_first: bool, cell: int = CELL_LSTM
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0 (empty for GRU and RNN), the weights' gradients flat like
    flat_weights, b_ih's and b_hh's each in its place)."""
    _check_cell(cell)
    shapes = _weight_shapes(x, h0, c0, num_layers, bidirectional, proj_size, has_bias, cell)
    s = _stack_inputs(x, _unflatten(flat_weights, shapes), h0, c0, lengths, dropout_mask, num_layers,
                      bidirectional, proj_size, has_bias, batch_first, cell)
    call, has_c = s.call, _has_c(cell)
    dx = call.empty(x.shape)
    dh0, dc0 = call.empty(h0.shape), (call.empty(c0.shape) if has_c else _no_c(h0))
    dflat = call.empty(flat_weights.shape)
    dweights = _per_cell(_unflatten(dflat, shapes), num_layers, bidirectional, has_bias, proj_size)
    # (dw_ih, dw_hh, db_ih | None, dw_hr | None[, db_hh | None]): the LSTM's two bias
    # gradients are equal (copied below), the GRU's differ, the RNN's core copies.
    grad_cells = [(call.array(w_ih), call.array(w_hh), call.array(b_ih), call.array(w_hr))
                  + (() if cell == CELL_LSTM else (call.array(b_hh),))
                  for w_ih, w_hh, b_ih, b_hh, w_hr in dweights]
    dx_arr, dx_strides = call.rows(_time_major(dx, batch_first))
    dy_arr, dy_strides = call.rows(_time_major(dy, batch_first))
    with call.threads():
        _core.stack_backward(**s.kwargs, reserve=call.dense(reserve, torch.uint8), reserve_bytes=reserve.numel(),
                             dy=dy_arr, dy_strides=dy_strides, dh_n=call.dense(dh_n),
                             dc_n=call.dense(dc_n) if has_c else None, dx=dx_arr, dx_strides=dx_strides,
                             dh0=call.array(dh0), dc0=call.array(dc0) if has_c else None, cell_grads=grad_cells)
    if has_bias and cell == CELL_LSTM:  # b_ih and b_hh enter the gates alike: equal gradients
        for _, _, b_ih, b_hh, _ in dweights:
            b_hh.copy_(b_ih)
    return _back_to(x.dtype, dx, dh0, dc0, dflat)


@_stack_backward.register_fake
def _(x, flat_weights, h0, c0, lengths, dropout_mask, reserve, dy, dh_n, dc_n, num_layers, bidirectional,
      proj_size, has_bias, batch_first, cell=CELL_LSTM):
    _check_cell(cell)
    return (x.new_empty(x.shape), x.new_empty(h0.shape), x.new_empty(c0.shape) if _has_c(cell) else _no_c(x),
            x.new_empty(flat_weights.shape))


def _cell_call(x, h, c, w_ih, w_hh, cell):
    """(call, the core's x, h, c, w_ih, w_hh, sizes and cell kind) of one step."""
    _check_cell(cell)
    call = _Call(x.device, x.dtype)
    B, I = x.shape
    args = dict(x=call.dense(x), h=call.dense(h), c=call.dense(c) if _has_c(cell) else None, w_ih=call.dense(w_ih),
                w_hh=call.dense(w_hh), B=B, I=I, H=h.shape[1], **call.common(), **_cell_kw(cell))
    return call, args


# The cell operators: x [B, I], h [B, Hc], c [B, H] (None for GRU and RNN), the
# weights [G*H, I], [G*H, H], [G*H] (b_* may be None).
@torch.library.custom_op("fusedlstm::cell_forward", mutates_args=(), device_types=_DEVICES)
def _cell_forward(x: Tensor, h: Tensor, c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                  b_hh: Optional[Tensor], cell: int = CELL_LSTM) -> Tuple[Tensor, Tensor]:
    """One step without autograd (no_grad / inference): the core's cell,
    which reads the weights as they are (no packing), for streaming.
    (h_new, c_new); c_new is empty for GRU and RNN."""
    call, args = _cell_call(x, h, c, w_ih, w_hh, cell)
    h_new = call.empty(h.shape)
    c_new = call.empty(h.shape) if _has_c(cell) else _no_c(h_new)
    with call.threads():
        _core.cell(**args, b_ih=call.dense(b_ih), b_hh=call.dense(b_hh), h_new=call.array(h_new),
                   c_new=call.array(c_new) if _has_c(cell) else None)
    return _back_to(x.dtype, h_new, c_new)


@_cell_forward.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh, cell=CELL_LSTM):
    _check_cell(cell)
    return h.new_empty(h.shape), (h.new_empty(h.shape) if _has_c(cell) else _no_c(h))


# Training LSTMCell / GRUCell / RNNCell: up to this many rows the unpacked step
# and its own backward; above, stack_forward with T = 1 (packed GEMMs).
# Measured (CPU, LSTM) training step at H = 256, unpacked vs packed: B = 8 0.80
# vs 1.36 ms, B = 16 1.24 vs 1.48, B = 32 2.08 vs 1.59, B = 64 3.83 vs 2.32
# (H = 512, B = 16: 4.3 vs 6.6). CUDA and the other cells use the same switch
# (not measured there yet).
_CELL_UNPACKED_MAX_ROWS = 16


@torch.library.custom_op("fusedlstm::cell_train_forward", mutates_args=(), device_types=_DEVICES)
def _cell_train_forward(x: Tensor, h: Tensor, c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor], b_hh: Optional[Tensor], cell: int = CELL_LSTM
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """One step that keeps its activations acts [B, A*H] (in the dtype the core
    runs in; ACTS) for cell_backward: (h_new, c_new (empty for GRU and RNN), acts)."""
    call, args = _cell_call(x, h, c, w_ih, w_hh, cell)
    B, H = h.shape
    h_new, acts = call.empty((B, H)), call.empty((B, ACTS[cell] * H))
    c_new = call.empty((B, H)) if _has_c(cell) else _no_c(h_new)
    with call.threads():
        _core.cell(**args, b_ih=call.dense(b_ih), b_hh=call.dense(b_hh), h_new=call.array(h_new),
                   c_new=call.array(c_new) if _has_c(cell) else None, acts=call.array(acts))
    return _back_to(x.dtype, h_new, c_new) + (acts,)


@_cell_train_forward.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh, cell=CELL_LSTM):
    _check_cell(cell)
    B, H = h.shape
    return (h.new_empty((B, H)), h.new_empty((B, H)) if _has_c(cell) else _no_c(h),
            h.new_empty((B, ACTS[cell] * H), dtype=_work_dtype(h.dtype, h.device.type == "cuda")))


def _bias_grad_rows(cell, H, has_bias):
    """Length of cell_backward's db: G*H (b_ih's gradient, which b_hh shares:
    LSTM and RNN), 2*G*H for the GRU ([db_ih | db_hh]: they differ), 0 without bias."""
    if not has_bias:
        return 0
    return GATES[cell] * H * (2 if cell == CELL_GRU else 1)


@torch.library.custom_op("fusedlstm::cell_backward", mutates_args=(), device_types=_DEVICES)
def _cell_backward(x: Tensor, h: Tensor, c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, acts: Tensor,
                   c_new: Optional[Tensor], dh_new: Optional[Tensor], dc_new: Optional[Tensor], has_bias: bool,
                   cell: int = CELL_LSTM) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh, dc, dw_ih, dw_hh, db): dc is empty for GRU and RNN; db is b_ih's
    gradient (also b_hh's) for LSTM and RNN, [db_ih | db_hh] for the GRU, whose
    two bias gradients differ, and empty without has_bias (a fixed tuple of
    tensors, which torch's own vmap can loop over)."""
    call, args = _cell_call(x, h, c, w_ih, w_hh, cell)
    H, has_c = h.shape[1], _has_c(cell)
    grads = [call.empty(x.shape), call.empty(h.shape), call.empty(h.shape) if has_c else _no_c(h),
             call.empty(w_ih.shape), call.empty(w_hh.shape), call.empty((_bias_grad_rows(cell, H, has_bias),))]
    db_ih, db_hh = None, None
    if has_bias:
        db_ih = grads[5][:GATES[cell] * H]
        db_hh = grads[5][GATES[cell] * H:] if cell == CELL_GRU else None
    with call.threads():
        _core.cell_backward(**args, acts=call.dense(acts), c_new=call.dense(c_new) if has_c else None,
                            dh_new=call.dense(dh_new), dc_new=call.dense(dc_new) if has_c else None,
                            dx=call.array(grads[0]), dh=call.array(grads[1]),
                            dc=call.array(grads[2]) if has_c else None, dw_ih=call.array(grads[3]),
                            dw_hh=call.array(grads[4]), db=call.array(db_ih),
                            **({} if db_hh is None else {"db_hh": call.array(db_hh)}))
    return _back_to(x.dtype, *grads)


@_cell_backward.register_fake
def _(x, h, c, w_ih, w_hh, acts, c_new, dh_new, dc_new, has_bias, cell=CELL_LSTM):
    _check_cell(cell)
    return (x.new_empty(x.shape), h.new_empty(h.shape), h.new_empty(h.shape) if _has_c(cell) else _no_c(h),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            w_ih.new_empty((_bias_grad_rows(cell, h.shape[1], has_bias),)))


def _cell_setup_context(ctx, inputs, output):
    x, h, c, w_ih, w_hh, b_ih, b_hh, cell = inputs
    ctx.save_for_backward(x, h, c, w_ih, w_hh, output[2], output[1] if _has_c(cell) else None)
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.cell = cell
    ctx.set_materialize_grads(False)


def _cell_backward_rule(ctx, dh_new, dc_new, _dacts):
    x, h, c, w_ih, w_hh, acts, c_new = ctx.saved_tensors
    has_bias, cell = any(ctx.has_bias), ctx.cell
    grads = _cell_backward(x, h, c, w_ih, w_hh, acts, c_new, dh_new, dc_new if _has_c(cell) else None, has_bias,
                           cell)
    db_ih = db_hh = None
    if has_bias:
        rows = w_ih.shape[0]
        db_ih, db_hh = grads[5][:rows], grads[5][rows:] if cell == CELL_GRU else grads[5]
    return (grads[0], grads[1], grads[2] if _has_c(cell) else None, grads[3], grads[4],
            db_ih if ctx.has_bias[0] else None, db_hh if ctx.has_bias[1] else None, None)


_cell_train_forward.register_autograd(_cell_backward_rule, setup_context=_cell_setup_context)


def _setup_context(ctx, inputs, output):
    (x, weights, h0, c0, lengths, dropout_mask, num_layers, bidirectional, proj_size, has_bias, batch_first,
     need_reserve, cell) = inputs
    ctx.save_for_backward(x, h0, c0, output[3], *weights)
    # Outputs the loss does not use (always the reserve) get None, not a
    # materialised zero tensor: the core takes None as zero.
    ctx.set_materialize_grads(False)
    ctx.lengths, ctx.dropout_mask = lengths, dropout_mask
    ctx.config = (num_layers, bidirectional, proj_size, has_bias, batch_first, cell)
    ctx.need_reserve = need_reserve


def _backward(ctx, dy, dh_n, dc_n, _dreserve):
    if not ctx.need_reserve:
        raise RuntimeError("fusedlstm::stack_forward ran without keeping its activations "
                           "(need_reserve=False), so it cannot be differentiated")
    x, h0, c0, reserve, *weights = ctx.saved_tensors
    cell = ctx.config[-1]
    flat = torch.cat([w.reshape(-1) for w in weights])
    dx, dh0, dc0, dflat = _stack_backward(x, flat, h0, c0, ctx.lengths, ctx.dropout_mask, reserve, dy, dh_n,
                                          dc_n if _has_c(cell) else None, *ctx.config)
    dweights = _unflatten(dflat, [w.shape for w in weights])
    grads = (dx, dweights, dh0, dc0 if _has_c(cell) else None) + (None,) * 9
    # One per input as the caller passed them: the dispatcher leaves out trailing
    # arguments equal to their defaults (cell=CELL_LSTM), and the structure check
    # of an operator with a tensor list takes no extra Nones.
    return grads[:len(ctx.needs_input_grad)]


_stack_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fusedlstm: double backward (differentiating the gradient of an LSTM, GRU or RNN, "
                       "e.g. create_graph=True for a gradient penalty) is not supported")


def _setup_nothing(ctx, inputs, output):
    pass


_stack_backward.register_autograd(_no_double_backward, setup_context=_setup_nothing)
_cell_backward.register_autograd(_no_double_backward, setup_context=_setup_nothing)


# torch.func.vmap, over the modules or over autograd.grad (torch.func.grad /
# vjp / jacrev do not support custom operators with register_autograd at all):
# the core has no batch dimension of its own, so each operator runs once per
# entry of the vmapped dimension and the results are stacked.
def _vmap_entry(arg, dim, i):
    if dim is None:
        return arg
    if isinstance(dim, (list, tuple)):  # a List[Tensor] argument: one dim per tensor
        return [_vmap_entry(a, d, i) for a, d in zip(arg, dim)]
    return arg.select(dim, i)


def _vmap_by_loop(op):
    def rule(info, in_dims, *args):
        runs = [op(*(_vmap_entry(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
        out = [torch.stack(parts) for parts in zip(*runs)]
        if isinstance(runs[0], tuple):
            return tuple(out), (0,) * len(out)
        return out, [0] * len(out)

    op.register_vmap(rule)


for _op in (_stack_forward, _stack_backward, _cell_forward, _cell_train_forward, _cell_backward):
    _vmap_by_loop(_op)


# Autocast (CPU): the forward operators run in the autocast dtype where the aten
# operator of the same cell does (see the module docstring); their floating inputs
# are cast (autograd records the casts, so gradients reach float32 parameters) and
# the operator runs with autocast off.
_AUTOCAST_CPU_CELLS = {"stack_forward": (CELL_LSTM, CELL_RNN_TANH, CELL_RNN_RELU),
                       "cell_forward": (CELL_RNN_TANH, CELL_RNN_RELU),
                       "cell_train_forward": (CELL_RNN_TANH, CELL_RNN_RELU)}
_CELL_ARG = {"stack_forward": 12, "cell_forward": 7, "cell_train_forward": 7}  # the position of `cell`


def _autocast_cast(arg, dtype):
    if isinstance(arg, Tensor):
        return arg.to(dtype) if arg.is_floating_point() and arg.device.type == "cpu" else arg
    if isinstance(arg, (list, tuple)):
        return type(arg)(_autocast_cast(a, dtype) for a in arg)
    return arg


def _register_autocast_cpu(name, op):
    cells, at = _AUTOCAST_CPU_CELLS[name], _CELL_ARG[name]

    def kernel(_keyset, *args):
        cell = args[at] if len(args) > at else CELL_LSTM
        if cell in cells:
            args = _autocast_cast(args, torch.get_autocast_dtype("cpu"))
        with torch.autocast("cpu", enabled=False):
            return op(*args)

    _AUTOCAST_LIB.impl(name, kernel, "AutocastCPU", with_keyset=True)


_AUTOCAST_LIB = torch.library.Library("fusedlstm", "IMPL")
for _name, _op in (("stack_forward", _stack_forward), ("cell_forward", _cell_forward),
                   ("cell_train_forward", _cell_train_forward)):
    _register_autocast_cpu(_name, _op)
