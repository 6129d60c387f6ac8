"""fusedlstm (CUDA) vs torch.nn.LSTM (cuDNN) on one GPU, same run, same inputs.

    python bench/bench_gpu.py                 # full grid within --budget seconds
    python bench/bench_gpu.py --quick         # a few shapes (smoke test)

Arrays are torch CUDA tensors; fusedlstm reads them through their data
pointers (zero-copy, see fusedlstm/_device.py) and runs on torch's
current stream. Timing: CUDA events around each repetition, median over the
repetitions after warm-up; forward = lstm_forward(training=False) vs
nn.LSTM under no_grad; forward+backward = lstm_forward(training=True) +
lstm_backward(dy) vs nn.LSTM forward + autograd backward (grads of x, h0, c0 and
the weights). dtypes: fp32 strict (TF32 off in cuDNN and cuBLAS), TF32
(allowed on both sides), bf16, fp16. ratio = torch ms / fusedlstm ms
(> 1: fusedlstm faster). max|dy| is the largest difference of the forward
outputs y between the two, as a sanity check. Both of fusedlstm's CUDA paths
are timed, each forced with FUSEDLSTM_CUDA_PATH ("pers": the persistent
forward / backward kernels, nan where they do not fit; "fb": the per-step
GEMM + pointwise fallback); the ratio uses the faster of the two.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

import fusedlstm

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def time_ms(fn, reps, warmup=2, inner=1):
    """Median over reps of the time of `inner` calls back to back, per call.
    inner = 1: each call alone, the host waiting for it (latency, host work
    included); inner > 1: calls queued without waiting, as in a training loop
    (the GPU's time per call, host work hidden where the GPU is slower)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    return statistics.median(times)


def one(T, B, H, dname, reps, paths, inner):
    dt = DTYPES[dname]
    set_tf32(dname == "tf32")
    I = H
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H).cuda().to(dt)
    x = torch.randn(T, B, I, device="cuda", dtype=dt)
    dy = torch.randn(T, B, H, device="cuda", dtype=dt)
    w = [p.detach() for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)]
    tf32 = dname == "tf32"

    def torch_fwd():
        with torch.no_grad():
            return lstm(x)

    xg = x.clone().requires_grad_(True)

    def torch_fb():
        y, _ = lstm(xg)
        y.backward(dy)

    def fl_fwd():
        return fusedlstm.lstm_forward(x, *w, allow_tf32=tf32)

    def fl_fb():
        res = fusedlstm.lstm_forward(x, *w, training=True, allow_tf32=tf32)
        return fusedlstm.lstm_backward(res, dy=dy)

    y_t = torch_fwd()[0]
    row = dict(T=T, B=B, H=H, dtype=dname)
    row["torch_fwd"] = time_ms(torch_fwd, reps)
    row["torch_fwd_q"] = time_ms(torch_fwd, reps, inner=inner)
    row["torch_fb"] = time_ms(torch_fb, reps)
    # Each of fusedlstm's two CUDA paths, forced; "auto" (the default) picks
    # the persistent kernels where they fit and B * ceil(H / #SMs) * H <= 32768.
    for path in ("persistent", "fallback"):
        if path not in paths:
            row.update({f"max_dy_{path}": float("nan"), f"fwd_{path}": float("nan"), f"fb_{path}": float("nan"),
                        f"fwdq_{path}": float("nan"), f"ran_{path}": "skip"})
            continue
        os.environ["FUSEDLSTM_CUDA_PATH"] = path
        try:
            y_f = fl_fwd().y
            ran_fwd = fusedlstm._core.cuda_info("last_forward_path")
            row[f"max_dy_{path}"] = float((y_t.float() - y_f.float()).abs().max())
            row[f"fwd_{path}"] = time_ms(fl_fwd, reps) if ran_fwd == path else float("nan")
            row[f"fwdq_{path}"] = time_ms(fl_fwd, reps, inner=inner) if ran_fwd == path else float("nan")
            fl_fb()
            ran_bwd = fusedlstm._core.cuda_info("last_backward_path")
            row[f"fb_{path}"] = time_ms(fl_fb, reps) if ran_bwd == path else float("nan")
            row[f"ran_{path}"] = f"{ran_fwd[:4]}/{ran_bwd[:4]}"
        finally:
            os.environ.pop("FUSEDLSTM_CUDA_PATH")
    set_tf32(False)
    return row


def _max_dy(r):
    vals = [v for v in (r["max_dy_persistent"], r["max_dy_fallback"]) if v == v]
    return max(vals) if vals else float("nan")


def _best(r, kind):
    vals = [v for v in (r[f"{kind}_persistent"], r[f"{kind}_fallback"]) if v == v]
    return min(vals) if vals else float("nan")


def print_table(rows):
    print("\nms per call. fwd: one call, the host waiting for it; fwd queued: calls back to back (GPU time "
          "per call). pers / fb: fusedlstm with FUSEDLSTM_CUDA_PATH forced to the persistent kernels / the per-step "
          "fallback (nan where that path does not fit); us/step and ratio (torch / fusedlstm) use the faster path.")
    print("| T | B | H | dtype | fwd torch | pers | fb | us/step | ratio | fwd queued torch | pers | fb | us/step | "
          "ratio | f+b torch | pers | fb | ratio | pers ran fwd/bwd | max abs dy |")
    print("|---:|---:|---:|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|---:|")
    for r in rows:
        bf, bq, bb = _best(r, "fwd"), _best(r, "fwdq"), _best(r, "fb")
        print(f"| {r['T']} | {r['B']} | {r['H']} | {r['dtype']} | {r['torch_fwd']:.3f} | {r['fwd_persistent']:.3f} | "
              f"{r['fwd_fallback']:.3f} | {1000 * bf / r['T']:.1f} | {r['torch_fwd'] / bf:.2f}x | "
              f"{r['torch_fwd_q']:.3f} | {r['fwdq_persistent']:.3f} | {r['fwdq_fallback']:.3f} | "
              f"{1000 * bq / r['T']:.1f} | {r['torch_fwd_q'] / bq:.2f}x | "
              f"{r['torch_fb']:.3f} | {r['fb_persistent']:.3f} | {r['fb_fallback']:.3f} | {r['torch_fb'] / bb:.2f}x | "
              f"{r['ran_persistent']} | {_max_dy(r):.1e} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=110.0, help="seconds; later shapes are skipped")
    ap.add_argument("--json", default=None)
    ap.add_argument("--paths", default="persistent,fallback", help="fusedlstm CUDA paths to time")
    args = ap.parse_args()
    if not fusedlstm.cuda_available():
        sys.exit(f"CUDA unusable: {fusedlstm.build_info()['cuda']}")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}, fusedlstm path {fusedlstm.build_info()['cuda']['path']}",
          flush=True)
    if args.quick:
        grid = [(100, 16, 256, d) for d in DTYPES] + [(100, 64, 512, "fp32")]
    else:
        # Shape-major, so a budget cut drops whole shapes, never a dtype.
        grid = [(100, B, H, d) for B in (16, 1, 64, 256) for H in (256, 512, 1024) for d in DTYPES]
        grid += [(1000, 16, 256, d) for d in DTYPES] + [(1000, 64, 512, "bf16"), (100, 1024, 1024, "fp32"),
                                                         (100, 1024, 1024, "bf16")]
    t0 = time.time()
    rows, skipped = [], []
    for T, B, H, d in grid:
        if time.time() - t0 > args.budget:
            skipped.append((T, B, H, d))
            continue
        reps = 5 if T * B * H >= 100 * 256 * 1024 else 10
        try:
            r = one(T, B, H, d, reps, args.paths.split(","), 10 if T * B * H < 100 * 256 * 1024 else 2)
        except Exception as exc:  # report and go on: one shape must not hide the others
            print(f"T={T} B={B} H={H} {d}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        rows.append(r)
        print(f"T={T:5d} B={B:5d} H={H:5d} {d:5s} fwd torch {r['torch_fwd']:8.3f} ms pers {r['fwd_persistent']:8.3f}"
              f" fallback {r['fwd_fallback']:8.3f} | fwd+bwd torch {r['torch_fb']:8.3f} pers {r['fb_persistent']:8.3f}"
              f" fallback {r['fb_fallback']:8.3f} | ran {r['ran_persistent']} max|dy| "
              f"{_max_dy(r):.1e}", flush=True)
    if skipped:
        print(f"skipped (over the {args.budget:.0f} s budget): {skipped}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print_table(rows)

if __name__ == "__main__":
    main()
