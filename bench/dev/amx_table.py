"""Markdown tables from amx_probe JSON: python bench/dev/amx_table.py bench/results/amx_probe_*.json

With several files, each cell is the median us/step of each run in the order given ("a / b / c"); GFLOP/s and
the speed-up column come from the first file."""
import json
import sys

runs = [json.load(open(p)) for p in sys.argv[1:]]
VARS = ["fp32_avx512", "bf16_avx512", "bf16_amx", "bf16_amx_cfgstep", "bf16_amx_v2", "bf16_amx_v3", "bf16_amx_v4", "bf16_amx_rowsplit"]


def cell(v, B, H, t):
    rs = [r for d in runs for r in d["rows"] if (r["variant"], r["B"], r["H"], r["threads"]) == (v, B, H, t)]
    if not rs:
        return "-"
    us = " / ".join(f"{r['us_per_step']:.1f}" for r in rs)
    return f"{us} ({rs[0]['gflops']:.0f})"


for t in (1, 2):
    print(f"\n**{t} thread{'s' if t > 1 else ''}**: us/step (GFLOP/s of the first run)\n")
    print("| B | H | " + " | ".join(VARS) + " | AMX v1 speed-up vs fp32 / vs bf16_avx512 |")
    print("|---" * (len(VARS) + 3) + "|")
    for H in (256, 512, 1024):
        for B in (1, 4, 16, 32, 64):
            r = {v: next((x for x in runs[0]["rows"] if (x["variant"], x["B"], x["H"], x["threads"]) == (v, B, H, t)), None) for v in VARS}
            sp = f"{r['fp32_avx512']['us_per_step'] / r['bf16_amx']['us_per_step']:.1f}x / {r['bf16_avx512']['us_per_step'] / r['bf16_amx']['us_per_step']:.1f}x" if r["bf16_amx"] else "-"
            print(f"| {B} | {H} | " + " | ".join(cell(v, B, H, t) for v in VARS) + f" | {sp} |")

print("\n**Max error** (max |G - ref| / max |ref|, over all B, H, threads)\n")
print("| variant | vs float64 of the same operands | vs float64 of the unrounded float32 operands |")
print("|---|---|---|")
for v in VARS:
    rs = [r for d in runs for r in d["rows"] if r["variant"] == v]
    if rs:
        print(f"| {v} | {max(r['max_err_same_operands'] for r in rs):.2e} | "
              f"{min(r['max_err_vs_unrounded'] for r in rs):.2e} - {max(r['max_err_vs_unrounded'] for r in rs):.2e} |")
print("\nall_valid: " + ", ".join(str(d["all_valid"]) for d in runs))
