"""A small CUDA case for compute-sanitizer (bench/gpu_check.sh): forward,
backward and cell in every dtype and mode, odd sizes, with lengths. Exits
non-zero on a Python error; memcheck / racecheck report through the sanitizer.
Arguments: the paths to run (default: fallback persistent); gpu_check.sh also
runs it alone, under a timeout, as a smoke test of each path."""
import os
import sys

import numpy as np
import torch

import fusedlstm

assert fusedlstm.cuda_available(), fusedlstm.build_info()["cuda"]
rng = np.random.default_rng(0)
T, B, I, H = 5, 3, 7, 9
PATHS = sys.argv[1:] or ["fallback", "persistent"]
for path, dt in [(p, d) for p in PATHS
                 for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]:
    os.environ["FUSEDLSTM_CUDA_PATH"] = path
    t = lambda a: torch.as_tensor(a).to("cuda", dt)  # noqa: E731
    w_ih, w_hh = t(rng.standard_normal((4 * H, I)) * .3), t(rng.standard_normal((4 * H, H)) * .3)
    w_sq = t(rng.standard_normal((4 * H, H)) * .3)
    b = t(rng.standard_normal(4 * H) * .3)
    h0, c0 = t(rng.standard_normal((B, H))), t(rng.standard_normal((B, H)))
    x = t(rng.standard_normal((T, B, I)))
    for mode in ("many_to_many", "many_to_one"):
        for lengths in (None, [T, 1, 3]):
            res = fusedlstm.lstm_forward(x, w_ih, w_hh, b, b, h0, c0, mode=mode, lengths=lengths, training=True,
                                         allow_tf32=True)
            dy = torch.ones_like(res.y)
            fusedlstm.lstm_backward(res, dy=dy, dh_n=torch.ones_like(h0), dc_n=torch.ones_like(c0))
    for feed in ("repeat", "first", "output"):
        xi = t(rng.standard_normal((B, H if feed == "output" else I)))
        res = fusedlstm.lstm_forward(xi, w_sq if feed == "output" else w_ih, w_hh, b, None, mode="one_to_many",
                                     steps=T, feed=feed, training=True)
        fusedlstm.lstm_backward(res, dy=torch.ones_like(res.y))
    fusedlstm.lstm_cell(x[0], h0, c0, w_ih, w_hh, b, b)
    torch.cuda.synchronize()
    print(f"{path} {dt}: ran", flush=True)
print("sanitizer case done")
