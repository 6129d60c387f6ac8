"""One persistent forward (and backward) for Nsight Compute (bench/gpu_check.sh,
PROFILE=1): a warm-up call, then the profiled one.

    python bench/dev/profile_persistent.py B H [dtype]     # dtype: fp32 (default), bf16
"""
import os
import sys

import torch

import fusedlstm

os.environ["FUSEDLSTM_CUDA_PATH"] = "persistent"
B, H = int(sys.argv[1]), int(sys.argv[2])
dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[3] if len(sys.argv) > 3 else "fp32"]
T = 100
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(T, B, H, device="cuda", generator=g).to(dt)
w_ih = (torch.randn(4 * H, H, device="cuda", generator=g) / H ** .5).to(dt)
w_hh = (torch.randn(4 * H, H, device="cuda", generator=g) / H ** .5).to(dt)
for _ in range(2):
    res = fusedlstm.lstm_forward(x, w_ih, w_hh, training=True)
    fusedlstm.lstm_backward(res, dy=torch.ones_like(res.y))
torch.cuda.synchronize()
print("paths:", fusedlstm._core.cuda_info("last_forward_path"), fusedlstm._core.cuda_info("last_backward_path"))
