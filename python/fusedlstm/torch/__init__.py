"""PyTorch front end: drop-in ``LSTM``, ``GRU``, ``RNN`` and ``LSTMCell``,
``GRUCell``, ``RNNCell`` modules on the fused kernels.

    from fusedlstm.torch import LSTM      # instead of torch.nn.LSTM
    model.rnn = LSTM(256, 512, num_layers=2, bidirectional=True, batch_first=True)

Same constructor, parameter names, shapes, ``state_dict`` and ``forward``
contract as ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (tanh or relu) and their
cells (tensors or ``PackedSequence``, unbatched input, ``hx``; GRU and RNN
take and return one hidden state, no c). Every module runs on CPU and CUDA
tensors (on CUDA, GRU and RNN take the fallback path). Autograd
goes through custom operators registered with ``torch.library``
(``fusedlstm::stack_forward`` and ``fusedlstm::stack_backward``, the cell's
three; ``_ops.py``), so ``torch.compile(fullgraph=True)`` traces the module
without graph breaks; torch.export and torch.jit.trace work too,
torch.jit.script is refused with a clear error. Every operator has a vmap rule
(torch.func.vmap, gradcheck's batched gradients). The saved activations travel
as a ``reserve`` uint8 tensor from torch's allocator (like cuDNN's reserve
space). Parameters, states and inputs in any layout are read correctly (made
dense where the core needs it, copying only then). Errors for bad arguments
are of the types nn.LSTM / nn.LSTMCell raise.

CPU: float32, float64 and bfloat16 run natively: ``module.to(torch.bfloat16)``
and ``torch.autocast("cpu", dtype=torch.bfloat16)`` run the CPU's bfloat16
kernels (bfloat16 GEMM operands, float32 sums, cell state and gate math;
needs ml_dtypes, else bfloat16 runs in float32 inside), with nn's output
dtypes: under CPU autocast LSTM and RNN (and RNNCell) return the autocast
dtype (an LSTM with proj_size its c_n in float32, as nn.LSTM), GRU, LSTMCell
and GRUCell stay float32 like their nn counterparts; gradients reach the
float32 parameters. float16 tensors keep their dtype and compute in float32.

CUDA: float32, float64, float16 and bfloat16 run natively on torch's current
stream, with memory from torch's caching allocator, and neither forward nor
backward synchronises the host (CUDA graphs can capture them). Under
``torch.autocast("cuda")`` both modules run in the autocast dtype, as
nn.LSTM and nn.LSTMCell do. float32 uses TF32 tensor cores exactly when
``torch.backends.cuda.matmul.allow_tf32`` is True (False by default; note
that nn.LSTM's cuDNN path follows ``torch.backends.cudnn.allow_tf32``, True by
default).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a venv without torch
    raise ImportError("fusedlstm.torch needs PyTorch (pip install torch); the numpy API "
                      "(import fusedlstm) works without it") from exc

from ._ops import _CELL_UNPACKED_MAX_ROWS  # noqa: F401  (the LSTMCell switch; tests read it)
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "RNNCell"]
