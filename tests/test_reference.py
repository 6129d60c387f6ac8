"""Correctness of the numpy reference itself (python/fusedlstm/reference.py).

* central finite differences (float64) for every gradient, every mode / feed,
  with lengths, h0/c0, batch_first, missing biases, small odd sizes;
* self-consistency between modes (many_to_one vs many_to_many, lengths vs
  running each sequence alone, one_to_many feeds vs explicit input sequences,
  batch_first vs time-major);
* parity with torch.nn.LSTM / nn.LSTMCell (float64, outputs and autograd
  gradients), skipped when torch is absent.

Needs neither the compiled module nor the package: the reference comes from the
`ref` fixture (conftest loads reference.py by path when the package does not import).
"""

import numpy as np
import pytest

from conftest import tolerance

same_arithmetic = tolerance.assert_same_arithmetic  # the reference against itself


@pytest.fixture(autouse=True)
def debug_poison():
    """Overrides the library's poison fixture: these tests never touch the library."""
    yield False


STATE_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")


def _loss(ref, inputs, options, up):
    res = ref.forward(**inputs, **options)
    total = (res.h_n * up["dh_n"]).sum() + (res.c_n * up["dc_n"]).sum()
    return total + (res.y * up["dy"]).sum()


FD_EPS = 1e-6
FD_RTOL = 1e-7  # finite-difference accuracy (not the library tolerance policy)

FD_CASES = [
    dict(mode="many_to_many"),
    dict(mode="many_to_many", lengths=[3, 1]),
    dict(mode="many_to_many", lengths=[1, 2], batch_first=True),  # max(lengths) < T
    dict(mode="many_to_many", init=False, bias="ih"),
    dict(mode="many_to_many", bias="hh", batch_first=True),
    dict(mode="many_to_many", T=1, B=1, bias="none"),
    dict(mode="many_to_one"),
    dict(mode="many_to_one", lengths=[2, 3], batch_first=True, bias="hh"),
    dict(mode="many_to_one", lengths=[1, 2, 1], B=3, init=False),
    dict(mode="one_to_many", feed="repeat"),
    dict(mode="one_to_many", feed="repeat", batch_first=True, bias="none"),
    dict(mode="one_to_many", feed="first"),
    dict(mode="one_to_many", feed="first", init=False, bias="ih"),
    dict(mode="one_to_many", feed="output", I=5),
    dict(mode="one_to_many", feed="output", I=5, batch_first=True, init=False, T=4),
]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", FD_CASES, ids=_case_id)
def test_gradients_match_finite_differences(case, ref, make_problem):
    p = make_problem(**case)
    inputs, options = p.inputs, p.options
    B, H = p.upstream["dh_n"].shape
    # explicit zero states, so that dh0 / dc0 can be checked also when h0/c0 are None
    inputs["h0"] = np.zeros((B, H)) if inputs["h0"] is None else inputs["h0"]
    inputs["c0"] = np.zeros((B, H)) if inputs["c0"] is None else inputs["c0"]

    grads = ref.backward(ref.forward(**p.inputs, **options), **p.upstream)
    if case.get("bias") in ("none", "hh"):
        assert grads.db_ih is None
    if case.get("bias") in ("none", "ih"):
        assert grads.db_hh is None
    # the analytic gradients of the problem with h0/c0 = None equal those with explicit zeros
    grads_explicit = ref.backward(ref.forward(**inputs, **options), **p.upstream)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh"):
        np.testing.assert_array_equal(getattr(grads, name), getattr(grads_explicit, name))

    for name in STATE_NAMES:
        if inputs[name] is None:
            continue
        analytic = getattr(grads, "d" + name)
        assert analytic.shape == inputs[name].shape, name
        numeric = np.zeros_like(analytic)
        for idx in np.ndindex(*inputs[name].shape):
            vals = []
            for sign in (1, -1):
                perturbed = dict(inputs)
                perturbed[name] = inputs[name].copy()
                perturbed[name][idx] += sign * FD_EPS
                vals.append(_loss(ref, perturbed, options, p.upstream))
            numeric[idx] = (vals[0] - vals[1]) / (2 * FD_EPS)
        err = np.max(np.abs(numeric - analytic))
        assert err <= FD_RTOL * max(1.0, np.max(np.abs(analytic))), (name, err, numeric, analytic)


def test_padded_positions(ref, make_problem):
    p = make_problem(T=5, B=4, lengths=[5, 1, 3, 2], upstream="all")
    res = ref.forward(*p.args, **p.kwargs)
    grads = ref.backward(res, **p.upstream)
    pad = p.padded()
    assert np.all(res.y[pad] == 0) and np.all(res.y[~pad] != 0)
    assert np.all(grads.dx[pad] == 0)
    # dy at padded positions is ignored
    dy = p.upstream["dy"].copy()
    dy[pad] = np.nan
    grads2 = ref.backward(res, dy=dy, dh_n=p.upstream["dh_n"], dc_n=p.upstream["dc_n"])
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        np.testing.assert_array_equal(getattr(grads, name), getattr(grads2, name))
    # the padded inputs are never read
    x = p.args[0].copy()
    x[pad] = np.nan
    res2 = ref.forward(x, *p.args[1:], **p.kwargs)
    np.testing.assert_array_equal(res2.y, res.y)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_separate_sequences(ref, make_problem, batch_first):
    p = make_problem(T=6, B=3, I=4, H=3, lengths=[6, 2, 4], batch_first=batch_first)
    res = ref.forward(*p.args, **p.kwargs)
    grads = ref.backward(res, **p.upstream)
    x, w_ih, w_hh = p.args
    for b, L in enumerate(p.lengths):
        xb = x[b:b + 1, :L] if batch_first else x[:L, b:b + 1]
        dyb = p.upstream["dy"][b:b + 1, :L] if batch_first else p.upstream["dy"][:L, b:b + 1]
        kw = dict(p.kwargs, lengths=None, h0=p.kwargs["h0"][b:b + 1], c0=p.kwargs["c0"][b:b + 1])
        rb = ref.forward(xb, w_ih, w_hh, **kw)
        gb = ref.backward(rb, dy=dyb, dh_n=p.upstream["dh_n"][b:b + 1],
                          dc_n=p.upstream["dc_n"][b:b + 1])
        y_b = res.y[b, :L] if batch_first else res.y[:L, b]
        same_arithmetic(y_b, (rb.y[0] if batch_first else rb.y[:, 0]))
        same_arithmetic(res.h_n[b], rb.h_n[0])
        same_arithmetic(res.c_n[b], rb.c_n[0])
        dx_b = grads.dx[b, :L] if batch_first else grads.dx[:L, b]
        same_arithmetic(dx_b, (gb.dx[0] if batch_first else gb.dx[:, 0]))
        same_arithmetic(grads.dh0[b], gb.dh0[0])
        same_arithmetic(grads.dc0[b], gb.dc0[0])


def test_many_to_one_is_last_step(ref, make_problem):
    p = make_problem(mode="many_to_one", T=5, B=3, lengths=[5, 1, 3])
    res = ref.forward(*p.args, **p.kwargs)
    np.testing.assert_array_equal(res.y, res.h_n)
    full = ref.forward(*p.args, **dict(p.kwargs, mode="many_to_many"))
    for b, L in enumerate(p.lengths):
        np.testing.assert_array_equal(res.y[b], full.y[L - 1, b])
    # dy of many_to_one == dy of many_to_many at each sequence's last step
    g1 = ref.backward(res, dy=p.upstream["dy"])
    dy_full = np.zeros_like(full.y)
    dy_full[p.lengths - 1, np.arange(3)] = p.upstream["dy"]
    g2 = ref.backward(full, dy=dy_full)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih"):
        same_arithmetic(getattr(g1, name), getattr(g2, name))


@pytest.mark.parametrize("feed", ["repeat", "first", "output"])
def test_one_to_many_feeds_equal_explicit_sequences(ref, make_problem, feed):
    T, B, H = 4, 3, 5
    p = make_problem(mode="one_to_many", feed=feed, T=T, B=B, I=H, H=H)
    res = ref.forward(*p.args, **p.kwargs)
    x, w_ih, w_hh = p.args
    kw = dict(p.kwargs, mode="many_to_many")
    del kw["steps"], kw["feed"]
    if feed == "repeat":
        seq = np.broadcast_to(x, (T, B, H)).copy()
    elif feed == "first":
        seq = np.concatenate([x[None], np.zeros((T - 1, B, H))])
    else:  # the input of step t > 0 is the output of step t - 1
        seq = np.concatenate([x[None], res.y[:-1]])
    full = ref.forward(seq, w_ih, w_hh, **kw)
    same_arithmetic(res.y, full.y)
    same_arithmetic(res.h_n, full.h_n)
    assert ref.backward(res, **p.upstream).dx.shape == (B, H)


def test_batch_first_is_transpose(ref, make_problem):
    p = make_problem(T=4, B=3, lengths=[4, 1, 2], batch_first=True)
    res = ref.forward(*p.args, **p.kwargs)
    g = ref.backward(res, **p.upstream)
    kw = dict(p.kwargs, batch_first=False)
    res_t = ref.forward(p.args[0].transpose(1, 0, 2), *p.args[1:], **kw)
    g_t = ref.backward(res_t, dy=p.upstream["dy"].transpose(1, 0, 2), dh_n=p.upstream["dh_n"],
                       dc_n=p.upstream["dc_n"])
    np.testing.assert_array_equal(res.y, res_t.y.transpose(1, 0, 2))
    np.testing.assert_array_equal(g.dx, g_t.dx.transpose(1, 0, 2))
    np.testing.assert_array_equal(g.dw_hh, g_t.dw_hh)
    # one_to_many: x is (B, I) either way, y is (B, T, H) with batch_first
    p = make_problem(mode="one_to_many", T=4, B=3, batch_first=True)
    res = ref.forward(*p.args, **p.kwargs)
    res_t = ref.forward(*p.args, **dict(p.kwargs, batch_first=False))
    np.testing.assert_array_equal(res.y, res_t.y.transpose(1, 0, 2))


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one", "one_to_many"])
def test_float32_reference_computes_in_float32(ref, make_problem, mode):
    p = make_problem(mode=mode, T=6, B=3, I=4, H=7, dtype=np.float32)
    r32 = ref.forward(*p.args, **p.kwargs, dtype=np.float32)
    g32 = ref.backward(r32, **p.upstream)
    r64 = ref.forward(*p.args, **p.kwargs)
    g64 = ref.backward(r64, **p.upstream)
    # A sanity bound on the tolerance policy's float32 baseline itself (a broken plain
    # float32 reference would loosen every float32 bound), not a bound on the library.
    for name in ("y", "h_n", "c_n"):
        assert getattr(r32, name).dtype == np.float32 and getattr(r64, name).dtype == np.float64
        np.testing.assert_allclose(getattr(r32, name), getattr(r64, name), rtol=1e-4, atol=1e-5)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert getattr(g32, name).dtype == np.float32
        np.testing.assert_allclose(getattr(g32, name), getattr(g64, name), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------
# parity with PyTorch (float64)
# --------------------------------------------------------------------------------------
TORCH_CASES = [
    dict(),
    dict(init=False),
    dict(batch_first=True),
    dict(lengths=True),
    dict(lengths=[2, 7, 1, 5], batch_first=True),  # max(lengths) < T
    dict(lengths=True, init=False, bias="ih"),
    dict(bias="none", T=1, B=1, H=1, I=1),
]


@pytest.mark.torch
@pytest.mark.parametrize("case", TORCH_CASES, ids=_case_id)
def test_parity_with_torch_lstm(case, ref, make_problem, torch_lstm, policy):
    kw = dict(T=8, B=4, I=3, H=6)
    kw.update(case)
    p = make_problem(**kw)
    res = ref.forward(*p.args, **p.kwargs)
    ours = ref.backward(res, **p.upstream)
    theirs = torch_lstm(*p.args, **{k: p.kwargs[k] for k in ("b_ih", "b_hh", "h0", "c0")},
                        lengths=p.lengths, batch_first=p.kwargs["batch_first"], **p.upstream)
    mine = {"y": res.y, "h_n": res.h_n, "c_n": res.c_n, **vars(ours)}
    policy.check_all(mine, theirs, dtype=np.float64)
    if p.lengths is not None:  # many_to_one is h_n of the packed sequence
        r1 = ref.forward(*p.args, **dict(p.kwargs, mode="many_to_one"))
        policy.check("many_to_one y", r1.y, theirs["h_n"], dtype=np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("feed", ["repeat", "first", "output"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_parity_one_to_many_with_torch_cell_loop(feed, batch_first, ref, make_problem, policy):
    torch = pytest.importorskip("torch")
    T, B, H = 5, 3, 4
    p = make_problem(mode="one_to_many", feed=feed, T=T, B=B, I=H, H=H, batch_first=batch_first)
    res = ref.forward(*p.args, **p.kwargs)
    g = ref.backward(res, **p.upstream)

    cell = torch.nn.LSTMCell(H, H).double()
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh"), p.args[1:]):
            getattr(cell, name).copy_(torch.tensor(value))
        cell.bias_ih.copy_(torch.tensor(p.kwargs["b_ih"]))
        cell.bias_hh.copy_(torch.tensor(p.kwargs["b_hh"]))
    x, h, c = (torch.tensor(a, requires_grad=True) for a in (p.args[0], p.kwargs["h0"], p.kwargs["c0"]))
    h0, c0 = h, c
    ys = []
    for step in range(T):
        inp = x if step == 0 or feed == "repeat" else (torch.zeros_like(x) if feed == "first" else h)
        h, c = cell(inp, (h, c))
        ys.append(h)
    y = torch.stack(ys, 1 if batch_first else 0)
    loss = ((y * torch.tensor(p.upstream["dy"])).sum() + (h * torch.tensor(p.upstream["dh_n"])).sum()
            + (c * torch.tensor(p.upstream["dc_n"])).sum())
    loss.backward()
    theirs = {"y": y.detach().numpy(), "h_n": h.detach().numpy(), "c_n": c.detach().numpy(),
              "dx": x.grad.numpy(), "dh0": h0.grad.numpy(), "dc0": c0.grad.numpy(),
              "dw_ih": cell.weight_ih.grad.numpy(), "dw_hh": cell.weight_hh.grad.numpy(),
              "db_ih": cell.bias_ih.grad.numpy(), "db_hh": cell.bias_hh.grad.numpy()}
    mine = {"y": res.y, "h_n": res.h_n, "c_n": res.c_n, **vars(g)}
    policy.check_all(mine, theirs, dtype=np.float64)


@pytest.mark.torch
def test_single_step_matches_torch_lstm_cell(ref, rng, policy):
    torch = pytest.importorskip("torch")
    B, I, H = 3, 4, 5
    cell = torch.nn.LSTMCell(I, H).double()
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w = {n: p.detach().numpy() for n, p in cell.named_parameters()}
    res = ref.forward(x[None], w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"], h, c)
    th, tc = cell(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
    policy.check("h", res.h_n, th.detach().numpy(), dtype=np.float64)
    policy.check("c", res.c_n, tc.detach().numpy(), dtype=np.float64)
