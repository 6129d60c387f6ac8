"""Streaming inference (one-to-one): a next-value predictor for a sensor-like
signal (two seasonal cycles plus noise, generated from --seed) is trained
briefly with fusedlstm.torch.LSTM, then served one sample at a time with
fusedlstm.lstm_cell on numpy arrays: the state (h, c) is carried from step
to step, as a live stream needs. The same weights run in torch.nn.LSTMCell
and fusedlstm.torch.LSTMCell on the same stream, and the per-step latency
of each is printed (the median and the 99th percentile of one cell call).

    python examples/streaming.py               # full run (under a minute)
    python examples/streaming.py --smoke --out /tmp/st

Reports the streaming prediction error against the naive forecast (next
sample = this sample) and that the three cells agree.
"""

from __future__ import annotations

import time

import numpy as np

import _common


def make_stream(n, rng):
    """A sensor-like signal: a daily and a weekly cycle (periods 24 and 168
    samples) with slowly drifting amplitude, plus noise."""
    t = np.arange(n)
    amp = 1 + 0.3 * np.sin(2 * np.pi * t / 2000)
    x = amp * np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 168) + 0.1 * rng.standard_normal(n)
    return x.astype(np.float32)


def main(argv=None):
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=128, help="LSTM hidden size")
    p.add_argument("--train-steps", type=int, default=300, help="training steps before serving")
    p.add_argument("--stream", type=int, default=3000, help="samples served one at a time")
    p.add_argument("--seq-len", type=int, default=96, help="training window length")
    p.add_argument("--batch", type=int, default=32, help="training windows per step")
    args = p.parse_args(argv)
    if args.smoke:
        args.hidden, args.train_steps, args.stream = 32, 10, 200

    torch = _common.need("torch", "torch")
    import fusedlstm
    import fusedlstm.torch

    _common.set_threads(args.threads, torch)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    history = make_stream(20000, rng)          # the past, to train on
    live = make_stream(20000 + args.stream + 1, rng)[20000:]   # the stream that follows it

    # ------------------------------------------------ brief training (many-to-many)
    rnn = fusedlstm.torch.LSTM(1, args.hidden, batch_first=True)
    head = torch.nn.Linear(args.hidden, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=3e-3)
    T, losses = args.seq_len, []
    with _common.Progress(args.train_steps, "streaming: train", args.no_progress) as bar:
        for _ in range(args.train_steps):
            starts = rng.integers(0, len(history) - T - 1, size=args.batch)
            w = torch.from_numpy(np.stack([history[s:s + T + 1] for s in starts]))[..., None]
            y, _ = rnn(w[:, :-1])
            loss = torch.mean((head(y) - w[:, 1:]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(mse=losses[-1])

    # ------------------------------------------------ serving, one sample at a time
    w_ih, w_hh, b_ih, b_hh = (getattr(rnn, n + "_l0").detach().numpy().copy()
                              for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    w_out, b_out = head.weight.detach().numpy(), head.bias.detach().numpy()
    ref = torch.nn.LSTMCell(1, args.hidden)
    fused_cell = fusedlstm.torch.LSTMCell(1, args.hidden)
    with torch.no_grad():
        for cell in (ref, fused_cell):           # nn.LSTM's l0 weights are nn.LSTMCell's
            cell.weight_ih.copy_(rnn.weight_ih_l0)
            cell.weight_hh.copy_(rnn.weight_hh_l0)
            cell.bias_ih.copy_(rnn.bias_ih_l0)
            cell.bias_hh.copy_(rnn.bias_hh_l0)

    H = args.hidden
    h, c = np.zeros((1, H), np.float32), np.zeros((1, H), np.float32)
    state_ref = state_fused = (torch.zeros(1, H), torch.zeros(1, H))
    times = {"fusedlstm.lstm_cell (numpy)": [], "fusedlstm.torch.LSTMCell": [], "torch.nn.LSTMCell": []}
    preds, worst = [], 0.0
    clock = time.perf_counter_ns
    with torch.no_grad(), _common.Progress(args.stream, "streaming: serve", args.no_progress) as bar:
        for t in range(args.stream):
            x = live[t:t + 1, None]                      # (B=1, I=1): the sample that just arrived
            t0 = clock()
            h, c = fusedlstm.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
            t1 = clock()
            preds.append(float(h[0] @ w_out[0] + b_out[0]))   # forecast of the next sample
            xt = torch.from_numpy(x)
            t2 = clock()
            state_fused = fused_cell(xt, state_fused)
            t3 = clock()
            state_ref = ref(xt, state_ref)
            t4 = clock()
            times["fusedlstm.lstm_cell (numpy)"].append(t1 - t0)
            times["fusedlstm.torch.LSTMCell"].append(t3 - t2)
            times["torch.nn.LSTMCell"].append(t4 - t3)
            worst = max(worst, float(np.abs(h - state_ref[0].numpy()).max()),
                        float(np.abs(h - state_fused[0].numpy()).max()))
            bar.update()

    preds = np.array(preds)
    truth, naive = live[1:args.stream + 1], live[:args.stream]
    skip = min(100, args.stream // 2)                    # let the state warm up
    rmse = float(np.sqrt(np.mean((preds[skip:] - truth[skip:]) ** 2)))
    naive_rmse = float(np.sqrt(np.mean((naive[skip:] - truth[skip:]) ** 2)))
    print(f"served {args.stream} samples one at a time (B = 1, H = {H}); the three cells' h agree to {worst:.1e}")
    print("per-step latency of one cell call:")
    stats = {}
    for name, ns in times.items():
        us = np.array(ns[skip:]) / 1000
        stats[name] = (np.median(us), np.percentile(us, 99))
        print(f"  {name:30s} median {stats[name][0]:7.1f} us   p99 {stats[name][1]:7.1f} us")
    print(f"next-sample forecast RMSE {rmse:.3f} vs naive (last sample) {naive_rmse:.3f}")

    def draw_loss(plt):
        plt.semilogy(np.arange(1, len(losses) + 1), losses, label="training MSE (batch)")
        plt.axhline(naive_rmse ** 2, color="gray", ls="--", label="naive forecast MSE (stream)")
        plt.xlabel("step")
        plt.ylabel("MSE")
        plt.title("streaming: next-sample predictor, fusedlstm.torch.LSTM")
        plt.legend()

    def draw_latency(plt):
        every = np.concatenate([np.array(ns[skip:]) for ns in times.values()]) / 1000
        bins = np.logspace(np.log10(max(every.min(), 1e-3)), np.log10(every.max()), 80)
        for name, ns in times.items():
            plt.hist(np.array(ns[skip:]) / 1000, bins=bins, histtype="step", label=name)
        plt.xscale("log")
        plt.xlabel("latency of one step (us, log scale), B = 1, H = %d" % H)
        plt.ylabel("steps")
        plt.title("streaming: per-step latency")
        plt.legend()

    _common.save_plot(args.out / "streaming_loss.png", draw_loss)
    _common.save_plot(args.out / "streaming_latency.png", draw_latency)
    _common.summary("streaming", time.perf_counter() - t_start, rmse=rmse, naive_rmse=naive_rmse,
                    lstm_cell_us=stats["fusedlstm.lstm_cell (numpy)"][0],
                    nn_LSTMCell_us=stats["torch.nn.LSTMCell"][0],
                    fused_LSTMCell_us=stats["fusedlstm.torch.LSTMCell"][0])
    return rmse, naive_rmse


if __name__ == "__main__":
    main()
