"""fusedlstm: fused recurrent layers (LSTM, GRU, Elman RNN), forward and
backward-through-time kernels.

    import fusedlstm
    res = fusedlstm.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, training=True)
    grads = fusedlstm.lstm_backward(res, dy=dy)
    res = fusedlstm.gru_forward(x, w_ih3, w_hh3, training=True)    # res.y, res.h_n
    grads = fusedlstm.gru_backward(res, dy=dy)

Weights use torch.nn.LSTM's / nn.GRU's / nn.RNN's layout (gate order i, f,
g, o; r, z, n), so they move between the two unchanged. See README.md for
the four sequence modes. On CUDA, GRU and RNN run the fallback path (per-step
cuBLAS GEMM + fused pointwise kernels); the persistent kernels are the LSTM's.
"""

import os as _os
import warnings as _warnings

from .api import (
    CELLS,
    FEEDS,
    MODES,
    GRUGrads,
    GRUResult,
    LSTMGrads,
    LSTMResult,
    RNNGrads,
    RNNResult,
    _set_debug_poison,
    available_isas,
    get_isa,
    get_num_threads,
    gru_backward,
    gru_cell,
    gru_forward,
    lstm_backward,
    lstm_cell,
    lstm_forward,
    rnn_backward,
    rnn_cell,
    rnn_forward,
    set_isa,
    set_num_threads,
)

from .layers import GRU, LSTM, RNN, GRUStackResult, LSTMStackResult, RNNStackResult
from ._paths import get_cmake_dir, get_include, get_library_dir  # the C library, for C/C++ embedders

__version__ = "0.1.0"

__all__ = [
    "lstm_forward", "lstm_backward", "lstm_cell", "LSTMResult", "LSTMGrads",
    "gru_forward", "gru_backward", "gru_cell", "GRUResult", "GRUGrads",
    "rnn_forward", "rnn_backward", "rnn_cell", "RNNResult", "RNNGrads", "MODES", "FEEDS", "CELLS",
    "set_num_threads", "get_num_threads", "available_isas", "get_isa", "set_isa", "build_info",
    "LSTM", "GRU", "RNN", "LSTMStackResult", "GRUStackResult", "RNNStackResult", "cuda_available",
    "get_include", "get_library_dir", "get_cmake_dir",
]


def cuda_available() -> bool:
    """True when the CUDA backend is compiled in and a CUDA device is usable
    (then lstm_forward / lstm_backward / lstm_cell accept CUDA arrays). Never raises."""
    try:
        from ._device import cuda_available as _available
        return _available()
    except Exception:
        return False


def build_info() -> dict:
    """What this installed build has: version, backends, SIMD paths, CUDA
    (compiled archs, devices, and why CUDA is unusable when it is)."""
    try:
        from ._device import cuda_build_info
        cuda = cuda_build_info()
    except Exception as exc:  # never let a CUDA problem break the CPU package
        cuda = {"compiled": False, "archs": [], "devices": 0, "reason": f"{type(exc).__name__}: {exc}"}
    return {
        "version": __version__,
        "backends": ["cpu"] + (["cuda"] if cuda.get("devices") else []),
        "cpu_isas": available_isas(),
        "cpu_isa_in_use": get_isa(),
        "num_threads": get_num_threads(),
        "cuda": cuda,
    }


_requested = _os.environ.get("FUSEDLSTM_ISA")
if _requested and _requested not in available_isas():
    _warnings.warn(
        f"FUSEDLSTM_ISA={_requested!r} is not one of the SIMD paths this CPU supports "
        f"{available_isas()}; using {get_isa()!r}", RuntimeWarning, stacklevel=2)
