"""The implementations ``fusedlstm bench`` times: fusedlstm itself and its peers.

Each one is built for one workload (cell, T, B, I, H, dtype, device) and one
mode, from the same weights and inputs, and gives two callables: ``run()``
(one timed call; on CUDA it ends in a synchronize) and ``output()`` (one call
whose y comes back as a float64 numpy array [T, B, H], for the sanity check
that runs before the timing and doubles as the first warm-up call).

    name            device  modes                 what
    fusedlstm       cpu     fwd, fwdbwd           fusedlstm.lstm_forward / _backward (gru_, rnn_) on numpy arrays
                    cuda    fwd, fwdbwd           the same on torch CUDA tensors
                    both    train                 fusedlstm.torch's module: a training step
    torch           cpu     fwd, fwdbwd, train    nn.LSTM / nn.GRU / nn.RNN (oneDNN for the LSTM), same dtype
    torch-bf16      cpu     fwd, fwdbwd, train    the module and its input in bfloat16 (float32 rows only)
    torch-autocast  cpu     fwd, fwdbwd, train    the float32 module under torch.autocast("cpu", bfloat16)
    onnxruntime     cpu     fwd                   an ONNX LSTM / GRU / RNN node (onnx.helper), CPU provider
    openvino        cpu     fwd                   the same ONNX model on OpenVINO's CPU plugin, f32 precision
    cudnn           cuda    fwd, fwdbwd, train    nn.LSTM / GRU / RNN on the GPU (cuDNN), TF32 off

A peer that is not installed, or that does not do a mode, dtype or device,
raises Skip with a one-line note; the caller prints the note and goes on.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from .. import _bench

ALL_PEERS = ("torch", "torch-bf16", "torch-autocast", "onnxruntime", "openvino", "cudnn")
DEFAULT_PEERS = {"cpu": ("torch", "onnxruntime", "openvino"), "cuda": ("cudnn",)}
DEVICE_OF = {"torch": "cpu", "torch-bf16": "cpu", "torch-autocast": "cpu", "onnxruntime": "cpu",
             "openvino": "cpu", "cudnn": "cuda"}
# the sanity check's limit on max |y - y_fusedlstm|, by the precision the peer computes in
CHECK_LIMIT = {"float64": 1e-8, "float32": 1e-3, "tf32": 2e-2, "float16": 2e-2, "bfloat16": 1e-1}


class Skip(Exception):
    """This implementation cannot run this measurement; str() is the note."""


class Impl:
    def __init__(self, name, run, output, precision):
        self.name, self.run, self._output, self.precision = name, run, output, precision

    def output(self):
        return np.asarray(self._output(), dtype=np.float64)


def _numpy(t):
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


# --------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------

class Workload:
    """Inputs and weights of one (cell, T, B, I, H, dtype) problem, built once (numpy; the
    CPU subject is _bench.Case, the one bench/bench_cpu.py times)."""

    def __init__(self, fl, cell, T, B, H, I, dtype, seed=0):
        self.fl, self.cell, self.dtype = fl, cell, dtype
        self.T, self.B, self.H, self.I = T, B, H, I
        host = dtype if dtype in ("float32", "float64") else "float32"  # half precisions: cast on the device
        self.case = _bench.Case(fl, T, B, H, I=I, torch=None, seed=seed, cell=cell, dtype=host)
        c = self.case
        self.weights = (c.w_ih, c.w_hh, c.b_ih, c.b_hh)

    def flops(self, mode):
        return _bench.lstm_flops(self.T, self.B, self.I, self.H, "fwd" if mode == "fwd" else "fwdbwd", self.cell)

    def bytes_moved(self, mode):
        """A traffic estimate for the roofline: every step streams W_hh and the step's
        gates; W_ih, x and y once (forward; forward + backward ~3x)."""
        G = _bench.CELL_GATES[self.cell]
        item = np.dtype(self.case.dtype).itemsize if self.dtype in ("float32", "float64") else 2
        T, B, H, I = self.T, self.B, self.H, self.I
        fwd = item * (T * G * H * H + G * H * I + T * B * (I + H + 2 * G * H))
        return fwd if mode == "fwd" else 3.0 * fwd


# --------------------------------------------------------------------------
# fusedlstm
# --------------------------------------------------------------------------

def fusedlstm_impl(w, mode, device, torch):
    if mode == "train":
        return _torch_train(w, "fusedlstm", device, torch, precision=w.dtype)
    if device == "cpu":
        if w.dtype not in ("float32", "float64"):
            raise Skip(f"fusedlstm's CPU path runs float32 and float64, not {w.dtype}")
        c = w.case
        if mode == "fwd":
            return Impl("fusedlstm", c.fl_fwd, lambda: c.fl_fwd().y, w.dtype)
        return Impl("fusedlstm", c.fl_fwdbwd, lambda: c.fl_fwdbwd()[0].y, w.dtype)
    return _fusedlstm_cuda(w, mode, torch)


def _fusedlstm_cuda(w, mode, torch):
    fl = w.fl
    if not fl.cuda_available():
        raise Skip(f"fusedlstm's CUDA backend is not usable: {fl.build_info()['cuda'].get('reason', '?')}")
    dt = getattr(torch, w.dtype)
    dev = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to("cuda", dt)  # noqa: E731
    x, dy = dev(w.case.x), dev(w.case.dy)
    args = [dev(a) for a in w.weights]
    fwd = {"lstm": fl.lstm_forward, "gru": fl.gru_forward}.get(w.cell, fl.rnn_forward)
    bwd = {"lstm": fl.lstm_backward, "gru": fl.gru_backward}.get(w.cell, fl.rnn_backward)
    kw = {"nonlinearity": w.cell[4:]} if w.cell.startswith("rnn") else {}
    sync = torch.cuda.synchronize

    def f():
        r = fwd(x, *args, mode="many_to_many", training=mode != "fwd", **kw)
        if mode != "fwd":
            bwd(r, dy=dy)
        sync()
        return r.y
    return Impl("fusedlstm", f, f, w.dtype)


# --------------------------------------------------------------------------
# torch and its bf16 / autocast forms; cuDNN
# --------------------------------------------------------------------------

def _torch_module(torch, cell, I, H, weights, flt=False):
    if flt:
        import fusedlstm.torch as nnmod
    else:
        nnmod = torch.nn
    if cell == "lstm":
        m = nnmod.LSTM(I, H)
    elif cell == "gru":
        m = nnmod.GRU(I, H)
    else:
        m = nnmod.RNN(I, H, nonlinearity=cell[4:])
    with torch.no_grad():
        for p, a in zip((m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0), weights):
            p.copy_(torch.from_numpy(np.asarray(a, np.float64)))
    return m


def torch_impl(w, mode, name, torch):
    if torch is None:
        raise Skip(f"{name}: torch is not installed")
    device = "cuda" if name == "cudnn" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"cudnn: torch {torch.__version__} sees no CUDA device")
    if name in ("torch-bf16", "torch-autocast") and w.dtype != "float32":
        raise Skip(f"{name}: a peer of the float32 rows only")
    if device == "cpu" and w.dtype not in ("float32", "float64"):
        raise Skip(f"{name}: the CPU rows run float32 / float64 (bf16: the torch-bf16 and torch-autocast peers)")
    precision = {"torch-bf16": "bfloat16", "torch-autocast": "bfloat16"}.get(name, w.dtype)
    if mode == "train":
        return _torch_train(w, name, device, torch, precision)
    dt = getattr(torch, "bfloat16" if name == "torch-bf16" else w.dtype)
    m = _torch_module(torch, w.cell, w.I, w.H, w.weights).to(device, dt)
    x = torch.from_numpy(w.case.x).to(device, dt)
    dy = torch.from_numpy(w.case.dy).to(device, dt)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if name == "torch-autocast" else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    params = list(m.parameters())

    if mode == "fwd":
        def f():
            with torch.inference_mode():
                if autocast:
                    with autocast():
                        y = m(x)[0]
                else:
                    y = m(x)[0]
            sync()
            return y
    else:
        xg = x.clone().requires_grad_(True)

        def f():
            xg.grad = None
            for p in params:
                p.grad = None
            if autocast:
                with autocast():
                    y = m(xg)[0]
            else:
                y = m(xg)[0]
            y.backward(dy.to(y.dtype))
            sync()
            return y
    return Impl(name, f, lambda: _numpy(f()), precision)


def _torch_train(w, name, device, torch, precision):
    """One training step of a module: zero_grad, forward, mse_loss, backward, SGD step."""
    if torch is None:
        raise Skip(f"{name}: the training step times torch modules; torch is not installed")
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"{name}: torch sees no CUDA device")
    if device == "cpu" and w.dtype not in ("float32", "float64"):
        raise Skip(f"{name}: the CPU rows run float32 / float64")
    dt = getattr(torch, "bfloat16" if name == "torch-bf16" else w.dtype)
    m = _torch_module(torch, w.cell, w.I, w.H, w.weights, flt=name == "fusedlstm").to(device, dt)
    m.train()
    x = torch.from_numpy(w.case.x).to(device, dt).requires_grad_(True)
    target = torch.from_numpy(w.case.dy).to(device, dt)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    F = torch.nn.functional
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    autocast = name == "torch-autocast"

    def step():
        opt.zero_grad(set_to_none=True)
        x.grad = None
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = m(x)[0]
        else:
            y = m(x)[0]
        F.mse_loss(y.float(), target.float()).backward()
        opt.step()
        sync()
        return y
    # the check's output comes from a forward without a step: the weights stay the same in all modules
    def output():
        with torch.no_grad():
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return _numpy(m(x)[0])
            return _numpy(m(x)[0])
    return Impl(name, step, output, precision)


# --------------------------------------------------------------------------
# ONNX Runtime and OpenVINO: one ONNX node
# --------------------------------------------------------------------------

def onnx_model(w):
    """An ONNX model of one LSTM / GRU / RNN node (opset 17) with the workload's weights
    as initializers; input X [T, B, I], output Y [T, 1, B, H]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .. import onnx as flonnx
    op = {"lstm": "LSTM", "gru": "GRU"}.get(w.cell, "RNN")
    G = _bench.CELL_GATES[w.cell]
    H = w.H
    order = flonnx._ORDER.get(op, (0,))  # fusedlstm[k] = onnx[order[k]]: invert it
    inv = [order.index(j) for j in range(G)]

    def to_onnx(a):  # fusedlstm's gate blocks -> ONNX's order, H rows each
        blocks = a.reshape(G, H, *a.shape[1:])
        return np.ascontiguousarray(blocks[inv].reshape(a.shape), dtype=np.float32)

    w_ih, w_hh, b_ih, b_hh = w.weights
    inits = [numpy_helper.from_array(to_onnx(w_ih)[None], "W"), numpy_helper.from_array(to_onnx(w_hh)[None], "R"),
             numpy_helper.from_array(np.concatenate([to_onnx(b_ih), to_onnx(b_hh)])[None], "B")]
    attrs = {"hidden_size": H}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    if op == "RNN":
        attrs["activations"] = ["Relu" if w.cell == "rnn_relu" else "Tanh"]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], **attrs)
    graph = helper.make_graph([node], f"fusedlstm_bench_{w.cell}",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [w.T, w.B, w.I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [w.T, 1, w.B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fusedlstm bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _onnx_input(name, w, mode):
    if mode != "fwd":
        raise Skip(f"{name}: inference only (the fwd rows)")
    if w.dtype != "float32":
        raise Skip(f"{name}: the float32 rows only")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise Skip(f"{name}: the onnx package (to build the model) is not installed") from None
    return np.ascontiguousarray(w.case.x, dtype=np.float32)


def onnxruntime_impl(w, mode, threads):
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install onnxruntime)") from None
    x = _onnx_input("onnxruntime", w, mode)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_model(w).SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"X": x}

    def f():
        return sess.run(None, feed)[0]
    return Impl("onnxruntime", f, lambda: f()[:, 0], "float32")


def openvino_impl(w, mode, threads):
    try:
        import openvino as ov
    except ImportError:
        raise Skip("openvino is not installed (pip install openvino)") from None
    x = _onnx_input("openvino", w, mode)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        with open(path, "wb") as fh:
            fh.write(onnx_model(w).SerializeToString())
        model = core.read_model(path)
    # f32 precision: on CPUs with bf16 units OpenVINO would otherwise run bf16
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    out = compiled.output(0)

    def f():
        return req.infer({0: x})[out]
    return Impl("openvino", f, lambda: np.asarray(f())[:, 0], "float32")


# --------------------------------------------------------------------------

def make(name, w, mode, device, threads, torch):
    """The implementation `name` for this workload and mode (raises Skip)."""
    if name == "fusedlstm":
        return fusedlstm_impl(w, mode, device, torch)
    if DEVICE_OF[name] != device:
        raise Skip(f"{name}: runs on the {DEVICE_OF[name]} (--device {DEVICE_OF[name]})")
    if name == "onnxruntime":
        return onnxruntime_impl(w, mode, threads)
    if name == "openvino":
        return openvino_impl(w, mode, threads)
    return torch_impl(w, mode, name, torch)


def check(impls):
    """Run each implementation once (its first warm-up call) and compare its y with
    fusedlstm's. Returns ({name: seconds}, {name: {"max_abs_diff", "limit", "ok"}})."""
    import time
    ran, out, ys = {}, {}, {}
    for im in impls:
        t0 = time.perf_counter()
        ys[im.name] = im.output()
        ran[im.name] = time.perf_counter() - t0
    ref = ys.get("fusedlstm")
    for im in impls:
        if ref is None or im.name == "fusedlstm":
            out[im.name] = {"max_abs_diff": None, "limit": None, "ok": None}
            continue
        d = _bench.max_abs_diff(ys[im.name], ref)
        lim = max(CHECK_LIMIT.get(im.precision, 1e-3), CHECK_LIMIT.get(impls[0].precision, 1e-3))
        out[im.name] = {"max_abs_diff": None if not math.isfinite(d) else d, "limit": lim,
                        "ok": bool(math.isfinite(d) and d <= lim)}
    return ran, out
