"""fusedlstm against PyTorch (CPU), an implementation independent of our reference.

torch.nn.LSTM / nn.LSTMCell in float64 on the same inputs (float32 inputs
upcast exactly) is the truth; library results in float32 and float64 are
judged with the tolerance policy of conftest.py (the float32 error baseline
is, as everywhere, the plain float32 numpy reference).  Covered:
many_to_many with / without lengths (pack_padded_sequence(enforce_sorted=False)
+ pad_packed_sequence), batch_first, h0/c0, missing biases; outputs, final
states and all gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh);
many_to_one vs the packed h_n; lstm_cell vs nn.LSTMCell. Each on every
backend (conftest's `backend` fixture: cpu, cuda-emulated, cuda), the truth
always nn.LSTM on the CPU.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedlstm  # noqa: E402

pytestmark = pytest.mark.torch

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
OUTPUTS = ("y", "h_n", "c_n")
GRADS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")

CASES = [
    dict(),
    dict(init=False),
    dict(batch_first=True),
    dict(lengths=True),
    dict(lengths=True, batch_first=True, init=False),
    dict(lengths=[3, 1, 5, 2, 5], T=7),  # max(lengths) < T
    dict(bias="none", lengths=True),
    dict(bias="hh", batch_first=True),
    dict(T=20, B=17, I=40, H=70, lengths=True),
    dict(T=1, B=1, I=1, H=1),
]


def _id(case):
    return "-".join(f"{k}={'given' if isinstance(v, list) else v}" for k, v in case.items()) or "plain"


def _torch_truth(torch_lstm, p):
    return torch_lstm(*p.args, **{k: p.kwargs[k] for k in ("b_ih", "b_hh", "h0", "c0")},
                      lengths=p.lengths, batch_first=p.kwargs["batch_first"], **p.upstream)


def _library_outputs(p, backend):
    """fusedlstm's outputs and every gradient for problem p, on `backend`, as numpy."""
    res = fusedlstm.lstm_forward(*backend.to(p.args), **backend.to(p.kwargs), training=True)
    grads = fusedlstm.lstm_backward(res, **backend.to(p.upstream))
    got = {k: getattr(res, k) for k in OUTPUTS}
    got.update({k: getattr(grads, k) for k in GRADS})
    return backend.numpy(got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_lstm_matches_torch(case, dtype, backend, make_problem, torch_lstm, reference_outputs, policy):
    kw = dict(T=6, B=5, I=4, H=13)
    kw.update(case)
    p = make_problem(mode="many_to_many", dtype=dtype, **kw)
    truth = _torch_truth(torch_lstm, p)
    _, plain32 = reference_outputs(p.args, p.kwargs, p.upstream, dtype=dtype)

    got = _library_outputs(p, backend)
    policy.check_all(got, truth, plain32, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_many_to_one_matches_torch_packed_h_n(dtype, batch_first, backend, make_problem, torch_lstm,
                                              reference_outputs, policy):
    p = make_problem(mode="many_to_one", T=7, B=6, I=5, H=9, lengths=True, batch_first=batch_first,
                     dtype=dtype, upstream="dy")
    # torch: the gradient of y (= h_n) enters as dh_n
    truth = torch_lstm(*p.args, **{k: p.kwargs[k] for k in ("b_ih", "b_hh", "h0", "c0")},
                       lengths=p.lengths, batch_first=batch_first, dh_n=p.upstream["dy"])
    truth["y"] = truth["h_n"]
    _, plain32 = reference_outputs(p.args, p.kwargs, p.upstream, dtype=dtype)
    got = _library_outputs(p, backend)
    policy.check_all(got, truth, plain32, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, I, H, bias", [(1, 1, 1, True), (4, 7, 13, True), (7, 9, 130, True),
                                           (3, 5, 6, False)])
def test_cell_matches_torch_lstm_cell(dtype, B, I, H, bias, backend, rng, reference_outputs, policy):
    cell = torch.nn.LSTMCell(I, H, bias=bias).double()
    params = {n: p.detach().numpy().astype(dtype) for n, p in cell.named_parameters()}
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    c = rng.standard_normal((B, H)).astype(dtype)
    with torch.no_grad():  # the exact (possibly float32-rounded) values the library sees
        for n, p in cell.named_parameters():
            p.copy_(torch.tensor(params[n].astype(np.float64)))
        th, tc = cell(torch.tensor(x.astype(np.float64)),
                      (torch.tensor(h.astype(np.float64)), torch.tensor(c.astype(np.float64))))
    b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
    h_new, c_new = backend.numpy(fusedlstm.lstm_cell(*backend.to((x, h, c, params["weight_ih"], params["weight_hh"],
                                                                  b_ih, b_hh))))
    _, plain32 = reference_outputs((x[None], params["weight_ih"], params["weight_hh"]),
                                   dict(b_ih=b_ih, b_hh=b_hh, h0=h, c0=c), dtype=dtype)
    truth = {"h_n": th.numpy(), "c_n": tc.numpy()}
    policy.check_all({"h_n": h_new, "c_n": c_new}, truth, plain32, dtype=dtype)
