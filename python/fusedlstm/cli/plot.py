"""``fusedlstm bench --plot`` and ``--roofline``: figures from the result rows
(matplotlib, an optional extra: ``pip install "fusedlstm[plot]"``).

plot:     for each (mode, dtype, threads) two rows of panels, time (ms, log) and
          speedup (the peer's time over fusedlstm's) against H, one panel per
          (T, B), one line per library; the machine in the title.
roofline: achieved GFLOP/s against arithmetic intensity (flops per byte moved,
          the estimate of peers.Workload.bytes_moved), under the measured roofs
          (numpy's float32 GEMM rate for the threads used, the copy bandwidth).
"""

from __future__ import annotations

import math

COLORS = {"fusedlstm": "C3", "torch": "C0", "torch-bf16": "C9", "torch-autocast": "C4", "onnxruntime": "C2",
          "openvino": "C1", "cudnn": "C0"}


class NoMatplotlib(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NoMatplotlib('matplotlib is not installed: pip install "fusedlstm[plot]" (or matplotlib)') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain(minor=False):
    """Tick labels as plain numbers on log axes (minor ticks: 2 and 5 of each decade only)."""
    from matplotlib.ticker import FuncFormatter

    def f(v, _pos):
        if v <= 0:
            return ""
        mant = v / 10 ** math.floor(math.log10(v) + 1e-9)
        if minor and round(mant) not in (2, 5):
            return ""
        return f"{v:g}"
    return FuncFormatter(f)


def _groups(rows, keys):
    out = {}
    for r in rows:
        if r["median_ms"] is not None:
            out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def plot(path, rows, title):
    plt = _pyplot()
    groups = _groups(rows, ("device", "cell", "dtype", "mode", "threads"))
    if not groups:
        raise ValueError("no timings to plot")
    panels = sorted({(r["T"], r["B"]) for g in groups.values() for r in g})
    ncol, nrow = len(panels), 2 * len(groups)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 0.8, 2.6 * nrow + 0.9), squeeze=False)
    for gi, ((device, cell, dtype, mode, threads), grp) in enumerate(groups.items()):
        impls = list(dict.fromkeys(r["impl"] for r in grp))
        for pj, (T, B) in enumerate(panels):
            at, asp = axes[2 * gi][pj], axes[2 * gi + 1][pj]
            sel = [r for r in grp if r["T"] == T and r["B"] == B]
            for name in impls:
                pts = sorted((r["H"], r["median_ms"], r["speedup"]) for r in sel if r["impl"] == name)
                if not pts:
                    continue
                c = COLORS.get(name)
                at.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=name, ms=4)
                sp = [(p[0], p[2]) for p in pts if p[2]]
                if sp and name != "fusedlstm":
                    asp.plot([p[0] for p in sp], [p[1] for p in sp], "o-", color=c, label=f"vs {name}", ms=4)
            asp.axhline(1.0, color="0.5", lw=0.8, ls="--")
            for ax in (at, asp):
                ax.set_xscale("log", base=2)
                ax.grid(True, which="both", alpha=0.3)
                hs = sorted({r["H"] for r in sel})
                if hs:
                    ax.set_xticks(hs, [str(h) for h in hs])
            at.set_yscale("log")  # 0.5, 2, 50 rather than 5 x 10^-1
            at.yaxis.set_major_formatter(_plain())
            at.yaxis.set_minor_formatter(_plain(minor=True))
            at.set_title(f"{mode} {dtype} {threads}t: T={T}, B={B}", fontsize=9)
            asp.set_xlabel("H (I = H)")
            if pj == 0:
                at.set_ylabel("time, ms (median)")
                asp.set_ylabel("speedup of fusedlstm\n(peer time / ours)")
            if pj == ncol - 1:
                at.legend(fontsize=7)
                if asp.lines[:-1]:
                    asp.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline(path, rows, title, roof_gflops, copy_gbs):
    """roof_gflops: {threads: GFLOP/s} (CPU) or a number; copy_gbs: GB/s or None."""
    plt = _pyplot()
    groups = _groups(rows, ("device", "dtype", "mode", "threads"))
    if not groups:
        raise ValueError("no timings to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups) + 0.6, 4.2), squeeze=False)
    for ax, ((device, dtype, mode, threads), grp) in zip(axes[0], groups.items()):
        ai = [r["flops"] / r["bytes"] for r in grp if r.get("bytes")]
        if not ai:
            continue
        lo, hi = min(ai) / 2, max(ai) * 2
        peak = roof_gflops.get(threads) if isinstance(roof_gflops, dict) else roof_gflops
        if peak:
            xs = [lo * (hi / lo) ** (k / 60) for k in range(61)]
            ys = [min(peak, copy_gbs * x) if copy_gbs else peak for x in xs]
            ax.plot(xs, ys, "-", color="0.3", lw=1.2,
                    label=f"roof: GEMM {peak:.0f} GFLOP/s" + (f", copy {copy_gbs:.0f} GB/s" if copy_gbs else ""))
        for name in dict.fromkeys(r["impl"] for r in grp):
            pts = [(r["flops"] / r["bytes"], r["gflops"], r["B"]) for r in grp
                   if r["impl"] == name and r.get("bytes") and r["gflops"]]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color=COLORS.get(name), label=name)
            if name == "fusedlstm":
                for x, y, b in pts:
                    ax.annotate(f"B={b}", (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity, flop/byte (estimate)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"{mode} {dtype} {device} {threads}t", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
