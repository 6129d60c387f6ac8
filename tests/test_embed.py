"""Embedding the C library: what the installed package ships for C and C++.

- The paths fusedlstm.get_include() / get_library_dir() / get_cmake_dir()
  name exist and agree: with the library this process loaded, with the CMake
  package's and pkg-config's own view, with the headers of this checkout.
- libfusedlstm.so exports the C API and nothing else (`nm -D`).
- The examples of examples/embed/ (a C and a C++ program, each with its own
  small CMakeLists and find_package(fusedlstm)) build against the installed
  package with nothing else, run a forward and backward, and print inputs and
  outputs, which are checked here against fusedlstm.reference under the
  tolerance policy. The C program is also built with pkg-config's flags, and
  against a plain `cmake --install` of this source tree.
- As a subproject (add_subdirectory) the build probes no CUDA and gives
  fusedlstm::fusedlstm.

cmake runs here (configure, build, install). A test is skipped, with the
reason, when cmake, a compiler, nm or pkg-config is missing.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fusedlstm
from fusedlstm import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "embed"
# The C API's functions, as the installed header declares them.
_DECLARATION = re.compile(r"^[A-Za-z_][\w \*]*?\b(fl_\w+)\(", re.M)


def _missing(*tools):
    for tool in tools:
        if tool == "cc":
            candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
        elif tool == "c++":
            candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
        else:
            candidates = [tool]
        if not any(shutil.which(c.split()[0]) for c in candidates):
            return f"{tool} is not installed (tried {', '.join(candidates)})"
    return None


def _skip_without(*tools):
    why = _missing(*tools)
    if why:
        pytest.skip(why)


def _run(cmd, **kw):
    kw.setdefault("timeout", 900)
    env = dict(kw.pop("env", os.environ))
    env.pop("FUSEDLSTM_CUDA", None)  # the consumer's environment must not ask for CUDA
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _library():
    return pathlib.Path(fusedlstm.get_library_dir()) / "libfusedlstm.so"


# --------------------------------------------------------------------------
# The installed files
# --------------------------------------------------------------------------
def test_installed_paths_exist_and_agree():
    include = pathlib.Path(fusedlstm.get_include())
    libdir = pathlib.Path(fusedlstm.get_library_dir())
    cmake_dir = pathlib.Path(fusedlstm.get_cmake_dir())
    for path in (include / "fusedlstm" / "fusedlstm.h", include / "fusedlstm" / "fusedlstm_cuda.h",
                 libdir / "libfusedlstm.so", libdir / "pkgconfig" / "fusedlstm.pc",
                 cmake_dir / "fusedlstmConfig.cmake", cmake_dir / "fusedlstmConfigVersion.cmake",
                 cmake_dir / "fusedlstmTargets.cmake"):
        assert path.is_file(), f"{path} is missing from the installed package (a build from before the C " \
                               f"library was installed? reinstall)"
    # The extension runs on that very library (one copy of the core per process).
    loaded = {line.split()[-1] for line in pathlib.Path("/proc/self/maps").read_text().splitlines()
              if line.endswith("/libfusedlstm.so")}
    assert len(loaded) == 1 and os.path.samefile(loaded.pop(), libdir / "libfusedlstm.so"), loaded
    # The installed headers are this checkout's (a stale install would test old code).
    for name in ("fusedlstm.h", "fusedlstm_cuda.h"):
        source = ROOT / "csrc" / "include" / "fusedlstm" / name
        if source.is_file():
            assert (include / "fusedlstm" / name).read_bytes() == source.read_bytes(), \
                f"the installed {name} differs from {source}: reinstall the package"
    meta_version = pathlib.Path(cmake_dir / "fusedlstmConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{fusedlstm.__version__}")' in meta_version


def test_cmake_package_and_pkg_config_name_the_same_files(tmp_path):
    """find_package's include folder and library, and pkg-config's, are the
    get_include() / get_library_dir() ones."""
    _skip_without("cmake", "cc")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(probe LANGUAGES C)\n"
        "find_package(fusedlstm CONFIG REQUIRED)\n"
        "get_target_property(inc fusedlstm::fusedlstm INTERFACE_INCLUDE_DIRECTORIES)\n"
        'message(STATUS "FL_INCLUDE=${inc}")\nmessage(STATUS "FL_LIBRARY=${fusedlstm_LIBRARY}")\n'
        'message(STATUS "FL_VERSION=${fusedlstm_VERSION}")\n')
    out = _run(["cmake", "-S", probe, "-B", tmp_path / "build",
                f"-DCMAKE_PREFIX_PATH={fusedlstm.get_cmake_dir()}"]).stdout
    found = dict(re.findall(r"-- (FL_\w+)=(.*)", out))
    assert os.path.samefile(found["FL_INCLUDE"], fusedlstm.get_include()), found
    assert os.path.samefile(found["FL_LIBRARY"], _library()), found
    assert found["FL_VERSION"] == fusedlstm.__version__, found

    if _missing("pkg-config"):
        pytest.skip("pkg-config is not installed (the CMake package was checked)")
    env = dict(os.environ, PKG_CONFIG_PATH=str(pathlib.Path(fusedlstm.get_library_dir()) / "pkgconfig"))
    variables = {v: _run(["pkg-config", f"--variable={v}", "fusedlstm"], env=env).stdout.strip()
                 for v in ("includedir", "libdir")}
    assert os.path.samefile(variables["includedir"], fusedlstm.get_include()), variables
    assert os.path.samefile(variables["libdir"], fusedlstm.get_library_dir()), variables
    assert _run(["pkg-config", "--modversion", "fusedlstm"], env=env).stdout.strip() == fusedlstm.__version__


def test_library_exports_only_the_c_api():
    """libfusedlstm.so's dynamic symbols: every function of the C headers, and
    nothing else (no fusedlstm:: internals, no C++ runtime pieces)."""
    _skip_without("nm")
    out = _run(["nm", "-D", "--defined-only", _library()]).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    others = sorted(s for s in exported if not s.startswith("fl_"))
    assert not others, f"{len(others)} symbols besides fl_*: {others[:20]}"
    include = pathlib.Path(fusedlstm.get_include()) / "fusedlstm"
    declared = {m for h in ("fusedlstm.h", "fusedlstm_cuda.h") for m in _DECLARATION.findall((include / h).read_text())}
    assert len(declared) >= 20, declared
    assert declared <= exported, f"declared but not exported: {sorted(declared - exported)}"
    assert exported <= declared, f"exported but not declared: {sorted(exported - declared)}"


# --------------------------------------------------------------------------
# The examples: build against the installed package, run, check
# --------------------------------------------------------------------------
def _parse(stdout):
    """The programs' `name ndim dim... value...` lines -> {name: array}."""
    arrays = {}
    for line in stdout.splitlines():
        name, ndim, *rest = line.split()
        ndim = int(ndim)
        shape = tuple(int(d) for d in rest[:ndim])
        values = np.array([float(v) for v in rest[ndim:]])
        assert values.size == int(np.prod(shape)), f"{name}: {values.size} values for shape {shape}"
        arrays[name] = values.reshape(shape)
    return arrays


def _check_lstm_c(a, policy, reference_outputs):
    """examples/embed/c/lstm_c.c: LSTM, float32, lengths, h0 and c0."""
    f32 = {k: v.astype(np.float32) for k, v in a.items() if k != "lengths"}  # printed exactly (%.9g)
    lengths = a["lengths"].astype(np.int64)
    args = (f32["x"], f32["w_ih"], f32["w_hh"], f32["b_ih"], f32["b_hh"], f32["h0"], f32["c0"])
    ups = dict(dy=f32["dy"], dh_n=f32["dh_n"], dc_n=f32["dc_n"])
    ref64, plain = reference_outputs(args, dict(lengths=lengths), ups, dtype=np.float32)
    got = {k: f32[k] for k in ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh")}
    got["db_ih"] = got["db_hh"] = f32["db"]  # the LSTM's two bias gradients are one
    policy.check_all(got, ref64, plain, dtype=np.float32, prefix="lstm_c: ")
    T = a["x"].shape[0]
    for b, n in enumerate(lengths):
        assert np.all(got["y"][n:T, b] == 0), f"lstm_c: y of padded steps of sequence {b} not zero"


def _check_gru_cpp(a, policy, reference_outputs):
    """examples/embed/cpp/gru_cpp.cpp: GRU, float64, reverse, lengths, h0."""
    lengths = a["lengths"].astype(np.int64)
    args = (a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"])
    ref64, _ = reference_outputs(args, dict(lengths=lengths, reverse=True, cell="gru"),
                                 dict(dy=a["dy"], dh_n=a["dh_n"]), dtype=np.float64)
    names = ("y", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
    policy.check_all({k: a[k] for k in names}, ref64, dtype=np.float64, names=names, prefix="gru_cpp: ")
    assert not np.allclose(a["db_ih"], a["db_hh"]), "gru_cpp: the GRU's bias gradients should differ (n rows)"


EXAMPLE_PROGRAMS = {"c": ("lstm_c", _check_lstm_c, ("cmake", "cc")),
                    "cpp": ("gru_cpp", _check_gru_cpp, ("cmake", "c++"))}


def _build_example(which, build, prefix_path):
    """Configure and build examples/embed/<which> against the package found on
    prefix_path; returns the program."""
    program, _, tools = EXAMPLE_PROGRAMS[which]
    _skip_without(*tools)
    _run(["cmake", "-S", EXAMPLES / which, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix_path}",
          "-DCMAKE_BUILD_TYPE=Release"])
    _run(["cmake", "--build", build, "--parallel", "2"])
    exe = build / program
    assert exe.is_file(), f"{exe} was not built"
    return exe


def _run_and_check(which, exe, policy, reference_outputs, env=None):
    _, check, _ = EXAMPLE_PROGRAMS[which]
    # No LD_LIBRARY_PATH: the program finds libfusedlstm.so by itself.
    env = {k: v for k, v in (env or os.environ).items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"{exe} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    check(_parse(proc.stdout), policy, reference_outputs)
    return proc.stdout


@pytest.mark.parametrize("which", sorted(EXAMPLE_PROGRAMS))
def test_example_builds_against_installed_package(which, tmp_path, policy, reference_outputs):
    """The README's recipe: CMAKE_PREFIX_PATH = fusedlstm.get_cmake_dir(), then
    find_package(fusedlstm CONFIG REQUIRED) and fusedlstm::fusedlstm, nothing else."""
    exe = _build_example(which, tmp_path / "build", fusedlstm.get_cmake_dir())
    _run_and_check(which, exe, policy, reference_outputs)


def test_c_example_builds_with_pkg_config(tmp_path, policy, reference_outputs):
    """A C compiler given pkg-config's flags only (and a RUNPATH to the library
    folder, which a library outside the loader's paths needs)."""
    _skip_without("cc", "pkg-config")
    env = dict(os.environ, PKG_CONFIG_PATH=str(pathlib.Path(fusedlstm.get_library_dir()) / "pkgconfig"))
    flags = _run(["pkg-config", "--cflags", "--libs", "fusedlstm"], env=env).stdout.split()
    cc = (os.environ.get("CC") or next(c for c in ("cc", "gcc", "clang") if shutil.which(c))).split()
    exe = tmp_path / "lstm_c"
    _run([*cc, "-std=c99", "-Wall", "-Wextra", "-Werror", EXAMPLES / "c" / "lstm_c.c", *flags,
          f"-Wl,-rpath,{fusedlstm.get_library_dir()}", "-o", exe])
    _run_and_check("c", exe, policy, reference_outputs)


def _source_build():
    """The CPU-only build tree of this checkout that tests/test_capi_c.py keeps
    (the same configure), so the core is compiled once for both."""
    return ROOT / "build" / f"capi-test-py{sys.version_info[0]}{sys.version_info[1]}"


def test_c_example_builds_against_cmake_install_of_source_tree(tmp_path, policy, reference_outputs):
    """`cmake --install` of the source tree into a prefix, then the example with
    CMAKE_PREFIX_PATH = that prefix."""
    _skip_without("cmake", "cc", "c++")
    if not (ROOT / "CMakeLists.txt").is_file():
        pytest.skip(f"no source tree at {ROOT}")
    build = _source_build()
    if not (build / "CMakeCache.txt").exists():
        _run(["cmake", "-S", ROOT, "-B", build, "-DFUSEDLSTM_CUDA=off"])
    _run(["cmake", "--build", build, "--target", "fusedlstm", "--parallel", "2"])
    prefix = tmp_path / "prefix"
    _run(["cmake", "--install", build, "--prefix", prefix])
    libs = sorted(p.name for p in prefix.rglob("libfusedlstm*.so"))
    assert "libfusedlstm.so" in libs, libs
    assert list(prefix.rglob("fusedlstmConfig.cmake")) and list(prefix.rglob("fusedlstm.pc"))
    exe = _build_example("c", tmp_path / "build", prefix)
    _run_and_check("c", exe, policy, reference_outputs)


def test_subproject_probes_no_cuda(tmp_path):
    """add_subdirectory(fusedlstm): fusedlstm::fusedlstm is there, no CUDA
    compiler is looked for and no install rules are added unless the consumer
    asks (configure only: nothing is compiled)."""
    _skip_without("cmake", "cc", "c++")
    if not (ROOT / "CMakeLists.txt").is_file():
        pytest.skip(f"no source tree at {ROOT}")
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(consumer LANGUAGES C CXX)\n"
        f'add_subdirectory("{ROOT}" fusedlstm)\n'
        'if(NOT TARGET fusedlstm::fusedlstm)\n  message(FATAL_ERROR "no fusedlstm::fusedlstm")\nendif()\n'
        'if(TARGET fusedlstm_cuda)\n  message(FATAL_ERROR "the CUDA backend is configured")\nendif()\n'
        'message(STATUS "FL_CUDA=${FUSEDLSTM_CUDA} FL_INSTALL=${FUSEDLSTM_INSTALL}")\n'
        'add_executable(app main.c)\ntarget_link_libraries(app PRIVATE fusedlstm::fusedlstm)\n')
    (consumer / "main.c").write_text("#include <fusedlstm/fusedlstm.h>\nint main(void) { return fl_get_num_threads() < 1; }\n")
    out = _run(["cmake", "-S", consumer, "-B", tmp_path / "build"])
    log = out.stdout + out.stderr
    assert "FL_CUDA=off FL_INSTALL=OFF" in log, log[-3000:]
    assert "CUDA" not in log.replace("FL_CUDA=", ""), f"the subproject probed CUDA:\n{log[-3000:]}"
