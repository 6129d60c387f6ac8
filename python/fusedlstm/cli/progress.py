"""A progress bar for long runs: tqdm when installed (``pip install "fusedlstm[progress]"``),
else a plain one on stderr (a line per finished step; on a terminal also a
rewritten status line with the current step and the ETA).

Work is counted in weights (a step's expected cost), so the ETA holds when the
steps differ in size."""

from __future__ import annotations

import sys
import time


def _clock(seconds):
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """progress = Progress(total_weight, n_steps); with progress.step(label, weight): ...;
    progress.close(). kind: "auto" (tqdm if installed), "plain", or "none"."""

    def __init__(self, total, n_steps, kind="auto", stream=None):
        self.total, self.n_steps = float(total), n_steps
        self.stream = stream or sys.stderr
        self.done = self.k = 0
        self.t0 = time.perf_counter()
        self.tqdm = None
        tty = getattr(self.stream, "isatty", lambda: False)()
        if kind == "auto":
            kind = "plain"
            if tty:  # off a terminal a bar is noise: plain lines
                try:
                    from tqdm.auto import tqdm
                    self.tqdm = tqdm(total=self.total, file=self.stream, dynamic_ncols=True, leave=False,
                                     bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
                    kind = "tqdm"
                except ImportError:
                    pass
        self.kind = kind
        self.tty = kind == "plain" and tty

    def eta(self):
        elapsed = time.perf_counter() - self.t0
        if self.done <= 0:
            return None
        return elapsed * (self.total - self.done) / self.done

    def start(self, label):
        self.k += 1
        if self.kind == "tqdm":
            self.tqdm.set_description_str(f"[{self.k}/{self.n_steps}] {label}", refresh=True)
        elif self.kind == "plain" and self.tty:
            self._write(f"\r[{self.k}/{self.n_steps}] {label}  ETA {_clock(self.eta())}".ljust(100)[:100])

    def finish(self, weight, summary=""):
        """The step is done: its summary stays as a line above the bar."""
        self.done += weight
        if self.kind == "tqdm":
            if summary:
                self.tqdm.write(summary, file=self.stream)
            self.tqdm.update(weight)
        elif self.kind == "plain":
            frac = self.done / self.total if self.total else 1.0
            line = f"[{self.k}/{self.n_steps} {100 * frac:3.0f}%, ETA {_clock(self.eta())}] {summary}"
            self._write(("\r" + " " * 100 + "\r" if self.tty else "") + line + "\n")

    def note(self, text):
        """A line that stays (a skipped peer, an error)."""
        if self.kind == "tqdm":
            self.tqdm.write(text, file=self.stream)
        elif self.kind == "plain":
            self._write(("\r" + " " * 100 + "\r" if self.tty else "") + text + "\n")

    def close(self):
        if self.kind == "tqdm":
            self.tqdm.close()
        elif self.kind == "plain" and self.tty:
            self._write("\r" + " " * 100 + "\r")
        if self.kind != "none":
            self._write(f"done in {_clock(time.perf_counter() - self.t0)}\n")

    def _write(self, s):
        self.stream.write(s)
        self.stream.flush()
