"""``fusedlstm bench``'s results: rows (one per implementation and measurement),
the terminal table, the CSV and the JSON files.

A row: device, cell, dtype, mode, threads, T, B, I, H, impl, precision,
median_ms, p25_ms, p75_ms, min_ms, spread_pct (half the interquartile range,
in % of the median), reps, gflops, speedup (this implementation's median over
fusedlstm's: > 1 means fusedlstm is faster), check (ok / FAIL / -), max_abs_diff
(y against fusedlstm's), error, samples_ms (the raw samples; JSON only).
"""

from __future__ import annotations

import csv
import json
import math

MODE_TITLES = {"fwd": "forward (inference)", "fwdbwd": "forward + backward", "train": "training step (module)"}
CSV_FIELDS = ("device", "cell", "dtype", "mode", "threads", "T", "B", "I", "H", "impl", "precision",
              "median_ms", "p25_ms", "p75_ms", "min_ms", "spread_pct", "reps", "gflops", "speedup",
              "check", "max_abs_diff", "error")
GROUP = ("device", "cell", "dtype", "mode", "threads")


def make_rows(meas, stats, checks, flops, errors):
    """Rows of one measurement. meas: the measurement's keys (device ... H);
    stats: measure_interleaved's {impl: stats}; checks: {impl: check};
    errors: {impl: message} for implementations that failed while timed."""
    rows = []
    fl = stats.get("fusedlstm", {}).get("median_ms")
    for name in list(stats) + [n for n in errors if n not in stats]:
        st = stats.get(name, {})
        med = st.get("median_ms")
        chk = checks.get(name, {})
        rows.append({
            **meas, "impl": name, "precision": chk.get("precision"),
            "median_ms": med, "p25_ms": st.get("p25_ms"), "p75_ms": st.get("p75_ms"), "min_ms": st.get("min_ms"),
            "spread_pct": (50.0 * (st["p75_ms"] - st["p25_ms"]) / med) if med else None,
            "reps": st.get("reps"),
            "gflops": flops / (med * 1e6) if med else None,
            "speedup": (med / fl) if (med and fl and name != "fusedlstm") else None,
            "check": "-" if chk.get("ok") is None else ("ok" if chk["ok"] else "FAIL"),
            "max_abs_diff": chk.get("max_abs_diff"),
            "error": errors.get(name),
            "samples_ms": st.get("samples_ms", []),
        })
    return rows


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}"


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in GROUP), []).append(r)
    return out


def table(rows) -> str:
    """Markdown tables, one per (device, cell, dtype, mode, threads): a line per shape,
    each implementation's median ms (+- spread), the peers' speedup (their time over
    fusedlstm's), fusedlstm's GFLOP/s, and the check column."""
    out = []
    for (device, cell, dtype, mode, threads), grp in _groups(rows).items():
        impls = list(dict.fromkeys(r["impl"] for r in grp))
        peers = [n for n in impls if n != "fusedlstm"]
        out += [f"### {MODE_TITLES.get(mode, mode)}: {cell}, {dtype}, {device}, {threads} thread(s)", ""]
        head = "| T | B | H | " + " | ".join(f"{n} ms" for n in impls)
        head += "".join(f" | x vs {n}" for n in peers) + " | fusedlstm GFLOP/s | check |"
        out += [head, "|" + "---:|" * (3 + len(impls) + len(peers) + 1) + ":---|"]
        shapes = {}
        for r in grp:
            shapes.setdefault((r["T"], r["B"], r["H"], r["I"]), {})[r["impl"]] = r
        for (T, B, H, I), by in shapes.items():
            cells = []
            for n in impls:
                r = by.get(n)
                if r is None or r["median_ms"] is None:
                    cells.append("error" if r is not None and r["error"] else "-")
                else:
                    cells.append(f"{_ms(r['median_ms'])} ±{r['spread_pct']:.0f}%")
            for n in peers:
                r = by.get(n)
                cells.append(f"**{r['speedup']:.2f}x**" if r is not None and r["speedup"] else "-")
            f = by.get("fusedlstm")
            cells.append(f"{f['gflops']:.1f}" if f is not None and f["gflops"] else "-")
            bad = [n for n, r in by.items() if r["check"] == "FAIL"] + [n for n, r in by.items() if r["error"]]
            cells.append("FAIL: " + ", ".join(dict.fromkeys(bad)) if bad else
                         ("ok" if any(r["check"] == "ok" for r in by.values()) else "-"))
            h = f"{H}" if I == H else f"{H} (I={I})"
            out.append(f"| {T} | {B} | {h} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("ms: median, ± half the interquartile range; x vs P = P's time / fusedlstm's (> 1: fusedlstm faster); "
               "check: each y against fusedlstm's, before timing")
    return "\n".join(out)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                        for k in CSV_FIELDS})


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return _clean(v.item())
        except (TypeError, ValueError):
            return str(v)
    return v


def write_json(path, rows, machine, settings, notes, peak=None):
    doc = {"machine": machine, "peak": peak, "settings": settings, "notes": notes, "results": rows}
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1, default=str)
