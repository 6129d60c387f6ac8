"""A numpy mirror of the CUDA fallback path's driver (csrc/cuda/lstm_cuda.cu),
and of the persistent forward kernel's indexing (W_hh slices per CTA, h slots):
the same buffers, the same GEMMs (shapes, operands, beta) and the same
pointwise kernels with the same masks and carries, step for step, in float64.

Why: written before the CUDA code had run on a GPU (it has since: see
bench/NOTES_CUDA.md), and kept as an executable statement of the algorithm
the driver encodes. It checks that algorithm (the
length masks, the dh carry of padded rows, dh0 from the last
GEMM, the feed='output' terms, the one_to_many dW_ih / dx sums) against
fusedlstm.reference on a CPU. It does not check the CUDA code itself (indexing,
strides, types): that needs tests/test_cuda.py on a GPU.

    python bench/dev/cuda_fallback_mirror.py     # prints one line per case, exits 1 on a mismatch
"""
import itertools
import sys

import numpy as np

from fusedlstm import reference  # the installed package (pip install .)

sig = reference.sigmoid


def fwd_step(B, H, t, rec, xproj, bsum, h_prev, c_prev, lens, want_acts):
    """fwd_step_kernel over all (b, u)."""
    active = np.ones(B, bool) if lens is None else t < lens
    pre = np.zeros((B, 4 * H))
    if rec is not None:
        pre += rec
    if xproj is not None:
        pre += xproj
    if bsum is not None:
        pre += bsum
    i, f, g, o = sig(pre[:, :H]), sig(pre[:, H:2 * H]), np.tanh(pre[:, 2 * H:3 * H]), sig(pre[:, 3 * H:])
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    a = active[:, None]
    acts = np.where(a, np.concatenate([i, f, g, o], 1), 0)
    return np.where(a, h, h_prev), np.where(a, c, c_prev), np.where(a, h, 0), acts


def forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mode, feed, T, lens):
    """forward_impl in training mode; x time-major (T,B,I) or (B,I)."""
    B, H = (x.shape[0] if mode == "one_to_many" else x.shape[1]), w_hh.shape[1]
    G = 4 * H
    bsum = None if b_ih is None and b_hh is None else (0 if b_ih is None else b_ih) + (0 if b_hh is None else b_hh)
    h_hist = np.zeros((T + 1, B, H))
    c_hist = np.zeros((T + 1, B, H))
    acts = np.zeros((T, B, G))
    y = np.zeros((T, B, H))
    h_hist[0] = 0 if h0 is None else h0
    c_hist[0] = 0 if c0 is None else c0
    if mode == "one_to_many":
        xproj0 = x @ w_ih.T
    for t in range(T):
        rec = None
        if t > 0 or h0 is not None:
            rec = h_hist[t] @ w_hh.T
        xproj = None
        if mode == "one_to_many":
            if t == 0 or feed == "repeat":
                xproj = xproj0
            elif feed == "output":
                rec = rec + h_hist[t] @ w_ih.T
        else:
            xproj = x[t] @ w_ih.T
        h_hist[t + 1], c_hist[t + 1], y[t], acts[t] = fwd_step(B, H, t, rec, xproj, bsum, h_hist[t], c_hist[t],
                                                               lens, True)
    return dict(y=y, h_n=h_hist[T].copy(), c_n=c_hist[T].copy(), h_hist=h_hist, c_hist=c_hist, acts=acts,
                x=x, w_ih=w_ih, w_hh=w_hh, mode=mode, feed=feed, T=T, B=B, H=H, lens=lens)


def backward(st, dy, dh_n, dc_n):
    T, B, H = st["T"], st["B"], st["H"]
    G = 4 * H
    mode, feed, lens = st["mode"], st["feed"], st["lens"]
    L = np.full(B, T) if lens is None else lens
    m2o = mode == "many_to_one"
    dh_carry = (0 if dh_n is None else dh_n) + (dy if (m2o and dy is not None) else 0) + np.zeros((B, H))
    dc = (np.zeros((B, H)) if dc_n is None else dc_n.copy())
    dh_rec = np.full((B, H), np.nan)  # never read before written where used
    dg = np.zeros((T, B, G))
    for t in range(T - 1, -1, -1):
        active = t < L
        dh = np.where((t + 1 < L)[:, None], dh_rec, dh_carry)
        if not m2o and dy is not None:
            dh = dh + dy[t]
        a = st["acts"][t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c, c_prev = st["c_hist"][t + 1], st["c_hist"][t]
        tc = np.tanh(c)
        dct = dc + dh * o * (1 - tc * tc)
        d = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f), dct * i * (1 - g * g),
                            dh * tc * o * (1 - o)], 1)
        act = active[:, None]
        dc = np.where(act, dct * f, dc)
        dg[t] = np.where(act, d, 0)
        dh_rec = dg[t] @ st["w_hh"]
        if mode == "one_to_many" and feed == "output" and t > 0:
            dh_rec = dh_rec + dg[t] @ st["w_ih"]
    out = dict(dh0=dh_rec, dc0=dc)
    h_hist, x, w_ih = st["h_hist"], st["x"], st["w_ih"]
    out["dw_hh"] = dg.reshape(T * B, G).T @ h_hist[:T].reshape(T * B, H)
    if mode != "one_to_many":
        out["dw_ih"] = dg.reshape(T * B, G).T @ x.reshape(T * B, -1)
        out["dx"] = np.einsum("tbg,gi->tbi", dg, w_ih)
    elif feed == "repeat":
        out["dw_ih"] = sum(dg[t].T @ x for t in range(T))
        out["dx"] = sum(dg[t] @ w_ih for t in range(T))
    else:
        out["dx"] = dg[0] @ w_ih
        out["dw_ih"] = dg[0].T @ x
        if feed == "output" and T > 1:
            out["dw_ih"] = out["dw_ih"] + dg[1:].reshape((T - 1) * B, G).T @ h_hist[1:T].reshape((T - 1) * B, H)
    out["db"] = dg.reshape(T * B, G).sum(0)
    return out


def persistent_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mode, feed, T, lens, sms, training, chunk):
    """persistent_fwd_kernel's indexing, CTA by CTA (inference: h in two slots,
    c in one; training: h_hist / c_hist), over chunks of steps like forward_impl."""
    B, H = (x.shape[0] if mode == "one_to_many" else x.shape[1]), w_hh.shape[1]
    G = 4 * H
    HB = -(-H // sms)
    R = 4 * HB
    blocks = -(-H // HB)
    bsum = None if b_ih is None and b_hh is None else (0 if b_ih is None else b_ih) + (0 if b_hh is None else b_hh)
    h_mod, c_mod = (0, 0) if training else (2, 1)
    h = np.zeros(((T + 1) if training else 2, B * H))
    c = np.zeros(((T + 1) if training else 1, B * H))
    h[0] = 0 if h0 is None else h0.ravel()
    c[0] = 0 if c0 is None else c0.ravel()
    y = np.full((T, B, H), np.nan)
    wflat = w_hh.ravel()
    one_to_many = mode == "one_to_many"
    if one_to_many:
        chunk = T
        xproj_all = x @ w_ih.T
    for t0 in range(0, T, chunk):
        nt = min(chunk, T - t0)
        xproj = xproj_all.ravel() if one_to_many else np.concatenate([(x[t] @ w_ih.T).ravel()
                                                                      for t in range(t0, t0 + nt)])
        xproj_step = 0 if one_to_many else B * G
        w_s = []
        for blk in range(blocks):
            u0 = blk * HB
            ws = np.zeros(R * H)
            for i in range(R * H):
                r, k = i // H, i % H
                g, u = r // HB, u0 + r % HB
                ws[i] = wflat[(g * H + u) * H + k] if u < H else 0
            w_s.append(ws)
        for t in range(t0, t0 + nt):
            hsp, hsn = (t % h_mod, (t + 1) % h_mod) if h_mod else (t, t + 1)
            csp, csn = (t % c_mod, (t + 1) % c_mod) if c_mod else (t, t + 1)
            new_h = h[hsn].copy()
            for blk in range(blocks):  # each CTA reads h[hsp] only and writes its own units of h[hsn]
                u0 = blk * HB
                h_s = h[hsp].copy()
                pre_s = np.zeros(B * R)
                for r in range(R):
                    if u0 + r % HB >= H:
                        continue
                    for b in range(B):
                        pre_s[b * R + r] = w_s[blk][r * H:(r + 1) * H] @ h_s[b * H:(b + 1) * H]
                use_x = not (one_to_many and feed == "first" and t != 0)
                for i in range(B * HB):
                    b, uu = i // HB, i % HB
                    u = u0 + uu
                    if u >= H:
                        continue
                    e = b * H + u
                    if lens is not None and not t < lens[b]:
                        new_h[e] = h[hsp][e]
                        c[csn][e] = c[csp][e]
                        y[t, b, u] = 0
                        continue
                    pre = []
                    for g in range(4):
                        v = pre_s[b * R + g * HB + uu]
                        if use_x:
                            v += xproj[(t - t0) * xproj_step + b * G + g * H + u]
                        if bsum is not None:
                            v += bsum[g * H + u]
                        pre.append(v)
                    i_, f_, g_, o_ = sig(pre[0]), sig(pre[1]), np.tanh(pre[2]), sig(pre[3])
                    cn = f_ * c[csp][e] + i_ * g_
                    c[csn][e] = cn
                    new_h[e] = o_ * np.tanh(cn)
                    y[t, b, u] = new_h[e]
            h[hsn] = new_h
    hT = h[T] if training else h[T % 2]
    cT = c[T] if training else c[0]
    return y, hT.reshape(B, H), cT.reshape(B, H)


def check_persistent(rng):
    bad = 0
    for mode, feed, use_len, training, (T, B, H, sms, chunk) in itertools.product(
            ["many_to_many", "one_to_many"], ["repeat", "first"], [False, True], [False, True],
            [(5, 3, 7, 3, 2), (4, 2, 5, 8, 4), (6, 4, 9, 2, 6)]):
        if mode == "one_to_many" and use_len or mode == "many_to_many" and feed != "repeat":
            continue
        I = 3
        x = rng.standard_normal((B, I) if mode == "one_to_many" else (T, B, I))
        w_ih, w_hh = rng.uniform(-.6, .6, (4 * H, I)), rng.uniform(-.6, .6, (4 * H, H))
        b_ih, b_hh = rng.uniform(-.5, .5, 4 * H), rng.uniform(-.5, .5, 4 * H)
        h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
        lens = None
        if use_len:
            lens = rng.integers(1, T + 1, B)
            lens[0] = 1
        kw = dict(mode=mode, lengths=lens)
        if mode == "one_to_many":
            kw.update(steps=T, feed=feed)
        r = reference.forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, **kw)
        y, hn, cn = persistent_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mode, feed, T, lens, sms, training, chunk)
        err = max(float(np.max(np.abs(y - r.y))), float(np.max(np.abs(hn - r.h_n))),
                  float(np.max(np.abs(cn - r.c_n))))
        ok = err < 1e-12
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} persistent {mode:12s} {feed:6s} lengths={use_len!s:5s} "
              f"training={training!s:5s} T,B,H,SMs,chunk={T, B, H, sms, chunk} max err {err:.1e}")
    return bad


def main():
    rng = np.random.default_rng(0)
    bad = 0
    cases = list(itertools.product(["many_to_many", "many_to_one", "one_to_many"], ["repeat", "first", "output"],
                                   [False, True], [False, True], ["both", "none", "ih"]))
    for mode, feed, use_len, init, bias in cases:
        if mode != "one_to_many" and (feed != "repeat"):
            continue
        if mode == "one_to_many" and use_len:
            continue
        T, B, H = 5, 4, 3
        I = H if feed == "output" else 2
        s = 1.5 / np.sqrt(H)
        x = rng.standard_normal((B, I) if mode == "one_to_many" else (T, B, I))
        w_ih, w_hh = rng.uniform(-s, s, (4 * H, I)), rng.uniform(-s, s, (4 * H, H))
        b_ih = rng.uniform(-.5, .5, 4 * H) if bias in ("both", "ih") else None
        b_hh = rng.uniform(-.5, .5, 4 * H) if bias == "both" else None
        h0 = rng.standard_normal((B, H)) if init else None
        c0 = rng.standard_normal((B, H)) if init else None
        lens = None
        if use_len:
            lens = rng.integers(1, T + 1, B)
            lens[1] = 1
        kw = dict(mode=mode, lengths=lens)
        if mode == "one_to_many":
            kw.update(steps=T, feed=feed)
        r = reference.forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, **kw)
        dy = rng.standard_normal((B, H) if mode == "many_to_one" else (T, B, H))
        dh_n, dc_n = rng.standard_normal((B, H)), rng.standard_normal((B, H))
        g = reference.backward(r, dy=dy, dh_n=dh_n, dc_n=dc_n)
        st = forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mode, feed, T, lens)
        mg = backward(st, dy, dh_n, dc_n)
        y_m = st["h_n"] if mode == "many_to_one" else st["y"]
        pairs = dict(y=(y_m, r.y), h_n=(st["h_n"], r.h_n), c_n=(st["c_n"], r.c_n), dx=(mg["dx"], g.dx),
                     dh0=(mg["dh0"], g.dh0), dc0=(mg["dc0"], g.dc0), dw_ih=(mg["dw_ih"], g.dw_ih),
                     dw_hh=(mg["dw_hh"], g.dw_hh))
        if g.db_ih is not None or g.db_hh is not None:
            pairs["db"] = (mg["db"], g.db_ih if g.db_ih is not None else g.db_hh)
        errs = {k: float(np.max(np.abs(a - b))) for k, (a, b) in pairs.items()}
        worst = max(errs.values())
        ok = worst < 1e-12
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {mode:12s} {feed:6s} lengths={use_len!s:5s} init={init!s:5s} "
              f"bias={bias:4s} max err {worst:.1e}" + ("" if ok else f" {errs}"))
    bad += check_persistent(rng)
    print(f"{bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
