#!/usr/bin/env python3
"""CPU bfloat16 benchmark: fusedlstm's bf16 path against torch.nn.LSTM in
float32, in bfloat16 (the module .to(torch.bfloat16): oneDNN's bf16 RNN) and
under torch.autocast("cpu", dtype=torch.bfloat16), with fusedlstm's float32
beside them. One layer, I = H, T x B x H shapes.

All libraries run in the same process on the same weights, interleaved call
by call (fusedlstm._bench.measure_interleaved); medians in ms.

  fwd     inference: torch under torch.inference_mode(), fusedlstm training=False
  fwdbwd  forward + backward of y against a fixed dy (torch: x and the
          parameters require grad, grads reset between calls; fusedlstm:
          lstm_forward(training=True) + lstm_backward)

fusedlstm bf16 = numpy arrays of ml_dtypes.bfloat16 (every array bf16, the
GEMM operands bf16, sums and cell state float32). Ratios are rival time /
fusedlstm bf16 time. Before timing, each shape's fusedlstm bf16 output is
compared with torch's float32 output (max abs difference printed: bf16
rounding, about 1e-2 at these sizes, is expected).

  python bench/bench_cpu_bf16.py --quick
  python bench/bench_cpu_bf16.py --shapes 100,16,256 100,64,512 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_SHAPES = [(100, b, h) for b in (1, 4, 16, 64) for h in (256, 512, 1024)] + \
                 [(100, b, h) for b, h in ((2, 200), (6, 384), (12, 768))]
QUICK_SHAPES = [(100, 1, 256), (100, 16, 256), (100, 64, 512)]


def parse_shape(s):
    try:
        parts = tuple(int(p) for p in s.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"bad shape {s!r}: expected T,B,H with positive ints")
    return parts


def openvino_lstm(w, T, B, threads, precision):
    """OpenVINO's CPU plugin on one ONNX LSTM node with these weights (torch's
    i,f,g,o rows -> ONNX's i,o,f,c), INFERENCE_PRECISION_HINT = precision
    ("f32" or "bf16"); returns f(x) -> Y [T, 1, B, H], or a reason string."""
    try:
        import openvino as ov
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        return f"not installed ({e.name})"
    w_ih, w_hh, b_ih, b_hh = w
    H, I = w_hh.shape[1], w_ih.shape[1]

    def iofc(a):
        blocks = a.reshape(4, H, *a.shape[1:])
        return np.ascontiguousarray(blocks[[0, 3, 1, 2]].reshape(a.shape), dtype=np.float32)
    inits = [numpy_helper.from_array(iofc(w_ih)[None], "W"), numpy_helper.from_array(iofc(w_hh)[None], "R"),
             numpy_helper.from_array(np.concatenate([iofc(b_ih), iofc(b_hh)])[None], "B")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision})
    except Exception as e:  # noqa: BLE001 - a plugin refusal (e.g. bf16 unsupported) is a skip, named
        return f"refused: {str(e).splitlines()[0][:120]}"
    req = compiled.create_infer_request()
    out = compiled.output(0)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if {"f32": "float32", "bf16": "bfloat16"}[precision] not in str(got).lower():
        return f"asked for {precision}, runs {got}"
    return lambda x: req.infer({0: x})[out]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=None, metavar="T,B,H")
    p.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, 2 threads")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 2 (--quick: 2)")
    p.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both")
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--isa", default=None, help="force a fusedlstm ISA")
    p.add_argument("--json", metavar="PATH", default=None)
    args = p.parse_args(argv)
    if args.threads and min(args.threads) <= 0:
        p.error("--threads must be positive")

    import fusedlstm as fl
    from fusedlstm import _bench
    try:
        import ml_dtypes
    except ImportError:
        p.error("ml_dtypes is needed for fusedlstm's bfloat16 numpy arrays: pip install ml_dtypes")
    try:
        import torch
    except ImportError:
        torch = None
        print("torch missing: timing fusedlstm only")
    if args.isa:
        if args.isa not in _bench.isa_list(fl):
            p.error(f"--isa: {args.isa!r} is not available here ({', '.join(_bench.isa_list(fl))})")
        fl.set_isa(args.isa)
    bf16 = ml_dtypes.bfloat16
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    threads_list = args.threads or ([2] if args.quick else [1, 2])
    modes = ["fwd", "fwdbwd"] if args.mode == "both" else [args.mode]
    info = _bench.machine_info(fl, torch)
    print(_bench.header_line(info))
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print("CPU bf16 features:", ", ".join(f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "none")
    rows = []
    for threads in threads_list:
        fl.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        for T, B, H in shapes:
            I = H
            rng = np.random.default_rng(0)
            k = 1 / np.sqrt(H)
            w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            dy = rng.standard_normal((T, B, H)).astype(np.float32)
            wb, xb, dyb = [a.astype(bf16) for a in w], x.astype(bf16), dy.astype(bf16)
            fns = {}
            fns["fl_f32", "fwd"] = lambda: fl.lstm_forward(x, *w)
            fns["fl_bf16", "fwd"] = lambda: fl.lstm_forward(xb, *wb)
            fns["fl_f32", "fwdbwd"] = lambda: fl.lstm_backward(fl.lstm_forward(x, *w, training=True), dy=dy)
            fns["fl_bf16", "fwdbwd"] = lambda: fl.lstm_backward(fl.lstm_forward(xb, *wb, training=True), dy=dyb)
            check = None
            if torch is not None:
                m32 = torch.nn.LSTM(I, H)
                with torch.no_grad():
                    for prm, a in zip(m32.parameters(), w):
                        prm.copy_(torch.from_numpy(a))
                mb = torch.nn.LSTM(I, H).to(torch.bfloat16)
                mb.load_state_dict({k_: v.to(torch.bfloat16) for k_, v in m32.state_dict().items()})
                xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
                xtb, dytb = xt.to(torch.bfloat16), dyt.to(torch.bfloat16)

                def t_fwd(m, xx, autocast=False):
                    def run():
                        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                            return m(xx)[0]
                    return run

                def t_fwdbwd(m, xx, dd, autocast=False):
                    def run():
                        m.zero_grad(set_to_none=True)
                        xg = xx.detach().requires_grad_(True)
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                            y = m(xg)[0]
                        y.backward(dd.to(y.dtype))
                    return run
                fns["torch_f32", "fwd"] = t_fwd(m32, xt)
                fns["torch_bf16", "fwd"] = t_fwd(mb, xtb)
                fns["torch_autocast", "fwd"] = t_fwd(m32, xt, True)
                fns["torch_f32", "fwdbwd"] = t_fwdbwd(m32, xt, dyt)
                fns["torch_bf16", "fwdbwd"] = t_fwdbwd(mb, xtb, dytb)
                fns["torch_autocast", "fwdbwd"] = t_fwdbwd(m32, xt, dyt, True)
                y_ref = t_fwd(m32, xt)().numpy()
            for prec in ("f32", "bf16"):
                f = openvino_lstm(w, T, B, threads, prec)
                if callable(f):
                    fns[f"openvino_{prec}", "fwd"] = (lambda f=f: f(x))
                elif (threads, T, B, H) == (threads_list[0],) + shapes[0]:
                    print(f"openvino {prec}: skipped, {f}")
                check = float(np.abs(np.asarray(fl.lstm_forward(xb, *wb).y, np.float32) - y_ref).max())
            for mode in modes:
                pairs = [(name, fn) for (name, md), fn in fns.items() if md == mode]
                stats = _bench.measure_interleaved(pairs, min_time=args.min_time)
                med = {name: s["median_ms"] for name, s in stats.items()}
                row = {"T": T, "B": B, "H": H, "threads": threads, "mode": mode, "median_ms": med,
                       "max_abs_diff_vs_torch_f32": check,
                       "samples_ms": {name: s["samples_ms"] for name, s in stats.items()}}
                rows.append(row)
                ratios = " ".join(f"{n}/fl_bf16={med[n] / med['fl_bf16']:.2f}" for n in med if n != "fl_bf16")
                print(f"T={T} B={B} H={H} thr={threads} {mode:6s} " +
                      " ".join(f"{n}={v:.2f}" for n, v in med.items()) + f" ms | {ratios}"
                      + (f" | maxdiff {check:.1e}" if check is not None else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "min_time": args.min_time, "results": rows}, f, indent=1)
        print(f"raw results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
