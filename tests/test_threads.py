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


# ---- the OpenMP team (fusedlstm.torch runs our regions on torch's libgomp team)
@pytest.fixture
def openmp_mode():
    """set_mode(False): our own threads; set_mode(True): the OpenMP team. Restored after."""
    pytest.importorskip("torch")
    import fusedlstm.torch  # noqa: F401  (loads libgomp; turns the team on unless FUSEDLSTM_OPENMP=0)
    from fusedlstm import _core
    before = _core.using_openmp()

    def set_mode(on):
        assert _core.use_openmp(on)
        assert _core.using_openmp() == on
    yield set_mode
    _core.use_openmp(before)


def _layer_problem(rng):
    layer = fusedlstm.LSTM(9, 21, num_layers=2, bidirectional=True, proj_size=7, dtype=np.float32,
                           seed=int(rng.integers(2**31)))
    x = rng.standard_normal((13, 6, 9)).astype(np.float32)
    return layer, x


def _layer_run(layer, x):
    res = layer.forward(x, lengths=[13, 4, 9, 1, 13, 7], training=True)
    g = layer.backward(res, dy=np.ones_like(res.y))
    return [res.y, res.h_n, res.c_n] + [g[k] for k in sorted(g)]


def test_openmp_team_and_own_threads_bitwise_equal(rng, threads, openmp_mode):
    layer, x = _layer_problem(rng)
    x1, w_ih, w_hh = _problem(rng)
    out = {}
    with threads(2):
        for on in (False, True):
            openmp_mode(on)
            out[on] = _layer_run(layer, x) + [fusedlstm.lstm_forward(x1, w_ih, w_hh).y]
    for a, b in zip(out[False], out[True]):
        assert np.array_equal(a, b)


def _layer_in_child(args):
    layer, x = args
    fusedlstm.set_num_threads(2)
    return _layer_run(layer, x)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method is Linux-only here")
def test_forked_child_after_openmp_team_works(rng, threads, openmp_mode):
    layer, x = _layer_problem(rng)
    with threads(2):
        openmp_mode(True)
        expected = _layer_run(layer, x)  # the parent's OpenMP team now exists
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            results = pool.map_async(_layer_in_child, [(layer, x)] * 2).get(timeout=60)
    for got in results:
        for a, b in zip(got, expected):
            assert np.array_equal(a, b)


def test_torch_front_end_follows_torch_thread_count(rng, threads):
    """fusedlstm.torch runs the core with at most torch.get_num_threads() threads
    (one per process under torchrun's OMP_NUM_THREADS=1), and restores the cap."""
    torch = pytest.importorskip("torch")
    import fusedlstm.torch as ft
    from fusedlstm import _core
    seen = []
    real = _core.stack_forward

    def spy(*args):
        seen.append(_core.limit_threads_on_this_thread(0))  # read the cap ...
        _core.limit_threads_on_this_thread(seen[-1])        # ... and put it back
        return real(*args)

    m = ft.LSTM(5, 7)
    x = torch.randn(4, 3, 5)
    before = torch.get_num_threads()
    try:
        _core.stack_forward = spy
        with threads(2):
            torch.set_num_threads(1)
            y1 = m(x)[0]
            torch.set_num_threads(2)
            y2 = m(x)[0]
    finally:
        _core.stack_forward = real
        torch.set_num_threads(before)
    assert seen == [1, 2]
    assert _core.limit_threads_on_this_thread(0) == 0  # no cap left behind
    assert torch.equal(y1, y2)  # and results do not depend on it
