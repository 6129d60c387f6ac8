"""Sequence classification (many-to-one with lengths): handwritten digits
(scikit-learn's 8x8 digits, 1797 images that ship with the package) read
row by row, pixel by pixel, keeping only the inked pixels: each image is a
sequence of 16 to 42 steps (row, column, ink), so the lengths vary. A
fusedlstm.torch.LSTM reads the padded batch as a PackedSequence, exactly as
nn.LSTM would, and its last hidden state is classified.

    python examples/classify.py                # full run (under a minute on 2 cores)
    python examples/classify.py --smoke --out /tmp/cls

Reports accuracy on a held-out 25% split against the majority class and,
as a stronger non-sequential reference, a logistic regression on the 64
pixels.
"""

from __future__ import annotations

import time

import numpy as np

import _common


def ink_sequences(images):
    """Each 8x8 image as a (steps, 17) sequence: one step per inked pixel in
    reading order, features = one-hot row (8), one-hot column (8), ink / 16.
    Returns the padded array (N, T, 17) and the lengths (N,)."""
    seqs = []
    for img in images:
        rows, cols = np.nonzero(img)
        f = np.zeros((len(rows), 17), np.float32)
        f[np.arange(len(rows)), rows] = 1
        f[np.arange(len(rows)), 8 + cols] = 1
        f[:, 16] = img[rows, cols] / 16
        seqs.append(f)
    lengths = np.array([len(s) for s in seqs])
    X = np.zeros((len(seqs), lengths.max(), 17), np.float32)
    for i, s in enumerate(seqs):
        X[i, :len(s)] = s
    return X, lengths


def shifted(images, rng):
    """Each image moved by up to one pixel in each direction (zero fill): the
    training set's augmentation."""
    out = np.zeros_like(images)
    for i, (dy, dx) in enumerate(rng.integers(-1, 2, size=(len(images), 2))):
        src = images[i, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def main(argv=None):
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=64, help="LSTM hidden size")
    p.add_argument("--layers", type=int, default=1, help="LSTM layers")
    p.add_argument("--unidirectional", action="store_true", help="one direction only (default: bidirectional)")
    p.add_argument("--no-shift", action="store_true", help="no augmentation (default: each training image "
                   "moved by up to one pixel, drawn anew each epoch)")
    p.add_argument("--epochs", type=int, default=80, help="training epochs")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.hidden = 2, 16

    _common.need("sklearn", "scikit-learn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    torch = _common.need("torch", "torch")
    from torch.nn.utils.rnn import pack_padded_sequence
    from fusedlstm.torch import LSTM

    _common.set_threads(args.threads, torch)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    digits = load_digits()
    X, lengths = ink_sequences(digits.images)
    labels = digits.target
    tr, te = train_test_split(np.arange(len(X)), test_size=0.25, stratify=labels, random_state=args.seed)
    if args.smoke:
        tr = tr[:256]
    print(f"digits: {len(X)} sequences of {lengths.min()}-{lengths.max()} steps (mean {lengths.mean():.1f}); "
          f"train {len(tr)}, test {len(te)}")

    # ---------------------------------------------------------- baselines
    majority = np.bincount(labels[tr]).argmax()
    acc_majority = float(np.mean(labels[te] == majority))
    flat = digits.data / 16
    logreg = LogisticRegression(max_iter=2000).fit(flat[tr], labels[tr])
    acc_logreg = float(logreg.score(flat[te], labels[te]))
    print(f"baselines: majority class {acc_majority:.3f}, logistic regression on the pixels {acc_logreg:.3f}")

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.D = 1 if args.unidirectional else 2
            self.rnn = LSTM(17, args.hidden, num_layers=args.layers, batch_first=True,
                            bidirectional=self.D == 2)               # nn.LSTM's arguments
            self.head = torch.nn.Linear(self.D * args.hidden, 10)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            # h_n: each sequence's state after its own last step (forward) and after
            # reading it back from that step to its first (reverse)
            _, (h_n, _) = self.rnn(packed)
            return self.head(torch.cat(list(h_n[-self.D:]), dim=-1))

    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    Xt, Lt, Yt = torch.from_numpy(X), torch.from_numpy(lengths), torch.from_numpy(labels)

    def accuracy(idx):
        model.eval()
        with torch.no_grad():
            pred = model(Xt[idx], Lt[idx]).argmax(-1)
        model.train()
        return float((pred == Yt[idx]).float().mean())

    history = []
    with _common.Progress(args.epochs, "classify", args.no_progress) as bar:
        for epoch in range(args.epochs):
            order = rng.permutation(tr)
            if args.no_shift:
                Xe, Le = Xt[order], Lt[order]
            else:
                Xa, La = ink_sequences(shifted(digits.images[order], rng))
                Xe, Le = torch.from_numpy(Xa), torch.from_numpy(La)
            total = 0.0
            for s in range(0, len(order), args.batch):
                b = torch.from_numpy(order[s:s + args.batch])
                loss = torch.nn.functional.cross_entropy(model(Xe[s:s + args.batch], Le[s:s + args.batch]), Yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            sched.step()
            history.append((total / len(order), accuracy(tr), accuracy(te)))
            bar.update(loss=history[-1][0], train_acc=history[-1][1])
    acc = history[-1][2]
    print(f"test accuracy: LSTM {acc:.3f} vs majority class {acc_majority:.3f}, "
          f"logistic regression {acc_logreg:.3f}")

    def draw(plt):
        h = np.array(history)
        epochs = np.arange(1, len(h) + 1)
        ax = plt.gca()
        ax.plot(epochs, h[:, 0], "C0", label="training loss (cross-entropy)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(epochs, h[:, 1], "C1", label="training accuracy")
        ax2.plot(epochs, h[:, 2], "C2", label="test accuracy")
        ax2.axhline(acc_logreg, color="gray", ls="--", label="logistic regression (test)")
        ax2.axhline(acc_majority, color="gray", ls=":", label="majority class (test)")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.02)
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax2.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
        plt.title("classify: digits as ink sequences, fusedlstm.torch.LSTM + PackedSequence")

    _common.save_plot(args.out / "classify_loss.png", draw)
    _common.summary("classify", time.perf_counter() - t_start, test_acc=acc, majority_acc=acc_majority,
                    logreg_acc=acc_logreg)
    return acc, acc_majority


if __name__ == "__main__":
    main()
