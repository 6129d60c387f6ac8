"""Every script in examples/ runs: `--help`, and a `--smoke` run (seconds)
that writes its PNG plots into a temporary folder. An example whose dataset
package (scikit-learn, statsmodels) or torch is not installed is skipped,
saying which; without matplotlib the examples still run and write no PNG.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("fusedlstm")

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples"

# script: (the packages it needs, the PNGs it writes)
EXAMPLES = {
    "char_lm.py": (("torch",), ("char_lm_loss.png",)),
    "forecast.py": (("torch", "statsmodels"), ("forecast.png", "forecast_loss.png")),
    "classify.py": (("torch", "sklearn"), ("classify_loss.png",)),
    "streaming.py": (("torch",), ("streaming_loss.png", "streaming_latency.png")),
    "numpy_train.py": (("statsmodels",), ("numpy_train_loss.png",)),
}
PIP_NAME = {"sklearn": "scikit-learn"}
TIMEOUT = 600  # seconds: a smoke run takes a few on an idle machine; CI's may be busy


def _missing(modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _run(args, cwd, code=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    cmd = [sys.executable] + (["-c", code] if code else []) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_every_example_is_listed():
    scripts = {p.name for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_help(script, tmp_path):
    proc = _run([EXAMPLES_DIR / script, "--help"], tmp_path)
    _check(proc)
    for option in ("--smoke", "--out", "--seed"):
        assert option in proc.stdout


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_smoke(script, tmp_path):
    needs, pngs = EXAMPLES[script]
    missing = _missing(needs)
    if missing:
        pytest.skip(f"examples/{script} needs {', '.join(PIP_NAME.get(m, m) for m in missing)} "
                    f"(pip install {' '.join(PIP_NAME.get(m, m) for m in missing)})")
    out = tmp_path / "out"
    args = ["--smoke", "--no-progress", "--threads", "1", "--out", out]
    if script == "numpy_train.py":
        # numpy API only: the run must work with torch unimportable
        code = ("import runpy, sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); "
                "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        proc = _run([EXAMPLES_DIR, EXAMPLES_DIR / script, *args], tmp_path, code=code)
    else:
        proc = _run([EXAMPLES_DIR / script, *args], tmp_path)
    _check(proc)
    name = script[:-3]
    assert f"[{name}] " in proc.stdout, proc.stdout           # the closing summary line
    if importlib.util.find_spec("matplotlib") is not None:
        for png in pngs:
            path = out / png
            assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    else:
        assert "matplotlib is not installed" in proc.stdout
        assert not out.exists() or not any(out.iterdir())
