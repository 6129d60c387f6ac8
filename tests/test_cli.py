"""The command line (python -m fusedlstm, fusedlstm.cli): --version, argument errors,
the self-check's short output, and tiny bench runs that write CSV / JSON / PNG, with
and without torch. Each run is a subprocess of a few seconds; nothing here is timed."""

import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("fusedlstm")

import fusedlstm  # noqa: E402

# a bench run small enough for a test: two tiny shapes, one thread, a few reps
TINY = ["bench", "--shapes", "8,1,16", "8,2,24", "--threads", "1", "--min-time", "0.005",
        "--min-reps", "3", "--warmup", "1", "--progress", "plain"]
NO_TORCH = "import sys; sys.modules['torch'] = None; "  # `import torch` raises ImportError


def run_cli(*args, block_torch=False, timeout=240):
    code = (NO_TORCH if block_torch else "") + \
        "import sys; from fusedlstm.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def run_module(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "fusedlstm", *args], capture_output=True, text=True,
                          timeout=timeout)


def have(mod):
    try:
        __import__(mod)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_version():
    r = run_module("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fusedlstm {fusedlstm.__version__}"


@pytest.mark.parametrize("args, says", [
    (["--threads", "-3"], "--threads"),
    (["--threads", "two"], "--threads"),
    (["--isa", "foo"], "not a SIMD path of this CPU"),
    (["check", "--isa", "foo"], "available:"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--shapes", "100,16"], "bad shape"),
    (["bench", "--min-time", "-1"], "--min-time"),
    (["bench", "--peers", "tensorflow"], "invalid choice"),
    (["bench", "--dtypes", "int8"], "invalid choice"),
    (["bench", "--csv", "/no/such/dir/b.csv"], "does not exist"),
    (["frobnicate"], "unrecognized arguments"),
    (["info", "--bogus"], "unrecognized arguments"),
])
def test_argument_errors_are_one_line(args, says):
    r = run_module(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr
    assert says in errors[0], errors[0]
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]  # the message is the last line, whole


def test_self_check_is_short_by_default_and_long_with_v():
    isa = fusedlstm.get_isa()
    r = run_module("--no-bench", "--isa", isa)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "self-check:" in r.stdout and "0 failed" in r.stdout
    assert len(r.stdout.splitlines()) < 15, r.stdout
    v = run_module("check", "--no-bench", "--isa", isa, "-v")
    assert v.returncode == 0
    assert len(v.stdout.splitlines()) > 40
    assert sum(" PASS" in ln for ln in v.stdout.splitlines()) > 40


def _check_outputs(tmp_path, r, with_plot):
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    with open(tmp_path / "b.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ours = [x for x in rows if x["impl"] == "fusedlstm"]
    assert {(x["T"], x["B"], x["H"], x["mode"]) for x in ours} == \
        {(t, b, h, m) for t, b, h in (("8", "1", "16"), ("8", "2", "24")) for m in ("fwd", "fwdbwd")}
    for x in rows:
        if x["median_ms"]:
            assert float(x["p25_ms"]) <= float(x["median_ms"]) <= float(x["p75_ms"])
            assert int(x["reps"]) >= 3
        assert x["check"] in ("ok", "-"), x
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["machine"]["cpu"] and doc["settings"]["threads"] == [1]
    assert len(doc["results"]) == len(rows)
    for res in doc["results"]:
        if res["median_ms"] is not None:
            assert len(res["samples_ms"]) == res["reps"] >= 3
    if with_plot:
        png = (tmp_path / "b.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    return rows, doc


def _outputs(tmp_path, with_plot):
    out = ["--csv", str(tmp_path / "b.csv"), "--json", str(tmp_path / "b.json")]
    return out + (["--plot", str(tmp_path / "b.png")] if with_plot else [])


def test_bench_tiny_run_writes_csv_json(tmp_path):
    r = run_cli(*TINY, "--peers", "none", *_outputs(tmp_path, False))
    _check_outputs(tmp_path, r, False)
    assert "fusedlstm ms" in r.stdout  # the table


@pytest.mark.skipif(not have("matplotlib"), reason="matplotlib not installed (the plot extra)")
def test_bench_plot_and_roofline(tmp_path):
    roof = tmp_path / "roof.png"
    r = run_cli(*TINY, "--peers", "none", *_outputs(tmp_path, True), "--roofline", str(roof))
    rows, doc = _check_outputs(tmp_path, r, True)
    assert roof.read_bytes()[:4] == b"\x89PNG"
    assert doc["peak"]["sgemm_gflops"] > 0


@pytest.mark.skipif(have("matplotlib"), reason="matplotlib is installed")
def test_bench_plot_without_matplotlib_is_an_argument_error(tmp_path):
    r = run_cli(*TINY, "--plot", str(tmp_path / "b.png"))
    assert r.returncode == 2 and "matplotlib" in r.stderr and "Traceback" not in r.stderr


def test_bench_without_torch(tmp_path):
    """torch blocked: the torch peers and the train mode are skipped with a note, the rest runs."""
    with_plot = have("matplotlib")
    r = run_cli(*TINY, "--peers", "torch", "--modes", "fwd", "fwdbwd", "train", *_outputs(tmp_path, with_plot),
                block_torch=True)
    rows, doc = _check_outputs(tmp_path, r, with_plot)
    assert {x["impl"] for x in rows} == {"fusedlstm"}
    assert "torch: skipped, torch is not installed" in r.stdout
    assert "train: skipped" in r.stdout
    assert doc["machine"]["torch"] is None


@pytest.mark.skipif(not have("torch"), reason="torch not installed")
def test_bench_against_torch(tmp_path):
    r = run_cli(*TINY, "--peers", "torch", "--modes", "fwd", "fwdbwd", "train", *_outputs(tmp_path, False))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(open(tmp_path / "b.csv", newline="")))
    th = [x for x in rows if x["impl"] == "torch"]
    assert {x["mode"] for x in th} == {"fwd", "fwdbwd", "train"}
    assert all(x["check"] == "ok" and float(x["speedup"]) > 0 for x in th), th


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_bench_onnx_peers(tmp_path, peer, cell):
    """The ONNX model the peers run computes fusedlstm's function (the check column)."""
    if not have(peer) or not have("onnx"):
        pytest.skip(f"{peer} or onnx not installed")
    r = run_cli(*TINY, "--peers", peer, "--cell", cell, "--modes", "fwd", "--csv", str(tmp_path / "b.csv"))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [x for x in csv.DictReader(open(tmp_path / "b.csv", newline="")) if x["impl"] == peer]
    assert len(rows) == 2 and all(x["check"] == "ok" for x in rows), rows


def test_bench_missing_peer_is_a_note():
    missing = [p for p in ("onnxruntime", "openvino") if not have(p)]
    r = run_cli(*TINY, "--peers", "onnxruntime", "openvino", "--modes", "fwdbwd")
    assert r.returncode == 0, r.stdout + r.stderr
    for p in missing:
        assert f"{p}: skipped, not installed" in r.stdout
    for p in set(("onnxruntime", "openvino")) - set(missing):
        assert f"{p}: inference only" in r.stdout


def test_bench_cuda_without_gpu_is_a_note():
    if fusedlstm.cuda_available():
        pytest.skip("a GPU is here: the CUDA rows would run")
    r = run_cli("bench", "--device", "cuda", "--quick", "--progress", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cuda: skipped" in r.stdout and "nothing was measured" in r.stdout


def test_info():
    r = run_module("info")
    assert r.returncode == 0, r.stderr
    assert "machine" in r.stdout and "build" in r.stdout and "peers" in r.stdout
    j = run_cli("info", "--json", block_torch=True)
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert doc["build"]["version"] == fusedlstm.__version__ and doc["versions"]["torch"] is None


BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench")


@pytest.mark.parametrize("script, args", [
    ("bench_cell.py", ["--reps", "3", "--shapes", "1,16", "--threads", "1"]),
    ("bench_cpu.py", ["--shapes", "8,1,16", "--threads", "1", "--min-time", "0.005", "--min-reps", "3", "-q"]),
    ("bench_torch_train.py", ["--configs", "1x1x8x1x16", "2x2x8x2x16p8packed", "--threads", "1",
                              "--min-time", "0.005", "--min-reps", "3", "-q"]),
])
def test_bench_scripts_run_without_torch(script, args):
    code = NO_TORCH + "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code, os.path.join(BENCH, script), *args],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "torch" in r.stdout  # the note that says the torch columns are skipped
