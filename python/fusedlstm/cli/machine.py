"""What the machine is, what is installed beside fusedlstm, and what the machine can do
(measured): shared by ``fusedlstm info`` and ``fusedlstm bench``. Never imports torch
itself: callers pass it (or None)."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import time

import numpy as np

from .. import _bench

# /proc/cpuinfo flags worth naming for these kernels
ISA_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# peers and optional extras, by import name (the label is what tables print)
PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx",
            "matplotlib": "matplotlib", "tqdm": "tqdm", "numpy": "numpy"}


def cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [fl for fl in ISA_FLAGS if fl in have]
    except OSError:
        pass
    return []


def short_cpu_name(name: str) -> str:
    """The CPU model without the vendor's noise, for titles and file names."""
    for noise in ("(R)", "(TM)", "(tm)", " CPU", " Processor", " processor"):
        name = name.replace(noise, "")
    name = name.split(" @ ")[0]
    return " ".join(name.split())


def versions(torch=None) -> dict:
    """{package: version or None} for the peers and extras; torch only as passed
    (importing torch is the caller's decision)."""
    out = {}
    for label, mod in PACKAGES.items():
        if label == "torch":
            out[label] = getattr(torch, "__version__", None) if torch is not None else None
            continue
        try:
            m = importlib.import_module(mod)
            out[label] = str(getattr(m, "__version__", None) or getattr(m, "get_version", lambda: "?")())
        except Exception:  # noqa: BLE001 - not installed, or broken: either way not usable
            out[label] = None
    return out


def gpu_info(torch=None) -> dict:
    """The first GPU: name, SM count, memory, capability, driver; or why there is none."""
    info = {"available": False}
    if torch is None:
        info["reason"] = "torch not installed (the benchmark's CUDA arrays and cuDNN come from torch)"
    else:
        try:
            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(0)
                info.update(available=True, name=p.name, sm_count=p.multi_processor_count,
                            memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                            cuda_runtime=torch.version.cuda,
                            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
            else:
                info["reason"] = f"torch {torch.__version__} sees no CUDA device"
        except Exception as e:  # noqa: BLE001
            info["reason"] = f"{type(e).__name__}: {e}"
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and r.stdout.strip():
                name, driver = [s.strip() for s in r.stdout.strip().splitlines()[0].split(",", 1)]
                info["driver"] = driver
                info.setdefault("name", name)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return info


def describe(fl, torch=None) -> dict:
    """Everything a result file should say about where it was measured."""
    info = _bench.machine_info(fl, torch)
    info["cpu_short"] = short_cpu_name(info["cpu"])
    info["cpu_flags"] = cpu_flags()
    info["platform"] = platform.platform()
    try:
        info["build"] = fl.build_info()
    except Exception as e:  # noqa: BLE001
        info["build"] = {"error": f"{type(e).__name__}: {e}"}
    info["versions"] = versions(torch)
    info["gpu"] = gpu_info(torch)
    return info


# --------------------------------------------------------------------------
# measured peaks
# --------------------------------------------------------------------------

def measure_peak(seconds=1.0, n=768) -> dict:
    """The float32 GEMM rate numpy's BLAS reaches here (GFLOP/s, all its threads) and
    the copy bandwidth (GB/s, read + write): a practical compute and memory roof.
    It is what a good GEMM gets on this machine, not the FMA units' paper peak
    (bench/fma_peak.cpp measures that, with a compiler)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)  # warm-up: threads started, pages touched
    best, t_end, k = float("inf"), time.perf_counter() + seconds / 2, 0
    while time.perf_counter() < t_end or k < 5:  # the best of >= 5: robust to a busy neighbour
        k += 1
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    gflops = 2.0 * n ** 3 / best / 1e9
    src = np.ones(16 * 2**20, np.float32)  # 64 MiB: past the caches
    dst = np.empty_like(src)
    np.copyto(dst, src)
    bw, t_end = float("inf"), time.perf_counter() + seconds / 2
    while time.perf_counter() < t_end or bw == float("inf"):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        bw = min(bw, time.perf_counter() - t0)
    cores = _bench.usable_cores()
    return {"sgemm_gflops": gflops, "sgemm_gflops_per_core": gflops / cores, "copy_gbs": 2.0 * src.nbytes / bw / 1e9,
            "cores": cores, "method": f"numpy float32 matmul {n}x{n} (best of repeats, BLAS's own threads); "
                                     f"np.copyto of 64 MiB, read + write"}


def peak_for_threads(peak: dict, threads: int) -> float:
    """The GEMM roof for a run on `threads` threads: the per-core rate times the cores used."""
    return peak["sgemm_gflops_per_core"] * min(threads, peak["cores"])


def cpu_count_note() -> str:
    n, u = os.cpu_count() or 1, _bench.usable_cores()
    return f"{n} logical cores" + ("" if n == u else f" ({u} usable)")
