"""Small helpers the examples share: the command line every example has
(--smoke, --out, --seed, --threads), a progress bar (tqdm when installed, a
plain line otherwise) and PNG plots (matplotlib when installed, otherwise a
message and no file). Nothing here is needed to read an example: each
script's model, data and training loop are in the script itself.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

DATA = pathlib.Path(__file__).resolve().parent / "data"


def parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every example takes."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="a tiny run that finishes in seconds (what the test suite runs); the metrics mean nothing")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                   help="folder for the PNG plots (made if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and fusedlstm (default: their own defaults)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def set_threads(n, torch=None):
    if n is None:
        return
    import fusedlstm
    fusedlstm.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def need(module: str, what: str):
    """Import `module`, or exit (status 1) with a message saying what to install."""
    try:
        return __import__(module)
    except ImportError:
        sys.exit(f"this example needs {what} (pip install {what}): {module} is not installed")


class Progress:
    """A progress bar over `total` steps: tqdm's when tqdm is installed,
    else one plain line every ~10% of the run (to stderr). ``update(**info)``
    advances one step and shows `info` (e.g. loss=0.123)."""

    def __init__(self, total: int, desc: str, disable: bool = False):
        self.total, self.desc, self.disable, self.n = total, desc, disable, 0
        self.start = time.perf_counter()
        self._bar = None
        self._every = max(1, total // 10)
        if not disable:
            try:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, **info):
        self.n += 1
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()}
        if self.disable:
            return
        if self._bar is not None:
            if text:
                self._bar.set_postfix(text, refresh=False)
            self._bar.update(1)
        elif self.n % self._every == 0 or self.n == self.total:
            shown = " ".join(f"{k}={v}" for k, v in text.items())
            elapsed = time.perf_counter() - self.start
            print(f"{self.desc}: {self.n}/{self.total} [{elapsed:.1f}s] {shown}", file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def save_plot(path: pathlib.Path, draw) -> pathlib.Path | None:
    """Call ``draw(plt)`` on a fresh figure and write it to `path` (PNG).
    Without matplotlib: say so and write nothing. Returns the path written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib is not installed: no plot written to {path}; pip install matplotlib)")
        return None
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(8, 4.5))
    try:
        draw(plt)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    print(f"plot: {path}")
    return path


def cpu_name() -> str:
    """The CPU's model name (Linux), for the timing lines."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def summary(name: str, wall: float, **metrics):
    """The closing line of every example: its metrics and wall time."""
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    print(f"[{name}] {shown}; wall {wall:.1f} s on {os.cpu_count()} CPUs ({cpu_name()})")
