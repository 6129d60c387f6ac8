"""fusedlstm (CUDA) vs torch.nn.LSTM (cuDNN) on one GPU, same run, same inputs.

    python bench/bench_gpu.py                 # full grid within --budget seconds
    python bench/bench_gpu.py --quick         # a few shapes (smoke test)

Arrays are torch CUDA tensors; fusedlstm reads them through their data
pointers (zero-copy, see fusedlstm/_cuda_dispatch.py) and runs on torch's
current stream. Timing: CUDA events around each repetition, median over the
repetitions after warm-up; forward = lstm_forward(training=False) vs
nn.LSTM under no_grad; forward+backward = lstm_forward(training=True) +
lstm_backward(dy) vs nn.LSTM forward + autograd backward (grads of x, h0, c0 and
the weights). dtypes: fp32 strict (TF32 off in cuDNN and cuBLAS), TF32
(allowed on both sides), bf16, fp16. ratio = torch ms / fusedlstm ms
(> 1: fusedlstm faster). max|dy| is the largest difference of the forward
outputs y between the two, as a sanity check. "pers" columns: the forward with
FUSEDLSTM_CUDA_PATH=persistent (the persistent kernel; nan where it does not
fit and the fallback ran).
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


def time_ms(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def one(T, B, H, dname, reps):
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
    y_f = fl_fwd().y
    diff = float((y_t.float() - y_f.float()).abs().max())
    row = dict(T=T, B=B, H=H, dtype=dname, max_dy=diff)
    row["torch_fwd"] = time_ms(torch_fwd, reps)
    row["fl_fwd"] = time_ms(fl_fwd, reps)
    # The persistent forward kernel, where it fits (FUSEDLSTM_CUDA_PATH=persistent).
    os.environ["FUSEDLSTM_CUDA_PATH"] = "persistent"
    try:
        y_p = fl_fwd().y
        row["persistent"] = fusedlstm._cuda.last_forward_path() == "persistent"
        row["fl_fwd_p"] = time_ms(fl_fwd, reps) if row["persistent"] else float("nan")
        row["max_dy_p"] = float((y_t.float() - y_p.float()).abs().max())
    finally:
        os.environ.pop("FUSEDLSTM_CUDA_PATH")
    row["torch_fb"] = time_ms(torch_fb, reps)
    row["fl_fb"] = time_ms(fl_fb, reps)
    set_tf32(False)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=110.0, help="seconds; later shapes are skipped")
    ap.add_argument("--json", default=None)
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
        grid = [(100, B, H, d) for B in (1, 16, 64, 256) for H in (256, 512, 1024) for d in DTYPES]
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
            r = one(T, B, H, d, reps)
        except Exception as exc:  # report and go on: one shape must not hide the others
            print(f"T={T} B={B} H={H} {d}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        rows.append(r)
        print(f"T={T:5d} B={B:5d} H={H:5d} {d:5s} fwd torch {r['torch_fwd']:8.3f} ms fl {r['fl_fwd']:8.3f} ms "
              f"({r['torch_fwd'] / r['fl_fwd']:.2f}x)  fwd+bwd torch {r['torch_fb']:8.3f} fl {r['fl_fb']:8.3f} "
              f"({r['torch_fb'] / r['fl_fb']:.2f}x)  max|dy| {r['max_dy']:.1e}  persistent fwd "
              f"{r['fl_fwd_p']:.3f} ms ({r['torch_fwd'] / r['fl_fwd_p']:.2f}x, max|dy| {r['max_dy_p']:.1e})",
              flush=True)
    if skipped:
        print(f"skipped (over the {args.budget:.0f} s budget): {skipped}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\n| T | B | H | dtype | fwd torch ms | fwd fl ms | us/step | ratio | pers ms | pers us/step | "
          "pers ratio | fwd+bwd torch ms | fwd+bwd fl ms | ratio | max abs dy |")
    print("|---:|---:|---:|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['B']} | {r['H']} | {r['dtype']} | {r['torch_fwd']:.3f} | {r['fl_fwd']:.3f} | "
              f"{1000 * r['fl_fwd'] / r['T']:.1f} | {r['torch_fwd'] / r['fl_fwd']:.2f}x | {r['fl_fwd_p']:.3f} | "
              f"{1000 * r['fl_fwd_p'] / r['T']:.1f} | {r['torch_fwd'] / r['fl_fwd_p']:.2f}x | "
              f"{r['torch_fb']:.3f} | {r['fl_fb']:.3f} | {r['torch_fb'] / r['fl_fb']:.2f}x | "
              f"{max(r['max_dy'], r['max_dy_p']):.1e} |")


if __name__ == "__main__":
    main()
