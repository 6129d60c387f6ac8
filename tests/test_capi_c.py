"""The C API's own test program (tests/c/test_capi.c): NULL pointers, zero,
negative and overflowing sizes, bad enum values, overflowing strides and
short reserves through every entry point, each a status and a message naming
the argument, none a crash; plus a small valid forward/backward.

Configured and built with CMake from this checkout into a build directory
kept between runs (FUSEDLSTM_CAPI_TEST_BUILD overrides it; .ci/sanitize.sh
points it at a sanitizer build). Skipped, with the reason, only when cmake or
a C/C++ compiler is missing."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = "fusedlstm_capi_test"


def _missing_tool():
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    for env, names in (("CC", ("cc", "gcc", "clang")), ("CXX", ("c++", "g++", "clang++"))):
        candidates = [os.environ[env]] if os.environ.get(env) else names
        if not any(shutil.which(c.split()[0]) for c in candidates):
            return f"no {env} compiler found (tried {', '.join(candidates)})"
    return None


def _build_dir():
    if os.environ.get("FUSEDLSTM_CAPI_TEST_BUILD"):
        return pathlib.Path(os.environ["FUSEDLSTM_CAPI_TEST_BUILD"])
    return ROOT / "build" / f"capi-test-py{sys.version_info[0]}{sys.version_info[1]}"


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def capi_test_binary():
    why = _missing_tool()
    if why:
        pytest.skip(f"cannot build the C API test program: {why}")
    build = _build_dir()
    if not (build / "CMakeCache.txt").exists():
        # The CUDA backend is not needed by the C program.
        _run(["cmake", "-S", str(ROOT), "-B", str(build), "-DFUSEDLSTM_CUDA=off"])
    _run(["cmake", "--build", str(build), "--target", TARGET, "--parallel", "2"])
    exe = build / TARGET
    assert exe.exists(), f"{exe} was not built"
    return exe


def test_capi_program(capi_test_binary):
    env = dict(os.environ)
    # Under a sanitizer build a failed allocation must return NULL (the
    # out-of-memory cases), not abort.
    env["ASAN_OPTIONS"] = "allocator_may_return_null=1:" + env.get("ASAN_OPTIONS", "")
    proc = subprocess.run([str(capi_test_binary)], capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1]) if lines else None
    assert proc.returncode == 0 and summary and summary[2] == "0", \
        f"{capi_test_binary} exited {proc.returncode}:\n{out[-8000:]}"
    assert int(summary[1]) >= 150, f"only {summary[1]} cases ran:\n{out[-4000:]}"
