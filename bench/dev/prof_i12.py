#!/usr/bin/env python3
"""Issue 12 profiling driver: one fusedlstm float32 shape in a loop, no torch,
for `perf record` (2 threads by default). Prints ms per call and GFLOP/s.

  perf record -F 2000 -g -o out.data -- python bench/dev/prof_i12.py 100 64 256 fwd 3.0
"""
import sys, time
import numpy as np
import fusedlstm as fl

T, B, H = (int(a) for a in sys.argv[1:4])
mode = sys.argv[4] if len(sys.argv) > 4 else "fwd"
secs = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0
nt = int(sys.argv[6]) if len(sys.argv) > 6 else 2
I = H
fl.set_num_threads(nt)
rng = np.random.default_rng(0)
k = 1.0 / np.sqrt(H)
u = lambda *s: rng.uniform(-k, k, size=s).astype(np.float32)
x = rng.standard_normal((T, B, I)).astype(np.float32)
w_ih, w_hh, b_ih, b_hh = u(4 * H, I), u(4 * H, H), u(4 * H), u(4 * H)
dy = rng.standard_normal((T, B, H)).astype(np.float32)

def call():
    if mode == "fwd":
        return fl.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, training=False)
    res = fl.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, training=True)
    return fl.lstm_backward(res, dy=dy)

for _ in range(2):
    call()
ts = []
t_end = time.perf_counter() + secs
while time.perf_counter() < t_end or len(ts) < 5:
    t0 = time.perf_counter(); call(); ts.append(time.perf_counter() - t0)
med = float(np.median(ts))
flops = 2.0 * T * B * 4 * H * (I + H) * (3 if mode != "fwd" else 1)
print(f"T={T} B={B} H={H} {mode} threads={nt} isa={fl.get_isa()} reps={len(ts)} "
      f"median_ms={med*1e3:.3f} gflops={flops/med/1e9:.1f}")
