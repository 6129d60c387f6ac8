"""The CUDA backend's driver and kernels, run on the CPU.

bench/dev/emu/run.sh compiles csrc/cuda/*.cu as host C++ against CPU
stand-ins for the CUDA runtime and cuBLAS and checks fl_cuda_lstm_forward /
_backward / _cell against the CPU core in float64 on the same inputs (rounded
to the storage dtype): every mode and feed, lengths, batch_first with padded
strides, biases, initial states, training and inference, in float64, float32,
float16 and bfloat16, outputs NaN-poisoned; the fallback path (each launch a
loop over blocks and threads) and the persistent kernels (every thread a
fiber, so block and grid barriers and warp shuffles really wait), checking
which path ran. Not covered: the GPU itself (real cuBLAS, timing, the memory
model, occupancy); see tests/test_cuda.py, which ran on an H100.

About 35 s with the compile, so it runs only with FUSEDLSTM_CUDA_EMU=1 (CI
sets it).
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("FUSEDLSTM_CUDA_EMU") != "1",
                    reason="set FUSEDLSTM_CUDA_EMU=1 to compile and run the CUDA emulation (about 35 s)")
def test_cuda_backend_under_cpu_emulation(seed):
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for tool in ("g++", "cmake"):
        assert shutil.which(tool), f"{tool} is needed for the emulation"
    assert (pathlib.Path(cuda_home) / "include" / "cuda_runtime.h").exists(), f"no CUDA headers in {cuda_home}"
    proc = subprocess.run(["bash", str(ROOT / "bench/dev/emu/run.sh"), str(seed)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"emulation failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "0 failures" in proc.stdout
