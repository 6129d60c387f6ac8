"""``fusedlstm check`` (and ``python -m fusedlstm`` with no subcommand): the
self-check against the float64 reference, then a short benchmark.

(a) Self-check, for every ISA in ``fusedlstm.available_isas()`` (or those of
    ``--isa``): small random cases in every mode (many_to_many with/without
    lengths, batch_first, no-bias, many_to_one, one_to_many with feed
    repeat/first/output, lstm_cell), float64 and float32, forward and
    backward, compared with ``fusedlstm.reference`` on the same inputs under
    the test-suite's tolerance policy (``fusedlstm.tolerance``: float64
    normwise 1e-12; float32 at most 2x the error of the plain float32
    reference).  Plus, per case, a float64 finite-difference check of
    fusedlstm's backward along a random direction (independent of the
    reference), and two layer stacks.  By default only failed and skipped
    checks are printed, then one summary line per ISA; ``-v`` prints every
    check, ``-q`` only failures and the total.
(b) A short benchmark (a handful of shapes, forward and forward+backward)
    against torch.nn.LSTM if torch is importable; < ~60 s.  ``fusedlstm
    bench`` is the full benchmark front end.

Exit code 1 if any check fails (self-check, or the benchmark's agreement
check with torch), 0 otherwise.
"""

from __future__ import annotations

import math
import time
import traceback

import numpy as np

from .. import tolerance

FD_TOL = 1e-6          # finite-difference directional derivative, float64
FD_EPS = 1e-6

# shapes for the short benchmark in (b): (T, B, H), I = H
BENCH_SHAPES = [(100, 1, 128), (100, 16, 256), (100, 64, 256), (100, 16, 512), (1000, 1, 256)]
BENCH_MIN_TIME = 0.15


# --------------------------------------------------------------------------
# self-check cases
# --------------------------------------------------------------------------

class Case:
    """A small forward/backward problem.  kwargs go to both implementations."""

    def __init__(self, name, T, B, I, H, *, mode="many_to_many", lengths=None, steps=None,
                 feed="repeat", batch_first=False, init_state=True, bias=True,
                 x_shape=None, cell=False):
        self.name = name
        self.T, self.B, self.I, self.H = T, B, I, H
        self.mode, self.lengths, self.steps, self.feed = mode, lengths, steps, feed
        self.batch_first, self.init_state, self.bias = batch_first, init_state, bias
        self.x_shape = x_shape
        self.cell = cell

    def make(self, seed):
        """float64 data for this case (cast per dtype later)."""
        rng = np.random.default_rng(seed)
        T, B, I, H = self.T, self.B, self.I, self.H
        if self.x_shape is not None:
            xs = self.x_shape
        elif self.cell or self.mode == "one_to_many":
            xs = (B, I)  # one_to_many: x [B, I], T = steps
        else:
            xs = (B, T, I) if self.batch_first else (T, B, I)
        k = 1.0 / math.sqrt(H)
        d = {
            "x": rng.standard_normal(xs),
            "w_ih": rng.uniform(-k, k, (4 * H, I)),
            "w_hh": rng.uniform(-k, k, (4 * H, H)),
            "b_ih": rng.uniform(-k, k, (4 * H,)) if self.bias else None,
            "b_hh": rng.uniform(-k, k, (4 * H,)) if self.bias else None,
            "h0": 0.5 * rng.standard_normal((B, H)) if (self.init_state or self.cell) else None,
            "c0": 0.5 * rng.standard_normal((B, H)) if (self.init_state or self.cell) else None,
        }
        return d

    def kwargs(self):
        kw = {"mode": self.mode, "batch_first": self.batch_first}
        if self.lengths is not None:
            kw["lengths"] = np.asarray(self.lengths, dtype=np.int64)
        if self.steps is not None:
            kw["steps"] = self.steps
        if self.mode == "one_to_many":
            kw["feed"] = self.feed
        return kw


def default_cases():
    T, B, I, H = 7, 3, 5, 6
    return [
        Case("many_to_many", T, B, I, H),
        Case("many_to_many zero-state", T, B, I, H, init_state=False),
        Case("many_to_many no-bias", T, B, I, H, bias=False),
        Case("many_to_many lengths", T, 4, I, H, lengths=[T, 5, 1, 3]),
        Case("many_to_many lengths batch_first", T, 4, I, H, lengths=[2, T, 4, 6], batch_first=True),
        Case("many_to_one", T, B, I, H, mode="many_to_one"),
        Case("many_to_one lengths", T, 4, I, H, mode="many_to_one", lengths=[3, T, 1, 6]),
        Case("one_to_many feed=repeat", 1, B, I, H, mode="one_to_many", steps=5, feed="repeat"),
        Case("one_to_many feed=first", 1, B, I, H, mode="one_to_many", steps=5, feed="first"),
        Case("one_to_many feed=output", 1, B, H, H, mode="one_to_many", steps=5, feed="output"),
        Case("lstm_cell", 1, B, I, H, cell=True),
    ]


# --------------------------------------------------------------------------
# comparison helpers
# --------------------------------------------------------------------------

def compare(outs, refs, names, plains=None, allow_squeeze=False, dtype=None):
    """Return (worst err/bound, worst max|err|, worst_name, problem) over the named
    outputs, under fusedlstm.tolerance's policy: refs is the float64 reference on
    the same inputs, plains (float32) the plain float32 reference.

    An output that is None in the reference (db_ih / db_hh without that bias)
    must be None in fusedlstm too; every other output must have `dtype`.
    """
    def get(o, n):
        return o.get(n) if isinstance(o, dict) else getattr(o, n, None)

    precision = np.dtype(dtype).name
    worst_ratio, worst_abs, worst_name = 0.0, 0.0, "-"
    for n in names:
        r = get(refs, n)
        o = get(outs, n)
        if r is None:
            if o is not None:
                return math.inf, math.inf, n, f"{n} should be None (as in the reference)"
            continue
        if o is None:
            return math.inf, math.inf, n, f"{n} missing"
        if np.asarray(o).dtype != dtype:
            return math.inf, math.inf, n, f"{n} dtype {np.asarray(o).dtype}, expected {precision}"
        o = np.asarray(o)
        if allow_squeeze and o.shape != np.shape(r) and o.size == np.size(r):
            o = o.reshape(np.shape(r))
        m = tolerance.measure(o, r, None if plains is None else get(plains, n), precision=precision)
        if m.problem is not None:
            return math.inf, math.inf, n, f"{n}: {m.problem}"
        if not np.all(np.isfinite(o)):
            return math.inf, math.inf, n, f"{n}: non-finite values"
        ratio = m.err / m.bound if m.bound > 0 else (0.0 if m.err == 0 else math.inf)
        worst_abs = max(worst_abs, m.err)
        if ratio >= worst_ratio:
            worst_ratio, worst_name = ratio, n
    return worst_ratio, worst_abs, worst_name, None


def _cast(d, dtype):
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in d.items()}


def _ref_args(d):
    return (d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"])


FWD_NAMES = ("y", "h_n", "c_n")
BWD_NAMES = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


# --------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------

class Reporter:
    """Counts the checks; prints every line with verbose, else only the failed and
    skipped ones (the per-ISA summary comes from summary_lines())."""

    def __init__(self, verbose=False):
        self.verbose = verbose
        self.n_pass = self.n_fail = self.n_skip = 0
        self.per_isa = {}

    def line(self, isa, case, dtype, what, status, detail):
        counts = self.per_isa.setdefault(isa, {"PASS": 0, "FAIL": 0, "SKIP": 0})
        counts[status if status in counts else "SKIP"] += 1
        if status == "PASS":
            self.n_pass += 1
        elif status == "FAIL":
            self.n_fail += 1
        else:
            self.n_skip += 1
        if not self.verbose and status == "PASS":
            return
        print(f"[{isa:>8}] {case:<34} {dtype:<7} {what:<4} {detail:<58} {status}", flush=True)

    def result(self, isa, case, dtype, what, ratio, mabs, worst, problem):
        if problem:
            self.line(isa, case, dtype, what, "FAIL", problem)
        else:
            self.line(isa, case, dtype, what, "PASS" if ratio <= 1.0 else "FAIL",
                      f"max|err| {mabs:.2e}  err/bound {ratio:.2f} ({worst})")

    def summary_lines(self):
        out = []
        for isa, c in self.per_isa.items():
            s = f"  {isa:<8} {c['PASS']} passed, {c['FAIL']} failed"
            out.append(s + (f", {c['SKIP']} skipped" if c["SKIP"] else ""))
        return out


def _err(e):
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) <= 200 else s[:197] + "..."


def _reference(reference, case, d, cotan, dtype):
    """The reference in `dtype` on the inputs d and the upstream gradients cotan
    (drawn when None): (forward result, gradients, cotan); lstm_cell: (result, None, None)."""
    if case.cell:
        res = reference.forward(d["x"][None], *_ref_args(d)[1:], h0=d["h0"], c0=d["c0"],
                                mode="many_to_many", dtype=dtype)
        return res, None, None
    res = reference.forward(*_ref_args(d), h0=d["h0"], c0=d["c0"], dtype=dtype, **case.kwargs())
    if cotan is None:
        rng = np.random.default_rng(case.cotan_seed)
        cotan = {"dy": rng.standard_normal(np.shape(res.y)),
                 "dh_n": rng.standard_normal(np.shape(res.h_n)),
                 "dc_n": rng.standard_normal(np.shape(res.c_n))}
    return res, reference.backward(res, **cotan), cotan


def check_case(fl, reference, case, isa, rep, seed):
    d64 = case.make(seed)
    case.cotan_seed = seed + 1
    for dtype in (np.float64, np.float32):
        dname = np.dtype(dtype).name
        d = _cast(d64, dtype)
        # ---- the reference on the inputs the library sees: float64 (truth) and,
        # for float32, float32 (the plain implementation of the tolerance policy) ----
        try:
            if dtype is np.float64:
                _, _, cotan = _reference(reference, case, d64, None, np.float64)
            ct = None if cotan is None else _cast(cotan, dtype)
            ref_res, ref_grads, _ = _reference(reference, case, d, ct, np.float64)
            plain_res = plain_grads = None
            if dtype is np.float32:
                plain_res, plain_grads, _ = _reference(reference, case, d, ct, np.float32)
        except NotImplementedError as e:
            rep.line(isa, case.name, "-", "ref", "SKIP", "reference: " + _err(e))
            return
        except Exception as e:  # noqa: BLE001 - a broken reference is a failure
            rep.line(isa, case.name, "-", "ref", "FAIL", "reference raised " + _err(e))
            return
        if case.cell:
            try:
                h1, c1 = fl.lstm_cell(d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"],
                                      d["b_ih"], d["b_hh"])
                found = compare({"h_n": h1, "c_n": c1}, ref_res, ("h_n", "c_n"), plain_res,
                                allow_squeeze=True, dtype=dtype)
                rep.result(isa, case.name, dname, "fwd", *found)
            except Exception as e:  # noqa: BLE001
                rep.line(isa, case.name, dname, "fwd", "FAIL", "raised " + _err(e))
            continue

        # forward
        try:
            res = fl.lstm_forward(d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                  d["h0"], d["c0"], training=True, **case.kwargs())
            rep.result(isa, case.name, dname, "fwd", *compare(res, ref_res, FWD_NAMES, plain_res, dtype=dtype))
            # inference path must give the same outputs as the training path
            res_inf = fl.lstm_forward(d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                      d["h0"], d["c0"], training=False, **case.kwargs())
            rep.result(isa, case.name, dname, "inf",
                       *compare(res_inf, ref_res, FWD_NAMES, plain_res, dtype=dtype))
        except Exception as e:  # noqa: BLE001
            rep.line(isa, case.name, dname, "fwd", "FAIL", "raised " + _err(e))
            continue

        # backward
        try:
            g = fl.lstm_backward(res, **ct)
            rep.result(isa, case.name, dname, "bwd", *compare(g, ref_grads, BWD_NAMES, plain_grads, dtype=dtype))
        except Exception as e:  # noqa: BLE001
            rep.line(isa, case.name, dname, "bwd", "FAIL", "raised " + _err(e))
            continue

        if dtype is np.float64:
            fd_check(fl, case, d, cotan, g, isa, rep, seed)


def fd_check(fl, case, d, cotan, g, isa, rep, seed):
    """Directional finite difference of L = <y,dy> + <h_n,dh_n> + <c_n,dc_n>."""
    rng = np.random.default_rng(seed + 2)
    keys = [("x", "dx"), ("w_ih", "dw_ih"), ("w_hh", "dw_hh"), ("b_ih", "db_ih"),
            ("b_hh", "db_hh"), ("h0", "dh0"), ("c0", "dc0")]
    keys = [(k, gk) for k, gk in keys if d[k] is not None and getattr(g, gk, None) is not None]
    v = {k: rng.standard_normal(d[k].shape) for k, _ in keys}
    try:
        analytic = sum(float(np.sum(np.asarray(getattr(g, gk)) * v[k])) for k, gk in keys)

        def loss(s):
            p = dict(d)
            for k, _ in keys:
                p[k] = d[k] + s * v[k]
            r = fl.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                p["h0"], p["c0"], training=False, **case.kwargs())
            return (float(np.sum(np.asarray(r.y) * cotan["dy"]))
                    + float(np.sum(np.asarray(r.h_n) * cotan["dh_n"]))
                    + float(np.sum(np.asarray(r.c_n) * cotan["dc_n"])))

        numeric = (loss(FD_EPS) - loss(-FD_EPS)) / (2 * FD_EPS)
        err = abs(numeric - analytic) / max(abs(numeric), 1e-8)
        wrt = ",".join(k for k, _ in keys)
        rep.line(isa, case.name, "float64", "fd",
                 "PASS" if err <= FD_TOL else "FAIL",
                 f"directional grad rel err {err:.2e} (wrt {wrt}) tol {FD_TOL:.0e}")
    except Exception as e:  # noqa: BLE001
        rep.line(isa, case.name, "float64", "fd", "FAIL", "raised " + _err(e))


# Layer stacks (fusedlstm.LSTM): name, constructor arguments, T, B, lengths?, dropout mask?
STACK_CASES = [
    ("stack 2L bi proj lengths", dict(input_size=7, hidden_size=19, num_layers=2, bidirectional=True,
                                      proj_size=5, dropout=0.3), 9, 5, True),
    ("stack 3L uni batch_first", dict(input_size=4, hidden_size=11, num_layers=3, batch_first=True), 6, 3, False),
]


def check_stacks(fl, reference, isa, rep, seed=2000):
    for k, (name, kw, T, B, with_lengths) in enumerate(STACK_CASES):
        rng = np.random.default_rng(seed + k)
        layer = fl.LSTM(**kw, dtype=np.float64, seed=seed + k)
        L, D = layer.num_layers, layer.num_directions
        hout = layer.proj_size or layer.hidden_size
        x = rng.standard_normal((T, B, layer.input_size))
        lengths = rng.integers(1, T + 1, B) if with_lengths else None
        hx = (rng.standard_normal((L * D, B, hout)), rng.standard_normal((L * D, B, layer.hidden_size)))
        x_in = x.swapaxes(0, 1) if layer.batch_first else x
        try:
            # the dropout mask the layer draws from this generator, drawn again for the reference
            keep = 1.0 - layer.dropout
            masks = None
            if layer.dropout > 0 and L > 1:
                masks = (np.random.default_rng(seed).random((L - 1, T, B, D * hout)) < keep) / keep
            cells = [dict(w_ih=layer.params[f"weight_ih_l{i}{s}"], w_hh=layer.params[f"weight_hh_l{i}{s}"],
                          b_ih=layer.params.get(f"bias_ih_l{i}{s}"), b_hh=layer.params.get(f"bias_hh_l{i}{s}"),
                          w_hr=layer.params.get(f"weight_hr_l{i}{s}"))
                     for i in range(L) for s in ("", "_reverse")[:D]]
            dy = rng.standard_normal((T, B, layer.num_directions * hout))

            def run_reference(inputs, compute):  # the reference on inputs cast to `inputs`
                cast = lambda a: None if a is None else np.asarray(a, inputs)  # noqa: E731
                ref = reference.stack_forward(cast(x), [{k: cast(v) for k, v in c.items()} for c in cells],
                                              *(cast(h) for h in hx), num_layers=L, bidirectional=D == 2,
                                              lengths=lengths, dropout_masks=cast(masks), dtype=compute)
                grads = reference.stack_backward(ref, cast(dy), np.ones_like(ref.h_n), np.ones_like(ref.c_n))
                return ref, grads
        except Exception as e:  # noqa: BLE001
            rep.line(isa, name, "-", "ref", "FAIL", "reference raised " + _err(e))
            continue
        for dtype in (np.float64, np.float32):
            dname = np.dtype(dtype).name
            try:
                ref, ref_g = run_reference(dtype, np.float64)
                plain, plain_g = run_reference(dtype, np.float32) if dtype is np.float32 else (None, None)
                layer32 = fl.LSTM(**kw, dtype=dtype)
                layer32.load_state_dict(layer.params)
                res = layer32.forward(x_in.astype(dtype), tuple(h.astype(dtype) for h in hx), lengths=lengths,
                                      training=True, rng=np.random.default_rng(seed))
                y = res.y.swapaxes(0, 1) if layer.batch_first else res.y
                rep.result(isa, name, dname, "fwd", *compare({"y": y, "h_n": res.h_n, "c_n": res.c_n}, ref,
                                                             ("y", "h_n", "c_n"), plain, dtype=dtype))
                dy_in = dy.swapaxes(0, 1) if layer.batch_first else dy
                g = layer32.backward(res, dy_in.astype(dtype), np.ones_like(res.h_n), np.ones_like(res.c_n))
                dx = g["x"].swapaxes(0, 1) if layer.batch_first else g["x"]
                ours = {"dx": dx, "dh0": g["h0"], "dc0": g["c0"]}
                def named(grads):  # the reference's gradients under the layer's names
                    out = {"dx": grads["dx"], "dh0": grads["dh0"], "dc0": grads["dc0"]}
                    for i, cg in enumerate(grads["cells"]):
                        sfx = f"_l{i // D}" + ("_reverse" if i % D else "")
                        for key, pname in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b", "bias_ih"),
                                           ("w_hr", "weight_hr")):
                            if pname + sfx in g and key in cg:
                                ours[pname + sfx], out[pname + sfx] = g[pname + sfx], cg[key]
                    return out
                refs = named(ref_g)
                rep.result(isa, name, dname, "bwd", *compare(ours, refs, tuple(refs),
                                                             None if plain_g is None else named(plain_g),
                                                             dtype=dtype))
            except Exception as e:  # noqa: BLE001
                rep.line(isa, name, dname, "fwd", "FAIL", "raised " + _err(e))


def self_check(fl, reference, isas, rep, cases=None):
    cases = cases if cases is not None else default_cases()
    for isa in isas:
        try:
            fl.set_isa(isa)
            active = fl.get_isa()
        except Exception as e:  # noqa: BLE001
            rep.line(isa, "set_isa", "-", "-", "FAIL", "raised " + _err(e))
            continue
        if active != isa:
            rep.line(isa, "set_isa", "-", "-", "FAIL", f"get_isa() returned {active!r}")
            continue
        for i, case in enumerate(cases):
            check_case(fl, reference, case, isa, rep, seed=1000 + i)
        check_stacks(fl, reference, isa, rep)



# --------------------------------------------------------------------------
# the subcommand
# --------------------------------------------------------------------------

def add_arguments(p, positive_int, isa_name):
    p.add_argument("--no-bench", action="store_true", help="only run the self-check")
    p.add_argument("--no-check", action="store_true", help="only run the short benchmark")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for the benchmark (default: fusedlstm.get_num_threads())")
    p.add_argument("--isa", type=isa_name, action="append", default=None,
                   help="self-check only this ISA (repeatable; default: all available)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="print every check, not only the failed ones")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only failed/skipped checks and the totals (no per-ISA summary)")


def run(args) -> int:
    import fusedlstm as fl
    from .. import _bench

    t_start = time.perf_counter()
    try:
        orig_isa = fl.get_isa()
        isas = _bench.isa_list(fl)
    except Exception as e:  # noqa: BLE001
        print(f"fusedlstm: cannot query ISAs: {_err(e)}")
        return 1
    print(f"fusedlstm {getattr(fl, '__version__', '?')}  isa={orig_isa}  "
          f"available={isas}  threads={fl.get_num_threads()}")
    print(f"machine: {_bench.cpu_model()}, {_bench.usable_cores()} usable cores")

    failed = False
    if not args.no_check:
        print()
        print("== self-check vs fusedlstm.reference "
              "(tolerance policy of fusedlstm.tolerance; fd = finite-difference gradient check) ==")
        try:
            from fusedlstm import reference
        except Exception as e:  # noqa: BLE001
            print(f"cannot import fusedlstm.reference: {_err(e)}")
            return 1
        rep = Reporter(verbose=args.verbose)
        t_check = time.perf_counter()
        try:
            self_check(fl, reference, args.isa or isas, rep)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            rep.n_fail += 1
        finally:
            try:
                fl.set_isa(orig_isa)
            except Exception:  # noqa: BLE001
                pass
        if not args.quiet:
            print("\n".join(rep.summary_lines()))
        print(f"self-check: {rep.n_pass} passed, {rep.n_fail} failed"
              + (f", {rep.n_skip} skipped" if rep.n_skip else "")
              + f" ({time.perf_counter() - t_check:.1f} s"
              + ("" if args.verbose else "; -v lists every check") + ")")
        failed = rep.n_fail > 0

    if not args.no_bench:
        print()
        torch = None
        try:
            import torch  # noqa: F811
        except ImportError:
            pass
        nt = args.threads if args.threads else fl.get_num_threads()
        print(f"== benchmark: float32, I = H, {nt} thread(s), median of >= 3 reps / "
              f"{BENCH_MIN_TIME} s (`fusedlstm bench` for more) ==")
        print(_bench.header_line(_bench.machine_info(fl, torch)))
        reference = None
        if torch is None:  # agreement check against the float64 reference instead
            print("torch not installed: fusedlstm timings only")
            try:
                from fusedlstm import reference
            except Exception:  # noqa: BLE001
                reference = None
        old_nt = fl.get_num_threads()
        try:
            rows = _bench.run_grid(fl, BENCH_SHAPES, [nt], ["fwd", "fwdbwd"], torch=torch,
                                   reference=reference, min_time=BENCH_MIN_TIME, min_reps=3,
                                   min_reps_slow=3, warmup=1)
        finally:
            fl.set_num_threads(old_nt)
        print()
        print(_bench.format_tables(rows, have_torch=torch is not None))
        bad = [r for r in rows if r["check"].get("ok") is False]
        if bad:
            print(f"benchmark: {len(bad)} measurement(s) failed the agreement check")
            failed = True

    print(f"total {time.perf_counter() - t_start:.1f} s: {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0
