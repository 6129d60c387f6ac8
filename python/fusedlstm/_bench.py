"""Timing helpers shared by ``python -m fusedlstm`` and ``bench/bench_cpu.py``.

Private module (not part of the public API).  It must import without torch:
torch is passed in by the caller (or ``None``), never imported at module level.

Timing method
-------------
* Inputs (x, dy, weights, torch tensors) are built once per shape, outside
  any timed region.
* Each implementation is run a few times as warm-up (the correctness check
  run counts as the first warm-up call).
* Then the implementations are called in rounds, alternating the order
  (A B, B A, A B, ...), each call timed individually with
  ``time.perf_counter``; garbage collection is disabled while timing.
  Fast calls run in bursts of ~50 ms per turn whose first call is dropped
  (it pays for the other library's still-spinning thread pool / evicted
  caches); see measure_interleaved.
  Rounds continue until every implementation has at least ``min_reps``
  samples (``min_reps_slow`` if a single call takes longer than ``min_time``)
  AND at least ``min_time`` seconds of accumulated run time.
* The reported number is the median of the samples, in milliseconds.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time

import numpy as np

MODES = ("fwd", "fwdbwd")
MODE_TITLES = {
    "fwd": "forward (inference)",
    "fwdbwd": "forward + backward (training)",
}


# --------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _safe(fn, default="?"):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - best effort description only
        return default


def isa_list(fl) -> list:
    """fusedlstm.available_isas() as a list (accepts a list or a "a,b,c" string)."""
    isas = fl.available_isas()
    if isinstance(isas, str):
        return [s.strip() for s in isas.split(",") if s.strip()]
    return [str(s) for s in isas]


def machine_info(fl, torch=None) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fusedlstm_version": getattr(fl, "__version__", "?"),
        "fusedlstm_isa": _safe(lambda: fl.get_isa()),
        "fusedlstm_isas": _safe(lambda: isa_list(fl)),
        "torch": None,
    }
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_mkldnn"] = _safe(lambda: bool(torch.backends.mkldnn.is_available()))
    return info


def header_line(info: dict) -> str:
    torch_s = info["torch"] if info["torch"] else "- (not used: fusedlstm only)"
    if info.get("torch_mkldnn") is True:
        torch_s += " (mkldnn)"
    return (
        f"machine: {info['cpu']}, {info['cores_logical']} logical cores "
        f"({info['cores_usable']} usable) | torch {torch_s} | "
        f"fusedlstm {info['fusedlstm_version']} isa={info['fusedlstm_isa']} "
        f"(available: {', '.join(map(str, info['fusedlstm_isas'])) if isinstance(info['fusedlstm_isas'], list) else '?'})"
    )


# --------------------------------------------------------------------------
# flops / error helpers
# --------------------------------------------------------------------------

from ._checks import GATES as CELL_GATES  # G per cell, written once in _checks


def lstm_flops(T: int, B: int, I: int, H: int, mode: str, cell: str = "lstm") -> float:
    """Forward: 2*T*B*G*H*(I+H) (the two GEMMs; G gates, 4 for the LSTM);
    forward+backward ~ 3x that."""
    fwd = 2.0 * T * B * CELL_GATES[cell] * H * (I + H)
    return fwd if mode == "fwd" else 3.0 * fwd


def _comparable(a, b):
    """(a, b) as float64 arrays, or None when the shapes differ."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a, b) if a.shape == b.shape else None


def max_abs_diff(a, b) -> float:
    pair = _comparable(a, b)
    if pair is None:
        return math.inf
    a, b = pair
    if a.size == 0:
        return 0.0
    d = np.abs(a - b)
    if not np.all(np.isfinite(d)):
        return math.inf
    return float(d.max())


def rel_err(a, b) -> float:
    """Normwise relative error ||a - b|| / ||b|| (inf on shape mismatch / NaN)."""
    pair = _comparable(a, b)
    if pair is None:
        return math.inf
    a, b = pair
    if a.size == 0:
        return 0.0
    num = float(np.linalg.norm((a - b).ravel()))
    den = float(np.linalg.norm(b.ravel()))
    if not math.isfinite(num):
        return math.inf
    if den == 0.0:
        return num
    return num / den


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------

def measure_interleaved(fns, min_time=0.5, min_reps=5, min_reps_slow=3,
                        warmup=2, max_reps=100000, prewarmed=(), burst_time=0.05,
                        max_burst=50):
    """Time several callables, interleaved.

    fns: list of (name, callable).  prewarmed: names already called once
    (e.g. by a correctness check) - they get one warm-up call less; a dict
    {name: seconds that call took} also gives the slow-case estimate.

    Interleaving is done in bursts: each turn runs one implementation about
    `burst_time` seconds worth of calls (1 to max_burst calls), and when a
    burst's first call is not recorded - it is the call that pays for the
    other library's thread pool still spinning and for the caches it evicted.
    Calls slower than burst_time run two per turn (A A B B B B A A ...), the
    second recorded.
    Returns {name: stats dict} (times in ms).
    """
    names = [n for n, _ in fns]
    prewarmed = dict(prewarmed) if isinstance(prewarmed, dict) else {n: None for n in prewarmed}
    first_call = {}
    # Warm-up: `warmup` calls (one less for an implementation already called
    # by the correctness check, but at least one: that call may include one-off
    # set-up costs such as torch's first autograd call), and for fast calls
    # keep going until ~burst_time of warm-up.  The fastest warm-up call is the
    # per-call estimate (robust to a stray slow call).
    for name, fn in fns:
        times = []
        n_warm = warmup
        if name in prewarmed:
            n_warm = max(warmup - 1, 1)
            if prewarmed[name] is not None:
                times.append(prewarmed[name])
        done_warm, spent = 0, 0.0
        while done_warm < n_warm or (spent < burst_time and done_warm < max_burst):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times.append(dt)
            done_warm += 1
            spent += dt
            if dt > min_time:  # very slow: one warm-up is enough
                break
        first_call[name] = min(times) if times else 0.0

    need, burst = {}, {}
    for name in names:
        est = first_call.get(name, 0.0)
        need[name] = min_reps_slow if est > min_time else min_reps
        # At least two calls a turn, the first not recorded: it runs while the
        # other library's pool is still spinning (libgomp spins for
        # milliseconds after a parallel region, and a lock-step recurrence
        # loses whole time slices to such a spinner) and on caches it evicted.
        burst[name] = 2 if est <= 0 or est >= burst_time / 2 else \
            int(min(max_burst, max(2, burst_time // est + 1)))

    samples = {n: [] for n in names}
    total = {n: 0.0 for n in names}
    order = list(fns)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        rnd = 0
        while True:
            seq = order if rnd % 2 == 0 else order[::-1]
            for name, fn in seq:
                if len(samples[name]) >= need[name] and total[name] >= min_time:
                    continue  # this one is done; keep timing the others
                nb = burst[name]
                for k in range(nb):
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    if k > 0:
                        samples[name].append(dt)
                        total[name] += dt
            rnd += 1
            done = all(len(samples[n]) >= need[n] and total[n] >= min_time for n in names)
            if done or rnd >= max_reps:
                break
    finally:
        if gc_was_enabled:
            gc.enable()

    out = {}
    for n in names:
        s_ms = [t * 1e3 for t in samples[n]]
        q1, _, q3 = statistics.quantiles(s_ms, n=4) if len(s_ms) > 1 else (s_ms[0],) * 3
        out[n] = {
            "median_ms": statistics.median(s_ms),
            "p25_ms": q1,
            "p75_ms": q3,
            "min_ms": min(s_ms),
            "mean_ms": statistics.fmean(s_ms),
            "stdev_ms": statistics.stdev(s_ms) if len(s_ms) > 1 else 0.0,
            "reps": len(s_ms),
            "burst": burst[n],
            "samples_ms": s_ms,
        }
    return out


# --------------------------------------------------------------------------
# benchmark case: inputs built once per shape
# --------------------------------------------------------------------------

class Case:
    """One (T, B, I, H) problem of one cell ("lstm", "gru", "rnn_tanh",
    "rnn_relu"), float32 (or `dtype`: float64), with inputs/weights preallocated.

    If torch is given, the weights are taken from the torch module of that
    cell (nn.LSTM, nn.GRU, nn.RNN; default PyTorch init) so both libraries
    compute exactly the same function.
    """

    def __init__(self, fl, T, B, H, I=None, torch=None, seed=0, cell="lstm", dtype=np.float32):
        self.fl = fl
        self.dtype = dtype = np.dtype(dtype)
        self.torch = torch
        self.cell = cell
        G = CELL_GATES[cell]
        self.T, self.B, self.H = int(T), int(B), int(H)
        self.I = int(I) if I is not None else self.H
        T, B, H, I = self.T, self.B, self.H, self.I
        rng = np.random.default_rng(seed)
        self.x = np.ascontiguousarray(rng.standard_normal((T, B, I), dtype=dtype))
        self.dy = np.ascontiguousarray(rng.standard_normal((T, B, H), dtype=dtype))

        if torch is not None:
            torch.manual_seed(seed)
            if cell == "lstm":
                self.lstm = torch.nn.LSTM(I, H, num_layers=1, bias=True, batch_first=False)
            elif cell == "gru":
                self.lstm = torch.nn.GRU(I, H, num_layers=1, bias=True, batch_first=False)
            else:
                self.lstm = torch.nn.RNN(I, H, num_layers=1, nonlinearity=cell[4:], bias=True, batch_first=False)
            self.lstm = self.lstm.double() if dtype == np.float64 else self.lstm.float()
            self.params = [self.lstm.weight_ih_l0, self.lstm.weight_hh_l0,
                           self.lstm.bias_ih_l0, self.lstm.bias_hh_l0]
            w = [p.detach().cpu().numpy().copy() for p in self.params]
            self.w_ih, self.w_hh, self.b_ih, self.b_hh = (np.ascontiguousarray(a) for a in w)
            self.x_t = torch.from_numpy(self.x)  # shares memory, no copy
            self.x_req = torch.from_numpy(self.x.copy()).requires_grad_(True)
            self.dy_t = torch.from_numpy(self.dy)
        else:
            k = 1.0 / math.sqrt(H)
            u = lambda *s: rng.uniform(-k, k, size=s).astype(dtype)  # noqa: E731
            self.w_ih, self.w_hh = u(G * H, I), u(G * H, H)
            self.b_ih, self.b_hh = u(G * H), u(G * H)
            self.lstm = None

    # ---------------- fusedlstm ----------------
    def _forward(self, training):
        args = (self.x, self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        if self.cell == "lstm":
            return self.fl.lstm_forward(*args, mode="many_to_many", training=training)
        if self.cell == "gru":
            return self.fl.gru_forward(*args, mode="many_to_many", training=training)
        return self.fl.rnn_forward(*args, mode="many_to_many", training=training, nonlinearity=self.cell[4:])

    def fl_fwd(self):
        return self._forward(False)

    def fl_fwdbwd(self):
        res = self._forward(True)
        backward = {"lstm": self.fl.lstm_backward, "gru": self.fl.gru_backward}.get(self.cell, self.fl.rnn_backward)
        grads = backward(res, dy=self.dy)
        return res, grads

    # ---------------- torch ----------------
    def torch_fwd(self):
        with self.torch.inference_mode():
            y, _ = self.lstm(self.x_t)
        return y

    def torch_fwdbwd(self):
        self.x_req.grad = None
        for p in self.params:
            p.grad = None
        y, _ = self.lstm(self.x_req)
        y.backward(self.dy_t)
        return y

    def fns(self, mode):
        out = [("fusedlstm", self.fl_fwd if mode == "fwd" else self.fl_fwdbwd)]
        if self.lstm is not None:
            out.append(("torch", self.torch_fwd if mode == "fwd" else self.torch_fwdbwd))
        return out

    # ---------------- correctness (outside timing) ----------------
    def check(self, mode, reference=None, y_tol=1e-3, grad_tol=1e-3):
        """Run each implementation once and compare.

        Returns a dict with 'ok', 'y_max_abs', optionally 'grad_rel', 'against'.
        Doubles as the first warm-up call of every implementation.
        """
        info = {"ok": True, "against": None, "ran": {}}
        try:
            t0 = time.perf_counter()
            if mode == "fwd":
                res = self.fl_fwd()
                grads = None
            else:
                res, grads = self.fl_fwdbwd()
            info["ran"]["fusedlstm"] = time.perf_counter() - t0
            y_fl = np.asarray(res.y)
        except Exception as e:  # noqa: BLE001
            info.update(ok=False, fl_failed=True, error=f"{type(e).__name__}: {e}")
            return info

        if self.lstm is not None:
            info["against"] = "torch"
            t0 = time.perf_counter()
            if mode == "fwd":
                y_ref = self.torch_fwd().numpy()
            else:
                y_ref = self.torch_fwdbwd().detach().numpy()
            info["ran"]["torch"] = time.perf_counter() - t0
            info["y_max_abs"] = max_abs_diff(y_fl, y_ref)
            ok = info["y_max_abs"] <= y_tol
            if grads is not None:
                pairs = {
                    "dx": (grads.dx, self.x_req.grad),
                    "dw_ih": (grads.dw_ih, self.params[0].grad),
                    "dw_hh": (grads.dw_hh, self.params[1].grad),
                    "db_ih": (grads.db_ih, self.params[2].grad),
                    "db_hh": (grads.db_hh, self.params[3].grad),
                }
                g = {k: rel_err(a, b.detach().numpy()) for k, (a, b) in pairs.items()}
                info["grad_rel"] = g
                info["grad_rel_max"] = max(g.values())
                ok = ok and info["grad_rel_max"] <= grad_tol
            info["ok"] = bool(ok)
        elif reference is not None:
            # no torch: compare the forward output with the float64 reference
            info["against"] = "reference"
            try:
                r = reference.forward(self.x, self.w_ih, self.w_hh, self.b_ih, self.b_hh,
                                      mode="many_to_many", cell=self.cell)
                info["y_max_abs"] = max_abs_diff(y_fl, r.y)
                info["ok"] = bool(info["y_max_abs"] <= y_tol)
            except Exception as e:  # noqa: BLE001
                info.update(against=None, error=f"reference failed: {type(e).__name__}: {e}")
        return info


def check_label(chk: dict) -> str:
    if chk.get("fl_failed") or (chk.get("error") and not chk["ok"]):
        return "**FAIL** (error)"
    if chk.get("against") is None:
        return "n/a"
    if chk["ok"]:
        return "ok" if chk["against"] == "torch" else "ok (ref)"
    parts = []
    if "y_max_abs" in chk:
        parts.append(f"y {chk['y_max_abs']:.1e}")
    if chk.get("grad_rel_max") is not None:
        parts.append(f"grad {chk['grad_rel_max']:.1e}")
    return "**FAIL** " + ", ".join(parts)


# --------------------------------------------------------------------------
# running a grid
# --------------------------------------------------------------------------

def run_grid(fl, shapes, threads_list, modes, torch=None, reference=None,
             min_time=0.5, min_reps=5, min_reps_slow=3, warmup=2, log=None, cell="lstm"):
    """shapes: iterable of (T, B, H) or (T, B, H, I).  Returns list of rows."""
    rows = []
    for shp in shapes:
        T, B, H = shp[:3]
        I = shp[3] if len(shp) > 3 else H
        case = Case(fl, T, B, H, I=I, torch=torch, cell=cell)
        for nt in threads_list:
            if torch is not None:
                torch.set_num_threads(nt)
            fl.set_num_threads(nt)
            for mode in modes:
                chk = case.check(mode, reference=reference)
                fns = case.fns(mode)
                if chk.get("fl_failed"):  # still time torch, for reference
                    fns = [f for f in fns if f[0] != "fusedlstm"]
                try:
                    stats = measure_interleaved(fns, min_time=min_time,
                                                min_reps=min_reps, min_reps_slow=min_reps_slow,
                                                warmup=warmup, prewarmed=chk["ran"]) if fns else {}
                except Exception as e:  # noqa: BLE001
                    stats = {}
                    chk = dict(chk, ok=False, error=f"{type(e).__name__}: {e}")
                flops = lstm_flops(T, B, I, H, mode, cell)
                fl_ms = stats.get("fusedlstm", {}).get("median_ms")
                th_ms = stats.get("torch", {}).get("median_ms")
                row = {
                    "cell": cell, "T": T, "B": B, "I": I, "H": H, "threads": nt, "mode": mode,
                    "check": chk, "pass": check_label(chk),
                    "fusedlstm_ms": fl_ms, "torch_ms": th_ms,
                    "speedup": (th_ms / fl_ms) if (fl_ms and th_ms) else None,
                    "flops": flops,
                    "fusedlstm_gflops": flops / (fl_ms * 1e6) if fl_ms else None,
                    "torch_gflops": flops / (th_ms * 1e6) if th_ms else None,
                    "stats": stats,
                }
                rows.append(row)
                if log is not None:
                    log(f"  T={T} B={B} H={H} threads={nt} {mode}: "
                        f"fusedlstm {_fmt(fl_ms)} ms, torch {_fmt(th_ms)} ms, "
                        f"speedup {_fmt(row['speedup'], '.2f')}x [{row['pass']}]")
        del case
    return rows


def _fmt(v, spec=".3f"):
    if v is None:
        return "-"
    if spec == ".3f":
        # keep ~4 significant digits for both tiny and large times
        if v >= 100:
            return f"{v:.1f}"
        if v >= 10:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return format(v, spec)


def format_tables(rows, have_torch=True) -> str:
    out = []
    for mode in MODES:
        mrows = [r for r in rows if r["mode"] == mode]
        if not mrows:
            continue
        out.append(f"### {MODE_TITLES[mode]}")
        out.append("")
        out.append("| T | B | H | threads | pass | torch ms | fusedlstm ms | speedup | fusedlstm GFLOP/s |")
        out.append("|---:|---:|---:|---:|:---|---:|---:|---:|---:|")
        for r in mrows:
            h = f"{r['H']}" if r["I"] == r["H"] else f"{r['H']} (I={r['I']})"
            out.append(
                f"| {r['T']} | {r['B']} | {h} | {r['threads']} | {r['pass']} | "
                f"{_fmt(r['torch_ms'])} | {_fmt(r['fusedlstm_ms'])} | "
                f"{(_fmt(r['speedup'], '.2f') + 'x') if r['speedup'] else '-'} | "
                f"{_fmt(r['fusedlstm_gflops'], '.1f')} |"
            )
        out.append("")
    if not have_torch:
        out.append("(torch not installed: fusedlstm timings only)")
    return "\n".join(out)


def json_rows(rows):
    """Rows in a JSON-serialisable form (inf -> None)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v
    return [clean(r) for r in rows]
