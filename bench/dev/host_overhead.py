"""Where the ~0.27 ms between one-call and queued timings goes (H100 run 4:
B = 1, H = 256 fp32 persistent forward 0.834 ms per call waited for, 0.564
queued). Hypotheses, each measured here in one run (gpu_check.sh runs this):

1. host work per call: time of lstm_forward on the host clock, without
   waiting for the GPU (the call only enqueues);
2. the stream-ordered allocator: the driver's default memory pool releases
   its free memory at every synchronize (release threshold 0), so a
   synchronizing caller pays for mapping fresh memory on every call. Measured
   by setting that pool's release threshold to "keep everything" (through
   CuPy's runtime bindings) and timing the one-call case again.

Prints one line per measurement; needs torch with CUDA, and CuPy for (2).
"""
import os
import pathlib
import statistics
import sys
import time

import torch

import fusedlstm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench_gpu import time_ms  # noqa: E402  (CUDA-event timing, median; inner > 1 = queued calls)


def host_ms(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(out)


def main():
    T, B, H = 100, 1, 256
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device="cuda")
    w_ih, w_hh = torch.randn(4 * H, H, device="cuda") / 16, torch.randn(4 * H, H, device="cuda") / 16
    b = torch.randn(4 * H, device="cuda")

    def fwd():  # the path comes from FUSEDLSTM_CUDA_PATH, read on every call
        return fusedlstm.lstm_forward(x, w_ih, w_hh, b, b)

    for path in ("persistent", "fallback"):
        os.environ["FUSEDLSTM_CUDA_PATH"] = path
        print(f"{path:10s} B={B} H={H}: one call {time_ms(fwd, 20):.3f} ms, "
              f"queued {time_ms(fwd, 20, inner=10):.3f} ms, host time per call {host_ms(fwd):.3f} ms", flush=True)
    try:
        import cupy
        rt = cupy.cuda.runtime
        pool = rt.deviceGetDefaultMemPool(torch.cuda.current_device())
        release_threshold = getattr(rt, "cudaMemPoolAttrReleaseThreshold", 4)  # 4: CUDA's enum value
        rt.memPoolSetAttribute(pool, release_threshold, 2 ** 64 - 1)
    except Exception as exc:  # report and stop: the other numbers stand
        print(f"could not set the default pool's release threshold: {type(exc).__name__}: {exc}")
        return
    for path in ("persistent", "fallback"):
        os.environ["FUSEDLSTM_CUDA_PATH"] = path
        print(f"{path:10s} with the pool keeping its memory: one call {time_ms(fwd, 20):.3f} ms, host time per call "
              f"{host_ms(fwd):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
