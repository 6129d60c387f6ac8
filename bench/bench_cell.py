#!/usr/bin/env python3
"""One-step (one-to-one, streaming) cost: fusedlstm.lstm_cell vs torch.nn.LSTMCell.

float32, I = H, 2 threads by default, inference; median microseconds per call
over 100 calls after 20 warm-up calls, both measured in the same run.
Without torch (or with --no-torch) fusedlstm alone, its output checked
against fusedlstm.reference, the torch columns skipped with a note.

    python bench/bench_cell.py [--threads N] [--reps N] [--no-torch]
"""

import argparse
import time

import numpy as np

import fusedlstm

SHAPES = [(1, 256), (4, 256), (16, 256), (64, 256), (64, 512), (256, 512)]


def median_us(fn, warmup=20, reps=100):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def positive_int(s):
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be a positive integer")
    return v


def shape(s):
    try:
        B, H = (int(v) for v in s.split(","))
        assert B > 0 and H > 0
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"bad shape {s!r}: expected B,H (positive integers)") from None
    return B, H


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--reps", type=positive_int, default=100, help="timed calls per library (default 100)")
    parser.add_argument("--shapes", type=shape, nargs="+", default=SHAPES, metavar="B,H",
                        help="B,H pairs (I = H); default " + " ".join(f"{b},{h}" for b, h in SHAPES))
    parser.add_argument("--no-torch", action="store_true", help="do not import torch: fusedlstm alone")
    args = parser.parse_args()
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass

    fusedlstm.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
        print(f"threads={args.threads} isa={fusedlstm.get_isa()} torch {torch.__version__}")
    else:
        from fusedlstm import reference
        print(f"threads={args.threads} isa={fusedlstm.get_isa()}; note: torch "
              f"{'disabled (--no-torch)' if args.no_torch else 'is not installed'}: fusedlstm alone "
              f"(checked against fusedlstm.reference), the torch columns skipped")
    print("| B | H | fusedlstm us | torch us | speedup |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for B, H in args.shapes:
        x = rng.standard_normal((B, H), dtype=np.float32)
        h = rng.standard_normal((B, H), dtype=np.float32)
        c = rng.standard_normal((B, H), dtype=np.float32)
        if torch is not None:
            cell = torch.nn.LSTMCell(H, H)
            w = [p.detach().numpy() for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
            xt, ht, ct = map(torch.from_numpy, (x, h, c))
            with torch.inference_mode():
                th, tc = cell(xt, (ht, ct))
            want_h, want_c = th.numpy(), tc.numpy()
        else:
            k = 1.0 / np.sqrt(H)
            w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((4 * H, H), (4 * H, H), (4 * H,), (4 * H,))]
            ref = reference.forward(x[None], *w, h0=h, c0=c, mode="many_to_many")
            want_h, want_c = ref.h_n, ref.c_n
        h_new, c_new = fusedlstm.lstm_cell(x, h, c, *w)
        assert np.abs(h_new - want_h).max() < 1e-4 and np.abs(c_new - want_c).max() < 1e-4

        ours = median_us(lambda: fusedlstm.lstm_cell(x, h, c, *w), reps=args.reps)
        if torch is None:
            print(f"| {B} | {H} | {ours:.0f} | - | - |")
            continue

        def run_torch():
            with torch.inference_mode():
                cell(xt, (ht, ct))

        theirs = median_us(run_torch, reps=args.reps)
        print(f"| {B} | {H} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
