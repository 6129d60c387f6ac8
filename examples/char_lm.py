"""Character-level language model (many-to-many) on the Book of Genesis (King
James Version, public domain, examples/data/genesis_kjv.txt), trained with
fusedlstm.torch.LSTM, then used to generate text one character at a time
with fusedlstm.lstm_cell in a loop (one-to-many: each sampled character is
the next step's input).

    python examples/char_lm.py                 # full run (a few minutes on 2 cores)
    python examples/char_lm.py --smoke --out /tmp/lm

Reports the validation perplexity per character (the last 10% of the text,
never trained on) against two count-based baselines fitted on the training
text: unigram and bigram (add-0.1 smoothing) character models.
"""

from __future__ import annotations

import math
import time

import numpy as np

import _common


def main(argv=None):
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256, help="LSTM hidden size")
    p.add_argument("--layers", type=int, default=1, help="LSTM layers")
    p.add_argument("--embed", type=int, default=64, help="character embedding size")
    p.add_argument("--seq-len", type=int, default=100, help="characters per training window (BPTT length)")
    p.add_argument("--batch", type=int, default=64, help="windows per step")
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine decay to 1/20 of it)")
    p.add_argument("--sample-len", type=int, default=400, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--prompt", default="And God said", help="text the generation starts from")
    args = p.parse_args(argv)
    if args.smoke:
        args.hidden, args.embed, args.seq_len, args.batch, args.steps, args.sample_len = 32, 16, 32, 16, 15, 80

    torch = _common.need("torch", "torch")
    import fusedlstm
    from fusedlstm.torch import LSTM

    _common.set_threads(args.threads, torch)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    # ------------------------------------------------------------ data
    text = (_common.DATA / "genesis_kjv.txt").read_text(encoding="utf-8")
    if args.smoke:
        text = text[:20000]
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int64)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    V = len(chars)
    print(f"text: {len(text)} characters, vocabulary {V}; train {len(train)}, validation {len(val)}")

    # --------------------------------------------------------- baselines
    uni = np.bincount(train, minlength=V) + 0.1
    uni_nll = -np.mean(np.log(uni[val] / uni.sum()))
    pair = np.full((V, V), 0.1)
    np.add.at(pair, (train[:-1], train[1:]), 1)
    pair /= pair.sum(axis=1, keepdims=True)
    bi_nll = -np.mean(np.log(pair[val[:-1], val[1:]]))
    print(f"baselines (validation perplexity per character): unigram {math.exp(uni_nll):.2f}, "
          f"bigram {math.exp(bi_nll):.2f}")

    # ------------------------------------------------------------ model
    class CharLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, args.embed)
            # fusedlstm.torch.LSTM takes nn.LSTM's arguments and returns what it returns
            self.rnn = LSTM(args.embed, args.hidden, num_layers=args.layers, batch_first=True,
                            dropout=0.1 if args.layers > 1 else 0.0)
            self.head = torch.nn.Linear(args.hidden, V)

        def forward(self, x, state=None):
            y, state = self.rnn(self.embed(x), state)       # many-to-many: y (B, T, H)
            return self.head(y), state

    model = CharLM()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps, eta_min=args.lr / 20)
    loss_fn = torch.nn.CrossEntropyLoss()

    def validation_nll():
        """Mean NLL (nats) per character over the whole validation text: B
        contiguous streams, read in windows with the state carried over."""
        model.eval()
        streams = 16
        n = (len(val) - 1) // streams
        xs = torch.from_numpy(val[: streams * n].reshape(streams, n))
        ys = torch.from_numpy(val[1: streams * n + 1].reshape(streams, n))
        total, state = 0.0, None
        with torch.no_grad():
            for s in range(0, n, 256):
                logits, state = model(xs[:, s:s + 256], state)
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, V), ys[:, s:s + 256].reshape(-1), reduction="sum").item()
        model.train()
        return total / (streams * n)

    # --------------------------------------------------------- training
    T, B = args.seq_len, args.batch
    losses, val_points = [], []
    eval_every = max(1, args.steps // 6)
    t_train = time.perf_counter()
    with _common.Progress(args.steps, "char_lm", args.no_progress) as bar:
        for step in range(1, args.steps + 1):
            starts = rng.integers(0, len(train) - T - 1, size=B)
            window = torch.from_numpy(np.stack([train[s:s + T + 1] for s in starts]))
            logits, _ = model(window[:, :-1])
            loss = loss_fn(logits.reshape(-1, V), window[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if step % eval_every == 0 or step == args.steps:
                val_points.append((step, validation_nll()))
            bar.update(loss=losses[-1], val_ppl=math.exp(val_points[-1][1]) if val_points else float("nan"))
    train_time = time.perf_counter() - t_train
    val_nll = val_points[-1][1]
    print(f"trained {args.steps} steps of {B}x{T} characters in {train_time:.1f} s "
          f"({1000 * train_time / args.steps:.0f} ms/step)")
    print(f"validation perplexity: LSTM {math.exp(val_nll):.2f} vs bigram {math.exp(bi_nll):.2f}, "
          f"unigram {math.exp(uni_nll):.2f}  ({val_nll / math.log(2):.3f} bits/char)")

    # ------------------------------------------------------- generation
    # The trained weights, as numpy arrays, go unchanged to fusedlstm.lstm_cell:
    # one call per layer per character (one-to-many, the cell in a loop).
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cells = [tuple(sd[f"rnn.{n}_l{layer}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
             for layer in range(args.layers)]
    emb, w_out, b_out = sd["embed.weight"], sd["head.weight"], sd["head.bias"]
    h = [np.zeros((1, args.hidden), np.float32) for _ in cells]
    c = [np.zeros((1, args.hidden), np.float32) for _ in cells]

    def step_chars(ch_index):
        x = emb[ch_index][None]
        for layer, weights in enumerate(cells):
            h[layer], c[layer] = fusedlstm.lstm_cell(x, h[layer], c[layer], *weights)
            x = h[layer]
        return x @ w_out.T + b_out                         # logits (1, V)

    prompt = "".join(ch for ch in args.prompt if ch in index) or chars[0]
    for ch in prompt:
        logits = step_chars(index[ch])
    model.eval()
    with torch.no_grad():  # the cell loop computes what the trained module does
        ref = model(torch.tensor([[index[ch] for ch in prompt]]))[0][0, -1].numpy()
    agree = float(np.abs(ref - logits[0]).max())
    out = []
    t_gen = time.perf_counter()
    for _ in range(args.sample_len):
        z = logits[0].astype(np.float64) / args.temperature
        prob = np.exp(z - z.max())
        nxt = rng.choice(V, p=prob / prob.sum())
        out.append(chars[nxt])
        logits = step_chars(nxt)
    gen_time = time.perf_counter() - t_gen
    print(f"\n--- generated with fusedlstm.lstm_cell, temperature {args.temperature} "
          f"({1e6 * gen_time / max(1, args.sample_len):.0f} us/character; the prompt's logits are the "
          f"module's to {agree:.1e}) ---")
    print(prompt + "".join(out))
    print("---\n")

    # ------------------------------------------------------------ plot
    def draw(plt):
        plt.plot(np.arange(1, len(losses) + 1), np.array(losses) / math.log(2), lw=0.8, label="training (batch)")
        vs, vl = zip(*val_points)
        plt.plot(vs, np.array(vl) / math.log(2), "o-", label="validation (LSTM)")
        plt.axhline(bi_nll / math.log(2), color="gray", ls="--", label="bigram baseline (validation)")
        plt.axhline(uni_nll / math.log(2), color="gray", ls=":", label="unigram baseline (validation)")
        plt.xlabel("step")
        plt.ylabel("bits per character")
        plt.title("char_lm: fusedlstm.torch.LSTM on Genesis (KJV)")
        plt.legend()

    _common.save_plot(args.out / "char_lm_loss.png", draw)
    _common.summary("char_lm", time.perf_counter() - t_start, val_ppl=math.exp(val_nll),
                    bigram_ppl=math.exp(bi_nll), unigram_ppl=math.exp(uni_nll))
    return math.exp(val_nll), math.exp(bi_nll)


if __name__ == "__main__":
    main()
