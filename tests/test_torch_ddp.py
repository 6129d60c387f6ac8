"""fusedlstm.torch.LSTM under DistributedDataParallel: gloo with 2 CPU processes, and
NCCL with one process per GPU (2, or 1 on a one-GPU machine; skipped without a GPU).

Each rank runs, with the same initial weights and its own shard of one global
batch (packed, random lengths), one training step (forward, backward, SGD step)
of four DDP-wrapped models: fusedlstm.torch.LSTM in float32 and float64 and
nn.LSTM in float32 and float64 (float32 ones: weights and data are float32
values; the float64 nn.LSTM sees the same values upcast). The parent test then
checks, with the tolerance policy of conftest.py (truth: nn.LSTM float64 under
DDP; float32 baseline: nn.LSTM float32 under DDP):
* fusedlstm's DDP-averaged gradients match nn.LSTM's;
* they are the mean of the per-rank gradients of the shards (which differ);
* gradients and the parameters after the optimizer step are identical on both
  ranks, for both models, and the stepped parameters agree across models.
"""

import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402

pytestmark = pytest.mark.torch

WORLD = 2
I, H, T, B_PER_RANK = 4, 7, 6, 3
KW = dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
LR = 0.1
TESTS_DIR = pathlib.Path(__file__).resolve().parent


def _shard(seed, rank, dtype):
    """This rank's inputs: float64 tensors whose values are `dtype` values."""
    g = torch.Generator().manual_seed(seed + 1)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).double()  # noqa: E731
    n = WORLD * B_PER_RANK
    x = rnd(n, T, I)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    D = 2 if KW["bidirectional"] else 1
    dy_pad = rnd(n, T, D * KW["proj_size"])
    dh = rnd(KW["num_layers"] * D, n, KW["proj_size"])
    dc = rnd(KW["num_layers"] * D, n, H)
    sl = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
    return x[sl], lengths[sl], dy_pad[sl], dh[:, sl], dc[:, sl]


def _step(model, data, dtype, ddp, device="cpu"):
    """One forward/backward (+ SGD step when ddp) of `model` on `device`; (grads, params after
    step), on the CPU."""
    from torch.nn.utils.rnn import pack_padded_sequence

    model.to(device)
    x, lengths, dy_pad, dh, dc = (t.to(device, dtype) if t.is_floating_point() else t for t in data)
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    opt.zero_grad()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    dy = pack_padded_sequence(dy_pad, lengths, batch_first=True, enforce_sorted=False).data
    y, (h, c) = net(packed)
    loss = (y.data * dy).sum() + (h * dh).sum() + (c * dc).sum()
    loss.backward()
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
    params = None
    if ddp:
        opt.step()
        params = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    return grads, params


def _worker(rank, init_file, out_file, seed, backend="gloo", world=WORLD):
    """Runs in a subprocess per rank (NCCL: on GPU `rank`)."""
    import fusedlstm.torch as ft
    from torch import nn

    torch.set_num_threads(1)
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    try:
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(seed)  # the same initial weights on every rank
            src = nn.LSTM(I, H, dtype=dtype, **KW)
            state = {k: v.detach().clone() for k, v in src.state_dict().items()}
            data = _shard(seed, rank, dtype)

            def fresh(cls, dt):
                m = cls(I, H, dtype=dt, **KW)
                m.load_state_dict({k: v.to(dt) for k, v in state.items()}, strict=True)
                return m

            tag = "f32" if dtype == torch.float32 else "f64"
            results[f"ours_{tag}"] = _step(fresh(ft.LSTM, dtype), data, dtype, True, device)
            results[f"nn_{tag}"] = _step(fresh(nn.LSTM, dtype), data, dtype, True, device)
            results[f"ours_{tag}_local"] = _step(fresh(ft.LSTM, dtype), data, dtype, False, device)
            results[f"initial_{tag}"] = state
    finally:
        dist.destroy_process_group()
    torch.save(results, out_file)


def _gloo_available():
    return dist.is_available() and dist.is_gloo_available()


def _nccl_world():
    """Processes of the NCCL test: one per GPU, at most WORLD (0: no GPU or no NCCL)."""
    if not (dist.is_available() and dist.is_nccl_available() and torch.cuda.is_available()):
        return 0
    return min(WORLD, torch.cuda.device_count())


BACKENDS = [
    pytest.param("gloo", marks=pytest.mark.skipif(not _gloo_available(),
                                                  reason="torch.distributed with the gloo backend is unavailable")),
    pytest.param("nccl", marks=pytest.mark.skipif(not _nccl_world(), reason="needs NCCL and a CUDA device")),
]


@pytest.mark.parametrize("dist_backend", BACKENDS)
def test_ddp_gradients_match_nn_lstm(dist_backend, tmp_path, seed, policy):
    world = WORLD if dist_backend == "gloo" else _nccl_world()
    init_file = tmp_path / "init"
    outs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = ("import sys; sys.path.insert(0, {d!r}); import test_torch_ddp as t; "
            "t._worker({r}, {f!r}, {o!r}, {s}, {b!r}, {w})")
    procs = [subprocess.Popen([sys.executable, "-c", code.format(d=str(TESTS_DIR), r=r, f=str(init_file),
                                                                 o=str(outs[r]), s=seed, b=dist_backend, w=world)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(world)]
    logs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            logs.append(err[-4000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r]}"
    res = [torch.load(o, weights_only=True) for o in outs]

    names = list(res[0]["initial_f64"])
    assert names == list(res[0]["ours_f64"][0])
    for key in ("ours_f32", "nn_f32", "ours_f64", "nn_f64"):
        g0, p0 = res[0][key]
        g1, p1 = res[-1][key]
        for n in names:
            # DDP all-reduced the gradients and stepped identically on both ranks
            assert torch.equal(g0[n], g1[n]), f"{key}: grad {n} differs across ranks"
            assert torch.equal(p0[n], p1[n]), f"{key}: parameter {n} differs across ranks after the step"

    for tag, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        got_g, got_p = res[0][f"ours_{tag}"]
        if tag == "f64":  # truth: nn.LSTM float64 under the same DDP step
            (truth_g, truth_p), plain_g, plain_p = res[0]["nn_f64"], None, None
        else:  # truth: float64 on the float32 values; baseline: nn.LSTM float32 under DDP
            truth_g, truth_p = _float64_truth(res[0]["initial_f32"], seed, world)
            plain_g, plain_p = res[0]["nn_f32"]
        for n in names:
            _check(policy, f"{tag} DDP grad {n}", got_g[n], truth_g[n],
                   None if plain_g is None else plain_g[n], dtype)
            _check(policy, f"{tag} stepped param {n}", got_p[n], truth_p[n],
                   None if plain_p is None else plain_p[n], dtype)
        # the average is over `world` different shards
        local = [r[f"ours_{tag}_local"][0] for r in res]
        if world > 1:
            assert any(not torch.allclose(local[0][n], local[1][n]) for n in names)
        for n in names:
            mean = sum(g[n].double() for g in local) / world
            err = float((got_g[n].double() - mean).abs().max())
            # DDP halves (exact) and all-reduces the sum: one rounding in the dtype
            assert err <= torch.finfo(dtype).eps * float(mean.abs().max()), (tag, n, err)


def _float64_truth(initial_f32, seed, world=WORLD):
    """What one DDP step computes, in float64 without DDP, from the float32 initial weights
    and the float32 values of the data: the mean of the shards' gradients and the SGD step."""
    from torch import nn

    state = {k: v.double() for k, v in initial_f32.items()}
    grads = []
    for rank in range(world):
        m = nn.LSTM(I, H, dtype=torch.float64, **KW)
        m.load_state_dict(state, strict=True)
        grads.append(_step(m, _shard(seed, rank, torch.float32), torch.float64, ddp=False)[0])
    mean = {n: sum(g[n] for g in grads) / world for n in state}
    stepped = {n: state[n] - LR * mean[n] for n in state}
    return mean, stepped


def _check(policy, name, got, truth, plain, dtype):
    import numpy as np

    assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
    policy.check(name, got.numpy(), truth.double().numpy(), None if plain is None else plain.numpy(),
                 dtype=np.float32 if dtype == torch.float32 else np.float64)
