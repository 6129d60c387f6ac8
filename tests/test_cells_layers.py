"""fusedlstm.GRU and fusedlstm.RNN (the numpy layer stacks of layers.py, one
implementation with fusedlstm.LSTM) against the float64 stack reference
(fusedlstm.reference.stack_forward / stack_backward with cell="gru",
"rnn_tanh", "rnn_relu") and against torch.nn.GRU / nn.RNN in float64.

Covered, for each of the three cells (CPU: CUDA runs the LSTM only so far):
* random configurations over six on/off features (bidirectional, bias,
  batch_first, lengths, hx, dropout with masks drawn from a given generator)
  following the two-level orthogonal array of test_layers.py, layer counts 1-3
  and odd sizes drawn from the test seed, float32 and float64, every ISA path:
  y, h_n and every gradient (x, h0, each parameter) within the tolerance
  policy; 1 and 2 threads bitwise equal; y and dx exactly zero at padded
  steps; every (NaN-poisoned) output written; the GRU's bias_ih / bias_hh
  gradients differ, the RNN's are equal.
* the reserve: layers.stack_reserve_nbytes(cell=) == _core.stack_reserve_bytes
  == the closed form of fusedlstm.h, a reserve one byte short refused.
* eval == training bitwise and without dropout; dropout = 1; the dropout mask
  comes from the given generator (or the layer's own).
* parameters, inputs, states and upstream gradients in any layout; backward
  uses what the forward saw.
* state_dict / load_state_dict with torch.nn.GRU / nn.RNN in both directions
  (names, order and shapes are torch's), then outputs and gradients equal to
  torch's in float64 (num_layers 2, bidirectional, lengths, no bias,
  batch_first).
* errors: constructor, forward (hx is an array, not a tuple), backward (a
  result of another layer or cell), load_state_dict; result types and repr.
"""

import numpy as np
import pytest

import fusedlstm
import test_layers
from fusedlstm import _core
from fusedlstm import reference as R
from fusedlstm.layers import RecurrentStack, stack_reserve_nbytes
from test_layers import assert_all_finite, assert_bitwise_equal, odd, odd_hidden, relaid, stepped

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
CELLS = ["gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CELL_CODE = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}

# test_layers.py's orthogonal array L8(2^7) without its "proj" column: six features,
# each on in four of the eight runs, every pair of features meeting in all four combinations.
FEATURES = ("bidirectional", "bias", "batch_first", "lengths", "hx", "dropout")
RUNS = tuple(f[0] + f[2:] for f in test_layers.L8)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def new_layer(cell, *args, **kwargs):
    if cell == "gru":
        return fusedlstm.GRU(*args, **kwargs)
    return fusedlstm.RNN(*args, nonlinearity=cell[len("rnn_"):], **kwargs)


def draw_config(rng, flags):
    on = dict(zip(FEATURES, (c == "1" for c in flags)))
    T = int(rng.integers(1, 7))
    return dict(
        T=T, B=odd(rng, 1, 7), I=odd(rng, 1, 23), H=odd_hidden(rng),
        num_layers=int(rng.integers(2, 4)) if on["dropout"] else int(rng.integers(1, 4)),
        bidirectional=on["bidirectional"], bias=on["bias"], batch_first=on["batch_first"],
        lengths=on["lengths"], hx=on["hx"], dropout=float(rng.uniform(0.1, 0.7)) if on["dropout"] else 0.0,
        upstream=str(rng.choice(["all", "all", "dy", "states"])),
    )


def random_params(layer, rng):
    scale = 1.5 / np.sqrt(layer.hidden_size)
    return {name: (rng.uniform(-0.5, 0.5, v.shape) if name.startswith("bias") else
                   rng.uniform(-scale, scale, v.shape)) for name, v in layer.params.items()}


def make_layer(cell, cfg, dtype, rng):
    layer = new_layer(cell, cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                      batch_first=cfg["batch_first"], dropout=cfg["dropout"], bidirectional=cfg["bidirectional"],
                      dtype=dtype, seed=int(rng.integers(2**63)))
    layer.load_state_dict(random_params(layer, rng))
    for name, v in layer.params.items():
        assert v.dtype == np.dtype(dtype), name
    return layer


class Inputs:
    """One call's inputs; tm() gives the time-major views the reference reads."""

    def __init__(self, layer, cfg, rng, dtype):
        T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
        L, D = layer.num_layers, layer.num_directions
        self.T, self.B, self.L, self.D, self.H = T, B, L, D, H
        self.batch_first = layer.batch_first
        cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
        self.x = cast(rng.standard_normal((B, T, I) if self.batch_first else (T, B, I)))
        self.h0 = cast(0.5 * rng.standard_normal((L * D, B, H))) if cfg["hx"] else None
        self.lengths = None
        if cfg["lengths"]:
            lens = rng.integers(1, T + 1, B)
            lens[1 % B] = 1
            self.lengths = lens.astype(np.int64)
        dy_tm = rng.standard_normal((T, B, D * H))
        pad = self.padded()
        if pad is not None:  # large at padded steps: must be ignored
            dy_tm[pad] = 100.0 * rng.standard_normal((int(pad.sum()), D * H))
        ups = dict(dy=cast(self.tm(dy_tm)), dh_n=cast(rng.standard_normal((L * D, B, H))))
        keep = {"all": ("dy", "dh_n"), "dy": ("dy",), "states": ("dh_n",)}[cfg["upstream"]]
        self.upstream = {k: v for k, v in ups.items() if k in keep}
        # the generator handed to the library, and the same masks drawn here as layers.py draws them
        self.mask_seed = int(rng.integers(2**63))
        self.masks = None
        p = layer.dropout
        if p > 0 and L > 1:
            keep_p = 1.0 - p
            draw = np.random.default_rng(self.mask_seed).random((L - 1, T, B, D * H)) < keep_p
            self.masks = (draw / keep_p if keep_p > 0 else np.zeros(draw.shape)).astype(dtype)

    def tm(self, a):
        return a.swapaxes(0, 1) if self.batch_first else a

    def padded(self):
        if self.lengths is None:
            return None
        return np.arange(self.T)[:, None] >= self.lengths[None, :]


def ref_cells(layer, params):
    cells = []
    for k in range(layer.num_layers):
        for suffix in ("", "_reverse")[:layer.num_directions]:
            s = f"_l{k}{suffix}"
            cells.append(dict(w_ih=params["weight_ih" + s], w_hh=params["weight_hh" + s],
                              b_ih=params.get("bias_ih" + s), b_hh=params.get("bias_hh" + s)))
    return cells


_INPUT_MASKS = object()


def run_reference(layer, inp, *, dtype, masks=_INPUT_MASKS, backward=True):
    """The reference stack on the layer's parameters, keyed like run_library."""
    masks = inp.masks if masks is _INPUT_MASKS else masks
    res = R.stack_forward(inp.tm(inp.x), ref_cells(layer, layer.params), inp.h0, None, num_layers=layer.num_layers,
                          bidirectional=layer.bidirectional, lengths=inp.lengths, dropout_masks=masks,
                          cell=layer.cell, dtype=dtype)
    assert res.c_n is None
    out = dict(y=inp.tm(res.y), h_n=res.h_n)
    if not backward:
        return out
    ups = dict(inp.upstream)
    if "dy" in ups:
        ups["dy"] = inp.tm(ups["dy"])
    g = R.stack_backward(res, **ups)
    out.update({"d:x": inp.tm(g["dx"]), "d:h0": g["dh0"]})
    D = layer.num_directions
    for name in layer.params:
        kind, rest = name.split("_l")
        cell = g["cells"][int(rest.split("_")[0]) * D + (1 if rest.endswith("_reverse") else 0)]
        key = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b", "bias_hh": "b_hh"}[kind]
        out["d:" + name] = cell[key]
    return out


def reference_pair(layer, inp, *, dtype, **kw):
    ref64 = run_reference(layer, inp, dtype=np.float64, **kw)
    plain32 = run_reference(layer, inp, dtype=np.float32, **kw) if np.dtype(dtype) == np.float32 else None
    return ref64, plain32


def run_library(layer, inp, *, training=True, backward=True):
    res = layer.forward(inp.x, inp.h0, lengths=inp.lengths, training=training,
                        rng=np.random.default_rng(inp.mask_seed))
    out = dict(y=res.y, h_n=res.h_n)
    if backward:
        grads = layer.backward(res, **inp.upstream)
        assert set(grads) == {"x", "h0"} | set(layer.params)
        out.update({"d:" + k: v for k, v in grads.items()})
    return out


def assert_padded_zero(out, inp):
    pad = inp.padded()
    if pad is None:
        return
    assert np.all(inp.tm(out["y"])[pad] == 0), "y is not exactly zero at padded steps"
    if "d:x" in out:
        assert np.all(inp.tm(out["d:x"])[pad] == 0), "dx is not exactly zero at padded steps"


SHORT = dict(bidirectional="bidir", bias="bias", batch_first="bf", lengths="len", hx="hx", dropout="drop")


def flags_id(flags):
    return "-".join(SHORT[n] for n, c in zip(FEATURES, flags) if c == "1") or "plain"


# --------------------------------------------------------------------------------------
# random configurations against the reference
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flags", RUNS, ids=flags_id)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, flags, dtype, isa, rng, threads, policy):
    cfg = draw_config(rng, flags)
    print("config:", cfg)
    layer = make_layer(cell, cfg, dtype, rng)
    inp = Inputs(layer, cfg, rng, dtype)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype)
    before = [(a, a.copy()) for a in (inp.x, inp.h0, inp.lengths, *inp.upstream.values(), *layer.params.values())
              if a is not None]

    results = {}
    for n in (1, 2):
        with threads(n):
            results[n] = run_library(layer, inp)
    out = results[1]
    assert out.keys() == ref64.keys()
    assert_all_finite(out)
    policy.check_all(out, ref64, plain32, dtype=dtype)
    assert_bitwise_equal(results[1], results[2], "1 and 2 threads")
    assert_padded_zero(out, inp)
    for name in layer.params:
        if name.startswith("bias_hh"):
            ih = out["d:" + name.replace("bias_hh", "bias_ih")]
            assert out["d:" + name] is not ih
            if cell != "gru":  # the GRU's differ in the n rows (checked against the reference above)
                assert np.array_equal(out["d:" + name], ih), name
    for original, copy in before:
        assert np.array_equal(original, copy), "forward/backward modified an input array or a parameter"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_single_step_single_unit(cell, bidirectional, dtype, isa, rng, threads, policy):
    cfg = dict(T=1, B=1, I=1, H=1, num_layers=1, bidirectional=bidirectional, bias=True, batch_first=False,
               lengths=True, hx=True, dropout=0.0, upstream="all")
    layer = make_layer(cell, cfg, dtype, rng)
    inp = Inputs(layer, cfg, rng, dtype)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype)
    results = {}
    for n in (1, 2):
        with threads(n):
            results[n] = run_library(layer, inp)
    assert_all_finite(results[1])
    policy.check_all(results[1], ref64, plain32, dtype=dtype)
    assert_bitwise_equal(results[1], results[2], "1 and 2 threads")


# --------------------------------------------------------------------------------------
# reserve size
# --------------------------------------------------------------------------------------
def header_reserve_bytes(cell, s, T, B, H, L, D):
    """The CPU closed form of csrc/include/fusedlstm/fusedlstm.h (no projection)."""
    up = lambda n, m: (n + m - 1) // m * m  # noqa: E731
    S, w = T * B, 64 // s
    hp = up(H, w)
    A = 0 if cell.startswith("rnn") else 4
    per_cell = 320 + up(S * A * hp * s, 64) + (up(S * hp * s, 64) if cell == "lstm" else 0) + up(S * hp * s, 64)
    return L * D * per_cell + (L - 1) * (up(S * D * H * s, 64) + 64)


@pytest.mark.parametrize("cell", ["lstm"] + CELLS)
def test_reserve_formula(cell, rng):
    shapes = [(1, 1, 1, 1, 1), (1, 1, 2, 1, 2), (1, 1, 16, 3, 2), (7, 5, 17, 2, 2), (64, 32, 256, 4, 2),
              (1000, 1, 33, 2, 1)]
    shapes += [(int(rng.integers(1, 100)), int(rng.integers(1, 70)), int(rng.integers(1, 300)),
                int(rng.integers(1, 5)), int(rng.integers(1, 3))) for _ in range(300)]
    codes = {4: _core.FLOAT32, 8: _core.FLOAT64}
    for T, B, H, L, D in shapes:
        for s in (4, 8):
            py = stack_reserve_nbytes(s, T, B, H, 0, L, D, cell=cell)
            header = header_reserve_bytes(cell, s, T, B, H, L, D)
            core = _core.stack_reserve_bytes(dtype=codes[s], T=T, B=B, H=H, proj_size=0, num_layers=L,
                                             num_directions=D, cell=CELL_CODE[cell])
            assert py == core == header, (f"{cell} itemsize={s} T={T} B={B} H={H} L={L} D={D}: python {py}, "
                                          f"core {core}, header {header}")
    # CUDA: fusedlstm.h's closed form per cell, against the backend itself where one loads.
    try:
        cuda = _core.cuda_info("backend") != ""
    except Exception:  # noqa: BLE001 - no CUDA backend library
        cuda = False
    if cuda:
        for T, B, H, L, D in shapes:
            for s in (4, 8):
                py = stack_reserve_nbytes(s, T, B, H, 0, L, D, device="cuda", cell=cell)
                core = _core.stack_reserve_bytes(dtype=codes[s], T=T, B=B, H=H, proj_size=0, num_layers=L,
                                                 num_directions=D, device_type=_core.DEVICE_CUDA,
                                                 cell=CELL_CODE[cell])
                assert py == core, f"CUDA {cell} itemsize={s} T={T} B={B} H={H}: python {py}, core {core}"
    with pytest.raises(ValueError, match="cell"):
        stack_reserve_nbytes(4, 3, 2, 5, 0, 1, 1, cell="lstm2")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_reserve_one_byte_short_is_refused(cell, dtype, rng):
    T, B, I, H, L, D = 3, 5, 7, 11, 2, 2
    layer = new_layer(cell, I, H, L, bidirectional=True, dtype=dtype, seed=1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    need = stack_reserve_nbytes(np.dtype(dtype).itemsize, T, B, H, 0, L, D, cell=cell)
    y, h_n = np.empty((T, B, D * H), dtype), np.empty((L * D, B, H), dtype)
    from fusedlstm._host import HostArrays
    arrays = HostArrays(dtype=dtype)
    call = dict(x=x, x_strides=(B * I, I), cells=layer._cells(layer.params), y=y, y_strides=(B * D * H, D * H),
                h_n=h_n, c_n=None, T=T, B=B, I=I, H=H, proj_size=0, num_layers=L, num_directions=D,
                cell=CELL_CODE[cell], **arrays.call())
    with pytest.raises(ValueError, match="reserve"):
        _core.stack_forward(**call, reserve=arrays.empty_bytes(need - 1))
    _core.stack_forward(**call, reserve=arrays.empty_bytes(need))
    assert np.array_equal(y, layer.forward(x).y)


# --------------------------------------------------------------------------------------
# eval vs training, dropout
# --------------------------------------------------------------------------------------
EVAL_CFG = dict(T=5, B=5, I=9, H=13, num_layers=3, bidirectional=True, bias=True, batch_first=True, lengths=True,
                hx=True, dropout=0.0, upstream="all")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_eval_equals_training_and_has_no_dropout(cell, dtype, isa, rng, policy):
    layer = make_layer(cell, EVAL_CFG, dtype, rng)
    inp = Inputs(layer, EVAL_CFG, rng, dtype)
    ev = run_library(layer, inp, training=False, backward=False)
    tr = run_library(layer, inp, training=True, backward=False)
    assert_all_finite(ev)
    assert_bitwise_equal(ev, tr, "training=False and training=True")
    assert_padded_zero(ev, inp)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype, backward=False)
    policy.check_all(ev, ref64, plain32, dtype=dtype)

    dropping = new_layer(cell, 9, 13, 3, batch_first=True, dropout=0.6, bidirectional=True, dtype=dtype, seed=0)
    dropping.load_state_dict(layer.state_dict())
    assert_bitwise_equal(run_library(dropping, inp, training=False, backward=False), ev,
                         "eval with dropout=0.6 and with dropout=0")
    assert not np.array_equal(run_library(dropping, inp, training=True, backward=False)["y"], ev["y"])


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_one_zeroes_upper_layer_inputs(cell, rng, policy):
    cfg = dict(EVAL_CFG, num_layers=2, dropout=1.0, batch_first=False, upstream="dy")
    layer = make_layer(cell, cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    out = run_library(layer, inp)
    masks = np.zeros((1, inp.T, inp.B, inp.D * inp.H))
    ref64, _ = reference_pair(layer, inp, dtype=np.float64, masks=masks)
    assert_all_finite(out)
    policy.check_all(out, ref64, dtype=np.float64)
    for name in ("d:x", "d:weight_ih_l0", "d:weight_hh_l0_reverse", "d:bias_ih_l0", "d:bias_hh_l0"):
        assert np.all(out[name] == 0), f"{name}: gradient crossed a dropout of 1"


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_mask_comes_from_the_given_generator(cell, rng):
    cfg = dict(T=4, B=3, I=5, H=7, num_layers=3, bidirectional=True, bias=True, batch_first=False, lengths=False,
               hx=False, dropout=0.5, upstream="all")
    layer = make_layer(cell, cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    a = run_library(layer, inp)
    assert_bitwise_equal(a, run_library(layer, inp), "two runs with the same generator state")
    inp.mask_seed += 1
    assert not np.array_equal(a["y"], run_library(layer, inp)["y"]), "another generator gave the same dropout"
    single = new_layer(cell, 5, 7, 1, dropout=0.5, dtype=np.float64, seed=1)  # nothing between layers to drop
    assert np.array_equal(single.forward(inp.x, training=True, rng=np.random.default_rng(0)).y,
                          single.forward(inp.x).y)
    seed = int(rng.integers(2**63))
    outs = [new_layer(cell, 5, 7, 3, dropout=0.5, dtype=np.float64, seed=seed).forward(inp.x, training=True).y
            for _ in range(2)]
    assert np.array_equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------
# layouts, copies
# --------------------------------------------------------------------------------------
LAYOUT_CFG = dict(T=4, B=3, I=5, H=6, num_layers=2, bidirectional=True, bias=True, batch_first=False,
                  lengths=True, hx=True, dropout=0.0, upstream="all")
LAYOUTS = ("negative", "fortran", "strided", "unaligned")


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_parameters_inputs_and_upstream_in_any_layout(cell, kind, rng, policy):
    for batch_first in (False, True):
        cfg = dict(LAYOUT_CFG, batch_first=batch_first)
        layer = make_layer(cell, cfg, np.float64, rng)
        inp = Inputs(layer, cfg, rng, np.float64)
        ref64, _ = reference_pair(layer, inp, dtype=np.float64)
        expected = run_library(layer, inp)
        layer.params = {k: relaid(v, kind) for k, v in layer.params.items()}
        inp.x, inp.h0 = relaid(inp.x, kind), relaid(inp.h0, kind)
        inp.lengths = stepped(inp.lengths)
        inp.upstream = {k: relaid(v, kind) for k, v in inp.upstream.items()}
        out = run_library(layer, inp)
        policy.check_all(out, ref64, dtype=np.float64)
        assert_bitwise_equal(out, expected, f"{kind} and C-order arrays")


@pytest.mark.parametrize("what", ["x", "h0", "lengths", "params in place", "load_state_dict"])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_unaffected_by_later_mutation(cell, what, rng):
    cfg = dict(LAYOUT_CFG, dropout=0.3, num_layers=2)
    layer = make_layer(cell, cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    clean = run_library(layer, inp)
    saved = layer.state_dict()
    res = layer.forward(inp.x, inp.h0, lengths=inp.lengths, training=True,
                        rng=np.random.default_rng(inp.mask_seed))
    if what in ("x", "h0", "lengths"):
        {"x": inp.x, "h0": inp.h0, "lengths": inp.lengths}[what][...] = 1
    elif what == "params in place":
        for v in layer.params.values():
            v[...] = 0.25
    else:
        layer.load_state_dict({k: np.full_like(v, -0.5) for k, v in saved.items()})
    grads = layer.backward(res, **inp.upstream)
    for k, v in grads.items():
        assert np.array_equal(v, clean["d:" + k]), f"gradient {k} changed after mutating {what} post-forward"


# --------------------------------------------------------------------------------------
# torch.nn.GRU / nn.RNN interoperability
# --------------------------------------------------------------------------------------
TORCH_CASES = [
    dict(num_layers=1, bidirectional=False, bias=True, batch_first=False, lengths=False),
    dict(num_layers=2, bidirectional=True, bias=True, batch_first=False, lengths=True),
    dict(num_layers=2, bidirectional=False, bias=False, batch_first=True, lengths=True),
    dict(num_layers=3, bidirectional=True, bias=True, batch_first=True, lengths=False),
]


def torch_module(cell, I, H, case):
    import torch
    kw = dict(num_layers=case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
              bidirectional=case["bidirectional"])
    if cell == "gru":
        return torch.nn.GRU(I, H, **kw).double()
    return torch.nn.RNN(I, H, nonlinearity=cell[len("rnn_"):], **kw).double()


def torch_outputs(module, inp):
    """nn.GRU / nn.RNN forward + backward, keyed like run_library."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    t = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    x = t(inp.x).requires_grad_(True)
    h0 = (t(inp.h0) if inp.h0 is not None else torch.zeros(inp.L * inp.D, inp.B, inp.H,
                                                             dtype=torch.float64)).requires_grad_(True)
    if inp.lengths is None:
        y, h_n = module(x, h0)
    else:
        packed = pack_padded_sequence(x, torch.as_tensor(inp.lengths), batch_first=module.batch_first,
                                      enforce_sorted=False)
        y, h_n = module(packed, h0)
        y, _ = pad_packed_sequence(y, batch_first=module.batch_first, total_length=inp.T)
    loss = 0 * y.sum()
    for value, key in ((y, "dy"), (h_n, "dh_n")):
        if key in inp.upstream:
            loss = loss + (value * t(inp.upstream[key])).sum()
    loss.backward()
    out = {"y": y.detach().numpy(), "h_n": h_n.detach().numpy(), "d:x": x.grad.numpy(), "d:h0": h0.grad.numpy()}
    for name, p in module.named_parameters():
        out["d:" + name] = p.grad.numpy()
    return out


@pytest.mark.torch
@pytest.mark.parametrize("direction", ["torch_to_fl", "fl_to_torch"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trip_with_torch(cell, case, direction, rng, policy):
    torch = pytest.importorskip("torch")
    I, H, T, B = 5, 9, 5, 3
    torch.manual_seed(int(rng.integers(2**31)))
    module = torch_module(cell, I, H, case)
    layer = new_layer(cell, I, H, case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
                      bidirectional=case["bidirectional"], dtype=np.float64, seed=int(rng.integers(2**63)))
    assert list(layer.state_dict()) == list(module.state_dict()), "parameter names / order differ from torch's"
    for name, tensor in module.state_dict().items():
        assert layer.params[name].shape == tuple(tensor.shape), name
    if direction == "torch_to_fl":
        layer.load_state_dict(module.state_dict())  # torch tensors as they come
    else:
        module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for name, tensor in module.state_dict().items():
        assert np.array_equal(layer.state_dict()[name], tensor.numpy()), name
        assert layer.state_dict()[name].dtype == np.float64

    cfg = dict(T=T, B=B, I=I, H=H, lengths=case["lengths"], hx=True, upstream="all")
    inp = Inputs(layer, dict(cfg, dropout=0.0), rng, np.float64)
    truth = torch_outputs(module, inp)
    got = run_library(layer, inp)
    assert got.keys() == truth.keys()
    policy.check_all(got, truth, dtype=np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("cell", CELLS)
def test_float32_layer_loads_torch_float32_weights(cell):
    torch = pytest.importorskip("torch")
    module = torch_module(cell, 3, 7, dict(num_layers=2, bidirectional=True, bias=True, batch_first=False)).float()
    layer = new_layer(cell, 3, 7, 2, bidirectional=True, dtype=np.float32)
    layer.load_state_dict(module.state_dict())
    for name, tensor in module.state_dict().items():
        assert layer.params[name].dtype == np.float32
        assert np.array_equal(layer.params[name], tensor.numpy()), name


@pytest.mark.parametrize("cell", CELLS)
def test_initialisation_is_torchs(cell):
    """uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as nn.GRU / nn.RNN."""
    layer = new_layer(cell, 4, 25, 2, bidirectional=True, dtype=np.float64, seed=3)
    for name, v in layer.params.items():
        assert np.all(np.abs(v) <= 1 / 5) and v.std() > 0.05, name


# --------------------------------------------------------------------------------------
# result types, repr, one implementation
# --------------------------------------------------------------------------------------
def test_results_and_repr(rng):
    gru = fusedlstm.GRU(3, 5, 2, bidirectional=True, dtype=np.float64, seed=0)
    rnn = fusedlstm.RNN(3, 5, nonlinearity="relu", batch_first=True, dropout=0.25, num_layers=2)
    assert repr(gru) == "GRU(3, 5, num_layers=2, bidirectional=True, dtype=float64)"
    assert repr(rnn) == ("RNN(3, 5, num_layers=2, nonlinearity='relu', batch_first=True, dropout=0.25, "
                         "dtype=float32)")
    assert repr(fusedlstm.RNN(3, 5)) == "RNN(3, 5, dtype=float32)" and fusedlstm.RNN(3, 5).nonlinearity == "tanh"
    for cls in (fusedlstm.LSTM, fusedlstm.GRU, fusedlstm.RNN):
        assert issubclass(cls, RecurrentStack)
    assert [gru.cell, rnn.cell] == ["gru", "rnn_relu"]
    res = gru.forward(rng.standard_normal((4, 2, 3)), training=True)
    assert type(res) is fusedlstm.GRUStackResult and not hasattr(res, "c_n")
    assert repr(res) == "GRUStackResult(y(4, 2, 10), h_n(4, 2, 5), training=True)"
    r = rnn.forward(rng.standard_normal((2, 4, 3)).astype(np.float32))
    assert type(r) is fusedlstm.RNNStackResult
    assert repr(r) == "RNNStackResult(y(2, 4, 5), h_n(2, 2, 5), training=False)"
    assert gru.output_size == 10 and rnn.output_size == 5


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def _base(cell):
    """A valid layer (L=2, D=2, H=7, I=5) and inputs T=4, B=3."""
    return new_layer(cell, 5, 7, 2, bidirectional=True, dtype=np.float64, seed=0), np.zeros((4, 3, 5)), \
        np.zeros((4, 3, 7))


FORWARD_ERRORS = [
    ("x-2d", dict(x=np.zeros((4, 5))), ValueError, "x"),
    ("x-input-size", dict(x=np.zeros((4, 3, 6))), ValueError, "x"),
    ("x-no-steps", dict(x=np.zeros((0, 3, 5))), ValueError, "x"),
    ("x-other-dtype", dict(x=np.zeros((4, 3, 5), np.float32)), TypeError, "x"),
    ("hx-tuple", dict(hx=(np.zeros((4, 3, 7)), np.zeros((4, 3, 7)))), TypeError, "hx.*no cell state"),
    ("hx-shape", dict(hx=np.zeros((2, 3, 7))), ValueError, "hx"),
    ("hx-hidden", dict(hx=np.zeros((4, 3, 6))), ValueError, "hx"),
    ("hx-batch", dict(hx=np.zeros((4, 2, 7))), ValueError, "hx"),
    ("hx-dtype", dict(hx=np.zeros((4, 3, 7), np.float32)), TypeError, "hx"),
    ("lengths-zero", dict(lengths=np.array([4, 0, 2])), ValueError, "lengths"),
    ("lengths-over-T", dict(lengths=np.array([4, 5, 2])), ValueError, "lengths"),
    ("lengths-float", dict(lengths=np.array([4.0, 2.0, 1.0])), TypeError, "lengths"),
    ("training-not-bool", dict(training=1), TypeError, "training"),
]


@pytest.mark.parametrize("kw, exc, text", [e[1:] for e in FORWARD_ERRORS], ids=[e[0] for e in FORWARD_ERRORS])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_errors(cell, kw, exc, text):
    layer, x, h0 = _base(cell)
    layer.forward(x, h0, lengths=np.array([4, 1, 2]), training=True)  # the valid call works
    args = dict(x=x, hx=h0, lengths=np.array([4, 1, 2]), training=True)
    args.update(kw)
    with pytest.raises(exc, match=text):
        layer.forward(args.pop("x"), args.pop("hx"), **args)


CONSTRUCTOR_ERRORS = [
    ("layers-zero", dict(num_layers=0), ValueError, "num_layers"),
    ("layers-float", dict(num_layers=2.0), TypeError, "num_layers"),
    ("hidden-zero", dict(hidden_size=0), ValueError, "hidden_size"),
    ("input-zero", dict(input_size=0), ValueError, "input_size"),
    ("dropout-over-1", dict(dropout=1.5), ValueError, "dropout"),
    ("bias-not-bool", dict(bias=1), TypeError, "bias"),
    ("dtype-int", dict(dtype=np.int32), TypeError, "dtype"),
    ("proj_size", dict(proj_size=2), TypeError, "proj_size"),
]


@pytest.mark.parametrize("kw, exc, text", [e[1:] for e in CONSTRUCTOR_ERRORS],
                         ids=[e[0] for e in CONSTRUCTOR_ERRORS])
@pytest.mark.parametrize("cell", CELLS)
def test_constructor_errors(cell, kw, exc, text):
    args = dict(input_size=5, hidden_size=7)
    args.update(kw)
    with pytest.raises(exc, match=text):
        new_layer(cell, **args)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_errors(cell, rng):
    layer, x, h0 = _base(cell)
    ev = layer.forward(x, h0)
    with pytest.raises(ValueError, match="training=False"):
        layer.backward(ev, dy=np.zeros_like(ev.y))
    with pytest.raises(TypeError, match="result"):
        layer.backward((ev.y, ev.h_n))
    res = layer.forward(x, h0, training=True)
    for kw, text in [(dict(dy=np.zeros((4, 3, 7))), "dy"), (dict(dy=np.zeros((3, 4, 14))), "dy"),
                     (dict(dh_n=np.zeros((2, 3, 7))), "dh_n"), (dict(dh_n=np.zeros((4, 3, 6))), "dh_n")]:
        with pytest.raises(ValueError, match=text):
            layer.backward(res, **kw)
    with pytest.raises(TypeError, match="dy"):
        layer.backward(res, dy=np.zeros((4, 3, 14), np.float32))
    with pytest.raises(TypeError, match="dc_n"):
        layer.backward(res, dc_n=np.zeros((4, 3, 7)))
    # a result of another cell's layer, or of another configuration
    lstm = fusedlstm.LSTM(5, 7, 2, bidirectional=True, dtype=np.float64)
    lstm_res = lstm.forward(x, training=True)
    with pytest.raises(TypeError, match="result"):
        layer.backward(lstm_res)
    with pytest.raises(TypeError, match="result"):
        lstm.backward(res)
    for other_cell in CELLS:  # GRU vs RNN: another result type; tanh vs relu: another layer
        if other_cell != cell:
            other, _, _ = _base(other_cell)
            with pytest.raises((TypeError, ValueError), match="result"):
                other.backward(res)
    wider = new_layer(cell, 5, 9, 2, bidirectional=True, dtype=np.float64)
    with pytest.raises(ValueError, match="another layer"):
        wider.backward(res)
    layer.backward(res, dy=np.zeros((4, 3, 14)))  # a valid call still works


@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_errors(cell):
    layer, _, _ = _base(cell)
    before = layer.state_dict()
    lstm = fusedlstm.LSTM(5, 7, 2, bidirectional=True, dtype=np.float64)
    with pytest.raises(ValueError, match="weight_ih_l0"):  # an LSTM's weights: 4H rows
        layer.load_state_dict(lstm.state_dict())
    state = layer.state_dict()
    del state["bias_hh_l1_reverse"]
    with pytest.raises(ValueError, match="bias_hh_l1_reverse"):
        layer.load_state_dict(state)
    with pytest.raises(ValueError, match="weight_hr_l0"):
        layer.load_state_dict(dict(layer.state_dict(), weight_hr_l0=np.zeros((3, 7))))
    state = layer.state_dict()
    state["weight_ih_l1"] = np.zeros((GATES[cell] * 7, 7))  # layer 1 reads D*H = 14 features
    with pytest.raises(ValueError, match="weight_ih_l1"):
        layer.load_state_dict(state)
    for name, v in layer.state_dict().items():  # a failed load leaves the weights alone
        assert np.array_equal(v, before[name]), name
