"""fusedlstm.onnx: ONNX's LSTM / GRU / RNN nodes on fusedlstm.

What the runs are compared against: ONNX's own reference implementation,
``onnx.reference.ReferenceEvaluator`` (pure numpy, the ``onnx`` package from
PyPI; these tests skip without it), on single-node models built with
``onnx.helper`` and checked with ``onnx.checker``. It is an external
implementation of the published equations in ONNX's layouts and gate orders, so
agreeing with it checks the weight mapping as well as the run.

The tolerance policy of conftest.py applies unchanged, with the evaluator in
the roles the policy gives fusedlstm.reference: the evaluator run in float64
(inputs upcast exactly) is the truth ref64, and the evaluator run in float32 is
"the plain implementation in the same precision" (numpy float32 arithmetic
throughout) whose error sets the float32 bound.

Two gaps of the evaluator (onnx 1.23, the version these tests were written
against; pyproject.toml's test extra asks for it) are filled here, each a thin layer
over the evaluator itself, not a re-implementation:
* it ignores ``sequence_lens``. ONNX defines each batch entry as its own
  sequence of sequence_lens[b] steps with Y zero past the end, so the expected
  outputs are the evaluator run on each entry alone, truncated, Y zero-padded
  (evaluate_onnx below);
* its RNN knows only the Tanh and Affine activations: ``RNN`` below is its RNN
  with ONNX's Relu (max(x, 0)) added, passed to the evaluator as a new op.

Also here: fusedlstm.reference (float64) on the converted weights agrees with
the evaluator (the mapping, without the compiled library), torch.nn modules
loaded with the converted weights agree too (the docstring's claim), the gate
block order on marked weights, and every refusal (ValueError naming the
attribute): GRU linear_before_reset = 0 (ONNX's default), activations other
than the defaults / Tanh / Relu, clip, LSTM peepholes and input_forget.
"""

import subprocess
import sys

import numpy as np
import pytest

import fusedlstm.onnx as flx

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
# (op_type, attributes without direction), one per fusedlstm cell
NODES = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {"linear_before_reset": 1}),
    "rnn_tanh": ("RNN", {}),
    "rnn_relu": ("RNN", {"activations": ["Relu"]}),
}
DIRECTIONS = ["forward", "reverse", "bidirectional"]
# which optional inputs / attributes a case sets
CASES = {
    "bare": dict(),                                             # X, W, R only
    "bias": dict(bias=True),
    "states": dict(bias=True, states=True),
    "lengths": dict(bias=True, states=True, lengths=True),
    "layout1": dict(bias=True, states=True, layout=1),
}
T, BATCH, I, H = 5, 3, 7, 5
INPUT_NAMES = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


@pytest.fixture
def onnx():
    return pytest.importorskip("onnx")


# --------------------------------------------------------------------------------------
# the ONNX side
# --------------------------------------------------------------------------------------
def attributes_for(cell, direction):
    op, attrs = NODES[cell]
    attrs = dict(attrs, direction=direction)
    if cell == "rnn_relu" and direction == "bidirectional":
        attrs["activations"] = ["Relu", "Relu"]
    return op, attrs


def relu_rnn_op():
    """The evaluator's RNN with ONNX's Relu activation added (it has Tanh and Affine)."""
    from onnx.reference.ops.op_rnn import CommonRNN

    class RNN(CommonRNN):  # the evaluator picks an op by (op_domain, class name)
        op_domain = ""

        def choose_act(self, name, alpha, beta):
            if name in ("Relu", "relu"):
                return lambda x: np.maximum(x, 0)
            return super().choose_act(name, alpha, beta)

    return RNN


def evaluator_run(onnx, op, inputs, attrs):
    """The ReferenceEvaluator on one `op` node; inputs: {name: array or None}."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    present = [n for n in INPUT_NAMES if inputs.get(n) is not None]
    last = max(INPUT_NAMES.index(n) for n in present)
    node_inputs = [n if inputs.get(n) is not None else "" for n in INPUT_NAMES[:last + 1]]
    outputs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, node_inputs, outputs, **attrs)

    def info(name, a):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)

    out_type = helper.np_dtype_to_tensor_dtype(inputs["X"].dtype)
    graph = helper.make_graph([node], f"one_{op}", [info(n, inputs[n]) for n in present],
                              [helper.make_tensor_value_info(n, out_type, [None] * (4 if n == "Y" else 3))
                               for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return ReferenceEvaluator(model, new_ops=[relu_rnn_op()]).run(None, {n: inputs[n] for n in present})


def evaluate_onnx(onnx, op, inputs, attrs):
    """ONNX's outputs for the node: the evaluator, and with sequence_lens (which it
    ignores) the evaluator on each batch entry alone, its first sequence_lens[b]
    steps, Y zero past them: ONNX's definition (layout 0 only)."""
    lens = inputs.get("sequence_lens")
    if lens is None:
        return evaluator_run(onnx, op, inputs, attrs)
    assert attrs.get("layout", 0) == 0
    X = inputs["X"]
    nd = inputs["W"].shape[0]
    Y = np.zeros((X.shape[0], nd, X.shape[1], H), X.dtype)
    states = [np.zeros((nd, X.shape[1], H), X.dtype) for _ in range(2 if op == "LSTM" else 1)]
    for b, n in enumerate(lens):
        one = dict(inputs, X=X[:n, b:b + 1], sequence_lens=None)
        for k in ("initial_h", "initial_c"):
            if inputs.get(k) is not None:
                one[k] = inputs[k][:, b:b + 1]
        outs = evaluator_run(onnx, op, one, attrs)
        Y[:n, :, b] = outs[0][:, :, 0]
        for s, o in zip(states, outs[1:]):
            s[:, b] = o[:, 0]
    return (Y, *states)


def make_inputs(rng, cell, direction, case, dtype):
    """Random ONNX inputs (float64 values, cast to dtype) for a case of CASES."""
    op, attrs = attributes_for(cell, direction)
    opts = CASES[case]
    layout = opts.get("layout", 0)
    if layout:
        attrs["layout"] = layout
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    nd = 2 if direction == "bidirectional" else 1
    scale = 1.5 / np.sqrt(H)
    inputs = {
        "X": rng.standard_normal((T, BATCH, I) if layout == 0 else (BATCH, T, I)),
        "W": rng.uniform(-scale, scale, (nd, G * H, I)),
        "R": rng.uniform(-scale, scale, (nd, G * H, H)),
    }
    if opts.get("bias"):
        inputs["B"] = rng.uniform(-0.5, 0.5, (nd, 2 * G * H))
    if opts.get("states"):
        shape = (nd, BATCH, H) if layout == 0 else (BATCH, nd, H)
        inputs["initial_h"] = 0.5 * rng.standard_normal(shape)
        if op == "LSTM":
            inputs["initial_c"] = rng.standard_normal(shape)
    inputs = {k: v.astype(dtype) for k, v in inputs.items()}
    if opts.get("lengths"):
        lens = rng.integers(1, T + 1, BATCH).astype(np.int32)
        lens[0], lens[1] = 1, T  # a one-step and a full-length sequence
        inputs["sequence_lens"] = lens
    return op, inputs, attrs


def upcast(inputs):
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in inputs.items()}


# --------------------------------------------------------------------------------------
# run_onnx_node against ONNX's reference evaluator
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("cell", list(NODES))
def test_run_onnx_node_matches_onnx_reference(onnx, cell, direction, case, dtype, rng, policy):
    op, inputs, attrs = make_inputs(rng, cell, direction, case, dtype)
    snapshot = {k: v.copy() for k, v in inputs.items()}
    got = flx.run_onnx_node(op, **inputs, **attrs)
    for k, v in inputs.items():  # inputs untouched
        np.testing.assert_array_equal(v, snapshot[k], err_msg=k)

    names = ("Y", "Y_h", "Y_c")[:len(got)]
    assert len(got) == (3 if op == "LSTM" else 2)
    ref64 = evaluate_onnx(onnx, op, upcast(inputs), attrs)
    plain = None if dtype == np.float64 else evaluate_onnx(onnx, op, inputs, attrs)
    for i, name in enumerate(names):
        policy.check(f"{cell} {direction} {case} {name}", got[i], np.asarray(ref64[i]),
                     None if plain is None else np.asarray(plain[i], np.float64), dtype=dtype)
    if "sequence_lens" in inputs:  # exactly zero past each sequence's end
        pad = np.arange(T)[:, None] >= inputs["sequence_lens"][None, :]
        assert np.all(got[0].transpose(0, 2, 1, 3)[pad] == 0)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("cell", list(NODES))
def test_mapped_weights_on_reference_match_onnx(onnx, cell, direction, rng, ref):
    """weights_from_onnx + fusedlstm.reference (float64, no compiled code) against
    the evaluator: the mapping alone, at the float64 rule of the policy."""
    from conftest import tolerance

    op, inputs, attrs = make_inputs(rng, cell, direction, "lengths", np.float64)
    weights, got_cell = flx.weights_from_onnx(op, inputs["W"], inputs["R"], inputs["B"], **attrs)
    assert got_cell == cell
    expect = evaluate_onnx(onnx, op, inputs, attrs)
    for d, w in enumerate(weights):
        res = ref.forward(inputs["X"], w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], inputs["initial_h"][d],
                          inputs["initial_c"][d] if op == "LSTM" else None, cell=cell,
                          lengths=inputs["sequence_lens"], reverse=direction == "reverse" or d == 1)
        pairs = [("y", res.y, expect[0][:, d]), ("h_n", res.h_n, expect[1][d])]
        if op == "LSTM":
            pairs.append(("c_n", res.c_n, expect[2][d]))
        for name, a, b in pairs:
            problem = tolerance.check(f"direction {d} {name}", a, b, precision="float64")
            assert problem is None, problem


@pytest.mark.torch
@pytest.mark.parametrize("cell", list(NODES))
def test_torch_modules_take_the_mapped_weights(onnx, cell, rng):
    """The docstring's claim: torch.nn.LSTM / GRU / RNN with the converted weights
    (``_reverse`` for the second direction) compute the ONNX node (float64)."""
    torch = pytest.importorskip("torch")
    op, inputs, attrs = make_inputs(rng, cell, "bidirectional", "states", np.float64)
    weights, _ = flx.weights_from_onnx(op, inputs["W"], inputs["R"], inputs["B"], **attrs)
    kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(cell, torch.nn.RNN)
    kw = {"nonlinearity": cell[4:]} if op == "RNN" else {}
    module = kind(I, H, bidirectional=True, dtype=torch.float64, **kw)
    with torch.no_grad():
        for d, suffix in enumerate(("", "_reverse")):
            for key, param in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                               ("b_hh", "bias_hh")):
                getattr(module, f"{param}_l0{suffix}").copy_(torch.from_numpy(weights[d][key]))
        state = torch.from_numpy(inputs["initial_h"])
        if op == "LSTM":
            state = (state, torch.from_numpy(inputs["initial_c"]))
        y, _ = module(torch.from_numpy(inputs["X"]), state)
    expect = evaluate_onnx(onnx, op, inputs, attrs)[0]  # [T, 2, B, H]; torch: [T, B, 2H]
    np.testing.assert_allclose(y.numpy(), expect.transpose(0, 2, 1, 3).reshape(T, BATCH, 2 * H),
                               rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------
# the mapping, spelled out (no onnx needed)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("op, onnx_order, torch_order", [
    ("LSTM", "iofc", "ifco"),  # torch's i, f, g, o with g = ONNX's c
    ("GRU", "zrh", "rzh"),     # torch's r, z, n with n = ONNX's h
    ("RNN", "h", "h"),
])
def test_gate_blocks_and_bias_halves(op, onnx_order, torch_order):
    G, Hs, Is, nd = len(onnx_order), 2, 3, 2
    W = np.empty((nd, G * Hs, Is))
    R = np.empty((nd, G * Hs, Hs))
    B = np.empty((nd, 2 * G * Hs))
    for d in range(nd):  # every entry of gate block k of direction d says (d, k) and which array
        for k in range(G):
            rows = slice(k * Hs, (k + 1) * Hs)
            W[d, rows], R[d, rows] = 100 * d + k, 100 * d + 10 + k
            B[d, rows], B[d, G * Hs:][rows] = 100 * d + 20 + k, 100 * d + 30 + k
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    weights, cell = flx.weights_from_onnx(op, W, R, B, direction="bidirectional", hidden_size=Hs, **attrs)
    assert cell == {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn_tanh"}[op]
    assert len(weights) == nd
    for d, w in enumerate(weights):
        assert set(w) == {"w_ih", "w_hh", "b_ih", "b_hh"}
        assert w["w_ih"].shape == (G * Hs, Is) and w["w_hh"].shape == (G * Hs, Hs)
        for j, gate in enumerate(torch_order):
            k = onnx_order.index(gate)
            rows = slice(j * Hs, (j + 1) * Hs)
            assert np.all(w["w_ih"][rows] == 100 * d + k), (d, gate)
            assert np.all(w["w_hh"][rows] == 100 * d + 10 + k), (d, gate)
            assert np.all(w["b_ih"][rows] == 100 * d + 20 + k), (d, gate)
            assert np.all(w["b_hh"][rows] == 100 * d + 30 + k), (d, gate)
        for a in w.values():
            assert a.flags.c_contiguous and a.dtype == np.float64


def test_without_bias_and_dtype_kept():
    W = np.ones((1, 3 * 4, 2), np.float32)
    R = np.ones((1, 3 * 4, 4), np.float32)
    (w,), cell = flx.weights_from_onnx("GRU", W, R, linear_before_reset=1)
    assert cell == "gru" and w["b_ih"] is None and w["b_hh"] is None
    assert w["w_ih"].dtype == np.float32 and w["w_hh"].dtype == np.float32


@pytest.mark.parametrize("activations, cell", [
    (None, "rnn_tanh"), (["Tanh"], "rnn_tanh"), (["Relu"], "rnn_relu"), (["relu"], "rnn_relu"),
    (["Relu", "Relu"], "rnn_relu"),  # a forward node with the schema's two-entry form: the first counts
])
def test_rnn_activation_picks_the_cell(activations, cell):
    W, R = np.ones((1, 3, 2)), np.ones((1, 3, 3))
    assert flx.weights_from_onnx("RNN", W, R, activations=activations).cell == cell


def test_lstm_defaults_spelled_out_and_zero_peephole_accepted():
    W, R = np.ones((2, 8, 3)), np.ones((2, 8, 2))
    acts = ["Sigmoid", "Tanh", "Tanh"] * 2
    assert flx.weights_from_onnx("LSTM", W, R, direction="bidirectional", activations=acts,
                                 P=np.zeros((2, 6)), input_forget=0).cell == "lstm"


def test_module_does_not_import_onnx_and_is_not_imported_by_fusedlstm():
    code = ("import sys, fusedlstm; assert 'fusedlstm.onnx' not in sys.modules; "
            "import fusedlstm.onnx; assert 'onnx' not in sys.modules, 'onnx imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------
def gru_weights(nd=1):
    return np.ones((nd, 9, 2)), np.ones((nd, 9, 3))


@pytest.mark.parametrize("lbr", [None, 0])
def test_gru_linear_before_reset_0_refused(lbr):
    with pytest.raises(ValueError, match=r"linear_before_reset.*cuDNN and PyTorch.*linear_before_reset=1"):
        flx.weights_from_onnx("GRU", *gru_weights(), linear_before_reset=lbr)
    X = np.ones((2, 1, 2))
    with pytest.raises(ValueError, match="linear_before_reset"):
        flx.run_onnx_node("GRU", X, *gru_weights())  # ONNX's default is 0


@pytest.mark.parametrize("op, kw, match", [
    ("RNN", dict(activations=["Sigmoid"]), "activations.*Tanh or Relu"),
    ("RNN", dict(activations=["LeakyRelu"]), "activations.*Tanh or Relu"),
    ("RNN", dict(activations=["Tanh", "Relu"], direction="bidirectional"), "activations.*one nonlinearity"),
    ("RNN", dict(activations=["Tanh", "Tanh", "Tanh"]), "activations"),
    ("GRU", dict(activations=["Sigmoid", "Relu"], linear_before_reset=1), "activations.*Sigmoid"),
    ("LSTM", dict(activations=["Sigmoid", "Tanh", "Relu"]), "activations"),
    ("LSTM", dict(activations=["Sigmoid", "Tanh", "Tanh"], direction="bidirectional"), "activations"),
    ("LSTM", dict(clip=3.0), "clip"),
    ("GRU", dict(clip=3.0, linear_before_reset=1), "clip"),
    ("RNN", dict(clip=1.0), "clip"),
    ("LSTM", dict(input_forget=1), "input_forget"),
    ("LSTM", dict(P=np.full((1, 3 * 3), 0.1)), "P: .*peephole"),
    ("RNN", dict(linear_before_reset=1), "linear_before_reset: only the GRU"),
    ("LSTM", dict(direction="sideways"), "direction"),
    ("LSTM", dict(hidden_size=4), "hidden_size=4 does not match"),
])
def test_unsupported_refused(op, kw, match):
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    nd = 2 if kw.get("direction") == "bidirectional" else 1
    W, R = np.ones((nd, G * 3, 2)), np.ones((nd, G * 3, 3))
    with pytest.raises(ValueError, match=match):
        flx.weights_from_onnx(op, W, R, **kw)


def test_run_onnx_node_refusals():
    X = np.ones((4, 2, 3))
    W, R = np.ones((1, 8, 3)), np.ones((1, 8, 2))
    with pytest.raises(ValueError, match="P: .*peephole"):  # P as the node's 8th input
        flx.run_onnx_node("LSTM", X, W, R, None, None, None, None, np.ones((1, 6)))
    with pytest.raises(ValueError, match="clip"):
        flx.run_onnx_node("LSTM", X, W, R, clip=10.0)
    with pytest.raises(ValueError, match="not attributes of ONNX's LSTM"):
        flx.run_onnx_node("LSTM", X, W, R, linear_before_reset=1)
    with pytest.raises(ValueError, match=r"sequence_lens: .*\[1, seq_length\]"):
        flx.run_onnx_node("LSTM", X, W, R, sequence_lens=np.array([0, 4], np.int32))
    with pytest.raises(ValueError, match="initial_h must have shape"):
        flx.run_onnx_node("LSTM", X, W, R, initial_h=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="initial_c: only the LSTM"):
        flx.run_onnx_node("RNN", X, np.ones((1, 2, 3)), np.ones((1, 2, 2)), initial_c=np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"R must have shape \[num_directions=2"):
        flx.run_onnx_node("LSTM", X, W, R, direction="bidirectional")
    with pytest.raises(ValueError, match="op_type"):
        flx.run_onnx_node("Scan", X, W, R)
    with pytest.raises(ValueError, match="layout"):
        flx.run_onnx_node("LSTM", X, W, R, layout=2)
