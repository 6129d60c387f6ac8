#!/usr/bin/env python3
"""Module-level benchmark: fusedlstm.torch.LSTM vs torch.nn.LSTM, on the CPU and on CUDA (cuDNN).

Both modules get identical weights (load_state_dict from the nn.LSTM) and the
same inputs; both are timed in the same run, interleaved in bursts (A B, B A,
...), the first call of each burst dropped (torch's OpenMP workers spin for
milliseconds after a call and slow whatever runs next; see bench/NOTES.md),
median over the kept calls.  Timing helper: fusedlstm._bench.measure_interleaved
(the one bench/bench_cpu.py uses).

  train  one training step: optimizer.zero_grad(set_to_none=True), forward,
         loss = mse_loss(y, target) (y.data for packed input), loss.backward(),
         optimizer.step() (SGD lr 1e-3 by default, --optim adam for Adam).
         The input requires grad (as behind an embedding or another layer)
         unless --no-input-grad.
  infer  forward under torch.no_grad(), module in eval() mode.

Every configuration is checked once before timing: outputs and every
parameter gradient (and dx) of the two modules must agree (y to 1e-3 max abs,
gradients to 1e-3 normwise relative), else the 'check' column says FAIL.

speedup = torch ms / fusedlstm ms (> 1: fusedlstm faster).

With --kernel, every row also times, in the same interleaved run, the same
kernels without the torch front end: fusedlstm._core.stack_forward (infer) or
stack_forward + stack_backward (train) on arrays prepared once (the module's
own argument preparation, fusedlstm.torch._ops._stack_inputs, done outside
the timing), and for train the module's forward + backward alone
(y.backward(dy): no loss, no optimizer). "module - kernel" is the front end's
cost; the issue-11 target is module fwd+bwd <= 1.05 x kernel + 0.020 ms
(the "within" column, and "front_end_ok" in the JSON; "module alone" is
that fwd+bwd for train, the no_grad forward for infer). 1-layer
unidirectional unpacked rows also time the functional kernel API
(fusedlstm.lstm_forward / lstm_backward: the calls of bench/bench_cpu.py on
the CPU, the same on the CUDA tensors through the API's device path).

CUDA (--device cuda or both; default: both when torch sees a GPU): the same
pairs on the GPU, each timed call ending in torch.cuda.synchronize(), in each
precision of --precisions: fp32 (strict: torch.backends.cuda.matmul.allow_tf32
and torch.backends.cudnn.allow_tf32 both False, so neither library uses TF32),
tf32 (both True), bf16 and fp16 (both modules and their inputs converted to
that dtype). The CPU runs fp32 only. The correctness check's limits scale with
the precision (y max abs and gradient normwise relative error: fp32 1e-3,
tf32 / fp16 2e-2, bf16 1e-1): a sanity check of the timed configuration, not
the tolerance policy (the tests apply that).

Shared machines: before each measurement the run waits (up to --max-wait s)
until other processes use fewer than --max-busy cores, and flags rows where
they did not; --rest sleeps after each measurement.  Two-thread timings do
not survive a loaded machine (both libraries' threads meet at spin barriers);
under `chrt -r 1` the benchmark preempts the other processes while it
measures (see bench/NOTES.md for what that changes).

--overheads times, for a 1-layer model, the module against the bare custom
op, the compiled core on prepared arrays and the numpy API, plus the loss
and optimizer step alone (where the module's time goes).

Without torch (or with --no-torch) the configs run on fusedlstm.LSTM, the
numpy layer stack under the module (train = forward + backward, no loss or
optimizer), and the torch columns are skipped with a note.

Examples:
  python bench/bench_torch_train.py --device cuda --quick --kernel --json out.json   # the GPU run
  python bench/bench_torch_train.py                 # full grid (~10 min on 2 cores)
  python bench/bench_torch_train.py --quick         # ~1 min
  python bench/bench_torch_train.py --kernel --json out.json
  python bench/bench_torch_train.py --configs 1x1x100x1x256 2x2x100x16x256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

# nn.LSTM with proj_size leaves oneDNN for ATen's per-step implementation and warns on every call.
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


def _imports(no_torch=False):
    """fusedlstm, fusedlstm.torch, _bench, torch, numpy; the torch pair is (None, None)
    without torch (or with no_torch)."""
    try:
        import fusedlstm
    except ImportError:  # not installed: the in-tree package (works if built in place)
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(here, os.pardir, "python"))
        import fusedlstm
    import numpy as np

    from fusedlstm import _bench
    if no_torch:
        return fusedlstm, None, _bench, None, np
    try:
        import torch
    except ImportError:
        return fusedlstm, None, _bench, None, np
    import fusedlstm.torch as flt
    return fusedlstm, flt, _bench, torch, np


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------

class Config:
    """L layers, D directions, T, B, H, I (= H unless given), proj, packed."""

    def __init__(self, L, D, T, B, H, I=None, proj=0, packed=False):
        self.L, self.D, self.T, self.B, self.H = int(L), int(D), int(T), int(B), int(H)
        self.I = int(I) if I else self.H
        self.proj, self.packed = int(proj), bool(packed)

    def model(self):
        return f"{self.L}L {'bi' if self.D == 2 else 'uni'}"

    def label(self):
        s = f"{self.model()} T={self.T} B={self.B} H={self.H}"
        if self.I != self.H:
            s += f" I={self.I}"
        if self.proj:
            s += f" P={self.proj}"
        if self.packed:
            s += " packed"
        return s

    def as_dict(self):
        return {"layers": self.L, "bidirectional": self.D == 2, "T": self.T, "B": self.B,
                "H": self.H, "I": self.I, "proj_size": self.proj, "packed": self.packed}


def parse_config(s):
    """LxDxTxBxH[xI][pP][packed], e.g. 2x2x100x16x256 or 1x1x100x16x512p128packed."""
    packed = s.endswith("packed")
    core = s[:-len("packed")] if packed else s
    proj = 0
    if "p" in core:
        core, p = core.split("p", 1)
        proj = int(p)
    parts = [int(v) for v in core.split("x")]
    if len(parts) not in (5, 6) or parts[1] not in (1, 2):
        raise argparse.ArgumentTypeError(f"bad config {s!r}: expected LxDxTxBxH[xI][pP][packed]")
    return Config(*parts, proj=proj, packed=packed)


def cuda_configs():
    """The GPU grid: 1 and 2 layers, uni- and bidirectional, proj_size, packed input."""
    return [Config(1, 1, 100, 64, 256), Config(1, 1, 100, 16, 512), Config(2, 1, 100, 64, 256),
            Config(1, 2, 100, 64, 256), Config(2, 2, 100, 64, 256), Config(1, 1, 100, 64, 512, proj=128),
            Config(1, 1, 100, 64, 256, packed=True), Config(2, 2, 100, 64, 256, packed=True)]


PRECISIONS = {"fp32": ("float32", False), "tf32": ("float32", True), "bf16": ("bfloat16", False),
              "fp16": ("float16", False)}
CHECK_LIMIT = {"fp32": 1e-3, "tf32": 2e-2, "fp16": 2e-2, "bf16": 1e-1}


def set_precision(torch, precision):
    """The dtype of a precision, with both libraries' TF32 switches set for it."""
    name, tf32 = PRECISIONS[precision]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return getattr(torch, name)


def default_configs(quick):
    if quick:
        return [Config(1, 1, 100, 1, 256), Config(1, 1, 100, 16, 256),
                Config(2, 1, 100, 1, 256), Config(1, 2, 100, 16, 128),
                Config(2, 2, 100, 1, 128), Config(1, 1, 100, 16, 256, proj=128),
                Config(1, 1, 100, 16, 256, packed=True)]
    cfgs = []
    # 1 layer, unidirectional: the whole B x H grid (comparable with README).
    cfgs += [Config(1, 1, 100, b, h) for b in (1, 16, 64) for h in (128, 256, 512)]
    # 2 layers and bidirectional: B x H with the most expensive corners left out.
    for L, D in ((2, 1), (1, 2), (2, 2)):
        cfgs += [Config(L, D, 100, b, h) for b in (1, 16, 64) for h in (128, 256, 512)
                 if not (b == 64 and h == 512) and not (L * D == 4 and b == 64 and h >= 256)]
    # projection and packed variable lengths
    cfgs += [Config(1, 1, 100, 1, 512, proj=128), Config(1, 1, 100, 16, 512, proj=128),
             Config(2, 2, 100, 16, 256, proj=128),
             Config(1, 1, 100, 16, 256, packed=True), Config(2, 2, 100, 16, 256, packed=True)]
    return cfgs


# --------------------------------------------------------------------------
# one configuration: two modules with the same weights, inputs built once
# --------------------------------------------------------------------------

class Pair:
    def __init__(self, cfg, fl, flt, torch, np, device, optim, input_grad, seed=0, dtype=None, precision="fp32"):
        self.cfg, self.fl, self.torch, self.np = cfg, fl, torch, np
        self.device, self.precision = device, precision
        dtype = dtype or torch.float32
        torch.manual_seed(seed)
        kw = dict(num_layers=cfg.L, bidirectional=cfg.D == 2, proj_size=cfg.proj, batch_first=False)
        self.ref = torch.nn.LSTM(cfg.I, cfg.H, **kw).to(device, dtype)
        self.ours = flt.LSTM(cfg.I, cfg.H, **kw).to(device, dtype)
        self.ours.load_state_dict(self.ref.state_dict())
        g = torch.Generator().manual_seed(seed + 1)
        T, B = cfg.T, cfg.B
        x = torch.randn(T, B, cfg.I, generator=g).to(device, dtype)
        self.lengths = None
        self.x = x.requires_grad_(input_grad)
        hout = cfg.proj or cfg.H
        if cfg.packed:
            lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
            lengths[0] = T
            self.lengths = lengths
            packed = torch.nn.utils.rnn.pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
            # the packed data is the leaf (the graph of the packing op would be freed by the first backward)
            self.x = packed.data.requires_grad_(input_grad)
            self.input = torch.nn.utils.rnn.PackedSequence(self.x, packed.batch_sizes, packed.sorted_indices,
                                                           packed.unsorted_indices)
            self.target = torch.randn(int(lengths.sum()), cfg.D * hout, generator=g).to(device, dtype)
        else:
            self.input = self.x
            self.target = torch.randn(T, B, cfg.D * hout, generator=g).to(device, dtype)
        mk = (lambda p: torch.optim.Adam(p, lr=1e-4)) if optim == "adam" else \
            (lambda p: torch.optim.SGD(p, lr=1e-3))
        self.opt = {"torch": mk(self.ref.parameters()), "fusedlstm": mk(self.ours.parameters())}
        self.mod = {"fusedlstm": self.ours, "torch": self.ref}  # ours first: a device it refuses fails fast
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def _out(self, y):
        return y.data if self.cfg.packed else y

    def train_fn(self, name):
        mod, opt, F = self.mod[name], self.opt[name], self.torch.nn.functional

        def step():
            opt.zero_grad(set_to_none=True)
            self.x.grad = None
            y, _ = mod(self.input)
            loss = F.mse_loss(self._out(y), self.target)
            loss.backward()
            opt.step()
            self.sync()
        return step

    def fwdbwd_fn(self):
        """The module's forward + backward alone (no loss, no optimizer): what the kernels do."""
        mod, params = self.ours, list(self.ours.parameters())
        dy = self.torch.ones_like(self.target)

        def f():
            self.x.grad = None
            for q in params:
                q.grad = None
            y, _ = mod(self.input)
            self._out(y).backward(dy)
            self.sync()
        return f

    def infer_fn(self, name):
        mod, torch = self.mod[name], self.torch

        def fwd():
            with torch.no_grad():
                y, _ = mod(self.input)
            self.sync()
            return y
        return fwd

    def check(self, mode):
        """One forward (+ backward) of each module from the same weights, compared.
        Doubles as the first warm-up call.  The weights are copied again first: timed
        optimizer steps of an earlier mode let the two copies drift apart (rounding)."""
        torch, np = self.torch, self.np
        self.ours.load_state_dict(self.ref.state_dict())
        F = torch.nn.functional
        res, ran = {}, {}
        for name, mod in self.mod.items():
            t0 = time.perf_counter()
            if mode == "infer":
                mod.eval()
                with torch.no_grad():
                    y, (h, c) = mod(self.input)
                res[name] = (self._out(y), h, c, {})
            else:
                mod.train()
                for p in mod.parameters():
                    p.grad = None
                self.x.grad = None
                y, (h, c) = mod(self.input)
                F.mse_loss(self._out(y), self.target).backward()
                grads = {n: p.grad for n, p in mod.named_parameters()}
                if self.x.grad is not None:
                    grads["input"] = self.x.grad
                res[name] = (self._out(y).detach(), h.detach(), c.detach(), grads)
                self.x.grad = None
            self.sync()
            ran[name] = time.perf_counter() - t0
        a, b = res["fusedlstm"], res["torch"]
        y_err = max(float((a[i].double() - b[i].double()).abs().max()) for i in range(3))
        g_err = 0.0
        for n, gb in b[3].items():
            ga = a[3].get(n)
            if ga is None:
                g_err = float("inf")
                continue
            den = float(gb.double().norm()) or 1.0
            g_err = max(g_err, float((ga.double() - gb.double()).norm()) / den)
        limit = CHECK_LIMIT[self.precision]
        ok = y_err <= limit and g_err <= limit and np.isfinite(g_err)
        return {"ok": bool(ok), "y_max_abs": y_err, "grad_rel_max": g_err, "ran": ran}


class CoreKernels:
    """fusedlstm._core.stack_forward / stack_backward of the module's weights on its
    input, arguments prepared once by the module's own code (_ops._stack_inputs): the
    same kernels as the module with no torch front end. On the GPU on torch's current
    stream, ended by a synchronize."""

    def __init__(self, pair, torch):
        from fusedlstm import _core
        from fusedlstm.torch import _ops
        cfg, m = pair.cfg, pair.ours
        self.core, self.torch, self.sync = _core, torch, pair.sync
        x = torch.randn(cfg.T, cfg.B, cfg.I, dtype=pair.x.dtype, device=pair.x.device)
        hout = cfg.proj or cfg.H
        L, D = cfg.L, cfg.D
        h0 = torch.zeros(L * D, cfg.B, hout, dtype=x.dtype, device=x.device)
        c0 = torch.zeros(L * D, cfg.B, cfg.H, dtype=x.dtype, device=x.device)
        lengths = None if pair.lengths is None else _ops.to_device(pair.lengths, x.device)
        s = _ops._stack_inputs(x, [w.detach() for w in m._flat_weights], h0, c0, lengths, None, L, D == 2,
                               cfg.proj, True, False)
        call, self.s = s.call, s
        self.y, self.h_n, self.c_n = call.empty((cfg.T, cfg.B, D * hout)), call.empty(h0.shape), call.empty(c0.shape)
        self.nbytes = call.reserve_bytes(cfg.T, cfg.B, cfg.H, cfg.proj, L, D)
        self.reserve = call.reserve(self.nbytes)
        self.dy = torch.ones_like(self.y)
        self.dx, self.dh0, self.dc0 = call.empty(x.shape), call.empty(h0.shape), call.empty(c0.shape)
        self.dw = [call.empty(w.shape) for w in m._flat_weights]
        per = _ops._per_cell(self.dw, L, D == 2, True, cfg.proj)
        self.grads = [(call.array(a), call.array(b), call.array(c), call.array(r)) for a, b, c, _, r in per]
        self.out = dict(y=call.rows(self.y)[0], y_strides=call.rows(self.y)[1], h_n=call.array(self.h_n),
                        c_n=call.array(self.c_n))
        dy, dy_strides = call.rows(self.dy)
        dx, dx_strides = call.rows(self.dx)
        self.back = dict(dy=dy, dy_strides=dy_strides, dx=dx, dx_strides=dx_strides, dh0=call.array(self.dh0),
                         dc0=call.array(self.dc0), cell_grads=self.grads, dh_n=None, dc_n=None)
        self.res = call.array(self.reserve)

    def infer(self):
        self.core.stack_forward(**self.s.kwargs, **self.out, reserve=None, reserve_bytes=0)
        self.sync()

    def train(self):
        self.core.stack_forward(**self.s.kwargs, **self.out, reserve=self.res, reserve_bytes=self.nbytes)
        self.core.stack_backward(**self.s.kwargs, **self.back, reserve=self.res, reserve_bytes=self.nbytes)
        self.sync()


class KernelCall:
    """The functional kernel API (fusedlstm.lstm_forward / lstm_backward) on the same
    weights: numpy arrays on the CPU (what bench_cpu.py times), the torch tensors
    themselves on CUDA (the API's device path), ended by a synchronize there."""

    def __init__(self, pair, fl, np):
        m, cfg = pair.ref, pair.cfg
        if pair.device == "cpu":
            arr = lambda t: np.ascontiguousarray(t.detach().cpu().numpy())  # noqa: E731
            self.dy = np.ones((cfg.T, cfg.B, cfg.H), dtype=np.float32)
        else:
            arr = lambda t: t.detach().contiguous()  # noqa: E731
            self.dy = pair.torch.ones((cfg.T, cfg.B, cfg.H), dtype=pair.x.dtype, device=pair.x.device)
        self.fl, self.sync = fl, pair.sync
        self.w = [arr(m.weight_ih_l0), arr(m.weight_hh_l0), arr(m.bias_ih_l0), arr(m.bias_hh_l0)]
        self.x = arr(pair.x)

    def infer(self):
        self.fl.lstm_forward(self.x, *self.w, mode="many_to_many", training=False)
        self.sync()

    def train(self):
        res = self.fl.lstm_forward(self.x, *self.w, mode="many_to_many", training=True)
        self.fl.lstm_backward(res, dy=self.dy)
        self.sync()


# --------------------------------------------------------------------------
# --overheads: where the module's time goes, layer by layer of the front end
# --------------------------------------------------------------------------

OVERHEAD_SHAPES = [(1, 1, 8), (100, 1, 128), (100, 1, 512), (100, 16, 256)]


def overheads(args, fl, flt, torch, np, _bench, log):
    """1-layer unidirectional LSTM, I = H. Variants timed interleaved:
    infer: nn.LSTM | module | torch.ops.fusedlstm.stack_forward (module Python
    skipped) | _core.stack_forward on prepared numpy arrays (custom op, torch
    allocation and conversions skipped) | numpy API fusedlstm.lstm_forward.
    fwd+bwd (y.backward(dy), no loss, no optimizer): the same five levels.
    extra: mse_loss fwd+bwd alone, optimizer.step() alone, zero_grad alone."""
    rows = []
    for T, B, H in OVERHEAD_SHAPES:
        torch.manual_seed(0)
        ref = torch.nn.LSTM(H, H)
        ours = flt.LSTM(H, H)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, H)
        xg = x.clone().requires_grad_(True)
        dy = torch.randn(T, B, H)
        w = ours._flat_weights
        z = torch.zeros(1, B, H)
        xn, dyn = x.numpy(), dy.numpy()
        wn = [p.detach().numpy() for p in w]
        kernels = CoreKernels(_OverheadPair(Config(1, 1, T, B, H), ours, x, torch), torch)
        core_fwd, core_fwdbwd = kernels.infer, kernels.train

        def op_fwd():
            with torch.no_grad():
                torch.ops.fusedlstm.stack_forward(x, w, z, z, None, None, 1, False, 0, True, False, False)

        def op_fwdbwd():
            xg.grad = None
            for q in w:
                q.grad = None
            y = torch.ops.fusedlstm.stack_forward(xg, w, z, z, None, None, 1, False, 0, True, False, True)[0]
            y.backward(dy)

        def mod_fwd(m):
            def f():
                with torch.no_grad():
                    m(x)
            return f

        def mod_fwdbwd(m):
            params = list(m.parameters())

            def f():
                xg.grad = None
                for q in params:
                    q.grad = None
                y, _ = m(xg)
                y.backward(dy)
            return f

        def np_fwd():
            fl.lstm_forward(xn, *wn, mode="many_to_many", training=False)

        def np_fwdbwd():
            r = fl.lstm_forward(xn, *wn, mode="many_to_many", training=True)
            fl.lstm_backward(r, dy=dyn)

        yt = torch.randn(T, B, H, requires_grad=True)
        tgt = torch.randn(T, B, H)
        opt = torch.optim.SGD(ref.parameters(), lr=1e-3)
        mod_fwdbwd(ref)()  # grads present for the optimizer

        def loss_only():
            yt.grad = None
            torch.nn.functional.mse_loss(yt, tgt).backward()

        def opt_only():
            opt.step()

        groups = {
            "infer": [("nn.LSTM", mod_fwd(ref)), ("module", mod_fwd(ours)), ("custom op", op_fwd),
                      ("_core", core_fwd), ("numpy API", np_fwd)],
            "fwd+bwd": [("nn.LSTM", mod_fwdbwd(ref)), ("module", mod_fwdbwd(ours)), ("custom op", op_fwdbwd),
                        ("_core", core_fwdbwd), ("numpy API", np_fwdbwd)],
            "extra": [("mse_loss fwd+bwd", loss_only), ("SGD step", opt_only)],
        }
        for g, fns in groups.items():
            wait_idle(args.max_busy, args.max_wait, log)
            la = loadavg()
            t_meas = time.perf_counter()
            st = _bench.measure_interleaved(fns, min_time=args.min_time, min_reps=args.min_reps, warmup=2)
            rest(args, time.perf_counter() - t_meas)
            row = {"T": T, "B": B, "H": H, "group": g, "loadavg": la,
                   "ms": {n: st[n]["median_ms"] for n, _ in fns}}
            rows.append(row)
            log(f"  overheads T={T} B={B} H={H} {g}: " +
                ", ".join(f"{n} {fmt(v)}" for n, v in row["ms"].items()) + f" ms (load {la})")
    return rows


class _OverheadPair:
    """What CoreKernels reads of a Pair, for overheads()."""

    def __init__(self, cfg, ours, x, torch):
        self.cfg, self.ours, self.x, self.lengths = cfg, ours, x, None
        self.sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)


def overhead_table(rows):
    out = ["### where the module's time goes (1 layer, uni, I = H; medians, ms)", "",
           "| T, B, H | mode | nn.LSTM | module | custom op | _core | numpy API | module - _core |",
           "|:---|:---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["ms"]
        if r["group"] == "extra":
            continue
        out.append(f"| {r['T']}, {r['B']}, {r['H']} | {r['group']} | {fmt(m['nn.LSTM'])} | {fmt(m['module'])} | "
                   f"{fmt(m['custom op'])} | {fmt(m['_core'])} | {fmt(m['numpy API'])} | "
                   f"{m['module'] - m['_core']:+.3f} |")
    out += ["", "| T, B, H | mse_loss fwd+bwd | SGD step (4 params) |", "|:---|---:|---:|"]
    for r in rows:
        if r["group"] == "extra":
            out.append(f"| {r['T']}, {r['B']}, {r['H']} | {fmt(r['ms']['mse_loss fwd+bwd'])} | "
                       f"{fmt(r['ms']['SGD step'])} |")
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(rows, mode, with_kernel):
    title = 'training step (fwd + loss + bwd + optimizer step)' if mode == 'train' else 'inference (no_grad forward)'
    if rows and all(r.get("impl", "").startswith("fusedlstm.LSTM") for r in rows):  # no torch
        title = 'forward + backward (no loss, no optimizer)' if mode == 'train' else 'inference (forward)'
    out = [f"### {title}", ""]
    head = "| config | precision | check | torch ms | fusedlstm ms | speedup |"
    sep = "|:---|:---|:---|---:|---:|---:|"
    if with_kernel:
        head += " module alone ms | kernels ms | module - kernels ms | within 5% + 20 us | functional API ms |"
        sep += "---:|---:|---:|:---|---:|"
    out += [head, sep]
    for r in rows:
        if r["mode"] != mode:
            continue
        sp = f"**{r['speedup']:.2f}x**" if r["speedup"] else "-"
        busy = r.get("others_busy_before")
        flag = busy is not None and busy >= r.get("max_busy", 0.3) and not r.get("realtime")
        chk = r["check"] + (f" (busy {busy:.1f})" if flag else "")
        line = (f"| {r['label']} | {r.get('precision', 'fp32')} | {chk} | {fmt(r['torch_ms'])} | "
                f"{fmt(r['fusedlstm_ms'])} | {sp} |")
        if with_kernel:
            mod, k = r.get("module_kernel_ms"), r.get("core_ms")
            d = (mod - k) if (k is not None and mod is not None) else None
            ok = r.get("front_end_ok")
            line += (f" {fmt(mod)} | {fmt(k)} | {('%+.3f' % d) if d is not None else '-'} | "
                     f"{'-' if ok is None else ('yes' if ok else '**no**')} | {fmt(r.get('kernel_ms'))} |")
        out.append(line)
    out.append("")
    return "\n".join(out)


def others_busy(window=0.3):
    """CPU cores kept busy by other processes over `window` seconds while this
    one sleeps (from /proc/stat), or None where that file is missing."""
    def snap():  # jiffies: all CPUs' total, their idle + iowait, this process's own (spinning pools)
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(v), v[3] + v[4], int(own[11]) + int(own[12])
    try:
        t0, i0, o0 = snap()
        time.sleep(window)
        t1, i1, o1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    ncpu = os.cpu_count() or 1
    total = max(t1 - t0, 1)
    return max(0.0, ncpu * (total - (i1 - i0) - (o1 - o0)) / total)


def wait_idle(max_busy, max_wait, log):
    """Wait (up to max_wait s) until other processes use < max_busy cores;
    returns the last reading."""
    t_end = time.time() + max_wait
    b = others_busy()
    waited = False
    while b is not None and b >= max_busy and time.time() < t_end:
        if not waited:
            log(f"    (other processes use {b:.2f} cores: waiting up to {max_wait:.0f} s)")
            waited = True
        time.sleep(2.0)
        b = others_busy()
    return b


def realtime():
    """True when this process runs under a real-time policy (e.g. `chrt -r 1`):
    other processes' load then does not preempt the measurement."""
    try:
        return os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR)
    except (AttributeError, OSError):
        return False


def rest(args, seconds):
    """Sleep args.rest x the measurement's duration (leaves the cores to others
    on a shared machine, e.g. when this runs under chrt)."""
    if args.rest > 0:
        time.sleep(args.rest * seconds)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------

def run_device(device, cfgs, modes, args, fl, flt, torch, np, _bench, log, precisions=("fp32",)):
    rows = []
    for cfg in cfgs:
        for precision in precisions:
            rows += run_pair(device, cfg, precision, modes, args, fl, flt, torch, np, _bench, log)
    return rows, None


def run_pair(device, cfg, precision, modes, args, fl, flt, torch, np, _bench, log):
    rows = []
    dtype = set_precision(torch, precision) if device == "cuda" else torch.float32
    pair = Pair(cfg, fl, flt, torch, np, device, args.optim, not args.no_input_grad, dtype=dtype,
                precision=precision)
    kern = core = None
    if args.kernel:
        core = CoreKernels(pair, torch)
        if cfg.L == 1 and cfg.D == 1 and not cfg.proj and not cfg.packed:
            kern = KernelCall(pair, fl, np)
    for mode in modes:
        chk = pair.check(mode)
        for m in pair.mod.values():
            m.train(mode == "train")
        fns = [("fusedlstm", pair.train_fn("fusedlstm") if mode == "train" else pair.infer_fn("fusedlstm")),
               ("torch", pair.train_fn("torch") if mode == "train" else pair.infer_fn("torch"))]
        prewarmed = dict(chk["ran"])
        if core is not None:
            fns.append(("core", core.train if mode == "train" else core.infer))
            if mode == "train":
                fns.append(("module_kernel", pair.fwdbwd_fn()))
        if kern is not None:
            fns.append(("kernel", kern.train if mode == "train" else kern.infer))
        busy = wait_idle(args.max_busy, args.max_wait, log)
        la0 = loadavg()
        t_meas = time.perf_counter()
        stats = _bench.measure_interleaved(fns, min_time=args.min_time, min_reps=args.min_reps,
                                           min_reps_slow=3, warmup=2, prewarmed=prewarmed)
        rest(args, time.perf_counter() - t_meas)
        fl_ms, th_ms = stats["fusedlstm"]["median_ms"], stats["torch"]["median_ms"]
        core_ms = stats["core"]["median_ms"] if "core" in stats else None
        # the module's own kernels' share: fwd+bwd alone (train) or the no_grad forward (infer)
        module_kernel_ms = stats["module_kernel"]["median_ms"] if "module_kernel" in stats else \
            (fl_ms if core_ms is not None else None)
        row = {"device": device, "precision": precision, "mode": mode, "label": cfg.label(), **cfg.as_dict(),
               "check": "ok" if chk["ok"] else f"**FAIL** y {chk['y_max_abs']:.1e} grad {chk['grad_rel_max']:.1e}",
               "check_detail": {k: v for k, v in chk.items() if k != "ran"},
               "torch_ms": th_ms, "fusedlstm_ms": fl_ms, "speedup": th_ms / fl_ms,
               "kernel_ms": stats["kernel"]["median_ms"] if "kernel" in stats else None,
               "core_ms": core_ms, "module_kernel_ms": module_kernel_ms,
               "front_end_ok": (None if core_ms is None else bool(module_kernel_ms <= 1.05 * core_ms + 0.020)),
               "functional_api_ok": (None if "kernel" not in stats or module_kernel_ms is None else
                                     bool(module_kernel_ms <= 1.05 * stats["kernel"]["median_ms"] + 0.020)),
               "loadavg": [la0, loadavg()], "others_busy_before": busy, "max_busy": args.max_busy, "realtime": realtime(),
               "stats": {k: {kk: vv for kk, vv in v.items() if kk != "samples_ms"} for k, v in stats.items()}}
        rows.append(row)
        extra = f", kernel {fmt(row['kernel_ms'])} ms" if row["kernel_ms"] is not None else ""
        if core_ms is not None:
            extra += f", module {fmt(module_kernel_ms)} vs kernels {fmt(core_ms)} ms"
        log(f"  [{device} {precision}] {mode:5s} {cfg.label():38s} torch {fmt(th_ms):>7s} ms, fusedlstm "
            f"{fmt(fl_ms):>7s} ms, {row['speedup']:.2f}x{extra} [{row['check']}] load {la0}, "
            f"others busy {busy if busy is None else round(busy, 2)}")
    del pair, kern, core
    return rows


# --------------------------------------------------------------------------
# without torch: fusedlstm's numpy layer stack alone
# --------------------------------------------------------------------------

def run_numpy_stack(cfgs, modes, args, fl, np, _bench, log):
    """fusedlstm.LSTM (the numpy layer stack the module runs on) for each config:
    train = forward(training=True) + backward(dy) (no loss, no optimizer step),
    infer = forward(training=False). The torch columns stay empty."""
    rows = []
    for cfg in cfgs:
        layer = fl.LSTM(cfg.I, cfg.H, num_layers=cfg.L, bidirectional=cfg.D == 2, proj_size=cfg.proj,
                        dtype=np.float32, seed=0)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((cfg.T, cfg.B, cfg.I), dtype=np.float32)
        lengths = None
        if cfg.packed:
            lengths = rng.integers(cfg.T // 2, cfg.T + 1, cfg.B)
            lengths[0] = cfg.T
        dy = rng.standard_normal((cfg.T, cfg.B, cfg.D * (cfg.proj or cfg.H)), dtype=np.float32)

        def infer():
            return layer.forward(x, lengths=lengths, training=False)

        def train():
            return layer.backward(layer.forward(x, lengths=lengths, training=True), dy)
        for mode in modes:
            stats = _bench.measure_interleaved([("fusedlstm", train if mode == "train" else infer)],
                                               min_time=args.min_time, min_reps=args.min_reps, min_reps_slow=3,
                                               warmup=2)
            fl_ms = stats["fusedlstm"]["median_ms"]
            rows.append({"device": "cpu", "precision": "fp32", "mode": mode, "label": cfg.label(), **cfg.as_dict(),
                         "check": "n/a (no torch)", "torch_ms": None, "fusedlstm_ms": fl_ms, "speedup": None,
                         "impl": "fusedlstm.LSTM (numpy stack)",
                         "stats": {k: {kk: vv for kk, vv in v.items() if kk != "samples_ms"}
                                   for k, v in stats.items()}})
            log(f"  [cpu fp32] {mode:5s} {cfg.label():38s} fusedlstm.LSTM {fmt(fl_ms):>7s} ms")
    return rows


def main_without_torch(args, fl, np, _bench, why):
    """The configs on fusedlstm's numpy layer stack alone, the torch columns skipped."""
    fl.set_num_threads(args.threads)
    info = _bench.machine_info(fl, None)
    print(_bench.header_line(info))
    print(f"note: {why}: timing fusedlstm.LSTM (the numpy layer stack under the module) alone; the torch "
          f"columns, the loss and the optimizer step are skipped (train = forward + backward)")
    if args.kernel or args.overheads or args.device == "cuda":
        print("note: --kernel, --overheads and --device cuda need torch: ignored")
    print(flush=True)
    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    rows = run_numpy_stack(args.configs or default_configs(args.quick), modes, args, fl, np, _bench, log)
    elapsed = time.perf_counter() - t0
    print("## cpu (fusedlstm.LSTM, numpy; torch not used)\n")
    for mode in modes:
        print(table(rows, mode, False))
    print(f"(total {elapsed:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items() if k != "configs"},
                       "notes": [why], "elapsed_s": elapsed, "results": _bench.json_rows(rows)}, f, indent=1)
        print(f"raw results written to {args.json}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("Examples:")[1])
    p.add_argument("--quick", action="store_true", help="7 small configs, min-time 0.15 s (~1 min)")
    p.add_argument("--configs", type=parse_config, nargs="+", default=None, metavar="LxDxTxBxH",
                   help="custom configs LxDxTxBxH[xI][pP][packed], D = 1 or 2")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    p.add_argument("--optim", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--no-input-grad", action="store_true", help="the input does not require grad")
    p.add_argument("--kernel", action="store_true",
                   help="also time the numpy kernel API on 1-layer unidirectional unpacked rows")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--min-time", type=float, default=None, help="timed seconds per library (default 0.4, quick 0.15)")
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--overheads", action="store_true",
                   help="only the front-end decomposition (module / custom op / _core / numpy API)")
    p.add_argument("--max-busy", type=float, default=0.3,
                   help="before each measurement wait until other processes use fewer cores than this "
                        "(sampled 0.3 s; default 0.3)")
    p.add_argument("--max-wait", type=float, default=60.0, help="longest such wait in seconds (default 60)")
    p.add_argument("--rest", type=float, default=0.0,
                   help="after each measurement sleep this multiple of its duration (shared machines)")
    p.add_argument("--no-cuda", action="store_true", help="same as --device cpu")
    p.add_argument("--device", choices=("cpu", "cuda", "both"), default=None,
                   help="default: both when torch sees a GPU, else cpu")
    p.add_argument("--precisions", default="fp32,tf32,bf16,fp16",
                   help="CUDA precisions, comma-separated from fp32, tf32, bf16, fp16 (the CPU runs fp32)")
    p.add_argument("--json", metavar="PATH", default=None)
    p.add_argument("--no-torch", action="store_true",
                   help="do not import torch: time fusedlstm's numpy layer stack alone (as without torch)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.min_time is None:
        args.min_time = 0.15 if args.quick else 0.4
    if args.threads <= 0 or args.min_reps <= 0 or args.min_time <= 0:
        p.error("--threads, --min-reps and --min-time must be positive")

    fl, flt, _bench, torch, np = _imports(args.no_torch)
    if torch is None:
        return main_without_torch(args, fl, np, _bench,
                                  "torch disabled (--no-torch)" if args.no_torch else "torch is not installed")
    torch.set_num_threads(args.threads)
    fl.set_num_threads(args.threads)
    info = _bench.machine_info(fl, torch)
    info["torch_num_threads"] = torch.get_num_threads()
    info["fusedlstm_num_threads"] = fl.get_num_threads()
    print(_bench.header_line(info))
    print(f"threads: torch.get_num_threads() = {info['torch_num_threads']}, "
          f"fusedlstm.get_num_threads() = {info['fusedlstm_num_threads']}; float32, batch_first=False; "
          f"optimizer {args.optim}; input requires grad: {not args.no_input_grad}; "
          f"min-time {args.min_time} s, >= {args.min_reps} reps (3 for slow calls), median; "
          f"loadavg at start {loadavg()}")
    if realtime():
        print("scheduling: real-time policy (chrt): other processes were preempted while measuring; "
              "the load figures are taken between measurements")
    print(flush=True)

    if args.overheads:
        log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        rows = overheads(args, fl, flt, torch, np, _bench, log)
        print(overhead_table(rows))
        print(f"(loadavg at end {loadavg()})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": info, "overheads": rows}, f, indent=1)
        return 0

    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    device = args.device or ("cpu" if args.no_cuda or not torch.cuda.is_available() else "both")
    precisions = [q.strip() for q in args.precisions.split(",") if q.strip()]
    bad = [q for q in precisions if q not in PRECISIONS]
    if bad:
        p.error(f"--precisions: {bad} not in {sorted(PRECISIONS)}")
    t0 = time.perf_counter()
    rows, notes = [], []
    if device in ("cpu", "both"):
        r, _ = run_device("cpu", args.configs or default_configs(args.quick), modes, args, fl, flt, torch, np,
                          _bench, log)
        rows += r
    if device == "cpu":
        notes.append("CUDA: not run (--device cpu, --no-cuda, or no GPU)")
    elif not torch.cuda.is_available():
        notes.append(f"CUDA: skipped (torch {torch.__version__} reports no CUDA device)")
    else:
        r, _ = run_device("cuda", args.configs or cuda_configs(), modes, args, fl, flt, torch, np, _bench, log,
                          precisions)
        rows += r
        notes.append(f"CUDA: {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}")
    elapsed = time.perf_counter() - t0

    for dev in sorted({r["device"] for r in rows}):
        print(f"## {dev}\n")
        for mode in modes:
            print(table([r for r in rows if r["device"] == dev], mode, args.kernel))
    for n in notes:
        print(n)
    print(f"(total {elapsed:.1f} s, loadavg at end {loadavg()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items() if k != "configs"},
                       "notes": notes, "elapsed_s": elapsed, "results": _bench.json_rows(rows)}, f, indent=1)
        print(f"raw results written to {args.json}")
    failed = [r for r in rows if not r["check"].startswith("ok")]
    if failed:
        print(f"WARNING: {len(failed)} row(s) failed the correctness check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
