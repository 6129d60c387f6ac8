"""The CUDA backend's drivers and kernels, run on the CPU, through the public C API.

tests/emu/check.sh compiles csrc/cuda/*.cu as host C++ against CPU stand-ins
for the CUDA runtime and cuBLAS into libfusedlstm_cuda_emu.so (tests/emu/build.sh),
links tests/emu/emu_check.cpp against the CPU library (libfusedlstm_core.a) and
runs it with FUSEDLSTM_CUDA_LIBRARY pointing at the emulated backend. emu_check
calls fl_lstm_forward / _backward, fl_lstm_cell / _cell_backward and
fl_lstm_stack_forward / _backward on FL_DEVICE_CUDA and on FL_DEVICE_CPU (float64)
with the same inputs, rounded to the storage dtype: every mode and feed, reverse,
proj_size, lengths, strided x / y / dy / dx, with and without biases and h0 / c0,
training and inference, 2-layer bidirectional stacks with projection, dropout
masks and lengths on a reserve sized by fl_lstm_stack_reserve_bytes(CUDA), in
float64, float32, float16 and bfloat16, outputs NaN-poisoned, under the tolerance
policy of python/fusedlstm/tolerance.py; on the fallback path (each launch a loop
over blocks and threads) and on the persistent kernels (every thread a fiber, so
block and grid barriers and warp shuffles really wait), checking which path ran.
Not covered: the GPU itself (real cuBLAS, TF32, timing, the memory model,
occupancy): tests/test_cuda.py on a GPU.

About two minutes with the compile, so it runs only with FUSEDLSTM_CUDA_EMU=1 (CI
sets it).
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("FUSEDLSTM_CUDA_EMU") != "1",
                    reason="set FUSEDLSTM_CUDA_EMU=1 to compile and run the CUDA emulation (about two minutes)")
def test_cuda_backend_under_cpu_emulation(seed, tmp_path_factory):
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for tool in ("g++", "cmake", "ninja"):
        assert shutil.which(tool), f"{tool} is needed for the emulation"
    assert (pathlib.Path(cuda_home) / "include" / "cuda_runtime.h").exists(), f"no CUDA headers in {cuda_home}"
    out = os.environ.get("FUSEDLSTM_EMU_BUILD") or str(tmp_path_factory.mktemp("emu"))
    proc = subprocess.run(["bash", str(ROOT / "tests/emu/check.sh"), out, str(seed)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"emulation failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.rstrip().endswith(" cases, 0 failures"), proc.stdout[-2000:]
