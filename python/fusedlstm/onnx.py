"""ONNX's LSTM, GRU and RNN nodes on fusedlstm: weight mapping and a node runner.

``import fusedlstm.onnx`` (this module does not need, and does not import, the
``onnx`` package: it works on the node's arrays and attributes).

* :func:`weights_from_onnx` turns a node's ``W``, ``R``, ``B`` into fusedlstm's
  (= PyTorch's ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) weights, one dict
  ``{"w_ih", "w_hh", "b_ih", "b_hh"}`` per direction (forward first), and names
  the cell ("lstm", "gru", "rnn_tanh", "rnn_relu").
* :func:`run_onnx_node` runs a node (opset 7 and later, 14's ``layout`` included)
  with :func:`fusedlstm.lstm_forward` / :func:`gru_forward <fusedlstm.gru_forward>`
  / :func:`rnn_forward <fusedlstm.rnn_forward>` and returns ONNX's outputs
  ``Y``, ``Y_h`` (and ``Y_c`` for the LSTM).

The mapping (H = hidden_size, G = gates: LSTM 4, GRU 3, RNN 1; direction d is
0 for "forward" / "reverse" and 0 (forward), 1 (backward) for "bidirectional")::

    ONNX input                          fusedlstm / torch
    W  [num_directions, G*H, I]    ->   w_ih = W[d] rows regrouped   [G*H, I]
    R  [num_directions, G*H, H]    ->   w_hh = R[d] rows regrouped   [G*H, H]
    B  [num_directions, 2*G*H]     ->   b_ih = B[d, :G*H]  regrouped [G*H]   (ONNX "Wb")
                                        b_hh = B[d, G*H:]  regrouped [G*H]   (ONNX "Rb")
    no B                           ->   b_ih = b_hh = None (zero)
    initial_h, initial_c [nd, B, H] ->  h0, c0 = initial_h[d], initial_c[d]
    sequence_lens [B]              ->   lengths
    direction "reverse", and the second direction of "bidirectional"
                                   ->   reverse=True (each sequence runs back from
                                        its own last step; y stays in time order)

Gate blocks (H rows each), ONNX order -> fusedlstm order:

    LSTM  i, o, f, c  ->  i, f, g, o   (ONNX's c is torch's g, the cell candidate)
    GRU   z, r, h     ->  r, z, n      (ONNX's h is torch's n)
    RNN   one block, unchanged

A torch model takes the same arrays: ``weight_ih_l0 = w_ih`` etc., and
``weight_ih_l0_reverse`` for the second direction of a bidirectional node.

Outputs: ``Y`` [T, num_directions, B, H] (layout = 0; [B, T, num_directions, H]
for layout = 1), ``Y_h`` and ``Y_c`` [num_directions, B, H] (layout = 1:
[B, num_directions, H]). With ``sequence_lens``, ``Y`` is zero past each
sequence's end and ``Y_h`` / ``Y_c`` hold the state after its last step, as
fusedlstm's ``y``, ``h_n``, ``c_n``. fusedlstm needs every length in [1, T].

What is refused, with a ValueError that names the attribute or input:

* GRU with ``linear_before_reset = 0`` (ONNX's default!). That GRU applies the
  reset gate to the state before the recurrent product,
  ``h~ = tanh(x W_h^T + (r * h) R_h^T + Wb_h + Rb_h)``, a different function from
  ``tanh(x W_h^T + Wb_h + r * (h R_h^T + Rb_h))``. fusedlstm, like cuDNN and
  PyTorch's nn.GRU, implements ``linear_before_reset = 1`` only; weights of a
  ``linear_before_reset = 0`` model cannot be converted to it. (Exporters from
  PyTorch write ``linear_before_reset = 1``.)
* Activations other than the defaults: LSTM Sigmoid, Tanh, Tanh; GRU Sigmoid,
  Tanh; RNN Tanh or Relu (``rnn_tanh`` / ``rnn_relu``), the same for both
  directions of a bidirectional RNN. Names are matched case-insensitively.
  ``activation_alpha`` / ``activation_beta`` are ignored: none of these
  activations takes them.
* ``clip`` (any op): fusedlstm does not clip the pre-activations.
* LSTM peepholes (input ``P``; an all-zero ``P`` is accepted, it changes nothing) and
  ``input_forget = 1`` (coupled input and forget gates).
* ``hidden_size`` that disagrees with ``R``'s shape, a ``direction`` other than
  "forward", "reverse", "bidirectional", and arrays whose shapes do not match it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["OnnxWeights", "weights_from_onnx", "run_onnx_node", "OP_TYPES"]

OP_TYPES = ("LSTM", "GRU", "RNN")
DIRECTIONS = ("forward", "reverse", "bidirectional")
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# ONNX gate block of each fusedlstm gate block: fusedlstm[k] = onnx[_ORDER[op][k]].
_ORDER = {
    "LSTM": (0, 2, 3, 1),  # ONNX i, o, f, c -> i, f, g(=c), o
    "GRU": (1, 0, 2),      # ONNX z, r, h    -> r, z, n(=h)
    "RNN": (0,),
}
_DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
_RNN_CELLS = {"tanh": "rnn_tanh", "relu": "rnn_relu"}
_ATTRIBUTES = {
    "LSTM": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
             "input_forget", "layout"},
    "GRU": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
            "layout", "linear_before_reset"},
    "RNN": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
            "layout"},
}


class OnnxWeights(NamedTuple):
    """What :func:`weights_from_onnx` returns (unpacks as ``weights, cell``)."""
    weights: list  # one dict {"w_ih", "w_hh", "b_ih", "b_hh"} per direction, forward first
    cell: str      # "lstm", "gru", "rnn_tanh" or "rnn_relu"


def _op(op_type):
    if op_type not in OP_TYPES:
        raise ValueError(f"op_type must be one of {OP_TYPES}, got {op_type!r}")
    return op_type


def _num_directions(direction):
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction, 2 if direction == "bidirectional" else 1


def _names(activations):
    if isinstance(activations, (str, bytes)):
        activations = [activations]
    return [a.decode() if isinstance(a, bytes) else str(a) for a in activations]


def _cell(op, activations, nd):
    """The fusedlstm cell of the node, refusing activations it cannot run."""
    if op in _DEFAULT_ACTIVATIONS:
        default = _DEFAULT_ACTIVATIONS[op]
        cell = op.lower()
        if activations is None:
            return cell
        names = _names(activations)
        if [n.lower() for n in names] != list(default) * nd:
            expect = [n.capitalize() for n in default] * nd
            raise ValueError(f"activations: fusedlstm's {op} runs the default activations {expect} only, got "
                             f"{names}")
        return cell
    # RNN: one activation per direction (default Tanh). The schema's default
    # value lists two ("Tanh", "Tanh"); a one-direction node that carries two
    # uses the first, as ONNX's reference evaluator does.
    if activations is None:
        return "rnn_tanh"
    names = _names(activations)
    if nd == 1 and len(names) == 2:
        names = names[:1]
    if len(names) != nd:
        raise ValueError(f"activations: an RNN with {nd} direction(s) takes {nd} activation(s), got {names}")
    kinds = {n.lower() for n in names}
    unknown = sorted(kinds - set(_RNN_CELLS))
    if unknown:
        raise ValueError(f"activations: fusedlstm's RNN runs Tanh or Relu only, got {names}")
    if len(kinds) > 1:
        raise ValueError(f"activations: fusedlstm runs one nonlinearity for both directions of an RNN, got "
                         f"{names}")
    return _RNN_CELLS[kinds.pop()]


def _regroup(a, op, H):
    """Rows (axis 0) of `a`, G blocks of H in ONNX's gate order, in fusedlstm's order."""
    order = _ORDER[op]
    if order == tuple(range(len(order))):
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(np.concatenate([a[k * H:(k + 1) * H] for k in order], axis=0))


def _shape_error(name, shape, expect):
    return ValueError(f"{name} must have shape {expect}, got {tuple(shape)}")


def weights_from_onnx(op_type, W, R, B=None, *, hidden_size=None, linear_before_reset=None, activations=None,
                      direction="forward", clip=None, input_forget=None, P=None, activation_alpha=None,
                      activation_beta=None):
    """fusedlstm (= torch) weights of an ONNX LSTM / GRU / RNN node.

    ``W`` [num_directions, G*H, I], ``R`` [num_directions, G*H, H], ``B``
    [num_directions, 2*G*H] (or None), and the node's attributes (None: not set).
    Returns an :class:`OnnxWeights` ``(weights, cell)``: ``weights`` a list of
    one dict ``{"w_ih", "w_hh", "b_ih", "b_hh"}`` per direction (forward
    first; the biases None without ``B``), in fusedlstm's gate order and W's
    dtype, ready for ``fusedlstm.gru_forward(x, **weights[0])`` etc.;
    ``cell`` is "lstm", "gru", "rnn_tanh" or "rnn_relu". The module docstring
    has the mapping and what is refused (ValueError) and why.
    """
    op = _op(op_type)
    direction, nd = _num_directions(direction)
    G = _GATES[op]
    if clip is not None:
        raise ValueError(f"clip: fusedlstm does not clip pre-activations (got clip={clip!r}); remove the "
                         f"attribute only if the values never reach it")
    if op == "LSTM":
        if input_forget not in (None, 0):
            raise ValueError(f"input_forget: fusedlstm's LSTM has separate input and forget gates, "
                             f"input_forget={input_forget!r} is not supported")
        if P is not None and np.any(np.asarray(P) != 0):
            raise ValueError("P: fusedlstm's LSTM has no peephole connections; this node's P is not zero")
    else:
        for name, value in (("input_forget", input_forget), ("P", P)):
            if value is not None:
                raise ValueError(f"{name}: only the LSTM has it, not {op}")
    if op == "GRU":
        if linear_before_reset not in (1, True):
            raise ValueError(
                f"linear_before_reset: this GRU node has linear_before_reset="
                f"{0 if linear_before_reset is None else linear_before_reset!r}"
                f"{' (ONNX default)' if linear_before_reset is None else ''}, which applies the reset gate "
                f"before the recurrent matmul, h~ = tanh(x W_h^T + (r * h) R_h^T + ...): a different "
                f"function. fusedlstm (like cuDNN and PyTorch's nn.GRU) implements linear_before_reset=1, "
                f"h~ = tanh(x W_h^T + Wb_h + r * (h R_h^T + Rb_h)); pass linear_before_reset=1 only if the "
                f"node sets it")
    elif linear_before_reset is not None:
        raise ValueError(f"linear_before_reset: only the GRU has it, not {op}")
    cell = _cell(op, activations, nd)

    W, R = np.asarray(W), np.asarray(R)
    if R.ndim != 3 or R.shape[0] != nd or R.shape[1] % G or R.shape[1] != G * R.shape[2]:
        raise _shape_error("R", R.shape, f"[num_directions={nd}, {G}*H, H]" if G > 1 else f"[{nd}, H, H]")
    H = R.shape[2]
    if hidden_size is not None and int(hidden_size) != H:
        raise ValueError(f"hidden_size={hidden_size!r} does not match R's shape {tuple(R.shape)} (H = {H})")
    if W.ndim != 3 or W.shape[:2] != (nd, G * H):
        raise _shape_error("W", W.shape, f"[{nd}, {G * H}, input_size]")
    if B is not None:
        B = np.asarray(B)
        if B.shape != (nd, 2 * G * H):
            raise _shape_error("B", B.shape, (nd, 2 * G * H))
    weights = []
    for d in range(nd):
        weights.append({
            "w_ih": _regroup(W[d], op, H),
            "w_hh": _regroup(R[d], op, H),
            "b_ih": None if B is None else _regroup(B[d, :G * H], op, H),
            "b_hh": None if B is None else _regroup(B[d, G * H:], op, H),
        })
    return OnnxWeights(weights, cell)


def run_onnx_node(op_type, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
                  **attributes):
    """Run an ONNX LSTM / GRU / RNN node with fusedlstm's functional API.

    Inputs in ONNX's order (X, W, R, B, sequence_lens, initial_h, initial_c, P;
    None for an absent one) and the node's attributes as keywords
    (``direction``, ``hidden_size``, ``layout``, ``linear_before_reset``,
    ``activations``, ...). Returns ``(Y, Y_h)`` for GRU / RNN and
    ``(Y, Y_h, Y_c)`` for the LSTM, in ONNX's shapes (see the module
    docstring). Runs wherever fusedlstm runs the cell (numpy arrays: the CPU).
    """
    import fusedlstm  # the compiled library; this module itself imports without it

    op = _op(op_type)
    unknown = sorted(set(attributes) - _ATTRIBUTES[op])
    if unknown:
        raise ValueError(f"{unknown}: not attributes of ONNX's {op} (known: {sorted(_ATTRIBUTES[op])})")
    layout = int(attributes.pop("layout", 0) or 0)
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 (time-major) or 1 (batch-major), got {layout}")
    direction, nd = _num_directions(attributes.pop("direction", "forward") or "forward")
    if op != "LSTM" and initial_c is not None:
        raise ValueError(f"initial_c: only the LSTM has a cell state, not {op}")
    weights, cell = weights_from_onnx(op, W, R, B, direction=direction, P=P, **attributes)

    X = np.asarray(X)
    if X.ndim != 3:
        raise _shape_error("X", X.shape, "[seq_length, batch_size, input_size]" if layout == 0
                           else "[batch_size, seq_length, input_size]")
    T, Bn = (X.shape[0], X.shape[1]) if layout == 0 else (X.shape[1], X.shape[0])
    H = weights[0]["w_hh"].shape[1]
    states = {}
    for name, value in (("initial_h", initial_h), ("initial_c", initial_c)):
        if value is None:
            continue
        value = np.asarray(value)
        expect = (nd, Bn, H) if layout == 0 else (Bn, nd, H)
        if value.shape != expect:
            raise _shape_error(name, value.shape, expect)
        states[name] = value if layout == 0 else value.swapaxes(0, 1)  # [nd, B, H]
    lengths = None
    if sequence_lens is not None:
        lengths = np.asarray(sequence_lens)
        if lengths.shape != (Bn,):
            raise _shape_error("sequence_lens", lengths.shape, (Bn,))
        if lengths.size and (lengths.min() < 1 or lengths.max() > T):
            raise ValueError(f"sequence_lens: fusedlstm needs every length in [1, seq_length] = [1, {T}], got "
                             f"min {lengths.min()} max {lengths.max()}")

    ys, hs, cs = [], [], []
    for d in range(nd):
        h0 = states["initial_h"][d] if "initial_h" in states else None
        kw = dict(lengths=lengths, batch_first=layout == 1, reverse=direction == "reverse" or d == 1)
        if op == "LSTM":
            c0 = states["initial_c"][d] if "initial_c" in states else None
            res = fusedlstm.lstm_forward(X, h0=h0, c0=c0, **weights[d], **kw)
            cs.append(res.c_n)
        elif op == "GRU":
            res = fusedlstm.gru_forward(X, h0=h0, **weights[d], **kw)
        else:
            res = fusedlstm.rnn_forward(X, h0=h0, nonlinearity=cell[len("rnn_"):], **weights[d], **kw)
        ys.append(res.y)
        hs.append(res.h_n)
    # y: [T, B, H] (layout 0) or [B, T, H] (layout 1); num_directions goes before
    # the batch axis (layout 0) or before H (layout 1).
    Y = np.stack(ys, axis=1 if layout == 0 else 2)
    state_axis = 0 if layout == 0 else 1
    out = (Y, np.stack(hs, axis=state_axis))
    if op == "LSTM":
        out += (np.stack(cs, axis=state_axis),)
    return out
