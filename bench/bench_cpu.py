#!/usr/bin/env python3
"""CPU benchmark: fusedlstm vs torch.nn.LSTM (float32, one layer, I = H), or
with --cell gru / rnn_tanh / rnn_relu fusedlstm's GRU / Elman RNN vs
torch.nn.GRU / torch.nn.RNN.

Both libraries are measured in the same run, on the same inputs and weights
(taken from a torch.nn.LSTM), interleaved call by call (A B, B A, ...).

  forward         torch under torch.inference_mode(); fusedlstm training=False
  forward+backward torch: x and params require grad, y.backward(dy) (grads set
                  to None between reps); fusedlstm: lstm_forward(training=True)
                  + lstm_backward(res, dy=dy)

Reported: median ms over >= 5 reps (>= 3 for calls slower than --min-time)
and >= --min-time seconds, GFLOP/s with forward flops = 2*T*B*4H*(I+H) and
forward+backward = 3x that, speedup = torch_ms / fusedlstm_ms.  Each
(shape, threads, mode) is checked once outside the timing: y must agree with
torch's to 1e-3 max abs (and, for forward+backward, every gradient to 1e-3
normwise relative), otherwise the 'pass' column says FAIL.

Examples:
  python bench/bench_cpu.py                       # full default grid, 1 and 2 threads
  python bench/bench_cpu.py --quick               # < 1 min smoke run
  python bench/bench_cpu.py --shapes 100,16,256 1000,1,256 --threads 2 --mode fwd
  python bench/bench_cpu.py --json results.json
  python bench/bench_cpu.py --cell gru --quick

`python -m fusedlstm bench` is the front end over these same functions
(fusedlstm._bench) with more peers, CSV and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _import_fusedlstm():
    try:
        import fusedlstm  # noqa: F401
    except ImportError:
        # not installed: try the in-tree package (works if built in place)
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(here, os.pardir, "python"))
        try:
            import fusedlstm  # noqa: F401,F811
        except ImportError as e:
            sys.exit(f"error: cannot import fusedlstm ({e}); "
                     f"install it first, e.g. `pip install --no-build-isolation -e .`")
    import fusedlstm
    from fusedlstm import _bench
    return fusedlstm, _bench


DEFAULT_SHAPES = [(100, b, h) for b in (1, 16, 64) for h in (128, 256, 512, 1024)] + [(1000, 1, 256)]
QUICK_SHAPES = [(100, b, h) for b in (1, 16) for h in (128, 256)]


def parse_shape(s: str):
    try:
        parts = tuple(int(p) for p in s.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (3, 4) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(
            f"bad shape {s!r}: expected 'T,B,H' (or 'T,B,H,I') with positive ints")
    return parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="fusedlstm vs torch.nn.LSTM on the CPU (float32, 1 layer, I = H)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples:")[1])
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to run (default: 1 2; --quick: 2)")
    p.add_argument("--quick", action="store_true",
                   help="small subset (T=100, B in {1,16}, H in {128,256}, 2 threads, "
                        "min-time 0.2 s): finishes in < 1 min")
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=None, metavar="T,B,H",
                   help="custom shapes as T,B,H triples (I = H), or T,B,H,I")
    p.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both")
    p.add_argument("--cell", choices=("lstm", "gru", "rnn_tanh", "rnn_relu"), default="lstm",
                   help="the recurrent cell, against torch's module of the same cell (default lstm)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed runs per measurement and library "
                        "(default 0.5; --quick: 0.2)")
    p.add_argument("--min-reps", type=int, default=5, help="minimum timed reps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls (default 2)")
    p.add_argument("--isa", default=None, help="force a fusedlstm ISA (see available_isas())")
    p.add_argument("--no-torch", action="store_true", help="do not import torch")
    p.add_argument("--json", metavar="PATH", default=None, help="save raw results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-measurement progress lines")
    args = p.parse_args(argv)
    if (args.threads and min(args.threads) <= 0) or args.min_reps <= 0 or args.warmup < 0 \
            or (args.min_time is not None and args.min_time <= 0):
        p.error("--threads, --min-reps and --min-time must be positive, --warmup not negative")

    fl, _bench = _import_fusedlstm()

    torch = None
    torch_msg = ""
    if not args.no_torch:
        try:
            import torch  # noqa: F811
        except ImportError as e:
            torch_msg = f"torch missing ({e}): timing fusedlstm only"
    else:
        torch_msg = "torch disabled (--no-torch): timing fusedlstm only"

    reference = None
    if torch is None:
        try:
            from fusedlstm import reference  # noqa: F811
        except ImportError:
            reference = None

    if args.isa:
        if args.isa not in _bench.isa_list(fl):
            p.error(f"--isa: {args.isa!r} is not a SIMD path of this CPU (available: {', '.join(_bench.isa_list(fl))})")
        fl.set_isa(args.isa)

    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    threads = args.threads or ([2] if args.quick else [1, 2])
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 0.5)
    modes = ["fwd", "fwdbwd"] if args.mode == "both" else [args.mode]

    info = _bench.machine_info(fl, torch)
    print(_bench.header_line(info))
    if torch_msg:
        print(torch_msg)
    ncores = info["cores_usable"] or 1
    if max(threads) > ncores:
        print(f"warning: {max(threads)} threads requested but only {ncores} cores usable")
    print(f"cell {args.cell}, float32, single layer, I = H, min-time {min_time} s, >= {args.min_reps} reps, "
          f"median reported; modes: {', '.join(modes)}; threads: {threads}")
    print(flush=True)

    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    rows = _bench.run_grid(fl, shapes, threads, modes, torch=torch, reference=reference,
                           min_time=min_time, min_reps=args.min_reps, warmup=args.warmup,
                           log=log, cell=args.cell)
    elapsed = time.perf_counter() - t0

    print(_bench.format_tables(rows, have_torch=torch is not None))
    print(f"(total {elapsed:.1f} s)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "cell": args.cell, "min_time": min_time, "min_reps": args.min_reps,
                       "elapsed_s": elapsed, "results": _bench.json_rows(rows)},
                      f, indent=1)
        print(f"raw results written to {args.json}")

    failed = [r for r in rows if r["check"].get("ok") is False]
    if failed:
        print(f"WARNING: {len(failed)} measurement(s) failed the correctness check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
