"""fusedlstm.LSTM (the numpy layer stack, python/fusedlstm/layers.py) against the
float64 stack reference (fusedlstm.reference.stack_forward / stack_backward).

Covered (the parity tests on every backend of conftest.py: the CPU, the CPU
emulation of the CUDA backend, a GPU):
* random configurations (layers 1-3, bidirectional, proj_size, bias, batch_first,
  lengths, hx, dropout with a mask drawn from a given generator) with odd sizes,
  float32 and float64, on every ISA path: y, h_n, c_n and every gradient (x, h0,
  c0, each parameter) within the tolerance policy of conftest.py; 1 and 2
  threads bitwise identical; y and dx exactly zero at padded steps; every
  (NaN-poisoned) output written.  The eight configurations of one run follow a
  two-level orthogonal array over the seven on/off features, so every feature is
  on and off in every run (and every pair of features meets in all four
  combinations); layer counts, sizes, lengths, dropout rate, upstream gradients
  and values are drawn fresh from the test seed.
* the reserve size: layers.stack_reserve_nbytes == _core.stack_reserve_bytes ==
  the closed form of the C header, for many shapes, on the CPU and on CUDA; a
  reserve one byte short is refused (on each backend).
* eval (training=False) == training forward bitwise; no dropout in eval; dropout=1.
* backward uses what the forward saw: mutating x, h0, c0, lengths or the
  layer's parameters after the forward does not change the gradients.
* state_dict / load_state_dict with torch.nn.LSTM in both directions (proj_size,
  bidirectional, no bias, batch_first), then outputs and gradients match nn.LSTM
  in float64 (policy: 1e-12).
* parameters set by hand in any layout (negative strides, Fortran order, a
  stride of 2, unaligned), inputs, states and upstream gradients likewise, and
  zero-stride (broadcast) x and dy: within the policy against the reference.
* argument errors (a dtype mismatch says what to convert), and a T=1, B=1,
  I=1, H=1 stack.
"""

import numpy as np
import pytest

import fusedlstm
from fusedlstm import _core
from fusedlstm import reference as R
from fusedlstm.layers import stack_reserve_nbytes

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

# Two-level orthogonal array L8(2^7): 8 runs, 7 on/off features, every feature
# on in 4 runs, every pair of features in each of its 4 combinations twice.
FEATURES = ("bidirectional", "proj", "bias", "batch_first", "lengths", "hx", "dropout")
L8 = ("0000000", "0001111", "0110011", "0111100", "1010101", "1011010", "1100110", "1101001")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def odd_hidden(rng, lo=2, hi=41):
    """H in [lo, hi) that is not a multiple of 8 (so never one of 16 either)."""
    while True:
        H = int(rng.integers(lo, hi))
        if H % 8:
            return H


def odd(rng, lo, hi):
    """An odd integer in [lo, hi]."""
    return int(rng.choice(np.arange(lo | 1, hi + 1, 2)))


def draw_config(rng, flags):
    on = dict(zip(FEATURES, (c == "1" for c in flags)))
    H = odd_hidden(rng)
    T = int(rng.integers(1, 7))
    cfg = dict(
        T=T, B=odd(rng, 1, 7), I=odd(rng, 1, 23), H=H,
        num_layers=int(rng.integers(2, 4)) if on["dropout"] else int(rng.integers(1, 4)),
        bidirectional=on["bidirectional"],
        proj_size=int(rng.integers(1, H)) if on["proj"] else 0,
        bias=on["bias"], batch_first=on["batch_first"], lengths=on["lengths"], hx=on["hx"],
        dropout=float(rng.uniform(0.1, 0.7)) if on["dropout"] else 0.0,
        upstream=str(rng.choice(["all", "all", "dy", "states"])),
    )
    return cfg


def random_params(layer, rng):
    """Fresh random weights (wider than nn.LSTM's init) for every parameter."""
    scale = 1.5 / np.sqrt(layer.hidden_size)
    state = {}
    for name, v in layer.params.items():
        if name.startswith("bias"):
            state[name] = rng.uniform(-0.5, 0.5, v.shape)
        else:
            state[name] = rng.uniform(-scale, scale, v.shape)
    return state


def make_layer(cfg, dtype, rng):
    layer = fusedlstm.LSTM(cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                           batch_first=cfg["batch_first"], dropout=cfg["dropout"],
                           bidirectional=cfg["bidirectional"], proj_size=cfg["proj_size"],
                           dtype=dtype, seed=int(rng.integers(2**63)))
    layer.load_state_dict(random_params(layer, rng))
    for name, v in layer.params.items():
        assert v.dtype == np.dtype(dtype), name
    return layer


class Inputs:
    """One call's inputs; time-major copies (tm_*) feed the reference."""

    def __init__(self, layer, cfg, rng, dtype):
        T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
        L, D = layer.num_layers, layer.num_directions
        hout = layer.proj_size or H
        self.T, self.B, self.L, self.D, self.hout = T, B, L, D, hout
        self.batch_first = layer.batch_first
        cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
        self.x = cast(rng.standard_normal((B, T, I) if self.batch_first else (T, B, I)))
        self.h0 = self.c0 = None
        if cfg["hx"]:
            self.h0 = cast(0.5 * rng.standard_normal((L * D, B, hout)))
            self.c0 = cast(rng.standard_normal((L * D, B, H)))
        self.lengths = None
        if cfg["lengths"]:
            lens = rng.integers(1, T + 1, B)
            lens[1 % B] = 1
            self.lengths = lens.astype(np.int64)
        # upstream gradients; dy is large at padded steps (must be ignored)
        dy_tm = rng.standard_normal((T, B, D * hout))
        pad = self.padded()
        if pad is not None:
            dy_tm[pad] = 100.0 * rng.standard_normal((int(pad.sum()), D * hout))
        ups = dict(dy=cast(self.from_tm(dy_tm)), dh_n=cast(rng.standard_normal((L * D, B, hout))),
                   dc_n=cast(rng.standard_normal((L * D, B, H))))
        keep = {"all": ("dy", "dh_n", "dc_n"), "dy": ("dy",), "states": ("dh_n", "dc_n")}[cfg["upstream"]]
        self.upstream = {k: v for k, v in ups.items() if k in keep}
        # dropout: the generator handed to the library, and the same mask drawn here
        # exactly as layers.py draws it
        self.mask_seed = int(rng.integers(2**63))
        self.masks = None
        p = layer.dropout
        if p > 0 and L > 1:
            keep_p = 1.0 - p
            gen = np.random.default_rng(self.mask_seed)
            draw = gen.random((L - 1, T, B, D * hout)) < keep_p
            self.masks = (draw / keep_p if keep_p > 0 else np.zeros(draw.shape)).astype(dtype)

    @property
    def hx(self):
        return None if self.h0 is None else (self.h0, self.c0)

    def tm(self, a):
        return a.swapaxes(0, 1) if self.batch_first else a

    from_tm = tm

    def padded(self):
        """(T, B) bool, True at padded steps; None without lengths."""
        if self.lengths is None:
            return None
        return np.arange(self.T)[:, None] >= self.lengths[None, :]


def ref_cells(layer, params):
    cells = []
    for k in range(layer.num_layers):
        for suffix in ("", "_reverse")[:layer.num_directions]:
            s = f"_l{k}{suffix}"
            cells.append(dict(w_ih=params["weight_ih" + s], w_hh=params["weight_hh" + s],
                              b_ih=params.get("bias_ih" + s), b_hh=params.get("bias_hh" + s),
                              w_hr=params.get("weight_hr" + s)))
    return cells


_INPUT_MASKS = object()


def run_reference(layer, inp, *, dtype, masks=_INPUT_MASKS, backward=True):
    """Reference stack on the layer's current parameters, as a dict keyed like
    the library's outputs: y, h_n, c_n and d:x, d:h0, d:c0, d:<param>."""
    masks = inp.masks if masks is _INPUT_MASKS else masks
    res = R.stack_forward(inp.tm(inp.x), ref_cells(layer, layer.params), inp.h0, inp.c0,
                          num_layers=layer.num_layers, bidirectional=layer.bidirectional,
                          lengths=inp.lengths, dropout_masks=masks, dtype=dtype)
    out = dict(y=inp.from_tm(res.y), h_n=res.h_n, c_n=res.c_n)
    if not backward:
        return out
    ups = dict(inp.upstream)
    if "dy" in ups:
        ups["dy"] = inp.tm(ups["dy"])
    g = R.stack_backward(res, **ups)
    out.update({"d:x": inp.from_tm(g["dx"]), "d:h0": g["dh0"], "d:c0": g["dc0"]})
    D = layer.num_directions
    for name in layer.params:
        kind, rest = name.split("_l")
        k = int(rest.split("_")[0])
        cell = g["cells"][k * D + (1 if rest.endswith("_reverse") else 0)]
        key = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b", "bias_hh": "b",
               "weight_hr": "w_hr"}[kind]
        out["d:" + name] = cell[key]
    return out


def reference_pair(layer, inp, *, dtype, **kw):
    """(ref64, plain32) as the tolerance policy wants them."""
    ref64 = run_reference(layer, inp, dtype=np.float64, **kw)
    plain32 = run_reference(layer, inp, dtype=np.float32, **kw) if np.dtype(dtype) == np.float32 else None
    return ref64, plain32


def run_library(layer, inp, *, training=True, backward=True, backend=None):
    """The layer's forward (+ backward) on `backend` (None: the CPU) -> dict of numpy arrays."""
    to = backend.to if backend else (lambda a: a)
    rng = np.random.default_rng(inp.mask_seed)
    res = layer.forward(to(inp.x), to(inp.hx), lengths=to(inp.lengths), training=training, rng=rng)
    out = dict(y=res.y, h_n=res.h_n, c_n=res.c_n)
    if backward:
        grads = layer.backward(res, **to(inp.upstream))
        assert set(grads) == {"x", "h0", "c0"} | set(layer.params)
        out.update({"d:" + k: v for k, v in grads.items()})
    return backend.numpy(out) if backend else out


def assert_bitwise_equal(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key]), (
            f"{key}: results differ between {what} "
            f"(max diff {np.nanmax(np.abs(a[key].astype(float) - b[key])):.3e})")


def assert_all_finite(out):
    for key, v in out.items():
        assert np.all(np.isfinite(v)), f"{key}: not every element written (NaN poison left) or non-finite"


def assert_padded_zero(out, inp):
    pad = inp.padded()
    if pad is None:
        return
    assert np.all(inp.tm(out["y"])[pad] == 0), "y is not exactly zero at padded steps"
    if "d:x" in out:
        assert np.all(inp.tm(out["d:x"])[pad] == 0), "dx is not exactly zero at padded steps"


def snapshot(*arrays):
    return [(a, a.copy()) for a in arrays if a is not None]


# --------------------------------------------------------------------------------------
# random configurations against the reference
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flags", L8, ids=lambda f: "".join(n[:2] for n, c in zip(FEATURES, f) if c == "1")
                         or "plain")
def test_matches_reference(flags, dtype, backend, isa, rng, threads, policy):
    cfg = draw_config(rng, flags)
    print("config:", cfg)
    layer = make_layer(cfg, dtype, rng)
    inp = Inputs(layer, cfg, rng, dtype)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype)
    before = snapshot(inp.x, inp.h0, inp.c0, inp.lengths, *inp.upstream.values(), *layer.params.values())

    results = {}
    for n in (1, 2) if backend.name != "cuda" else (1,):
        with threads(n):
            results[n] = run_library(layer, inp, backend=backend)

    out = results[1]
    assert out.keys() == ref64.keys()
    assert_all_finite(out)
    policy.check_all(out, ref64, plain32, dtype=dtype)
    if 2 in results:
        assert_bitwise_equal(results[1], results[2], "1 and 2 threads")
    assert_padded_zero(out, inp)
    for name in layer.params:  # both biases of a cell enter the gates alike
        if name.startswith("bias_hh"):
            assert np.array_equal(out["d:" + name], out["d:" + name.replace("bias_hh", "bias_ih")])
    for original, copy in before:
        assert np.array_equal(original, copy), "forward/backward modified an input array or a parameter"


def test_dropout_mask_comes_from_the_given_generator(rng):
    """Same generator state -> same result; another state -> another mask; the
    layer's own generator (seed=) is used when rng is None."""
    cfg = dict(T=4, B=3, I=5, H=7, num_layers=3, bidirectional=True, proj_size=0, bias=True,
               batch_first=False, lengths=False, hx=False, dropout=0.5, upstream="all")
    layer = make_layer(cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    a = run_library(layer, inp)
    assert_bitwise_equal(a, run_library(layer, inp), "two runs with the same generator state")
    inp.mask_seed += 1
    b = run_library(layer, inp)
    assert not np.array_equal(a["y"], b["y"]), "a different generator gave the same dropout"

    # one layer: nothing to drop (dropout acts between layers only)
    single = fusedlstm.LSTM(5, 7, 1, dropout=0.5, dtype=np.float64, seed=1)
    assert np.array_equal(single.forward(inp.x, training=True, rng=np.random.default_rng(0)).y,
                          single.forward(inp.x).y)

    seed = int(rng.integers(2**63))
    outs = []
    for _ in range(2):
        lay = fusedlstm.LSTM(5, 7, 3, dropout=0.5, dtype=np.float64, seed=seed)
        outs.append(lay.forward(inp.x, training=True).y)
    assert np.array_equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------
# reserve size
# --------------------------------------------------------------------------------------
def header_reserve_bytes(s, T, B, H, R_, L, D, device="cpu"):
    """The closed form documented in csrc/include/fusedlstm/fusedlstm.h."""
    up = lambda n, m: (n + m - 1) // m * m  # noqa: E731
    S = T * B
    hout = R_ if R_ else H
    if device == "cpu":
        w = 64 // s
        hp = up(H, w)
        cell = 320 + up(S * 4 * hp * s, 64) + up(S * hp * s, 64) + up(S * (R_ if R_ else hp) * s, 64)
        cell += up(S * up(H, 4 * w) * s, 64) if R_ else 0
    else:
        a = 8 if s == 8 else 4
        cell = up(S * 4 * H * a, 256) + up((S + B) * H * a, 256) + up((S + B) * hout * s, 256)
        cell += up(S * H * s, 256) if R_ else 0
    return L * D * cell + (L - 1) * (up(S * D * hout * s, 64) + 64)


def reserve_shapes(rng, n):
    shapes = [(1, 1, 1, 0, 1, 1), (1, 1, 2, 1, 1, 2), (1, 1, 16, 0, 3, 2), (7, 5, 16, 15, 2, 2),
              (3, 1, 17, 16, 1, 1), (64, 32, 256, 128, 4, 2), (1000, 1, 33, 0, 2, 1)]
    for _ in range(n):
        H = int(rng.integers(1, 300))
        shapes.append((int(rng.integers(1, 100)), int(rng.integers(1, 70)), H,
                       int(rng.integers(1, H)) if H > 1 and rng.random() < 0.5 else 0,
                       int(rng.integers(1, 5)), int(rng.integers(1, 3))))
    return shapes


CODES = {2: _core.FLOAT16, 4: _core.FLOAT32, 8: _core.FLOAT64}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_reserve_formula(device, rng):
    """Python's closed form (which frameworks allocate from, shapes alone) is the
    header's and, where the backend loads (the C API asks it), the C API's."""
    device_type = _core.DEVICE_CPU if device == "cpu" else _core.DEVICE_CUDA
    with_core = device == "cpu" or _core.cuda_device_count()[0] > 0
    for T, B, H, P, L, D in reserve_shapes(rng, 400):
        for itemsize in (4, 8) if device == "cpu" else (2, 4, 8):
            py = stack_reserve_nbytes(itemsize, T, B, H, P, L, D, device=device)
            header = header_reserve_bytes(itemsize, T, B, H, P, L, D, device)
            core = _core.stack_reserve_bytes(dtype=CODES[itemsize], T=T, B=B, H=H, proj_size=P, num_layers=L,
                                             num_directions=D, device_type=device_type) if with_core else header
            assert py == core == header, (f"{device} itemsize={itemsize} T={T} B={B} H={H} proj={P} L={L} D={D}: "
                                          f"python {py}, core {core}, header {header}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reserve_one_byte_short_is_refused(dtype, backend, rng):
    T, B, I, H, P, L, D = 3, 5, 7, 11, 4, 2, 2
    if backend.name not in ("cpu", "cuda-emulated"):
        pytest.skip("numpy arrays straight to _core: the CPU and the emulation (its device memory is host memory)")
    layer = fusedlstm.LSTM(I, H, L, bidirectional=True, proj_size=P, dtype=dtype, seed=1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    device = "cuda" if backend.is_cuda else "cpu"
    need = stack_reserve_nbytes(np.dtype(dtype).itemsize, T, B, H, P, L, D, device=device)
    cells = layer._cells(layer.params)
    y = np.empty((T, B, D * P), dtype)
    h_n, c_n = np.empty((L * D, B, P), dtype), np.empty((L * D, B, H), dtype)
    from fusedlstm._host import HostArrays
    arrays = HostArrays(dtype=dtype)  # on the backend's device (conftest sets the host device)
    call = dict(x=x, x_strides=(B * I, I), cells=cells, y=y, y_strides=(B * D * P, D * P), h_n=h_n, c_n=c_n,
                T=T, B=B, I=I, H=H, proj_size=P, num_layers=L, num_directions=D, **arrays.call())
    with pytest.raises(ValueError, match="reserve"):
        _core.stack_forward(**call, reserve=arrays.empty_bytes(need - 1))
    _core.stack_forward(**call, reserve=arrays.empty_bytes(need))
    assert np.array_equal(y, layer.forward(x).y)


# --------------------------------------------------------------------------------------
# eval vs training, dropout, padded steps, non-contiguous inputs
# --------------------------------------------------------------------------------------
EVAL_CFG = dict(T=5, B=5, I=9, H=13, num_layers=3, bidirectional=True, proj_size=6, bias=True,
                batch_first=True, lengths=True, hx=True, dropout=0.0, upstream="all")


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_equals_training_and_has_no_dropout(dtype, backend, isa, rng, policy):
    layer = make_layer(EVAL_CFG, dtype, rng)
    inp = Inputs(layer, EVAL_CFG, rng, dtype)
    ev = run_library(layer, inp, training=False, backward=False, backend=backend)
    tr = run_library(layer, inp, training=True, backward=False, backend=backend)
    assert_all_finite(ev)
    assert_bitwise_equal(ev, tr, "training=False and training=True")
    assert_padded_zero(ev, inp)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype, backward=False)
    policy.check_all(ev, ref64, plain32, dtype=dtype)

    # the same weights with dropout: eval ignores it, training applies it
    dropping = fusedlstm.LSTM(9, 13, 3, batch_first=True, dropout=0.6, bidirectional=True, proj_size=6,
                              dtype=dtype, seed=0)
    dropping.load_state_dict(layer.state_dict())
    assert_bitwise_equal(run_library(dropping, inp, training=False, backward=False, backend=backend), ev,
                         "eval with dropout=0.6 and with dropout=0")
    assert not np.array_equal(run_library(dropping, inp, training=True, backward=False, backend=backend)["y"],
                              ev["y"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_one_zeroes_upper_layer_inputs(dtype, backend, rng, policy):
    cfg = dict(EVAL_CFG, num_layers=2, dropout=1.0, batch_first=False, upstream="dy")
    layer = make_layer(cfg, dtype, rng)
    inp = Inputs(layer, cfg, rng, dtype)
    out = run_library(layer, inp, backend=backend)
    masks = np.zeros((1, inp.T, inp.B, inp.D * inp.hout), dtype)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype, masks=masks)
    assert_all_finite(out)
    policy.check_all(out, ref64, plain32, dtype=dtype)
    # only dy is given: nothing of it may reach layer 0 through a dropout of 1
    for name in ("d:x", "d:weight_ih_l0", "d:weight_hh_l0_reverse", "d:bias_ih_l0"):
        assert np.all(out[name] == 0), f"{name}: gradient crossed a dropout of 1"


def stepped(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


@pytest.mark.parametrize("batch_first", [False, True])
def test_noncontiguous_inputs_give_identical_results(batch_first, rng):
    cfg = dict(EVAL_CFG, batch_first=batch_first)
    layer = make_layer(cfg, np.float32, rng)
    inp = Inputs(layer, cfg, rng, np.float32)
    expected = run_library(layer, inp)
    inp.x = np.asfortranarray(stepped(inp.x))
    inp.h0, inp.c0 = np.asfortranarray(inp.h0), inp.c0[::-1].copy()[::-1]
    inp.lengths = stepped(inp.lengths[:, None].repeat(2, axis=1))[:, 0]
    inp.upstream = {k: np.asfortranarray(v) for k, v in inp.upstream.items()}
    assert_bitwise_equal(run_library(layer, inp), expected, "contiguous and strided inputs")
    layer.load_state_dict({k: np.asfortranarray(v) for k, v in layer.state_dict().items()})
    assert_bitwise_equal(run_library(layer, inp), expected, "contiguous and Fortran-order parameters")


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_with_fortran_order_state(dtype, rng):
    layer = make_layer(EVAL_CFG, dtype, rng)
    inp = Inputs(layer, EVAL_CFG, rng, dtype)
    expected = run_library(layer, inp, training=False, backward=False)
    layer.load_state_dict({k: np.asfortranarray(v) for k, v in layer.state_dict().items()})
    assert_bitwise_equal(run_library(layer, inp, training=False, backward=False), expected,
                         "C-order and Fortran-order loaded weights (eval)")


def relaid(a, kind):
    """An array equal to a whose layout is not C order: negative strides,
    Fortran order, a stride of 2, unaligned memory, or (axis 0 only, for arrays
    equal along it) a zero stride."""
    if kind == "negative":
        idx = (slice(None, None, -1),) * a.ndim
        out = a[idx].copy()[idx]
    elif kind == "fortran":
        out = np.asfortranarray(a) if a.ndim > 1 else a[::-1].copy()[::-1]
    elif kind == "strided":
        out = stepped(a)
    elif kind == "unaligned":
        raw = np.zeros(a.nbytes + 1, np.uint8)
        out = raw[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        assert not out.flags.aligned
    else:
        raise ValueError(kind)
    assert np.array_equal(out, a) and (kind == "unaligned" or not out.flags.c_contiguous)
    return out


LAYOUT_CFG = dict(T=4, B=3, I=5, H=6, num_layers=2, bidirectional=True, proj_size=4, bias=True,
                  batch_first=False, lengths=True, hx=True, dropout=0.0, upstream="all")
LAYOUTS = ("negative", "fortran", "strided", "unaligned")


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_set_in_any_layout(kind, dtype, rng, policy):
    """layer.params set by hand (not through load_state_dict, which copies):
    every parameter non-contiguous, outputs and gradients as the reference's."""
    layer = make_layer(LAYOUT_CFG, dtype, rng)
    inp = Inputs(layer, LAYOUT_CFG, rng, dtype)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype)
    layer.params = {k: relaid(v, kind) for k, v in layer.params.items()}
    for training in (False, True):
        out = run_library(layer, inp, training=training, backward=training)
        policy.check_all(out, ref64, plain32, dtype=dtype, names=list(out))


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_inputs_states_and_upstream_in_any_layout(kind, batch_first, backend, rng, policy):
    cfg = dict(LAYOUT_CFG, batch_first=batch_first)
    layer = make_layer(cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    ref64, _ = reference_pair(layer, inp, dtype=np.float64)
    inp.x, inp.h0, inp.c0 = (relaid(a, kind) for a in (inp.x, inp.h0, inp.c0))
    inp.lengths = stepped(inp.lengths)
    inp.upstream = {k: relaid(v, kind) for k, v in inp.upstream.items()}
    policy.check_all(run_library(layer, inp, backend=backend), ref64, dtype=np.float64)


def test_zero_stride_input_and_upstream(backend, rng, policy):
    """x the same at every step, dy the same for every sequence (broadcast views)."""
    cfg = dict(LAYOUT_CFG, lengths=False)
    layer = make_layer(cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    inp.x = np.broadcast_to(inp.x[:1], inp.x.shape)
    inp.upstream["dy"] = np.broadcast_to(inp.upstream["dy"][:, :1], inp.upstream["dy"].shape)
    ref64, _ = reference_pair(layer, inp, dtype=np.float64)
    policy.check_all(run_library(layer, inp, backend=backend), ref64, dtype=np.float64)


def test_debug_poison_is_active():
    """The tests above rely on the library filling its outputs with NaN first."""
    from fusedlstm._host import HostArrays
    assert np.all(np.isnan(HostArrays(dtype=np.float32).empty((3,))))


# --------------------------------------------------------------------------------------
# backward reads what the forward saw
# --------------------------------------------------------------------------------------
SNAPSHOT_CFG = dict(T=4, B=3, I=5, H=7, num_layers=2, bidirectional=True, proj_size=3, bias=True,
                    batch_first=False, lengths=True, hx=True, dropout=0.3, upstream="all")


def _grads_after_mutation(layer, inp, mutate, backend):
    rng = np.random.default_rng(inp.mask_seed)
    x, hx, lengths = backend.to((inp.x, inp.hx, inp.lengths))
    res = layer.forward(x, hx, lengths=lengths, training=True, rng=rng)
    mutate(x, hx, lengths)
    return backend.numpy({k: v.clone() if hasattr(v, "clone") else v.copy()
                          for k, v in layer.backward(res, **backend.to(inp.upstream)).items()})


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("what", ["x", "h0", "c0", "lengths", "params in place", "params replaced"])
def test_backward_unaffected_by_later_mutation(what, batch_first, backend, rng):
    cfg = dict(SNAPSHOT_CFG, batch_first=batch_first)
    layer = make_layer(cfg, np.float64, rng)
    inp = Inputs(layer, cfg, rng, np.float64)
    clean = _grads_after_mutation(layer, inp, lambda *a: None, backend)
    saved = layer.state_dict()

    def mutate(x, hx, lengths):
        if what in ("x", "h0", "c0", "lengths"):
            {"x": x, "h0": hx[0], "c0": hx[1], "lengths": lengths}[what][...] = 1
        elif what == "params in place":
            for v in layer.params.values():
                v[...] = 0.25
        else:
            layer.load_state_dict({k: np.full_like(v, -0.5) for k, v in saved.items()})

    got = _grads_after_mutation(layer, inp, mutate, backend)
    for k in clean:
        assert np.array_equal(got[k], clean[k]), f"gradient {k} changed after mutating {what} post-forward"


# --------------------------------------------------------------------------------------
# torch.nn.LSTM interoperability
# --------------------------------------------------------------------------------------
TORCH_CASES = [
    dict(num_layers=1, bidirectional=False, proj_size=0, bias=True, batch_first=False, lengths=False),
    dict(num_layers=2, bidirectional=True, proj_size=3, bias=True, batch_first=False, lengths=True),
    dict(num_layers=3, bidirectional=False, proj_size=5, bias=False, batch_first=True, lengths=False),
    dict(num_layers=2, bidirectional=True, proj_size=0, bias=True, batch_first=True, lengths=True),
]


def _torch_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def _torch_outputs(lstm, inp):
    """nn.LSTM forward + backward; dict keyed like run_library's."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    t = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    x = t(inp.x).requires_grad_(True)
    h0 = (t(inp.h0) if inp.h0 is not None else torch.zeros(inp.L * inp.D, inp.B, inp.hout,
                                                             dtype=torch.float64)).requires_grad_(True)
    c0 = (t(inp.c0) if inp.c0 is not None else torch.zeros(inp.L * inp.D, inp.B, lstm.hidden_size,
                                                             dtype=torch.float64)).requires_grad_(True)
    if inp.lengths is None:
        y, (h_n, c_n) = lstm(x, (h0, c0))
    else:
        packed = pack_padded_sequence(x, torch.as_tensor(inp.lengths), batch_first=lstm.batch_first,
                                      enforce_sorted=False)
        y, (h_n, c_n) = lstm(packed, (h0, c0))
        y, _ = pad_packed_sequence(y, batch_first=lstm.batch_first, total_length=inp.T)
    loss = 0 * y.sum()
    for value, key in ((y, "dy"), (h_n, "dh_n"), (c_n, "dc_n")):
        if key in inp.upstream:
            loss = loss + (value * t(inp.upstream[key])).sum()
    loss.backward()
    out = dict(y=y.detach().numpy(), h_n=h_n.detach().numpy(), c_n=c_n.detach().numpy(),
               **{"d:x": x.grad.numpy(), "d:h0": h0.grad.numpy(), "d:c0": c0.grad.numpy()})
    for name, p in lstm.named_parameters():
        out["d:" + name] = p.grad.numpy()
    return out


@pytest.mark.torch
@pytest.mark.parametrize("direction", ["torch_to_fl", "fl_to_torch"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=_torch_id)
def test_state_dict_round_trip_with_torch(case, direction, rng, policy):
    torch = pytest.importorskip("torch")
    I, H, T, B = 5, 9, 5, 3
    torch.manual_seed(int(rng.integers(2**31)))
    lstm = torch.nn.LSTM(I, H, case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
                         bidirectional=case["bidirectional"], proj_size=case["proj_size"]).double()
    layer = fusedlstm.LSTM(I, H, case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
                           bidirectional=case["bidirectional"], proj_size=case["proj_size"], dtype=np.float64,
                           seed=int(rng.integers(2**63)))
    assert list(layer.state_dict()) == list(lstm.state_dict()), "parameter names / order differ from nn.LSTM"
    if direction == "torch_to_fl":
        layer.load_state_dict(lstm.state_dict())  # torch tensors as they come
    else:
        lstm.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for name, tensor in lstm.state_dict().items():
        assert np.array_equal(layer.state_dict()[name], tensor.numpy()), name
        assert layer.state_dict()[name].dtype == np.float64

    # and back: a fresh layer loading the torch weights holds the very same arrays
    again = fusedlstm.LSTM(I, H, case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
                           bidirectional=case["bidirectional"], proj_size=case["proj_size"], dtype=np.float64)
    again.load_state_dict(lstm.state_dict())
    for name, v in layer.state_dict().items():
        assert np.array_equal(again.state_dict()[name], v), name

    cfg = dict(T=T, B=B, I=I, H=H, lengths=case["lengths"], hx=True, upstream="all")
    inp = Inputs(layer, cfg, rng, np.float64)
    truth = _torch_outputs(lstm, inp)
    got = run_library(layer, inp)
    assert got.keys() == truth.keys()
    policy.check_all(got, truth, dtype=np.float64)


@pytest.mark.torch
def test_float32_layer_loads_torch_float32_weights():
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(3, 7, 2, bidirectional=True, proj_size=2)
    layer = fusedlstm.LSTM(3, 7, 2, bidirectional=True, proj_size=2, dtype=np.float32)
    layer.load_state_dict(lstm.state_dict())
    for name, tensor in lstm.state_dict().items():
        assert layer.params[name].dtype == np.float32
        assert np.array_equal(layer.params[name], tensor.numpy()), name


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def _base():
    """A valid layer (L=2, D=2, H=7, proj 3, I=5) and inputs T=4, B=3."""
    layer = fusedlstm.LSTM(5, 7, 2, bidirectional=True, proj_size=3, dtype=np.float64, seed=0)
    x = np.zeros((4, 3, 5))
    hx = (np.zeros((4, 3, 3)), np.zeros((4, 3, 7)))
    return layer, x, hx


FORWARD_ERRORS = [
    # id, forward kwargs replacing the valid ones, exception, text the message must contain
    ("x-2d", dict(x=np.zeros((4, 5))), ValueError, "x"),
    ("x-4d", dict(x=np.zeros((4, 3, 5, 1))), ValueError, "x"),
    ("x-input-size", dict(x=np.zeros((4, 3, 6))), ValueError, "x"),
    ("x-no-steps", dict(x=np.zeros((0, 3, 5))), ValueError, "x"),
    ("x-int", dict(x=np.zeros((4, 3, 5), np.int64)), TypeError, "x"),
    ("x-other-dtype", dict(x=np.zeros((4, 3, 5), np.float32)), TypeError, "x"),
    ("hx-not-pair", dict(hx=(np.zeros((4, 3, 3)),)), TypeError, "hx"),
    ("h0-shape", dict(hx=(np.zeros((2, 3, 3)), np.zeros((4, 3, 7)))), ValueError, "h0"),
    ("h0-hidden-not-proj", dict(hx=(np.zeros((4, 3, 7)), np.zeros((4, 3, 7)))), ValueError, "h0"),
    ("c0-shape", dict(hx=(np.zeros((4, 3, 3)), np.zeros((4, 3, 3)))), ValueError, "c0"),
    ("c0-batch", dict(hx=(np.zeros((4, 3, 3)), np.zeros((4, 2, 7)))), ValueError, "c0"),
    ("h0-dtype", dict(hx=(np.zeros((4, 3, 3), np.float32), np.zeros((4, 3, 7)))), TypeError, "h0"),
    ("lengths-zero", dict(lengths=np.array([4, 0, 2])), ValueError, "lengths"),
    ("lengths-over-T", dict(lengths=np.array([4, 5, 2])), ValueError, "lengths"),
    ("lengths-shape", dict(lengths=np.array([4, 2])), ValueError, "lengths"),
    ("lengths-2d", dict(lengths=np.array([[4, 2, 1]])), ValueError, "lengths"),
    ("lengths-float", dict(lengths=np.array([4.0, 2.0, 1.0])), TypeError, "lengths"),
]


@pytest.mark.parametrize("kw, exc, text", [e[1:] for e in FORWARD_ERRORS], ids=[e[0] for e in FORWARD_ERRORS])
def test_forward_errors(kw, exc, text):
    layer, x, hx = _base()
    layer.forward(x, hx, lengths=np.array([4, 1, 2]), training=True)  # the valid call works
    args = dict(x=x, hx=hx, lengths=np.array([4, 1, 2]))
    args.update(kw)
    with pytest.raises(exc, match=text):
        layer.forward(args.pop("x"), args.pop("hx"), **args, training=True)


CONSTRUCTOR_ERRORS = [
    ("proj-equal-H", dict(proj_size=7), ValueError, "proj_size"),
    ("proj-over-H", dict(proj_size=9), ValueError, "proj_size"),
    ("proj-negative", dict(proj_size=-1), ValueError, "proj_size"),
    ("layers-negative", dict(num_layers=-1), ValueError, "num_layers"),
    ("layers-zero", dict(num_layers=0), ValueError, "num_layers"),
    ("layers-float", dict(num_layers=2.0), TypeError, "num_layers"),
    ("hidden-zero", dict(hidden_size=0), ValueError, "hidden_size"),
    ("input-zero", dict(input_size=0), ValueError, "input_size"),
    ("dropout-over-1", dict(dropout=1.5), ValueError, "dropout"),
    ("dropout-negative", dict(dropout=-0.1), ValueError, "dropout"),
    ("dropout-nan", dict(dropout=float("nan")), ValueError, "dropout"),
    ("dtype-int", dict(dtype=np.int32), TypeError, "dtype"),
]


@pytest.mark.parametrize("kw, exc, text", [e[1:] for e in CONSTRUCTOR_ERRORS],
                         ids=[e[0] for e in CONSTRUCTOR_ERRORS])
def test_constructor_errors(kw, exc, text):
    args = dict(input_size=5, hidden_size=7)
    args.update(kw)
    with pytest.raises(exc, match=text):
        fusedlstm.LSTM(**args)


def test_dtype_mismatch_says_what_to_convert():
    """The layer's dtype is fixed: the message says to convert the array or to
    make the layer in the array's dtype."""
    layer, x, hx = _base()
    with pytest.raises(TypeError) as e:
        layer.forward(x.astype(np.float32), hx)
    msg = str(e.value)
    assert "x.astype(np.float64)" in msg and "dtype=float64" in msg, msg


def test_functional_dtype_mismatch_names_the_odd_ones_out():
    """The functional API has no owner of the dtype: the arrays off the majority's
    dtype are the ones to convert, whichever they are (x included); a tie names both."""
    rng = np.random.default_rng(0)
    x, h0, c0 = rng.standard_normal((4, 2, 3)), rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    w_ih, w_hh, b = rng.standard_normal((20, 3)), rng.standard_normal((20, 5)), rng.standard_normal(20)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    with pytest.raises(TypeError) as e:  # x alone is float32: convert x, not the weights
        fusedlstm.lstm_forward(f32(x), w_ih, w_hh, b, b, h0, c0)
    msg = str(e.value)
    assert "convert x (e.g. x.astype(np.float64))" in msg and "w_ih" in msg, msg
    with pytest.raises(TypeError) as e:  # one weight is off
        fusedlstm.lstm_forward(x, w_ih, f32(w_hh), b, b, h0, c0)
    assert "convert w_hh (e.g. w_hh.astype(np.float64))" in str(e.value), e.value
    with pytest.raises(TypeError) as e:  # float32 weights, float64 data: the majority is float32 here
        fusedlstm.lstm_forward(x, f32(w_ih), f32(w_hh), f32(b), f32(b), h0, c0)
    assert "convert x, h0, c0 (e.g. x.astype(np.float32))" in str(e.value), e.value
    with pytest.raises(TypeError) as e:  # a tie: both sides named
        fusedlstm.lstm_forward(f32(x), w_ih, w_hh, None, None, f32(h0), None)
    msg = str(e.value)
    assert "x.astype(np.float64)" in msg and "w_ih.astype(np.float32)" in msg, msg
    with pytest.raises(TypeError) as e:
        fusedlstm.lstm_cell(f32(x[0]), h0, c0, w_ih, w_hh, b, b)
    assert "convert x (e.g. x.astype(np.float64))" in str(e.value), e.value


def test_backward_errors():
    layer, x, hx = _base()
    ev = layer.forward(x, hx)
    with pytest.raises(ValueError, match="training=False"):
        layer.backward(ev, dy=np.zeros_like(ev.y))
    with pytest.raises(TypeError, match="result"):
        layer.backward((ev.y, ev.h_n, ev.c_n))
    res = layer.forward(x, hx, training=True)
    for kw, text in [(dict(dy=np.zeros((4, 3, 3))), "dy"), (dict(dy=np.zeros((3, 4, 6))), "dy"),
                     (dict(dh_n=np.zeros((4, 3, 7))), "dh_n"), (dict(dc_n=np.zeros((4, 3, 3))), "dc_n"),
                     (dict(dh_n=np.zeros((2, 3, 3))), "dh_n")]:
        with pytest.raises(ValueError, match=text):
            layer.backward(res, **kw)
    with pytest.raises(TypeError, match="dy"):
        layer.backward(res, dy=np.zeros((4, 3, 6), np.float32))
    layer.backward(res, dy=np.zeros((4, 3, 6)))  # a valid call still works


def test_load_state_dict_errors():
    layer, x, _ = _base()
    before = layer.state_dict()
    state = layer.state_dict()
    del state["weight_hr_l1_reverse"]
    with pytest.raises(ValueError, match="weight_hr_l1_reverse"):
        layer.load_state_dict(state)
    state = dict(layer.state_dict(), extra_weight=np.zeros(3))
    with pytest.raises(ValueError, match="extra_weight"):
        layer.load_state_dict(state)
    state = layer.state_dict()
    state["weight_ih_l1"] = np.zeros((28, 5))  # layer 1 reads D*Hout = 6 features
    with pytest.raises(ValueError, match="weight_ih_l1"):
        layer.load_state_dict(state)
    state = layer.state_dict()
    state["weight_hr_l0"] = np.zeros((7, 3))  # transposed
    with pytest.raises(ValueError, match="weight_hr_l0"):
        layer.load_state_dict(state)
    for name, v in layer.state_dict().items():  # a failed load leaves the weights alone
        assert np.array_equal(v, before[name]), name


# --------------------------------------------------------------------------------------
# C-level edge: T = B = I = H = 1
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_single_step_single_unit(bidirectional, dtype, isa, rng, threads, policy):
    cfg = dict(T=1, B=1, I=1, H=1, num_layers=1, bidirectional=bidirectional, proj_size=0, bias=True,
               batch_first=False, lengths=True, hx=True, dropout=0.0, upstream="all")
    layer = make_layer(cfg, dtype, rng)
    inp = Inputs(layer, cfg, rng, dtype)
    ref64, plain32 = reference_pair(layer, inp, dtype=dtype)
    results = {}
    for n in (1, 2):
        with threads(n):
            results[n] = run_library(layer, inp)
    assert_all_finite(results[1])
    policy.check_all(results[1], ref64, plain32, dtype=dtype)
    assert_bitwise_equal(results[1], results[2], "1 and 2 threads")


@pytest.mark.parametrize("dtype", DTYPES)
def test_directions_together_or_in_turn_bitwise_equal(dtype, rng, threads, monkeypatch):
    """A bidirectional layer runs its two directions at once (one thread each) or one
    after the other (FUSEDLSTM_DIRECTIONS forces either): the results are identical."""
    layer = make_layer(EVAL_CFG, dtype, rng)
    inp = Inputs(layer, EVAL_CFG, rng, dtype)
    results = {}
    with threads(2):
        for mode in ("together", "sequential"):
            monkeypatch.setenv("FUSEDLSTM_DIRECTIONS", mode)
            results[mode] = run_library(layer, inp)
    assert_bitwise_equal(results["together"], results["sequential"], "directions together and in turn")
