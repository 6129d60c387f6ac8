"""The input projection runs a chunk of steps at a time (memory O(chunk), not
O(T)). Small chunks, forced through FUSEDLSTM_PROJECTION_CHUNK_ROWS in a child
process, must give the reference's results in every mode that chunks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

fusedlstm = pytest.importorskip("fusedlstm")
from fusedlstm import reference  # noqa: E402

CHILD = r"""
import json, sys
import numpy as np
import fusedlstm
args = json.loads(sys.stdin.read())
arr = {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in args["arrays"].items()}
lengths = None if args["lengths"] is None else np.asarray(args["lengths"], dtype=np.int64)
out = {}
for isa in fusedlstm.available_isas():
    fusedlstm.set_isa(isa)
    res = fusedlstm.lstm_forward(arr["x"], arr["w_ih"], arr["w_hh"], arr["b_ih"], arr["b_hh"], arr["h0"],
                                 arr["c0"], mode=args["mode"], lengths=lengths, training=True)
    g = fusedlstm.lstm_backward(res, dy=arr["dy"])
    out[isa] = {k: getattr(res, k).tolist() for k in ("y", "h_n", "c_n")}
    out[isa].update({k: getattr(g, k).tolist() for k in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih")})
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
@pytest.mark.parametrize("chunk_rows", [1, 5])
def test_small_projection_chunks_match_reference(mode, chunk_rows, rng):
    T, B, I, H = 9, 4, 6, 11
    arrays = {
        "x": rng.standard_normal((T, B, I)),
        "w_ih": 0.4 * rng.standard_normal((4 * H, I)),
        "w_hh": 0.4 * rng.standard_normal((4 * H, H)),
        "b_ih": 0.1 * rng.standard_normal(4 * H),
        "b_hh": 0.1 * rng.standard_normal(4 * H),
        "h0": rng.standard_normal((B, H)),
        "c0": rng.standard_normal((B, H)),
    }
    lengths = np.array([9, 3, 7, 1])
    arrays["dy"] = rng.standard_normal((T, B, H) if mode == "many_to_many" else (B, H))
    env = dict(os.environ, FUSEDLSTM_PROJECTION_CHUNK_ROWS=str(chunk_rows))
    payload = json.dumps({"arrays": {k: v.tolist() for k, v in arrays.items()}, "lengths": lengths.tolist(),
                          "mode": mode})
    proc = subprocess.run([sys.executable, "-c", CHILD], input=payload, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    results = json.loads(proc.stdout)

    ref = reference.forward(arrays["x"], arrays["w_ih"], arrays["w_hh"], arrays["b_ih"], arrays["b_hh"],
                            arrays["h0"], arrays["c0"], mode=mode, lengths=lengths)
    ref_g = reference.backward(ref, dy=arrays["dy"])
    expected = {k: getattr(ref, k) for k in ("y", "h_n", "c_n")}
    expected.update({k: getattr(ref_g, k) for k in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih")})
    assert set(results) == set(fusedlstm.available_isas())
    for isa, got in results.items():
        for name, want in expected.items():
            err = np.abs(np.asarray(got[name]) - want).max() / max(np.abs(want).max(), 1e-300)
            assert err <= 1e-12, f"{isa} {name}: normwise relative error {err:.2e}"
