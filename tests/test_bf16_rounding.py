"""The CPU kernels' SIMD float32 -> bfloat16 rounding equals the scalar rule
(csrc/core/bf16.h: to nearest even, NaN kept quiet) bit for bit, per ISA;
and the scalar rule equals ml_dtypes' (numpy's bfloat16) on finite values."""

import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = {
    "avx512": ["-DISA_AVX512", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"],
    "avx2": ["-DISA_AVX2", "-mavx2", "-mfma"],
    "generic": [],
}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(f.read().split())
    except OSError:
        return set()


@pytest.mark.parametrize("simd", sorted(FLAGS))
def test_simd_rounding_matches_scalar(simd, tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) on PATH")
    needs = {"avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl"}, "avx2": {"avx2", "fma"}}.get(simd, set())
    if simd != "generic" and os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip(f"{simd} is an x86-64 ISA; this machine is {os.uname().machine}")
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    exe = tmp_path / "bf16_rounding"
    subprocess.run([cxx, "-std=c++20", "-O2", "-I", os.path.join(ROOT, "csrc"), *FLAGS[simd],
                    os.path.join(ROOT, "tests", "c", "bf16_rounding.cpp"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("0 mismatches in "), out.stdout


def test_library_rounding_matches_ml_dtypes():
    """A bfloat16 call's outputs are the float32 results rounded as numpy's
    bfloat16 rounds them: h_n of a one-step RNN with identity-like weights
    is tanh of a value computed exactly, so only the final rounding differs."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 numpy arrays need ml_dtypes")
    import fusedlstm as fl
    bf = ml_dtypes.bfloat16
    rng = np.random.default_rng()
    n = 4099
    x = rng.standard_normal((1, 1, 1)).astype(bf)
    w_ih = rng.standard_normal((n, 1)).astype(bf)
    w_hh = np.zeros((n, n), bf)
    res = fl.rnn_forward(x, w_ih, w_hh, nonlinearity="relu")
    exact = np.maximum(np.asarray(x, np.float32)[0, 0, 0] * np.asarray(w_ih, np.float32)[:, 0], 0)  # exact in float32
    assert res.h_n.dtype == np.dtype(bf)
    np.testing.assert_array_equal(np.asarray(res.h_n, np.float32)[0], exact.astype(bf).astype(np.float32))
