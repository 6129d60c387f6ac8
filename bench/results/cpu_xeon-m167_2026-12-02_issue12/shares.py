import re, json, sys
F = 1999.0
out = {}
for tag in ["T100_B64_H256_fwd","T100_B12_H200_fwd","T100_B1_H1024_fwd","T100_B16_H512_fwd","T100_B16_H256_fwdbwd"]:
    T,B,H = (int(x[1:]) for x in tag.split("_")[:3]); mode = tag.split("_")[3]; I=H
    rec = open(f"rec_{tag}.txt").read()
    reps = int(re.search(r"reps=(\d+)", rec).group(1)); calls = reps + 2
    ms_rec = float(re.search(r"median_ms=([\d.]+)", rec).group(1))
    ms_plain = float(re.search(r"median_ms=([\d.]+)", open(f"plain_{tag}.txt").read()).group(1))
    cats = {"fwd_tile":0,"bwd_tile":0,"gemm":0,"barrier/spin":0,"packing/layout":0,"memmove":0,"kernel(OS)":0,"python/other":0}
    per = {}
    tot = 0
    for line in open(f"counts_{tag}.txt"):
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+\[(.)\]\s+(.*)", line)
        if not m: continue
        n = int(m.group(2)); sym = m.group(4).strip(); tot += n
        if "fwd_tile<" in sym: k="fwd_tile"; per[sym.split("::")[-1]] = per.get(sym.split("::")[-1],0)+n
        elif "bwd_tile<" in sym: k="bwd_tile"; per[sym.split("::")[-1]] = per.get(sym.split("::")[-1],0)+n
        elif re.search(r"::gemm(_tile<\d>)?$", sym): k="gemm"
        elif "cpu_relax" in sym or "SpinBarrier" in sym: k="barrier/spin"
        elif any(s in sym for s in ("pack_","transpose_rows","unpack_gate","sum_rows")): k="packing/layout"
        elif "memmove" in sym or "memset" in sym or "memcpy" in sym: k="memmove"
        elif m.group(3)=="k": k="kernel(OS)"
        else: k="python/other"
        cats[k]+=n
    G = 2.0*T*B*4*H  # per unit of K
    rec_fl = G*H*calls; proj_fl = G*I*calls
    r = {"T":T,"B":B,"H":H,"mode":mode,"calls_recorded":calls,"median_ms_plain":ms_plain,"median_ms_under_perf":ms_rec,
         "samples_total":tot,"share_pct":{k:round(100*v/tot,1) for k,v in cats.items()},
         "tile_samples":{k:round(100*v/tot,1) for k,v in per.items()}}
    def rate(flops, n): return round(flops/(n/F)/1e9,1) if n else None
    r["gflops_per_core_fwd_tile"] = rate(rec_fl, cats["fwd_tile"])
    if mode=="fwd":
        r["gflops_per_core_gemm"] = rate(proj_fl, cats["gemm"])
    else:
        r["gflops_per_core_bwd_tile"] = rate(rec_fl, cats["bwd_tile"])
        r["gflops_per_core_gemm"] = rate(proj_fl*3 + rec_fl, cats["gemm"])  # x W_ih^T, dW_ih, dx, dW_hh
    out[tag]=r
    print(tag, json.dumps(r))
json.dump(out, open("shares.json","w"), indent=1)
