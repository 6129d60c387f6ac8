"""The thread pool under real-world use: calls from several Python threads
at once, and calls in a forked child (multiprocessing / DataLoader workers)
after the parent has started its workers."""

import multiprocessing
import sys
import threading

import numpy as np
import pytest

fusedlstm = pytest.importorskip("fusedlstm")


def _problem(rng, T=12, B=5, I=48, H=80):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = (0.1 * rng.standard_normal((4 * H, I))).astype(np.float32)
    w_hh = (0.1 * rng.standard_normal((4 * H, H))).astype(np.float32)
    return x, w_ih, w_hh


def test_concurrent_calls_from_python_threads(rng, threads):
    x, w_ih, w_hh = _problem(rng)
    with threads(2):
        expected = fusedlstm.lstm_forward(x, w_ih, w_hh).y
        results, errors = [None] * 6, []

        def work(i):
            try:
                results[i] = fusedlstm.lstm_forward(x, w_ih, w_hh).y
            except Exception as e:  # reported below
                errors.append(e)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=60)
    assert not errors
    for r in results:
        assert np.array_equal(r, expected)


def _forward_in_child(args):
    x, w_ih, w_hh = args
    fusedlstm.set_num_threads(2)
    return fusedlstm.lstm_forward(x, w_ih, w_hh).y


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method is Linux-only here")
def test_forked_child_gets_a_working_pool(rng, threads):
    x, w_ih, w_hh = _problem(rng)
    with threads(2):
        expected = fusedlstm.lstm_forward(x, w_ih, w_hh).y  # parent's workers now exist
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            async_result = pool.map_async(_forward_in_child, [(x, w_ih, w_hh)] * 3)
            ys = async_result.get(timeout=60)  # a child stuck on the parent's pool would time out
    for y in ys:
        assert np.array_equal(y, expected)
