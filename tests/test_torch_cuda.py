"""fusedlstm.torch on CUDA: what only the CUDA implementation of the operators does.

The parity tests of test_torch_module.py run on "cuda" (a GPU) and on
"cuda-emulated" (the CUDA implementation on CPU tensors against the CPU
emulation of the CUDA backend) as well as on "cpu"; this file adds:
* float16 / bfloat16 modules (native on CUDA) and torch.autocast("cuda"),
  against nn.LSTM / nn.LSTMCell in float64 on the same values, under the
  tolerance policy: the plain implementation in that precision is a float32
  LSTM whose every matrix-product operand is rounded to the format, its
  outputs rounded to the storage format (tolerance.PRECISIONS), here written
  in torch (below) so that its gradients come from autograd; runs on "cuda"
  and "cuda-emulated";
* GPU only (skipped without one): no host synchronisation in forward and
  backward (torch.cuda.set_sync_debug_mode("error")), a CUDA graph capturing a
  fixed-shape forward + backward and replaying it on new values, the tensors
  of the current stream only (a side stream's work is ordered on it), TF32
  following torch.backends.cuda.matmul.allow_tf32.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fusedlstm.torch as ft  # noqa: E402
from fusedlstm import tolerance  # noqa: E402
from test_torch_module import DEVICES, _ops  # noqa: E402

pytestmark = pytest.mark.torch

CUDA_DEVICES = DEVICES[1:]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LOW = [pytest.param(torch.float16, "float16", id="f16"), pytest.param(torch.bfloat16, "bfloat16", id="bf16")]


@pytest.fixture(params=CUDA_DEVICES)
def cuda_device(request):
    if request.param == "cuda-emulated":
        with _ops.emulate_cuda_on_cpu():
            yield "cpu"
    else:
        yield "cuda"


# --------------------------------------------------------------------------------------
# the plain implementation in a low precision (see the module docstring)
# --------------------------------------------------------------------------------------
_FORMATS = {"float16": torch.float16, 7: torch.bfloat16}


def _rounder(precision, which):
    """tolerance.PRECISIONS' rounding of GEMM operands (which=1) or of stored outputs (2), in torch."""
    dtype = _FORMATS[tolerance.PRECISIONS[precision][which]]
    return lambda t: t.to(dtype).float()


class _RoundedMatmul(torch.autograd.Function):
    """a @ b with both operands rounded, in the forward and in each product of the
    backward (as fusedlstm.reference's round_operands)."""

    @staticmethod
    def forward(ctx, a, b, rnd):
        ctx.save_for_backward(a, b)
        ctx.rnd = rnd
        return rnd(a) @ rnd(b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        rnd = ctx.rnd
        return rnd(g) @ rnd(b).T, rnd(a).T @ rnd(g), None


class _Stored(torch.autograd.Function):
    """An array kept in the storage format (a layer's output, its gradient)."""

    @staticmethod
    def forward(ctx, a, store):
        ctx.store = store
        return store(a)

    @staticmethod
    def backward(ctx, g):
        return ctx.store(g), None


def plain_lstm(params, x, h0, c0, lengths, *, num_layers, bidirectional, precision):
    """float32 nn.LSTM (time-major x [T, B, I], h0/c0 [L*D, B, *], lengths [B] or None,
    params {name: float32 tensor}) with every operand of every matrix product (backward
    included) rounded to `precision`'s format, and y, h_n, c_n rounded to its storage
    and so are each layer's output and the gradients the layers exchange (each direction's,
    and their sum), as the library keeps them; round the returned gradients with
    _rounder(precision, 2) too."""
    rnd = _rounder(precision, 1)
    store = _rounder(precision, 2)

    def mm(a, b):
        return _RoundedMatmul.apply(a, b, rnd)

    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    steps = torch.arange(T)[:, None]
    mask = steps < (torch.full((B,), T) if lengths is None else lengths.cpu())[None, :]  # [T, B]
    layer_in = x
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = params["weight_ih" + sfx], params["weight_hh" + sfx]
            b = params.get("bias_ih" + sfx, 0) + params.get("bias_hh" + sfx, 0)
            w_hr = params.get("weight_hr" + sfx)
            h, c = h0[layer * D + d], c0[layer * D + d]
            xs = _Stored.apply(layer_in, store)  # each direction's input gradient is stored, then summed
            ys = [None] * T
            for t in (range(T) if d == 0 else reversed(range(T))):  # padded steps: keep the state
                gates = mm(xs[t], w_ih.T) + mm(h, w_hh.T) + b
                i, f, g, o = gates.chunk(4, 1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                m = torch.sigmoid(o) * torch.tanh(c_new)
                h_new = m if w_hr is None else mm(m, w_hr.T)
                keep = mask[t][:, None]
                c, h = torch.where(keep, c_new, c), torch.where(keep, h_new, h)
                ys[t] = torch.where(keep, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(ys))
            h_n.append(h)
            c_n.append(c)
        layer_in = _Stored.apply(torch.cat(outs, 2), store)
    return store(layer_in), store(torch.stack(h_n)), store(torch.stack(c_n))


def _check(policy, name, got, truth, plain, precision):
    policy.check(name, got.detach().float().cpu().numpy(), truth.detach().double().cpu().numpy(),
                 plain.detach().float().cpu().numpy(), dtype=np.float32, precision=precision)


LOW_CONFIGS = [
    dict(num_layers=2, bidirectional=True, proj_size=3, packed=True, I=5, H=7, T=6, B=4),
    dict(num_layers=1, bidirectional=False, proj_size=0, packed=False, I=9, H=16, T=9, B=3),
]


def _low_precision_run(cfg, dtype, precision, device, seed, policy, autocast):
    """ours (a dtype module, or a float32 one under autocast) vs nn.LSTM float64 on the
    same (dtype-rounded) values, plain = plain_lstm; outputs and every gradient."""
    torch.manual_seed(seed)
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "proj_size")}
    src = nn.LSTM(cfg["I"], cfg["H"], **kw)
    with torch.no_grad():  # values of the format, so that every run sees the same numbers
        for p in src.parameters():
            p.copy_(p.to(dtype).float())
    ours = ft.LSTM(cfg["I"], cfg["H"], **kw).to(device)
    ours.load_state_dict(src.state_dict())
    if not autocast:
        ours.to(dtype)
    truth = nn.LSTM(cfg["I"], cfg["H"], **kw, dtype=torch.float64)
    truth.load_state_dict({k: v.double() for k, v in src.state_dict().items()})
    g = torch.Generator().manual_seed(seed)
    T, B, D = cfg["T"], cfg["B"], 2 if cfg["bidirectional"] else 1
    hout = cfg["proj_size"] or cfg["H"]
    r = lambda *s: torch.randn(*s, generator=g).to(dtype).float()  # noqa: E731
    x, h0, c0 = r(T, B, cfg["I"]), 0.5 * r(kw["num_layers"] * D, B, hout), r(kw["num_layers"] * D, B, cfg["H"])
    dy, dh, dc = r(T, B, D * hout), r(*h0.shape), r(*c0.shape)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if cfg["packed"] else None

    def run(model, on, dt, plain=False):
        xs, h0s, c0s = (t.to(on, dt).requires_grad_(True) for t in (x, h0, c0))
        params = dict(model.named_parameters())
        if plain:
            y, h, c = plain_lstm(params, xs, h0s, c0s, lengths, num_layers=kw["num_layers"],
                                 bidirectional=kw["bidirectional"], precision=precision)
        else:
            inp = xs if lengths is None else pack_padded_sequence(xs, lengths, enforce_sorted=False)
            with torch.autocast("cuda", dtype=dtype, enabled=autocast and on != "cpu"):
                y, (h, c) = model(inp, (h0s, c0s))
            if lengths is not None:  # back to padded, time-major (the truth's layout)
                y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)[0]
        loss = (y.float() * dy.to(on)).sum() + (h.float() * dh.to(on)).sum() + (c.float() * dc.to(on)).sum()
        grads = torch.autograd.grad(loss, [xs, h0s, c0s] + list(params.values()))
        if plain:
            grads = [_rounder(precision, 2)(g) for g in grads]
        return dict(y=y, h_n=h, c_n=c, **dict(zip(["dx", "dh0", "dc0"] + ["d" + n for n in params], grads)))

    emulated_autocast = autocast and device == "cpu"
    if emulated_autocast:
        pytest.skip("torch.autocast('cuda') needs CUDA tensors")
    got = run(ours, device, torch.float32 if autocast else dtype)
    want = run(truth, "cpu", torch.float64)
    plain = run(src, "cpu", torch.float32, plain=True)
    for k in ("y", "h_n", "c_n"):
        assert got[k].dtype == dtype, (k, got[k].dtype)
    for k in want:
        _check(policy, k, got[k], want[k], plain[k], precision)


@pytest.mark.parametrize("cfg", LOW_CONFIGS, ids=["2L-bi-proj-packed", "1L"])
@pytest.mark.parametrize("dtype, precision", LOW)
def test_low_precision_module_matches_nn_lstm_f64(dtype, precision, cfg, cuda_device, seed, policy):
    _low_precision_run(cfg, dtype, precision, cuda_device, seed, policy, autocast=False)


@pytest.mark.parametrize("cfg", LOW_CONFIGS, ids=["2L-bi-proj-packed", "1L"])
@pytest.mark.parametrize("dtype, precision", LOW)
def test_autocast_cuda_runs_in_the_autocast_dtype(dtype, precision, cfg, cuda_device, seed, policy):
    """Under torch.autocast("cuda") a float32 module runs in the autocast dtype, as nn.LSTM does
    (outputs in that dtype, gradients float32 on the float32 parameters)."""
    _low_precision_run(cfg, dtype, precision, cuda_device, seed, policy, autocast=True)


@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda_cell_like_nn_lstm_cell(dtype):
    """aten::lstm_cell is on CUDA autocast's list: LSTMCell's outputs take the autocast
    dtype as nn.LSTMCell's do; gradients reach the float32 parameters."""
    torch.manual_seed(0)
    ref = nn.LSTMCell(3, 5).cuda()
    ours = ft.LSTMCell(3, 5).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        h_ref, c_ref = ref(x)
        h, c = ours(x)
    assert h.dtype == h_ref.dtype == dtype and c.dtype == c_ref.dtype
    (h.float().sum() + c.float().sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


# --------------------------------------------------------------------------------------
# GPU only
# --------------------------------------------------------------------------------------
def _training_step(model, inp, hx):
    y, (h, c) = model(inp, hx)
    ydata = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    loss = ydata.pow(2).sum() + h.sum() + c.sum()
    return torch.autograd.grad(loss, list(model.parameters()) + [t for t in hx if t.requires_grad])


@GPU
@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched", "dropout", "cell", "cell-large", "no_grad"])
def test_no_host_sync_in_forward_and_backward(kind):
    """torch.cuda.set_sync_debug_mode("error") raises on any operation that makes the host
    wait for the GPU (.item(), a device-to-host copy, nonzero, pageable uploads)."""
    torch.manual_seed(0)
    dev = "cuda"
    T, B, I, H = 5, 3, 4, 6
    if kind.startswith("cell"):
        B = 2 * ft._CELL_UNPACKED_MAX_ROWS if kind == "cell-large" else B
        model = ft.LSTMCell(I, H).to(dev)
        x, h, c = (torch.randn(B, n, device=dev) for n in (I, H, H))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            h1, c1 = model(x, (h, c))
            torch.autograd.grad(h1.sum() + c1.sum(), list(model.parameters()))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    model = ft.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2,
                    dropout=0.5 if kind == "dropout" else 0.0).to(dev)
    x = torch.randn(T, B, I, device=dev, requires_grad=True)
    hx = (torch.randn(4, B, 2, device=dev, requires_grad=True), torch.randn(4, B, H, device=dev))
    inp = x
    if kind == "packed":
        inp = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    if kind == "unbatched":
        inp, hx = x[:, 0], (hx[0][:, 0], hx[1][:, 0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        if kind == "no_grad":
            with torch.no_grad():
                model(inp, hx)
        else:
            _training_step(model, inp, hx)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@GPU
def test_cuda_graph_captures_forward_and_backward(seed, policy):
    """A fixed-shape training step (forward + backward) captured in a CUDA graph and
    replayed on new inputs gives nn.LSTM's float64 results on those inputs."""
    torch.manual_seed(seed)
    kw = dict(num_layers=2, bidirectional=True, proj_size=3)
    truth = nn.LSTM(4, 6, **kw, dtype=torch.float64)
    model = ft.LSTM(4, 6, **kw, dtype=torch.float64).cuda()
    model.load_state_dict(truth.state_dict())
    params = list(model.parameters())
    static_x = torch.randn(5, 3, 4, dtype=torch.float64, device="cuda", requires_grad=True)

    def step():
        y, (h, c) = model(static_x)
        return [y, h, c, *torch.autograd.grad(y.pow(2).sum() + h.sum() + c.sum(), [static_x] + params)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as torch's docs do
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for _ in range(2):
        new_x = torch.randn(5, 3, 4, dtype=torch.float64)
        with torch.no_grad():
            static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        xt = new_x.clone().requires_grad_(True)
        y, (h, c) = truth(xt)
        want = [y, h, c, *torch.autograd.grad(y.pow(2).sum() + h.sum() + c.sum(), [xt] + list(truth.parameters()))]
        for k, (a, b) in enumerate(zip(static_out, want)):
            policy.check(f"result {k}", a.detach().cpu().numpy(), b.detach().numpy(), dtype=np.float64)


@GPU
def test_runs_on_the_current_stream(seed, policy):
    """Work goes on torch's current stream: on a side stream, ordered after its inputs,
    the results are those of the default stream."""
    torch.manual_seed(seed)
    model = ft.LSTM(4, 6, num_layers=2, dtype=torch.float64).cuda()
    x = torch.randn(50, 8, 4, dtype=torch.float64, device="cuda")
    want = model(x)[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = model(x)[0]
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got, want)


@GPU
def test_tf32_follows_torch_matmul_switch():
    """float32 on CUDA passes allow_tf32 = torch.backends.cuda.matmul.allow_tf32 to the core."""
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = flag
            call = _ops._Call(torch.device("cuda", 0), torch.float32)
            assert call.common()["allow_tf32"] is flag
            assert call.common()["stream"] == torch.cuda.current_stream().cuda_stream
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_cuda_implementation_gets_the_cuda_reserve(cuda_device):
    """The op on CUDA (or emulated-CUDA) tensors calls the CUDA backend: its reserve is the
    size fl_lstm_stack_reserve_bytes gives for FL_DEVICE_CUDA (not the CPU's)."""
    core = _ops._core
    torch.manual_seed(0)
    m = ft.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).to(cuda_device)
    x = torch.randn(4, 2, 3, device=cuda_device)
    h0, c0 = torch.zeros(4, 2, 2, device=cuda_device), torch.zeros(4, 2, 5, device=cuda_device)
    reserve = torch.ops.fusedlstm.stack_forward(x, m._flat_weights, h0, c0, None, None, 2, True, 2, True, False,
                                                True)[3]
    shape = dict(T=4, B=2, H=5, proj_size=2, num_layers=2, num_directions=2)
    cuda = core.stack_reserve_bytes(dtype=core.FLOAT32, **shape, device_type=core.DEVICE_CUDA)
    assert cuda != core.stack_reserve_bytes(dtype=core.FLOAT32, **shape, device_type=core.DEVICE_CPU)
    assert reserve.numel() == cuda and reserve.data_ptr() % 256 == 0
