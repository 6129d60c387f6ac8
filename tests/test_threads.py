"""The thread pool under real-world use: calls from several Python threads
at once, and calls in a forked child (multiprocessing / DataLoader workers)
after the parent has started its workers."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

fusedlstm = pytest.importorskip("fusedlstm")

from conftest import assert_policy_all, reference_outputs  # noqa: E402


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

    def spy(*args, **kwargs):
        seen.append(_core.limit_threads_on_this_thread(0))  # read the cap ...
        _core.limit_threads_on_this_thread(seen[-1])        # ... and put it back
        return real(*args, **kwargs)

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


# ---- a worker thread that cannot be started (pids or memory limit reached)
# The child runs a training forward + backward at 2 threads, then at 5 with
# one thread start failing, then at 2 and at 5 again, and saves what it got.
_FAILED_GROW_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import fusedlstm

    def task_count():
        return len(os.listdir("/proc/self/task"))

    data = dict(np.load(sys.argv[1]))
    args = [data[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]

    def run(n):
        fusedlstm.set_num_threads(n)
        res = fusedlstm.lstm_forward(*args, training=True)
        g = fusedlstm.lstm_backward(res, dy=data["dy"])
        return {"y": res.y, "h_n": res.h_n, "c_n": res.c_n, "dx": g.dx, "dh0": g.dh0, "dc0": g.dc0,
                "dw_ih": g.dw_ih, "dw_hh": g.dw_hh, "db_ih": g.db_ih, "db_hh": g.db_hh}

    out = {}
    for k, v in run(2).items():
        out["first_" + k] = v
    tasks_before = task_count()
    limit = sys.argv[3] == "address-space"
    if limit:  # a real limit: room for about two more 8 MiB thread stacks
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + 20 * 2**20, hard))
    try:
        run(5)
    except Exception as e:
        print("ERROR:", type(e).__name__, e, flush=True)
    else:
        print("NO ERROR", flush=True)
    finally:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print("TASKS:", tasks_before, task_count(), flush=True)
    for label, n in (("old", 2), ("new", 5)):
        for k, v in run(n).items():
            out[label + "_" + k] = v
        print("DONE", label, flush=True)
    np.savez(sys.argv[2], **out)
""")


def _problem64(rng, T=9, B=5, I=24, H=80):
    """Float64 inputs with enough hidden blocks (H / SIMD width) for 5 threads."""
    return {
        "x": rng.standard_normal((T, B, I)), "w_ih": 0.2 * rng.standard_normal((4 * H, I)),
        "w_hh": 0.2 * rng.standard_normal((4 * H, H)), "b_ih": 0.1 * rng.standard_normal(4 * H),
        "b_hh": 0.1 * rng.standard_normal(4 * H), "h0": rng.standard_normal((B, H)),
        "c0": rng.standard_normal((B, H)), "dy": rng.standard_normal((T, B, H)),
    }


def _run_child(script, args, env=None, timeout=60):
    """Runs a Python child; a deadlock shows as a failed test, not a hung suite."""
    try:
        proc = subprocess.run([sys.executable, "-c", script, *args], env=dict(os.environ, **(env or {})),
                              capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"child process hung for {timeout} s (deadlock?); its output so far:\n{e.stdout}\n{e.stderr}")
    return proc


@pytest.mark.skipif(sys.platform != "linux", reason="counts threads in /proc/self/task")
@pytest.mark.parametrize("cause", ["test-hook", "address-space"])
def test_failed_thread_start_leaves_the_pool_usable(rng, tmp_path, cause):
    """cause test-hook: start 3 (worker thread 3 of the 4 a 5-thread call needs;
    starts 1 and 2 succeed) fails with EAGAIN as under a pids limit (a pids or
    RLIMIT_NPROC limit cannot be set reliably here: root ignores RLIMIT_NPROC).
    address-space: a real RLIMIT_AS that leaves room for about two thread stacks."""
    data = _problem64(rng)
    np.savez(tmp_path / "in.npz", **data)
    proc = _run_child(_FAILED_GROW_CHILD, [str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), cause],
                      env={"FUSEDLSTM_TEST_FAIL_THREAD_START": "3"} if cause == "test-hook" else None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    error = next(line for line in lines if line.startswith(("ERROR:", "NO ERROR")))
    if cause == "address-space" and "worker thread" not in error:
        pytest.skip(f"the address-space limit did not stop a thread start here: {error}")
    # The error says what failed: which worker thread, and the system's reason.
    assert "RuntimeError" in error and "Resource temporarily unavailable" in error, error
    assert ("worker thread 3 of the 4" if cause == "test-hook" else "worker thread ") in error, error
    assert "set_num_threads" in error, error  # and what to do about it
    # The failed call started no thread that outlives it (worker 2 is joined again).
    before, after = (int(v) for v in next(line for line in lines if line.startswith("TASKS:")).split()[1:])
    assert after == before, proc.stdout
    out = np.load(tmp_path / "out.npz")
    args = tuple(data[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"))
    ref64, _ = reference_outputs(args, {}, {"dy": data["dy"]}, dtype=np.float64)
    for label in ("first", "old", "new"):
        got = {k: out[f"{label}_{k}"] for k in ref64}
        assert_policy_all(got, ref64, dtype=np.float64, prefix=f"{label}: ")


def test_num_threads_is_bounded(threads):
    with threads(2):
        tasks = len(os.listdir("/proc/self/task"))
        for bad in (100000, fusedlstm._core.MAX_THREADS + 1, 0, -3):
            with pytest.raises(ValueError, match=rf"\bn\b.*\[1, {fusedlstm._core.MAX_THREADS}\].*got {bad}"):
                fusedlstm.set_num_threads(bad)
            assert fusedlstm.get_num_threads() == 2  # unchanged
        x, w_ih, w_hh = _problem(np.random.default_rng(0), H=256)
        fusedlstm.lstm_forward(x, w_ih, w_hh)
        assert len(os.listdir("/proc/self/task")) <= tasks + 1  # at most the one worker of 2 threads
        # The C API clamps instead (it cannot raise): the documented maximum.
        fusedlstm._core.set_num_threads(100000)
        assert fusedlstm.get_num_threads() == fusedlstm._core.MAX_THREADS
        fusedlstm._core.set_num_threads(-5)
        assert fusedlstm.get_num_threads() == 1
