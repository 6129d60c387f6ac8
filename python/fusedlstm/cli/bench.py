"""``fusedlstm bench``: fusedlstm against its peers, every pair measured in the same
run, interleaved (``fusedlstm._bench.measure_interleaved``: A B, B A, ... in
bursts whose first call is dropped), medians and spread reported.

One measurement = (shape, dtype, threads, mode): the implementations are built
from the same weights and inputs, each run once and its y compared with
fusedlstm's (the "check", which is also the first warm-up call), then timed
together. Peers are in peers.py; a peer that is not installed, or does not do
a mode or dtype, is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from . import peers as P
from . import report
from .progress import Progress

DESCRIPTION = ("Benchmark fusedlstm against torch.nn.LSTM (and its bf16 / autocast forms), onnxruntime and "
               "OpenVINO on the CPU, cuDNN on the GPU: same run, interleaved, median and spread.")
EPILOG = """modes: fwd (inference), fwdbwd (forward + backward: the kernels), train (the torch module's
training step: fusedlstm.torch vs torch.nn, forward + mse_loss + backward + SGD step).
peers: torch, torch-bf16, torch-autocast, onnxruntime, openvino (cpu); cudnn (cuda); 'all' or 'none'.
  default: those of the device that are installed (torch-bf16 / torch-autocast only when named).

examples:
  fusedlstm bench --quick --csv b.csv --plot b.png         # ~1-2 min on 2 cores
  fusedlstm bench --shapes 100,16,256 1000,1,256 --threads 1 2 --modes fwd
  fusedlstm bench --cell gru --peers torch onnxruntime --json gru.json
  fusedlstm bench --device cuda --dtypes float32 bfloat16 --modes fwd fwdbwd train
  fusedlstm bench --quick --roofline roof.png              # achieved GFLOP/s vs the measured roofs
"""

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DTYPES = ("float32", "float64", "float16", "bfloat16")
MODES = ("fwd", "fwdbwd", "train")
GRID = {"cpu": [(100, b, h) for b in (1, 16, 64) for h in (128, 256, 512, 1024)] + [(1000, 1, 256)],
        "cuda": [(100, b, h) for b in (1, 16, 64, 256) for h in (256, 512, 1024)]}
QUICK = {"cpu": [(100, b, h) for b in (1, 16) for h in (128, 256, 512)],
         "cuda": [(100, b, h) for b in (16, 64) for h in (256, 512)]}


def parse_shape(s: str):
    """'T,B,H' or 'T,B,H,I' (x also separates) -> a tuple of positive ints."""
    try:
        parts = tuple(int(p) for p in s.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (3, 4) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"bad shape {s!r}: expected T,B,H or T,B,H,I (positive integers)")
    return parts


def add_arguments(p, positive_int, positive_float, isa_name):
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--cell", choices=CELLS, nargs="+", default=["lstm"], help="default lstm")
    p.add_argument("--dtypes", choices=DTYPES, nargs="+", default=["float32"],
                   help="fusedlstm's dtype (CPU: float32, float64; CUDA: all four); default float32")
    p.add_argument("--modes", choices=MODES, nargs="+", default=["fwd", "fwdbwd"], help="default fwd fwdbwd")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="T=100, B in {1,16}, H in {128,256,512} (GPU: B {16,64}, H {256,512}); "
                        "min-time 0.1 s, 3 reps")
    g.add_argument("--shapes", type=parse_shape, nargs="+", metavar="T,B,H[,I]",
                   help="shapes (I = H unless given); default: T=100, B in {1,16,64}, H in {128..1024}, "
                        "and T=1000 B=1 H=256")
    p.add_argument("--threads", type=positive_int, nargs="+", default=None,
                   help="thread counts, for every library (default: fusedlstm.get_num_threads())")
    p.add_argument("--peers", nargs="+", default=None, choices=P.ALL_PEERS + ("all", "none"), metavar="PEER",
                   help="peers to time (default: the device's installed ones; see below)")
    p.add_argument("--no-torch", action="store_true", help="do not import torch (as if it were not installed)")
    p.add_argument("--isa", type=isa_name, default=None, help="force a fusedlstm SIMD path")
    p.add_argument("--min-time", type=positive_float, default=None,
                   help="timed seconds per implementation and measurement (default 0.3; --quick 0.1)")
    p.add_argument("--min-reps", type=positive_int, default=None, help="timed calls at least (default 5; --quick 3)")
    p.add_argument("--warmup", type=positive_int, default=2, help="warm-up calls (default 2)")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    p.add_argument("--json", metavar="PATH", help="write machine, settings, rows and raw samples as JSON")
    p.add_argument("--plot", metavar="PNG", help="time and speedup against H, per B, one line per library")
    p.add_argument("--roofline", metavar="PNG", help="achieved GFLOP/s against the measured roofs (implies --peak)")
    p.add_argument("--peak", action="store_true",
                   help="measure the float32 GEMM rate and copy bandwidth (~1 s) for the JSON and the roofline")
    p.add_argument("--progress", choices=("auto", "plain", "none"), default="auto",
                   help="progress bar: tqdm when installed, else plain (default auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (same as --progress none)")


def _fail(msg):
    """An argument problem found after parsing: argparse's form (one line, exit status 2)."""
    print(f"fusedlstm bench: error: {msg}", file=sys.stderr)
    return 2


def _check_outputs(args):
    for opt in ("csv", "json", "plot", "roofline"):
        path = getattr(args, opt)
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                return f"--{opt}: directory {d} does not exist"
    if args.plot or args.roofline:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return f"--{'plot' if args.plot else 'roofline'} needs matplotlib: pip install \"fusedlstm[plot]\""
    return None


def _peer_list(args, device, torch, notes):
    if args.peers is None:
        names = list(P.DEFAULT_PEERS[device])
    elif "none" in args.peers:
        names = []
    elif "all" in args.peers:
        names = [n for n in P.ALL_PEERS if P.DEVICE_OF[n] == device]
    else:
        names = list(dict.fromkeys(args.peers))
    kept, no_torch = [], []
    for n in names:
        if P.DEVICE_OF[n] != device:
            notes.append(f"{n}: skipped, it runs on the {P.DEVICE_OF[n]} (--device {P.DEVICE_OF[n]})")
        elif n in ("torch", "torch-bf16", "torch-autocast", "cudnn") and torch is None:
            no_torch.append(n)
        elif n in ("onnxruntime", "openvino") and not _importable(n):
            notes.append(f"{n}: skipped, not installed (pip install {n})")
        else:
            kept.append(n)
    if no_torch:
        notes.append(f"{', '.join(no_torch)}: skipped, torch is "
                     + ("disabled (--no-torch)" if args.no_torch else "not installed"))
    return kept


def _importable(mod):
    try:
        __import__(mod)
        return True
    except Exception:  # noqa: BLE001 - broken installs count as missing
        return False


def _weight(T, B, H, I, mode, n_impls, min_time, min_reps):
    """A measurement's expected seconds, for the ETA: each implementation runs
    max(min_time, min_reps calls at ~10 GFLOP/s)."""
    from .. import _bench
    flops = _bench.lstm_flops(T, B, I, H, "fwd" if mode == "fwd" else "fwdbwd")
    return n_impls * max(min_time, min_reps * flops / 10e9)


def run(args) -> int:
    bad = _check_outputs(args)
    if bad:
        return _fail(bad)
    import fusedlstm as fl

    from .. import _bench
    from . import machine

    torch, notes = None, []
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass
    device = args.device
    quick = args.quick
    shapes = args.shapes or (QUICK if quick else GRID)[device]
    shapes = [(s[0], s[1], s[2], s[3] if len(s) > 3 else s[2]) for s in shapes]
    threads = args.threads or [fl.get_num_threads()]
    min_time = args.min_time or (0.1 if quick else 0.3)
    min_reps = args.min_reps or (3 if quick else 5)
    modes = list(dict.fromkeys(args.modes))
    dtypes = list(dict.fromkeys(args.dtypes))
    cells = list(dict.fromkeys(args.cell))
    if args.isa:
        fl.set_isa(args.isa)

    info = machine.describe(fl, torch)
    if device == "cpu":
        where = f"{info['cpu']}, {machine.cpu_count_note()}, isa {info['fusedlstm_isa']}"
    else:
        g = info["gpu"]
        where = f"{g.get('name', 'no GPU')}, driver {g.get('driver', '?')}, {g.get('sm_count', '?')} SMs"
    print(f"fusedlstm {fl.__version__} bench on {device}: {where}")
    peer_names = _peer_list(args, device, torch, notes)
    if device == "cuda":
        why = None
        if torch is None:
            why = "torch is not installed (the CUDA rows use torch tensors and cuDNN)"
        elif not torch.cuda.is_available():
            why = f"torch {torch.__version__} sees no CUDA device"
        elif not fl.cuda_available():
            why = f"fusedlstm's CUDA backend is not usable: {info['build']['cuda'].get('reason', '?')}"
        if why:
            notes.append(f"cuda: skipped, {why}")
            shapes = []
    if "train" in modes and torch is None:
        notes.append("train: skipped, the training step times torch modules (torch is not installed)")
        modes = [m for m in modes if m != "train"]
    if device == "cpu":
        for d in [d for d in dtypes if d not in ("float32", "float64")]:
            notes.append(f"{d}: skipped on the cpu (fusedlstm's CPU path runs float32 and float64; "
                         f"torch's bf16 forms are peers of the float32 rows: --peers torch-bf16 torch-autocast)")
        dtypes = [d for d in dtypes if d in ("float32", "float64")]
    print(f"cells {', '.join(cells)}; dtypes {', '.join(dtypes) or '-'}; modes {', '.join(modes) or '-'}; "
          f"threads {threads}; peers {', '.join(peer_names) or '-'}; {len(shapes)} shape(s); "
          f"min-time {min_time} s, >= {min_reps} reps, median")
    for n in notes:
        print(f"note: {n}")
    sys.stdout.flush()

    peak = None
    if (args.peak or args.roofline) and shapes:  # before the timing, while nothing else of ours runs
        peak = machine.measure_peak()
        print(f"peak: float32 GEMM {peak['sgemm_gflops']:.1f} GFLOP/s on {peak['cores']} cores, "
              f"copy {peak['copy_gbs']:.1f} GB/s ({peak['method']})", flush=True)

    plan = [(cell, s, d, nt, m) for cell in cells for s in shapes for d in dtypes for nt in threads for m in modes]
    n_impls = 1 + len(peer_names)
    weights = [_weight(s[0], s[1], s[2], s[3], m, n_impls, min_time, min_reps) for _, s, _, _, m in plan]
    progress = Progress(sum(weights) or 1.0, len(plan), kind="none" if args.quiet else args.progress)
    old_threads = fl.get_num_threads()
    old_torch_threads = torch.get_num_threads() if torch is not None else None
    rows, run_notes, failed = [], {}, False
    t0 = time.perf_counter()
    workload, wkey = None, None
    try:
        for (cell, (T, B, H, I), dtype, nt, mode), wt in zip(plan, weights):
            label = f"{cell} T={T} B={B} H={H}{'' if I == H else f' I={I}'} {dtype} {mode} {nt}t"
            progress.start(label)
            if wkey != (cell, T, B, H, I, dtype):
                workload, wkey = P.Workload(fl, cell, T, B, H, I, dtype), (cell, T, B, H, I, dtype)
            fl.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            new_rows, bad = measure(workload, mode, device, nt, peer_names, torch, min_time, min_reps,
                                    args.warmup, run_notes, progress)
            rows += new_rows
            failed |= bad
            f = next((r for r in new_rows if r["impl"] == "fusedlstm"), None)
            summary = label + (f": fusedlstm {report._ms(f['median_ms'])} ms" if f and f["median_ms"] else "")
            sp = [f"{r['impl']} {r['speedup']:.2f}x" for r in new_rows if r["speedup"]]
            progress.finish(wt, summary + (f" ({', '.join(sp)})" if sp else ""))
    finally:
        progress.close()
        fl.set_num_threads(old_threads)
        if torch is not None:
            torch.set_num_threads(old_torch_threads)
    elapsed = time.perf_counter() - t0

    notes += [n + (f" ({k} measurements)" if k > 1 else "") for n, k in run_notes.items()]
    print()
    if rows:
        print(report.table(rows))
    else:
        print("nothing was measured")
    for n in notes:
        print(f"note: {n}")
    print(f"(total {elapsed:.1f} s)")

    settings = {"device": device, "cells": cells, "dtypes": dtypes, "modes": modes, "threads": threads,
                "peers": peer_names, "shapes": shapes, "min_time": min_time, "min_reps": min_reps,
                "warmup": args.warmup, "quick": quick, "isa": fl.get_isa(), "elapsed_s": elapsed,
                "date": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:]}
    if args.csv:
        report.write_csv(args.csv, rows)
        print(f"CSV written to {args.csv}")
    if args.json:
        report.write_json(args.json, rows, info, settings, notes, peak)
        print(f"JSON (with the raw samples) written to {args.json}")
    title = _title(fl, info, device, threads)
    for opt in ("plot", "roofline"):
        path = getattr(args, opt)
        if not path:
            continue
        from . import plot
        try:
            if opt == "plot":
                plot.plot(path, rows, title)
            elif peak is None:
                raise ValueError("nothing was measured")
            else:
                roofs = {nt: machine.peak_for_threads(peak, nt) for nt in threads} if device == "cpu" else None
                plot.roofline(path, rows, title, roofs, peak["copy_gbs"] if device == "cpu" else None)
            print(f"{opt} written to {path}")
        except (plot.NoMatplotlib, ValueError) as e:
            print(f"note: --{opt} not written: {e}")
    if failed:
        print("FAILED: a check or an implementation failed (see the check column)", file=sys.stderr)
    return 1 if failed else 0


def _title(fl, info, device, threads):
    if device == "cpu":
        where = f"{info['cpu_short']} ({machine_cores(info)}), isa {info['fusedlstm_isa']}"
    else:
        g = info["gpu"]
        where = f"{g.get('name', '?')} ({g.get('sm_count', '?')} SMs, driver {g.get('driver', '?')})"
    return f"fusedlstm {fl.__version__} vs peers on {where}, threads {','.join(map(str, threads))}"


def machine_cores(info):
    n, u = info["cores_logical"], info["cores_usable"]
    return f"{u} cores" if n == u else f"{u} of {n} cores"


def measure(w, mode, device, threads, peer_names, torch, min_time, min_reps, warmup, run_notes, progress):
    """Time fusedlstm and the peers on one workload and mode; returns (rows, failed)."""
    from .. import _bench
    impls, errors = [], {}

    def note(n):
        if n not in run_notes:
            progress.note(f"note: {n}")
        run_notes[n] = run_notes.get(n, 0) + 1

    for name in ["fusedlstm"] + peer_names:
        try:
            impls.append(P.make(name, w, mode, device, threads, torch))
        except P.Skip as e:
            note(str(e))
        except Exception as e:  # noqa: BLE001 - a peer that breaks is reported, the run goes on
            errors[name] = f"{type(e).__name__}: {e}"
            note(f"{name} failed to set up ({w.cell} T={w.T} B={w.B} H={w.H} {mode}): {errors[name]}")
    if not impls:
        return [], bool(errors.get("fusedlstm"))
    try:
        ran, checks = P.check(impls)
    except Exception as e:  # noqa: BLE001 - find which one: check them alone
        ran, checks, ok = {}, {}, []
        for im in impls:
            try:
                im.output()
                ok.append(im)
            except Exception as e1:  # noqa: BLE001
                errors[im.name] = f"{type(e1).__name__}: {e1}"
                note(f"{im.name} failed ({w.cell} T={w.T} B={w.B} H={w.H} {mode}): {errors[im.name]}")
        impls = ok
        del e
    for im in impls:
        checks.setdefault(im.name, {})["precision"] = im.precision
    stats = {}
    if impls:
        try:
            stats = _bench.measure_interleaved([(im.name, im.run) for im in impls], min_time=min_time,
                                               min_reps=min_reps, min_reps_slow=min(3, min_reps), warmup=warmup,
                                               prewarmed=ran)
        except Exception as e:  # noqa: BLE001 - one that fails while timed fails the measurement
            msg = f"{type(e).__name__}: {e}"
            errors.update({im.name: "timing failed: " + msg for im in impls})
            note(f"timing failed ({w.cell} T={w.T} B={w.B} H={w.H} {mode}): {msg}")
    meas = {"device": device, "cell": w.cell, "dtype": w.dtype, "mode": mode, "threads": threads,
            "T": w.T, "B": w.B, "I": w.I, "H": w.H, "flops": w.flops(mode), "bytes": w.bytes_moved(mode)}
    rows = report.make_rows(meas, stats, checks, meas["flops"], errors)
    failed = any(r["check"] == "FAIL" for r in rows) or bool(errors)
    return rows, failed
