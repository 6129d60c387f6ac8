"""Ctrl-C during a long call: SIGINT raises KeyboardInterrupt within a fraction
of a second (the core polls Python's signal handlers about every 50 ms), the
pool is left working, and the next calls give correct results.

Each case runs in a child process with a timeout, so a call that ignores the
signal or a pool left stuck fails the test instead of hanging the suite. One
child per (thread count, thread backend) runs every kind of long call in turn:
each is sized (from a short timed run) to take about 2.5 s, and a thread
sends SIGINT 0.3 s after it starts."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("fusedlstm")

from conftest import assert_policy_all, reference_outputs  # noqa: E402

# KeyboardInterrupt must come at most this long after the signal: the poll
# interval (50 ms) plus one step, with room for a busy shared machine.
MAX_LATENCY_S = 0.5
CALL_S = 1.5       # what an uninterrupted long call takes (sized in the child): > SIGNAL_AFTER_S + MAX_LATENCY_S
SIGNAL_AFTER_S = 0.3

_CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import numpy as np
    import fusedlstm

    threads, backend, seed, out_path = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    CALL_S, SIGNAL_AFTER_S, MAX_LATENCY_S = (float(a) for a in sys.argv[5:8])
    torch = None
    if backend == "openmp":
        import torch
        import fusedlstm.torch as ft  # runs the core's regions on torch's OpenMP team
        from fusedlstm import _core
        assert _core.using_openmp()
        torch.set_num_threads(threads)
    fusedlstm.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def rand(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(f32)

    # Each maker returns a long call of T steps (what it must do first, e.g.
    # the training forward of a backward, is done before it returns).
    B, I, H, HS = 2, 64, 1024, 384
    w = [rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H)]

    def lstm_forward(T):
        x = rand(T, B, I)
        return lambda: fusedlstm.lstm_forward(x, *w)

    def lstm_backward(T):
        res = fusedlstm.lstm_forward(rand(T, B, I), *w, training=True)
        dy = rand(T, B, H)
        return lambda: fusedlstm.lstm_backward(res, dy=dy)

    layer = fusedlstm.LSTM(I, HS, num_layers=2, bidirectional=True, seed=seed)

    def stack_forward(T):
        x = rand(T, B, I)
        return lambda: layer.forward(x, training=True)

    def stack_backward(T):
        res = layer.forward(rand(T, B, I), training=True)
        dy = rand(*res.y.shape)
        return lambda: layer.backward(res, dy=dy)

    def together(make):  # both directions of a layer at once (one on a pool thread)
        def make_together(T):
            os.environ["FUSEDLSTM_DIRECTIONS"] = "together"
            return make(T)
        return make_together

    if torch is not None:
        module = ft.LSTM(I, HS, num_layers=2, bidirectional=True)

        def torch_forward(T):
            x = torch.from_numpy(rand(T, B, I))
            return lambda: module(x)

        def torch_backward(T):
            x = torch.from_numpy(rand(T, B, I)).requires_grad_()
            loss = module(x)[0].sum()
            return lambda: loss.backward()

    kinds = {}
    if torch is None or threads > 1:  # (one thread runs no parallel region: the team is never used)
        kinds.update({"lstm_forward": lstm_forward, "lstm_backward": lstm_backward,
                      "stack_forward": stack_forward, "stack_backward": stack_backward})
    if threads > 1:
        kinds.update({"stack_forward_together": together(stack_forward),
                      "stack_backward_together": together(stack_backward)})
    if torch is not None:
        kinds.update({"torch_forward": torch_forward, "torch_backward": torch_backward})

    # A small layer call, before and after all the interrupts: equal bitwise.
    small_x = rand(7, 3, I)
    def small_stack():
        res = layer.forward(small_x, training=True)
        g = layer.backward(res, dy=np.ones_like(res.y))
        return [res.y, res.h_n, res.c_n] + [g[k] for k in sorted(g)]
    before = small_stack()

    def interrupt(call):  # runs call(), sending SIGINT SIGNAL_AFTER_S after its start
        sent = []
        def send():
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)
        sender = threading.Timer(SIGNAL_AFTER_S, send)
        started = time.perf_counter()
        sender.start()
        try:
            try:
                call()
                outcome = "completed"
            except KeyboardInterrupt:
                outcome = "interrupted"
            stopped = time.perf_counter()
            sender.cancel()
            sender.join()
        except KeyboardInterrupt:  # the call ended just before the signal came
            outcome, stopped = "completed", time.perf_counter()
        return outcome, (stopped - sent[0] if sent else None), stopped - started

    report = {}
    for name, make in kinds.items():
        os.environ.pop("FUSEDLSTM_DIRECTIONS", None)
        T = 16
        make(T)()  # warm-up: first-call costs (torch's) are not part of the sizing
        while True:  # size the call to take about CALL_S
            call = make(T)
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
            if elapsed > 0.1:
                break
            T *= 4
        T = max(T, int(T * CALL_S / elapsed))
        for attempt in range(4):
            outcome, latency, call_s = interrupt(make(T))
            # A call that ended before the signal was sized on a slow moment of
            # a shared machine: make it longer (one that ran past it must stop).
            if outcome == "interrupted" or call_s > SIGNAL_AFTER_S + MAX_LATENCY_S:
                break
            T *= 4
        report[name] = {"outcome": outcome, "latency": latency, "call_s": call_s, "T": T}
        print(name, report[name], flush=True)
    os.environ.pop("FUSEDLSTM_DIRECTIONS", None)
    after = small_stack()
    report["small_stack_equal"] = all(np.array_equal(a, b) for a, b in zip(before, after))

    # And a single-direction forward + backward, for the parent to check against the reference.
    args = [rng.standard_normal(s) for s in ((6, 3, 5), (28, 5), (28, 7), (28,), (28,), (3, 7), (3, 7))]
    dy = rng.standard_normal((6, 3, 7))
    res = fusedlstm.lstm_forward(*args, training=True)
    g = fusedlstm.lstm_backward(res, dy=dy)
    np.savez(out_path, *args, dy, y=res.y, h_n=res.h_n, c_n=res.c_n, dx=g.dx, dh0=g.dh0, dc0=g.dc0,
             dw_ih=g.dw_ih, dw_hh=g.dw_hh, db_ih=g.db_ih, db_hh=g.db_hh)
    report["tasks"] = len(os.listdir("/proc/self/task"))
    print("REPORT", json.dumps(report), flush=True)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="sends SIGINT to itself; counts threads in /proc")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", ["own", "openmp"])
def test_sigint_stops_long_calls(backend, threads, seed, tmp_path):
    if backend == "openmp":
        pytest.importorskip("torch")
    out = tmp_path / "after.npz"
    env = dict(os.environ)
    env.pop("FUSEDLSTM_DIRECTIONS", None)
    env.pop("FUSEDLSTM_OPENMP", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(threads), backend, str(seed), str(out), str(CALL_S),
             str(SIGNAL_AFTER_S), str(MAX_LATENCY_S)], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"child hung (a call ignored SIGINT, or the pool is stuck); output so far:\n{e.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    for name, r in report.items():
        if not isinstance(r, dict):
            continue
        assert r["outcome"] == "interrupted", f"{name}: SIGINT did not stop the call: {r}"
        assert r["latency"] <= MAX_LATENCY_S, f"{name}: KeyboardInterrupt {r['latency']:.3f} s after SIGINT: {r}"
    assert report["small_stack_equal"], "a layer call after the interrupts differs from the same call before"
    assert report["tasks"] <= 2 * threads + 8, report  # no threads piling up (torch keeps a few of its own)
    saved = np.load(out)
    args = tuple(saved[f"arr_{i}"] for i in range(7))
    ref64, _ = reference_outputs(args, {}, {"dy": saved["arr_7"]}, dtype=np.float64)
    assert_policy_all({k: saved[k] for k in ref64}, ref64, dtype=np.float64, prefix="after the interrupts: ")


# Long GEMMs (the input term of the forward, dx and the weight gradients of
# the backward) run in pieces of about 2^30 flops, an interrupt poll after
# each; pieces keep the kernels' blocking, so results equal one region's.
_PIECES_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fusedlstm
    fusedlstm.set_num_threads(int(sys.argv[1]))
    data = dict(np.load(sys.argv[2]))
    np.savez(sys.argv[3], *run(data))
""")

_PIECES_RUN = textwrap.dedent("""
    def run(data):
        args = [data[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh")]
        res = fusedlstm.lstm_forward(*args, lengths=data["lengths"], training=True)
        g = fusedlstm.lstm_backward(res, dy=data["dy"])
        layer = fusedlstm.LSTM(args[0].shape[2], 20, num_layers=2, proj_size=9, dtype=args[0].dtype, seed=3)
        lres = layer.forward(args[0], training=True)
        lg = layer.backward(lres, dy=np.ones_like(lres.y))
        return [res.y, res.h_n, res.c_n, g.dx, g.dh0, g.dc0, g.dw_ih, g.dw_hh, g.db_ih, lres.y] + \\
               [lg[k] for k in sorted(lg)]
""")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gemm_pieces_give_identical_results(dtype, n_threads, rng, tmp_path, threads):
    import fusedlstm
    T, B, I, H = 200, 6, 24, 40  # T*B = 1200 rows: dx and the input term split by rows, dW by K
    data = {"x": rng.standard_normal((T, B, I)), "w_ih": 0.3 * rng.standard_normal((4 * H, I)),
            "w_hh": 0.3 * rng.standard_normal((4 * H, H)), "b_ih": rng.standard_normal(4 * H),
            "b_hh": rng.standard_normal(4 * H), "dy": rng.standard_normal((T, B, H))}
    data = {k: v.astype(dtype) for k, v in data.items()}
    data["lengths"] = rng.integers(T - 40, T + 1, B)
    np.savez(tmp_path / "in.npz", **data)
    env = dict(os.environ, FUSEDLSTM_GEMM_PIECE_FLOPS="1")  # as many pieces as the bounds allow
    proc = subprocess.run([sys.executable, "-c", _PIECES_RUN + _PIECES_CHILD, str(n_threads), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    namespace = {"fusedlstm": fusedlstm, "np": np}
    exec(_PIECES_RUN, namespace)
    with threads(n_threads):
        expected = namespace["run"](data)  # one region per GEMM at these sizes
    got = np.load(tmp_path / "out.npz")
    for i, e in enumerate(expected):
        assert np.array_equal(got[f"arr_{i}"], e), f"output {i} differs when GEMMs run in pieces"
