"""forecast.py's model trained with the numpy API only: no torch. The
LSTM is fusedlstm.LSTM (forward with training=True, backward for the
gradients), the linear head, the MSE loss and Adam are written out in
numpy below.

    python examples/numpy_train.py             # full run (well under a minute)
    python examples/numpy_train.py --smoke --out /tmp/np

Same data, splits and sizes as forecast.py (sunspots 1700-2008 from
statsmodels; train to 1920, pick the epoch on 1921-1950, test 1951-2008);
reports the one-step-ahead test error against the naive forecast (next
year = this year).
"""

from __future__ import annotations

import time

import numpy as np

import _common
from forecast import load_windows, splits


class Adam:
    """Adam (Kingma & Ba) over a dict of numpy arrays, updated in place."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1 ** self.t)
            v_hat = self.v[k] / (1 - b2 ** self.t)
            p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype)


def main(argv=None):
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--window", type=int, default=20, help="years of history per forecast")
    p.add_argument("--hidden", type=int, default=32, help="LSTM hidden size")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--batch", type=int, default=32, help="windows per step")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.hidden = 3, 8

    import fusedlstm

    _common.set_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    years, series, X, y, ty, (mean, std) = load_windows(args.window)
    tr, va, te = splits(ty)
    print(f"sunspots {years[0]}-{years[-1]}: {len(X)} windows of {args.window} years; "
          f"train {tr.sum()}, validation {va.sum()}, test {te.sum()}")

    # The model: fusedlstm.LSTM (nn.LSTM's weights and initialisation) + a linear head.
    H = args.hidden
    lstm = fusedlstm.LSTM(1, H, batch_first=True, seed=args.seed)
    bound = 1 / np.sqrt(H)
    params = lstm.params                                # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
    params["head.weight"] = rng.uniform(-bound, bound, H).astype(np.float32)
    params["head.bias"] = rng.uniform(-bound, bound, 1).astype(np.float32)
    opt = Adam(params, lr=args.lr)

    def predict(x, training=False):
        res = lstm.forward(x, training=training)       # many-to-one: res.h_n[-1] is each last state
        return res, res.h_n[-1] @ params["head.weight"] + params["head.bias"]

    def mse(mask):
        return float(np.mean((predict(X[mask])[1] - y[mask]) ** 2))

    train_idx = np.flatnonzero(tr)
    history, best = [], (float("inf"), None, 0)
    with _common.Progress(args.epochs, "numpy_train", args.no_progress) as bar:
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(train_idx)
            for s in range(0, len(order), args.batch):
                b = order[s:s + args.batch]
                res, pred = predict(X[b], training=True)
                # loss = mean((pred - y)^2); its gradients, by hand:
                dpred = 2 * (pred - y[b]) / len(b)                       # (B,)
                h = res.h_n[-1]                                          # (B, H)
                grads = {"head.weight": h.T @ dpred, "head.bias": dpred.sum(keepdims=True)}
                dh_n = np.zeros_like(res.h_n)
                dh_n[-1] = np.outer(dpred, params["head.weight"])         # dLoss/dh_n
                grads.update(lstm.backward(res, dh_n=dh_n))              # BPTT in the fused kernels
                opt.step(grads)
            history.append((mse(tr), mse(va)))
            if history[-1][1] < best[0]:
                best = (history[-1][1], {k: v.copy() for k, v in params.items()}, epoch)
            bar.update(train=history[-1][0], val=history[-1][1])
    for k, v in best[1].items():
        params[k][...] = v
    print(f"best validation epoch {best[2]} of {args.epochs}")

    pred = predict(X[te])[1] * std + mean
    truth = y[te] * std + mean
    naive = X[te, -1, 0] * std + mean
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    naive_rmse = float(np.sqrt(np.mean((naive - truth) ** 2)))
    mae, naive_mae = float(np.mean(np.abs(pred - truth))), float(np.mean(np.abs(naive - truth)))
    print(f"test {ty[te][0]}-{ty[te][-1]}, one step ahead: LSTM (numpy API) RMSE {rmse:.1f} MAE {mae:.1f}; "
          f"naive (last year) RMSE {naive_rmse:.1f} MAE {naive_mae:.1f}")

    def draw(plt):
        h = np.array(history)
        plt.semilogy(np.arange(1, len(h) + 1), h[:, 0], label="training MSE")
        plt.semilogy(np.arange(1, len(h) + 1), h[:, 1], label="validation MSE (1921-1950)")
        plt.axvline(best[2], color="gray", ls=":", label="epoch kept")
        plt.xlabel("epoch")
        plt.ylabel("MSE (standardised units)")
        plt.title("numpy_train: fusedlstm.LSTM + hand-written Adam, no torch")
        plt.legend()

    _common.save_plot(args.out / "numpy_train_loss.png", draw)
    _common.summary("numpy_train", time.perf_counter() - t_start, test_rmse=rmse, naive_rmse=naive_rmse,
                    test_mae=mae, naive_mae=naive_mae)
    return rmse, naive_rmse


if __name__ == "__main__":
    main()
