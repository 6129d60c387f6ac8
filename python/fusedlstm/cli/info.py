"""``fusedlstm info``: the machine (CPU model, ISAs, cores; the GPU's name, driver
and SM count), the build (``fusedlstm.build_info()``) and the peers' versions;
``--peak`` also measures the machine's float32 GEMM rate and copy bandwidth,
``--json`` prints it all as JSON."""

from __future__ import annotations

import json

from . import machine


def add_arguments(p, positive_int):
    p.add_argument("--peak", action="store_true",
                   help="measure the float32 GEMM rate (numpy's BLAS) and the copy bandwidth (~1 s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _import_torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def run(args) -> int:
    import fusedlstm as fl
    torch = _import_torch()
    info = machine.describe(fl, torch)
    if args.peak:
        info["peak"] = machine.measure_peak()
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    b = info["build"]
    print(f"machine  {info['cpu']}, {machine.cpu_count_note()}")
    print(f"         ISAs: {' '.join(info['cpu_flags']) or '?'}")
    print(f"         {info['platform']}, Python {info['python']}")
    g = info["gpu"]
    if g.get("available"):
        print(f"GPU      {g['name']}, {g['sm_count']} SMs, {g['memory_gib']} GiB, compute {g['capability']}, "
              f"driver {g.get('driver', '?')}, CUDA runtime {g.get('cuda_runtime')}, cuDNN {g.get('cudnn')}")
    else:
        print(f"GPU      none usable: {g.get('reason', '?')}" + (f" (driver {g['driver']})" if "driver" in g else ""))
    print(f"build    fusedlstm {b.get('version', '?')}, backends {', '.join(b.get('backends', []))}, "
          f"CPU paths {', '.join(b.get('cpu_isas', []))} (in use: {b.get('cpu_isa_in_use')}), "
          f"{b.get('num_threads')} threads")
    cuda = b.get("cuda", {})
    line = f"         CUDA: compiled {cuda.get('compiled')}"
    if cuda.get("compiled"):
        line += f", archs {', '.join(cuda.get('archs', []))}, nvcc {cuda.get('nvcc') or '?'}, " \
                f"{cuda.get('devices', 0)} device(s)"
    if cuda.get("reason"):
        line += f"; {cuda['reason']}"
    print(line)
    v = info["versions"]
    print("peers    " + ", ".join(f"{k} {v[k] or '-'}" for k in ("torch", "onnxruntime", "openvino")))
    print("extras   " + ", ".join(f"{k} {v[k] or '-'}" for k in ("numpy", "onnx", "matplotlib", "tqdm")))
    if "peak" in info:
        pk = info["peak"]
        print(f"peak     float32 GEMM {pk['sgemm_gflops']:.1f} GFLOP/s on {pk['cores']} cores "
              f"({pk['sgemm_gflops_per_core']:.1f} per core), copy {pk['copy_gbs']:.1f} GB/s")
        print(f"         ({pk['method']})")
    return 0
