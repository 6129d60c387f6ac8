#!/usr/bin/env python3
"""One-step (one-to-one, streaming) cost: fusedlstm.lstm_cell vs torch.nn.LSTMCell.

float32, I = H, 2 threads by default, inference; median microseconds per call
over 100 calls after 20 warm-up calls, both measured in the same run.

    python bench/bench_cell.py [--threads N]
"""

import argparse
import time

import numpy as np

import fusedlstm


def median_us(fn, warmup=20, reps=100):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    fusedlstm.set_num_threads(args.threads)
    print(f"threads={args.threads} isa={fusedlstm.get_isa()} torch {torch.__version__}")
    print("| B | H | fusedlstm us | torch us | speedup |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for B, H in [(1, 256), (4, 256), (16, 256), (64, 256), (64, 512), (256, 512)]:
        cell = torch.nn.LSTMCell(H, H)
        w = [p.detach().numpy() for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
        x = rng.standard_normal((B, H), dtype=np.float32)
        h = rng.standard_normal((B, H), dtype=np.float32)
        c = rng.standard_normal((B, H), dtype=np.float32)
        xt, ht, ct = map(torch.from_numpy, (x, h, c))
        h_new, c_new = fusedlstm.lstm_cell(x, h, c, *w)
        with torch.inference_mode():
            th, tc = cell(xt, (ht, ct))
        assert np.abs(h_new - th.numpy()).max() < 1e-4 and np.abs(c_new - tc.numpy()).max() < 1e-4

        def run_torch():
            with torch.inference_mode():
                cell(xt, (ht, ct))

        ours = median_us(lambda: fusedlstm.lstm_cell(x, h, c, *w))
        theirs = median_us(run_torch)
        print(f"| {B} | {H} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
