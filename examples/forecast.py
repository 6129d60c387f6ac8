"""Forecasting (many-to-one): next year's sunspot number from the previous
--window years, on the yearly sunspot series 1700-2008 that statsmodels
ships (statsmodels.datasets.sunspots), with fusedlstm.torch.LSTM.

    python examples/forecast.py                # full run (well under a minute)
    python examples/forecast.py --smoke --out /tmp/fc

Targets up to 1920 train the model, 1921-1950 pick the epoch (validation),
1951-2008 are the held-out test years. Reports the one-step-ahead error on
the test years against the naive forecast (next year = this year), and
plots forecast vs truth. numpy_train.py trains the same model with the
numpy API only.
"""

from __future__ import annotations

import copy
import time

import numpy as np

import _common


def load_windows(window):
    """(years, series, X (N, window, 1), y (N,), target years (N,), scale):
    every window of `window` years and the year after it; values scaled by
    the mean and std of the training years."""
    sm = _common.need("statsmodels", "statsmodels")
    import statsmodels.datasets.sunspots  # noqa: F401  (the dataset ships with the package)
    df = sm.datasets.sunspots.load_pandas().data
    years, series = df["YEAR"].to_numpy().astype(int), df["SUNACTIVITY"].to_numpy().astype(np.float64)
    mean, std = series[years <= 1920].mean(), series[years <= 1920].std()
    z = (series - mean) / std
    idx = np.arange(window, len(z))
    X = np.stack([z[i - window:i] for i in idx])[:, :, None].astype(np.float32)
    y = z[idx].astype(np.float32)
    return years, series, X, y, years[idx], (mean, std)


def splits(target_years):
    return target_years <= 1920, (target_years > 1920) & (target_years <= 1950), target_years > 1950


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

    torch = _common.need("torch", "torch")
    from fusedlstm.torch import LSTM

    _common.set_threads(args.threads, torch)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    years, series, X, y, ty, (mean, std) = load_windows(args.window)
    tr, va, te = splits(ty)
    print(f"sunspots {years[0]}-{years[-1]}: {len(X)} windows of {args.window} years; "
          f"train {tr.sum()}, validation {va.sum()}, test {te.sum()} ({ty[te][0]}-{ty[te][-1]})")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    class Forecaster(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = LSTM(1, args.hidden, batch_first=True)   # nn.LSTM's arguments
            self.head = torch.nn.Linear(args.hidden, 1)

        def forward(self, x):
            _, (h_n, _) = self.rnn(x)            # many-to-one: the last hidden state
            return self.head(h_n[-1]).squeeze(-1)

    model = Forecaster()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def mse(mask):
        with torch.no_grad():
            return torch.mean((model(Xt[mask]) - yt[mask]) ** 2).item()

    train_idx = np.flatnonzero(tr)
    history, best = [], (float("inf"), None, 0)
    with _common.Progress(args.epochs, "forecast", args.no_progress) as bar:
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(train_idx)
            for s in range(0, len(order), args.batch):
                b = torch.from_numpy(order[s:s + args.batch])
                loss = torch.mean((model(Xt[b]) - yt[b]) ** 2)
                opt.zero_grad()
                loss.backward()
                opt.step()
            history.append((mse(tr), mse(va)))
            if history[-1][1] < best[0]:
                best = (history[-1][1], copy.deepcopy(model.state_dict()), epoch)
            bar.update(train=history[-1][0], val=history[-1][1])
    model.load_state_dict(best[1])
    print(f"best validation epoch {best[2]} of {args.epochs}")

    # ---------------------------------------------- test: vs the naive forecast
    with torch.no_grad():
        pred = model(Xt[te]).numpy() * std + mean
    truth = y[te] * std + mean
    naive = X[te, -1, 0] * std + mean                  # next year = this year

    def rmse(a):
        return float(np.sqrt(np.mean((a - truth) ** 2)))

    def mae(a):
        return float(np.mean(np.abs(a - truth)))

    print(f"test {ty[te][0]}-{ty[te][-1]}, one step ahead: LSTM RMSE {rmse(pred):.1f} MAE {mae(pred):.1f}; "
          f"naive (last year) RMSE {rmse(naive):.1f} MAE {mae(naive):.1f}")

    def draw_forecast(plt):
        plt.plot(years, series, color="lightgray", lw=1, label="sunspot number")
        plt.plot(ty[te], truth, "k.-", lw=1, label="truth (test years)")
        plt.plot(ty[te], pred, "C0.-", label=f"LSTM forecast (RMSE {rmse(pred):.1f})")
        plt.plot(ty[te], naive, "C1--", lw=1, label=f"naive: last year (RMSE {rmse(naive):.1f})")
        plt.axvline(1950.5, color="gray", ls=":")
        plt.xlim(1900, years[-1] + 1)
        plt.xlabel("year")
        plt.ylabel("yearly mean sunspot number")
        plt.title("forecast: one year ahead from the previous %d (fusedlstm.torch.LSTM)" % args.window)
        plt.legend(loc="upper left", fontsize=8)

    def draw_loss(plt):
        h = np.array(history)
        plt.semilogy(np.arange(1, len(h) + 1), h[:, 0], label="training MSE")
        plt.semilogy(np.arange(1, len(h) + 1), h[:, 1], label="validation MSE (1921-1950)")
        plt.axvline(best[2], color="gray", ls=":", label="epoch kept")
        plt.xlabel("epoch")
        plt.ylabel("MSE (standardised units)")
        plt.title("forecast: loss")
        plt.legend()

    _common.save_plot(args.out / "forecast.png", draw_forecast)
    _common.save_plot(args.out / "forecast_loss.png", draw_loss)
    _common.summary("forecast", time.perf_counter() - t_start, test_rmse=rmse(pred), naive_rmse=rmse(naive),
                    test_mae=mae(pred), naive_mae=mae(naive))
    return rmse(pred), rmse(naive)


if __name__ == "__main__":
    main()
