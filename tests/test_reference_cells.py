"""The numpy reference's GRU and Elman RNN cells (python/fusedlstm/reference.py, ``cell=``).

* central finite differences (float64) of every gradient (x, h0, w_ih, w_hh,
  b_ih, b_hh; c0 for the LSTM) for gru, rnn_tanh, rnn_relu (and the LSTM where
  the case is new: reverse) over every mode and feed, lengths, reverse,
  batch_first, missing biases and states, odd sizes; the same for a layer
  stack (2 layers, bidirectional, lengths, dropout masks; the LSTM's projection);
* the cell contract: no c0 / c_n / dc_n / dc0 for GRU and RNN, db_ih != db_hh
  for the GRU and == for the others, shapes checked, reverse and stacks
  consistent with the single-layer forward;
* parity with torch (float64, outputs and autograd gradients): nn.GRU / nn.RNN
  (tanh, relu) single layer and stacks (num_layers=2, bidirectional, packed
  sequences), the reverse direction, nn.GRUCell / nn.RNNCell (one step and the
  one_to_many feeds), and the stacks' dropout masks against a layer-by-layer
  torch composition with the same masks. Skipped when torch is absent.

Needs neither the compiled module nor the package: the reference comes from the
`ref` fixture. Fresh random inputs from the `rng` fixture (seed in the report).
"""

import numpy as np
import pytest

from conftest import tolerance

same_arithmetic = tolerance.assert_same_arithmetic  # the reference against itself

CELLS = ("gru", "rnn_tanh", "rnn_relu")
ALL_CELLS = ("lstm",) + CELLS
FD_EPS = 1e-6
FD_RTOL = 1e-7  # finite-difference accuracy (not the library tolerance policy)
RELU_MARGIN = 1e-4  # relu pre-activations at least this far from the kink for FD


@pytest.fixture(autouse=True)
def debug_poison():
    """Overrides the library's poison fixture: these tests never touch the library."""
    yield False


def _has_c(cell):
    return cell == "lstm"


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


# --------------------------------------------------------------------------------------
# random problems
# --------------------------------------------------------------------------------------
def make_problem(ref, rng, cell, *, mode="many_to_many", T=5, B=3, I=7, H=5, feed="repeat", lengths=None,
                 reverse=False, batch_first=False, bias="both", init=True):
    """(inputs, options, upstream): forward(**inputs, **options), backward(res, **upstream).
    dy at padded positions is large on purpose (it must be ignored)."""
    G = ref.num_gates(cell)
    scale = 1.5 / np.sqrt(H)
    if mode == "one_to_many":
        x = rng.standard_normal((B, I))
    else:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    inputs = dict(x=x, w_ih=rng.uniform(-scale, scale, (G * H, I)), w_hh=rng.uniform(-scale, scale, (G * H, H)),
                  b_ih=rng.uniform(-0.5, 0.5, G * H) if bias in ("both", "ih") else None,
                  b_hh=rng.uniform(-0.5, 0.5, G * H) if bias in ("both", "hh") else None,
                  h0=0.5 * rng.standard_normal((B, H)) if init else None)
    if _has_c(cell):
        inputs["c0"] = rng.standard_normal((B, H)) if init else None
    options = dict(mode=mode, batch_first=batch_first, reverse=reverse, cell=cell)
    if lengths is not None:
        options["lengths"] = np.asarray(lengths, np.int64)
    if mode == "one_to_many":
        options.update(steps=T, feed=feed)
    y_shape = (B, H) if mode == "many_to_one" else ((B, T, H) if batch_first else (T, B, H))
    dy = rng.standard_normal(y_shape)
    if lengths is not None and mode == "many_to_many":
        pad = np.arange(T)[:, None] >= np.asarray(lengths)[None, :]
        (dy.swapaxes(0, 1) if batch_first else dy)[pad] = 100.0 * rng.standard_normal((int(pad.sum()), H))
    upstream = dict(dy=dy, dh_n=rng.standard_normal((B, H)))
    if _has_c(cell):
        upstream["dc_n"] = rng.standard_normal((B, H))
    return inputs, options, upstream


def _min_relu_distance(w, xs, hs, mask):
    """min |pre-activation| over the real steps of one direction (time-major, run order)."""
    pre = xs @ w["w_ih"].T + hs[:-1] @ w["w_hh"].T
    for key in ("b_ih", "b_hh"):
        if w.get(key) is not None:
            pre = pre + w[key]
    return np.abs(pre[mask]).min()


def relu_safe_problem(ref, rng, cell, **kw):
    """make_problem, redrawn until no relu pre-activation is within RELU_MARGIN of 0
    (finite differences across the kink would be meaningless)."""
    for _ in range(50):
        inputs, options, upstream = make_problem(ref, rng, cell, **kw)
        if cell != "rnn_relu":
            return inputs, options, upstream
        res = ref.forward(**inputs, **options)
        if _min_relu_distance(inputs, res.xs, res.hs, res.mask) >= RELU_MARGIN:
            return inputs, options, upstream
    pytest.skip("no relu problem without a pre-activation near 0 in 50 draws")


def _loss(ref, inputs, options, up):
    res = ref.forward(**inputs, **options)
    total = (res.y * up["dy"]).sum() + (res.h_n * up["dh_n"]).sum()
    if "dc_n" in up:
        total += (res.c_n * up["dc_n"]).sum()
    return total


def _finite_differences(loss, inputs, name):
    numeric = np.zeros_like(inputs[name])
    for idx in np.ndindex(*inputs[name].shape):
        vals = []
        for sign in (1, -1):
            perturbed = dict(inputs)
            perturbed[name] = inputs[name].copy()
            perturbed[name][idx] += sign * FD_EPS
            vals.append(loss(perturbed))
        numeric[idx] = (vals[0] - vals[1]) / (2 * FD_EPS)
    return numeric


def _assert_fd(name, analytic, numeric):
    assert analytic.shape == numeric.shape, name
    err = np.max(np.abs(numeric - analytic))
    assert err <= FD_RTOL * max(1.0, np.max(np.abs(analytic))), (name, err, numeric, analytic)


# --------------------------------------------------------------------------------------
# finite differences: one layer
# --------------------------------------------------------------------------------------
FD_CASES = [
    dict(mode="many_to_many"),
    dict(mode="many_to_many", lengths=[5, 1, 3]),
    dict(mode="many_to_many", lengths=[2, 4, 1], batch_first=True),  # max(lengths) < T
    dict(mode="many_to_many", reverse=True),
    dict(mode="many_to_many", reverse=True, lengths=[3, 5, 1]),
    dict(mode="many_to_many", reverse=True, lengths=[4, 1, 2], batch_first=True, bias="hh"),
    dict(mode="many_to_many", init=False, bias="ih"),
    dict(mode="many_to_many", T=1, B=1, bias="none"),
    dict(mode="many_to_one"),
    dict(mode="many_to_one", lengths=[2, 5, 1], batch_first=True, bias="hh"),
    dict(mode="many_to_one", reverse=True, lengths=[5, 3, 1], init=False),
    dict(mode="one_to_many", feed="repeat"),
    dict(mode="one_to_many", feed="repeat", batch_first=True, bias="none"),
    dict(mode="one_to_many", feed="first"),
    dict(mode="one_to_many", feed="first", init=False, bias="ih"),
    dict(mode="one_to_many", feed="output", I=5),
    dict(mode="one_to_many", feed="output", I=5, batch_first=True, init=False, T=4),
]
# the LSTM's own grid is in test_reference.py; here it runs where the case is new to it
FD_GRID = [(cell, case) for case in FD_CASES for cell in ALL_CELLS if cell != "lstm" or case.get("reverse")]


@pytest.mark.parametrize("cell, case", FD_GRID, ids=[f"{c}-{_case_id(k)}" for c, k in FD_GRID])
def test_gradients_match_finite_differences(cell, case, ref, rng):
    inputs, options, up = relu_safe_problem(ref, rng, cell, **case)
    B, H = up["dh_n"].shape
    grads = ref.backward(ref.forward(**inputs, **options), **up)
    assert (grads.db_ih is None) == (inputs["b_ih"] is None)
    assert (grads.db_hh is None) == (inputs["b_hh"] is None)
    assert (grads.dc0 is None) == (not _has_c(cell))
    # explicit zero states, so that dh0 / dc0 can be checked also when h0 / c0 are None
    inputs = dict(inputs, h0=np.zeros((B, H)) if inputs["h0"] is None else inputs["h0"])
    if _has_c(cell):
        inputs["c0"] = np.zeros((B, H)) if inputs["c0"] is None else inputs["c0"]
    grads_explicit = ref.backward(ref.forward(**inputs, **options), **up)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        a, b = getattr(grads, name), getattr(grads_explicit, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)

    def loss(perturbed):
        return _loss(ref, perturbed, options, up)

    for name, value in inputs.items():
        if value is not None:
            _assert_fd(name, getattr(grads, "d" + name), _finite_differences(loss, inputs, name))


# --------------------------------------------------------------------------------------
# finite differences: a layer stack (layers, directions, lengths, dropout masks)
# --------------------------------------------------------------------------------------
def make_stack(ref, rng, cell, *, T=4, B=3, I=3, H=3, L=2, D=2, lengths=(4, 1, 3), dropout=True, bias=True,
               proj=0):
    """proj: the LSTM's projection size R (0: none)."""
    G = ref.num_gates(cell)
    R = proj or H  # Hout
    scale = 1.5 / np.sqrt(H)
    cells = []
    for k in range(L):
        n_in = I if k == 0 else D * R
        for _ in range(D):
            cells.append(dict(w_ih=rng.uniform(-scale, scale, (G * H, n_in)),
                              w_hh=rng.uniform(-scale, scale, (G * H, R)),
                              b_ih=rng.uniform(-0.5, 0.5, G * H) if bias else None,
                              b_hh=rng.uniform(-0.5, 0.5, G * H) if bias else None))
            if proj:
                cells[-1]["w_hr"] = rng.uniform(-scale, scale, (R, H))
    masks = None
    if dropout and L > 1:  # the factors 0 or 1/(1-p) a caller draws, p = 0.3
        masks = (rng.random((L - 1, T, B, D * R)) >= 0.3) / 0.7
    inputs = dict(x=rng.standard_normal((T, B, I)), h0=0.5 * rng.standard_normal((L * D, B, R)))
    if _has_c(cell):
        inputs["c0"] = rng.standard_normal((L * D, B, H))
    options = dict(num_layers=L, bidirectional=D == 2, cell=cell, dropout_masks=masks,
                   lengths=None if lengths is None else np.asarray(lengths, np.int64))
    up = dict(dy=rng.standard_normal((T, B, D * R)), dh_n=rng.standard_normal((L * D, B, R)))
    if _has_c(cell):
        up["dc_n"] = rng.standard_normal((L * D, B, H))
    return inputs, cells, options, up


def _stack_min_relu_distance(res):
    c = res.cache
    dist = np.inf
    for idx, (w, cache) in enumerate(zip(c["cells"], c["caches"])):
        k, d = divmod(idx, c["D"])
        xs = c["inputs"][k] if d == 0 else np.take_along_axis(c["inputs"][k], c["rev"][:, :, None], axis=0)
        dist = min(dist, _min_relu_distance(w, xs, cache["hs"], c["mask"]))
    return dist


STACK_FD_LAYOUTS = {"L2-bidir-lengths-dropout": dict(), "L2-unidir-nobias": dict(D=1, lengths=None, bias=False),
                    "L1-bidir": dict(L=1, lengths=(2, 4, 1)), "L2-bidir-lengths-dropout-proj": dict(H=4, proj=2)}
STACK_FD_GRID = [(cell, layout) for layout in STACK_FD_LAYOUTS for cell in ALL_CELLS
                 if cell == "lstm" or "proj" not in layout]  # the projection is the LSTM's


@pytest.mark.parametrize("cell, layout", STACK_FD_GRID, ids=[f"{c}-{k}" for c, k in STACK_FD_GRID])
def test_stack_gradients_match_finite_differences(cell, layout, ref, rng):
    kw = STACK_FD_LAYOUTS[layout]
    for _ in range(50):
        inputs, cells, options, up = make_stack(ref, rng, cell, **kw)
        res = ref.stack_forward(inputs["x"], cells, **{k: v for k, v in inputs.items() if k != "x"}, **options)
        if cell != "rnn_relu" or _stack_min_relu_distance(res) >= RELU_MARGIN:
            break
    else:
        pytest.skip("no relu problem without a pre-activation near 0 in 50 draws")
    g = ref.stack_backward(res, **up)
    assert (res.c_n is None) == (g["dc0"] is None) == (not _has_c(cell))

    def loss(ins, cs=cells):
        r = ref.stack_forward(ins["x"], cs, **{k: v for k, v in ins.items() if k != "x"}, **options)
        total = (r.y * up["dy"]).sum() + (r.h_n * up["dh_n"]).sum()
        return total + ((r.c_n * up["dc_n"]).sum() if "dc_n" in up else 0)

    for name in inputs:
        _assert_fd(name, g["d" + name], _finite_differences(loss, inputs, name))
    for idx, w in enumerate(cells):
        grads = g["cells"][idx]
        if w["b_ih"] is not None and cell != "gru":
            np.testing.assert_array_equal(grads["b"], grads["b_hh"])
        for name, key in (("w_ih", "w_ih"), ("w_hh", "w_hh"), ("b_ih", "b"), ("b_hh", "b_hh"), ("w_hr", "w_hr")):
            if w.get(name) is None:
                continue

            def loss_w(ws, idx=idx, name=name):
                cs = list(cells)
                cs[idx] = dict(cells[idx], **{name: ws[name]})
                return loss(inputs, cs)

            _assert_fd(f"cell {idx} {name}", grads[key], _finite_differences(loss_w, {name: w[name]}, name))


# --------------------------------------------------------------------------------------
# the cell contract and self-consistency
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_no_cell_state(cell, ref, rng):
    inputs, options, up = make_problem(ref, rng, cell)
    res = ref.forward(**inputs, **options)
    assert res.c_n is None and res.cs is None
    g = ref.backward(res, **up)
    assert g.dc0 is None
    B, H = inputs["h0"].shape
    with pytest.raises(ValueError, match="c0"):
        ref.forward(**inputs, **options, c0=np.zeros((B, H)))
    with pytest.raises(ValueError, match="dc_n"):
        ref.backward(res, **up, dc_n=np.zeros((B, H)))
    # weights of another cell (G*H rows) are refused
    G = 4 if cell == "gru" else 3
    with pytest.raises(ValueError, match="rows"):
        ref.forward(inputs["x"], np.zeros((G * H, inputs["x"].shape[2])), np.zeros((G * H, H)), cell=cell)
    with pytest.raises(ValueError, match="cell"):
        ref.forward(**inputs, **dict(options, cell="lstmp"))
    # stacks: no c0 / dc_n, no projection
    x = inputs["x"]
    w = dict(w_ih=inputs["w_ih"], w_hh=inputs["w_hh"], b_ih=inputs["b_ih"], b_hh=inputs["b_hh"])
    s = ref.stack_forward(x, [w], inputs["h0"][None], cell=cell)
    assert s.c_n is None and ref.stack_backward(s, dy=np.ones_like(s.y))["dc0"] is None
    with pytest.raises(ValueError, match="c0"):
        ref.stack_forward(x, [w], inputs["h0"][None], np.zeros((1, B, H)), cell=cell)
    with pytest.raises(ValueError, match="dc_n"):
        ref.stack_backward(s, dc_n=np.zeros((1, B, H)))
    with pytest.raises(ValueError, match="w_hr"):
        ref.stack_forward(x, [dict(w, w_hr=np.zeros((2, H)))], cell=cell)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_bias_gradients(cell, ref, rng):
    """db_ih and db_hh: different for the GRU (only in the n rows), equal otherwise."""
    inputs, options, up = make_problem(ref, rng, cell, lengths=[5, 2, 4])
    g = ref.backward(ref.forward(**inputs, **options), **up)
    H = inputs["h0"].shape[1]
    if cell == "gru":
        np.testing.assert_array_equal(g.db_ih[:2 * H], g.db_hh[:2 * H])
        assert np.all(g.db_ih[2 * H:] != g.db_hh[2 * H:])
    else:
        np.testing.assert_array_equal(g.db_ih, g.db_hh)


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_reverse_equals_flipped_sequences(cell, mode, ref, rng):
    """reverse=True on a padded batch == each sequence alone, flipped in time, forward."""
    lengths = [5, 2, 4]
    inputs, options, up = make_problem(ref, rng, cell, mode=mode, lengths=lengths, reverse=True)
    res = ref.forward(**inputs, **options)
    g = ref.backward(res, **up)
    for b, L in enumerate(lengths):
        one = {k: (v if k.startswith(("w_", "b_")) or v is None else v[b:b + 1]) for k, v in inputs.items()}
        one["x"] = inputs["x"][:L, b:b + 1][::-1]
        upb = {k: v[b:b + 1] for k, v in up.items() if k != "dy"}
        if mode == "many_to_many":
            upb["dy"] = up["dy"][:L, b:b + 1][::-1]
        else:
            upb["dy"] = up["dy"][b:b + 1]
        rb = ref.forward(**one, **dict(options, reverse=False, lengths=None))
        gb = ref.backward(rb, **upb)
        if mode == "many_to_many":
            same_arithmetic(res.y[:L, b], rb.y[::-1, 0], "y")
            assert np.all(res.y[L:, b] == 0)
        else:
            same_arithmetic(res.y[b], rb.y[0], "y")
        same_arithmetic(res.h_n[b], rb.h_n[0], "h_n")
        same_arithmetic(g.dx[:L, b], gb.dx[::-1, 0], "dx")
        assert np.all(g.dx[L:, b] == 0)
        same_arithmetic(g.dh0[b], gb.dh0[0], "dh0")
        if _has_c(cell):
            same_arithmetic(res.c_n[b], rb.c_n[0], "c_n")
            same_arithmetic(g.dc0[b], gb.dc0[0], "dc0")


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_one_layer_stack_equals_forward(cell, reverse, ref, rng):
    """The stack of one layer (the direction `reverse` picks) == forward(reverse=...)."""
    inputs, options, up = make_problem(ref, rng, cell, lengths=[3, 5, 1], reverse=reverse)
    res = ref.forward(**inputs, **options)
    g = ref.backward(res, **up)
    D, d = (2, 1) if reverse else (1, 0)
    T, B, _ = inputs["x"].shape
    H = inputs["h0"].shape[1]
    w = {k: inputs[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    states = [k for k in ("h0", "c0") if k in inputs]
    st = {}
    for k in states:
        st[k] = np.zeros((D, B, H))
        st[k][d] = inputs[k]
    s = ref.stack_forward(inputs["x"], [w] * D, *st.values(), bidirectional=reverse, lengths=options["lengths"],
                          cell=cell)
    dy = np.zeros((T, B, D * H))
    dy[:, :, d * H:] = up["dy"]
    sup = {}
    for k in ("dh_n", "dc_n"):
        if k in up:
            sup[k] = np.zeros((D, B, H))
            sup[k][d] = up[k]
    sg = ref.stack_backward(s, dy=dy, **sup)
    same_arithmetic(s.y[:, :, d * H:], res.y, "y")
    same_arithmetic(s.h_n[d], res.h_n, "h_n")
    same_arithmetic(sg["dx"], g.dx, "dx")
    same_arithmetic(sg["dh0"][d], g.dh0, "dh0")
    cg = sg["cells"][d]
    for key, name in (("w_ih", "dw_ih"), ("w_hh", "dw_hh"), ("b", "db_ih"), ("b_hh", "db_hh")):
        same_arithmetic(cg[key], getattr(g, name), name)
    if _has_c(cell):
        same_arithmetic(s.c_n[d], res.c_n, "c_n")
        same_arithmetic(sg["dc0"][d], g.dc0, "dc0")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("feed", ["repeat", "first", "output"])
def test_one_to_many_feeds_equal_explicit_sequences(cell, feed, ref, rng):
    T, B, H = 4, 3, 5
    inputs, options, up = make_problem(ref, rng, cell, mode="one_to_many", feed=feed, T=T, B=B, I=H, H=H)
    res = ref.forward(**inputs, **options)
    x = inputs["x"]
    if feed == "repeat":
        seq = np.broadcast_to(x, (T, B, H)).copy()
    elif feed == "first":
        seq = np.concatenate([x[None], np.zeros((T - 1, B, H))])
    else:  # the input of step t > 0 is the output of step t - 1
        seq = np.concatenate([x[None], res.y[:-1]])
    kw = {k: v for k, v in options.items() if k not in ("steps", "feed")}
    full = ref.forward(**dict(inputs, x=seq), **dict(kw, mode="many_to_many"))
    same_arithmetic(res.y, full.y, "y")
    same_arithmetic(res.h_n, full.h_n, "h_n")
    assert ref.backward(res, **up).dx.shape == (B, H)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_reference_computes_in_float32(cell, ref, rng):
    inputs, options, up = make_problem(ref, rng, cell, T=6, lengths=[6, 2, 5])
    r32 = ref.forward(**inputs, **options, dtype=np.float32)
    g32 = ref.backward(r32, **up)
    r64 = ref.forward(**inputs, **options)
    g64 = ref.backward(r64, **up)
    # a sanity bound on the tolerance policy's float32 baseline itself (as test_reference.py)
    for name in ("y", "h_n"):
        assert getattr(r32, name).dtype == np.float32
        np.testing.assert_allclose(getattr(r32, name), getattr(r64, name), rtol=1e-4, atol=1e-5)
    for name in ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert getattr(g32, name).dtype == np.float32
        np.testing.assert_allclose(getattr(g32, name), getattr(g64, name), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------
# parity with PyTorch (float64)
# --------------------------------------------------------------------------------------
def _torch_module(torch, cell, I, H, **kw):
    if cell == "lstm":
        return torch.nn.LSTM(I, H, **kw).double()
    if cell == "gru":
        return torch.nn.GRU(I, H, **kw).double()
    return torch.nn.RNN(I, H, nonlinearity=cell[4:], **kw).double()


def torch_stack(cell, x, cells, h0, c0=None, *, num_layers=1, bidirectional=False, lengths=None,
                batch_first=False, dy=None, dh_n=None, dc_n=None):
    """nn.LSTM / nn.GRU / nn.RNN (float64) forward + autograd backward; weights as the
    stack reference's cell list (all biases given or all None). Returns y, h_n, c_n, dx,
    dh0, dc0 and cells: per cell w_ih, w_hh, b, b_hh."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    t = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    D = 2 if bidirectional else 1
    I, H = np.shape(x)[-1], np.shape(h0)[-1]
    T = np.shape(x)[1 if batch_first else 0]
    bias = cells[0]["b_ih"] is not None
    mod = _torch_module(torch, cell, I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                        batch_first=batch_first)
    names = []
    with torch.no_grad():
        for idx, w in enumerate(cells):
            k, d = divmod(idx, D)
            s = f"_l{k}" + ("_reverse" if d else "")
            names.append(s)
            getattr(mod, "weight_ih" + s).copy_(t(w["w_ih"]))
            getattr(mod, "weight_hh" + s).copy_(t(w["w_hh"]))
            if bias:
                getattr(mod, "bias_ih" + s).copy_(t(w["b_ih"]))
                getattr(mod, "bias_hh" + s).copy_(t(w["b_hh"]))
    xt = t(x).requires_grad_(True)
    h0t = t(h0).requires_grad_(True)
    c0t = t(c0).requires_grad_(True) if cell == "lstm" else None
    hx = (h0t, c0t) if cell == "lstm" else h0t
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.as_tensor(np.asarray(lengths, np.int64)),
                                                          batch_first=batch_first, enforce_sorted=False)
    out, hn = mod(inp, hx)
    hn, cn = hn if cell == "lstm" else (hn, None)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    loss = 0 * out.sum()
    for value, grad in ((out, dy), (hn, dh_n), (cn, dc_n)):
        if grad is not None:
            loss = loss + (value * t(grad)).sum()
    loss.backward()
    n = lambda a: None if a is None else a.detach().numpy().copy()  # noqa: E731
    g = lambda name: n(getattr(mod, name).grad) if hasattr(mod, name) else None  # noqa: E731
    return dict(y=n(out), h_n=n(hn), c_n=n(cn), dx=n(xt.grad), dh0=n(h0t.grad),
                dc0=None if c0t is None else n(c0t.grad),
                cells=[dict(w_ih=g("weight_ih" + s), w_hh=g("weight_hh" + s), b=g("bias_ih" + s),
                            b_hh=g("bias_hh" + s)) for s in names])


def _check_stack(policy, ours, theirs):
    for name in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
        policy.check(name, ours[name], theirs[name], dtype=np.float64)
    for idx, (a, b) in enumerate(zip(ours["cells"], theirs["cells"])):
        for key in ("w_ih", "w_hh", "b", "b_hh"):
            if b[key] is not None:
                policy.check(f"cell {idx} d{key}", a[key], b[key], dtype=np.float64)


TORCH_CASES = [
    dict(),
    dict(init=False),
    dict(batch_first=True),
    dict(lengths=[8, 1, 5, 3]),
    dict(lengths=[2, 7, 1, 5], batch_first=True),  # max(lengths) < T
    dict(lengths=[6, 8, 1, 2], init=False, bias="none"),
    dict(bias="none", T=1, B=1, H=1, I=1),
]


@pytest.mark.torch
@pytest.mark.parametrize("case", TORCH_CASES, ids=_case_id)
@pytest.mark.parametrize("cell", CELLS)
def test_parity_with_torch_one_layer(cell, case, ref, rng, policy):
    pytest.importorskip("torch")
    kw = dict(T=8, B=4, I=3, H=6)
    kw.update(case)
    inputs, options, up = make_problem(ref, rng, cell, **kw)
    res = ref.forward(**inputs, **options)
    g = ref.backward(res, **up)
    B, H = up["dh_n"].shape
    h0 = np.zeros((B, H)) if inputs["h0"] is None else inputs["h0"]
    w = {k: inputs[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    theirs = torch_stack(cell, inputs["x"], [w], h0[None], lengths=options.get("lengths"),
                         batch_first=options["batch_first"], dy=up["dy"], dh_n=up["dh_n"][None])
    c = theirs["cells"][0]
    policy.check_all(dict(y=res.y, h_n=res.h_n, **vars(g)),
                     dict(y=theirs["y"], h_n=theirs["h_n"][0], dx=theirs["dx"], dh0=theirs["dh0"][0],
                          dw_ih=c["w_ih"], dw_hh=c["w_hh"], db_ih=c["b"], db_hh=c["b_hh"]), dtype=np.float64)
    if options.get("lengths") is not None:  # many_to_one is h_n of the packed sequence
        r1 = ref.forward(**inputs, **dict(options, mode="many_to_one"))
        policy.check("many_to_one y", r1.y, theirs["h_n"][0], dtype=np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("lengths", [None, [5, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_parity_reverse_with_torch_bidirectional(cell, lengths, ref, rng, policy):
    """forward(reverse=True) == the reverse direction of a bidirectional torch layer
    whose forward direction gets no upstream gradient."""
    pytest.importorskip("torch")
    inputs, options, up = make_problem(ref, rng, cell, lengths=lengths, reverse=True)
    res = ref.forward(**inputs, **options)
    g = ref.backward(res, **up)
    T, B, _ = inputs["x"].shape
    H = inputs["h0"].shape[1]
    w = {k: inputs[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    other = {k: rng.standard_normal(v.shape) for k, v in w.items()}
    two = lambda a: np.stack([rng.standard_normal(a.shape), a])  # noqa: E731
    dy = np.concatenate([np.zeros((T, B, H)), up["dy"]], axis=2)
    theirs = torch_stack(cell, inputs["x"], [other, w], two(inputs["h0"]), two(inputs["c0"]) if "c0" in inputs
                         else None, bidirectional=True, lengths=lengths, dy=dy,
                         dh_n=np.stack([np.zeros((B, H)), up["dh_n"]]),
                         dc_n=np.stack([np.zeros((B, H)), up["dc_n"]]) if "dc_n" in up else None)
    c = theirs["cells"][1]
    mine = dict(y=res.y, h_n=res.h_n, **vars(g))
    ref_ = dict(y=theirs["y"][:, :, H:], h_n=theirs["h_n"][1], dx=theirs["dx"], dh0=theirs["dh0"][1],
                dw_ih=c["w_ih"], dw_hh=c["w_hh"], db_ih=c["b"], db_hh=c["b_hh"])
    if cell == "lstm":
        mine["c_n"] = res.c_n
        ref_.update(c_n=theirs["c_n"][1], dc0=theirs["dc0"][1])
    policy.check_all(mine, ref_, dtype=np.float64)


STACK_LAYOUTS = [
    dict(L=2, D=1),
    dict(L=2, D=2),
    dict(L=2, D=2, lengths=[5, 1, 3]),
    dict(L=3, D=2, lengths=[2, 5, 4], bias=False),
]


@pytest.mark.torch
@pytest.mark.parametrize("layout", STACK_LAYOUTS, ids=_case_id)
@pytest.mark.parametrize("cell", CELLS)
def test_parity_stack_with_torch(cell, layout, ref, rng, policy):
    """num_layers, bidirectional and packed sequences against nn.GRU / nn.RNN (no dropout)."""
    pytest.importorskip("torch")
    kw = dict(T=5, B=3, I=7, H=5, lengths=layout.get("lengths"), dropout=False, bias=layout.get("bias", True),
              L=layout["L"], D=layout["D"])
    inputs, cells, options, up = make_stack(ref, rng, cell, **kw)
    res = ref.stack_forward(inputs["x"], cells, inputs["h0"], **options)
    g = ref.stack_backward(res, **up)
    theirs = torch_stack(cell, inputs["x"], cells, inputs["h0"], num_layers=layout["L"],
                         bidirectional=layout["D"] == 2, lengths=options["lengths"], **up)
    _check_stack(policy, dict(y=res.y, h_n=res.h_n, c_n=res.c_n, **g), theirs)


@pytest.mark.torch
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_parity_dropout_masks_with_torch_layers(cell, lengths, ref, rng, policy):
    """The stack's dropout masks: layer k >= 1 reads layer k-1's outputs (both
    directions concatenated, zero at padded steps) times mask k-1; against torch
    layers run one by one with the same masks applied in between."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    L, D, T, B, H = 3, 2, 4, 3, 3
    inputs, cells, options, up = make_stack(ref, rng, cell, T=T, B=B, H=H, L=L, D=D, lengths=lengths)
    masks = options["dropout_masks"]
    assert masks.shape == (L - 1, T, B, D * H) and np.any(masks == 0)
    res = ref.stack_forward(inputs["x"], cells, *(inputs[k] for k in ("h0", "c0") if k in inputs), **options)
    g = ref.stack_backward(res, **up)

    # torch: one bidirectional layer at a time; the masks multiply the padded outputs in between
    layer_in = torch.tensor(inputs["x"], requires_grad=True)
    x_leaf = layer_in
    mods, h0s, outs_h, outs_c = [], [], [], []
    for k in range(L):
        if k > 0:
            layer_in = layer_in * torch.tensor(masks[k - 1])
        n_in = layer_in.shape[2]
        mod = _torch_module(torch, cell, n_in, H, bidirectional=True)
        with torch.no_grad():
            for d, s in enumerate(("_l0", "_l0_reverse")):
                w = cells[k * D + d]
                for name, key in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"),
                                  ("bias_hh", "b_hh")):
                    getattr(mod, name + s).copy_(torch.tensor(w[key]))
        h0 = torch.tensor(inputs["h0"][k * D:(k + 1) * D], requires_grad=True)
        c0 = torch.tensor(inputs["c0"][k * D:(k + 1) * D], requires_grad=True) if cell == "lstm" else None
        inp = layer_in if lengths is None else pack_padded_sequence(layer_in, torch.tensor(lengths),
                                                                    enforce_sorted=False)
        out, hn = mod(inp, (h0, c0) if cell == "lstm" else h0)
        if lengths is not None:
            out, _ = pad_packed_sequence(out, total_length=T)
        hn, cn = hn if cell == "lstm" else (hn, None)
        mods.append(mod)
        h0s.append((h0, c0))
        outs_h.append(hn)
        outs_c.append(cn)
        layer_in = out
    h_n = torch.cat(outs_h)
    loss = (layer_in * torch.tensor(up["dy"])).sum() + (h_n * torch.tensor(up["dh_n"])).sum()
    c_n = None
    if cell == "lstm":
        c_n = torch.cat(outs_c)
        loss = loss + (c_n * torch.tensor(up["dc_n"])).sum()
    loss.backward()
    n = lambda a: None if a is None else a.detach().numpy()  # noqa: E731
    theirs = dict(y=n(layer_in), h_n=n(h_n), c_n=n(c_n), dx=n(x_leaf.grad),
                  dh0=np.concatenate([n(h.grad) for h, _ in h0s]),
                  dc0=np.concatenate([n(c.grad) for _, c in h0s]) if cell == "lstm" else None,
                  cells=[dict(w_ih=n(getattr(m, "weight_ih" + s).grad), w_hh=n(getattr(m, "weight_hh" + s).grad),
                              b=n(getattr(m, "bias_ih" + s).grad), b_hh=n(getattr(m, "bias_hh" + s).grad))
                         for m in mods for s in ("_l0", "_l0_reverse")])
    _check_stack(policy, dict(y=res.y, h_n=res.h_n, c_n=res.c_n, **g), theirs)


def _torch_cell(torch, cell, I, H):
    if cell == "gru":
        return torch.nn.GRUCell(I, H).double()
    return torch.nn.RNNCell(I, H, nonlinearity=cell[4:]).double()


@pytest.mark.torch
@pytest.mark.parametrize("cell", CELLS)
def test_single_step_matches_torch_cell(cell, ref, rng, policy):
    """forward with T = 1 is the cell: h_new and every gradient against nn.GRUCell / nn.RNNCell."""
    torch = pytest.importorskip("torch")
    B, I, H = 3, 7, 5
    mod = _torch_cell(torch, cell, I, H)
    w = {n: p.detach().numpy().copy() for n, p in mod.named_parameters()}
    x, h, dh = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    res = ref.forward(x[None], w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"], h, cell=cell)
    g = ref.backward(res, dh_n=dh)
    xt, ht = torch.tensor(x, requires_grad=True), torch.tensor(h, requires_grad=True)
    h_new = mod(xt, ht)
    (h_new * torch.tensor(dh)).sum().backward()
    n = lambda a: a.detach().numpy()  # noqa: E731
    policy.check_all(dict(h_new=res.h_n, y=res.y[0], dx=g.dx[0], dh0=g.dh0, dw_ih=g.dw_ih, dw_hh=g.dw_hh,
                          db_ih=g.db_ih, db_hh=g.db_hh),
                     dict(h_new=n(h_new), y=n(h_new), dx=n(xt.grad), dh0=n(ht.grad), dw_ih=n(mod.weight_ih.grad),
                          dw_hh=n(mod.weight_hh.grad), db_ih=n(mod.bias_ih.grad), db_hh=n(mod.bias_hh.grad)),
                     dtype=np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("feed", ["repeat", "first", "output"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_parity_one_to_many_with_torch_cell_loop(cell, feed, batch_first, ref, rng, policy):
    torch = pytest.importorskip("torch")
    T, B, H = 5, 3, 4
    inputs, options, up = make_problem(ref, rng, cell, mode="one_to_many", feed=feed, T=T, B=B, I=H, H=H,
                                       batch_first=batch_first)
    res = ref.forward(**inputs, **options)
    g = ref.backward(res, **up)
    mod = _torch_cell(torch, cell, H, H)
    with torch.no_grad():
        for name, key in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
            getattr(mod, name).copy_(torch.tensor(inputs[key]))
    x, h = (torch.tensor(inputs[k], requires_grad=True) for k in ("x", "h0"))
    h0 = h
    ys = []
    for step in range(T):
        inp = x if step == 0 or feed == "repeat" else (torch.zeros_like(x) if feed == "first" else h)
        h = mod(inp, h)
        ys.append(h)
    y = torch.stack(ys, 1 if batch_first else 0)
    ((y * torch.tensor(up["dy"])).sum() + (h * torch.tensor(up["dh_n"])).sum()).backward()
    n = lambda a: a.detach().numpy()  # noqa: E731
    theirs = dict(y=n(y), h_n=n(h), dx=n(x.grad), dh0=n(h0.grad), dw_ih=n(mod.weight_ih.grad),
                  dw_hh=n(mod.weight_hh.grad), db_ih=n(mod.bias_ih.grad), db_hh=n(mod.bias_hh.grad))
    policy.check_all(dict(y=res.y, h_n=res.h_n, **vars(g)), theirs, dtype=np.float64)
