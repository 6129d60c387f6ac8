"""The installed distribution: its metadata (license, extras, one version
everywhere) and the run-time paths of its shared objects, which must reach
only files relative to themselves ($ORIGIN), never a folder of the machine
that built them (a second venv would load the first one's cuBLAS)."""

import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess

import pytest

import fusedlstm
from fusedlstm import _core

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(_core.__file__).resolve().parent  # the installed package folder (editable: not ROOT)


def _metadata():
    try:
        return importlib.metadata.metadata("fusedlstm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusedlstm is not installed as a distribution (no metadata)")


def test_license_in_metadata_and_wheel():
    meta = _metadata()
    assert meta.get("License-Expression") == "MIT" or meta.get("License") == "MIT", dict(meta)
    files = [str(f) for f in importlib.metadata.files("fusedlstm") or []]
    assert any(f.endswith("LICENSE") and ".dist-info" in f for f in files), \
        f"no LICENSE in the installed dist-info: {[f for f in files if 'dist-info' in f]}"


def test_extras_declared():
    meta = _metadata()
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"test", "cuda"} <= extras, extras
    requires = meta.get_all("Requires-Dist") or []
    cuda = [r for r in requires if re.search(r"""extra\s*==\s*['"]cuda['"]""", r)]
    assert any(r.startswith("nvidia-cublas") for r in cuda), requires
    test = [r for r in requires if re.search(r"""extra\s*==\s*['"]test['"]""", r)]
    assert any(r.startswith("pytest") for r in test), requires


def test_one_version_everywhere():
    versions = {"fusedlstm.__version__": fusedlstm.__version__}
    try:
        versions["metadata"] = importlib.metadata.version("fusedlstm")
    except importlib.metadata.PackageNotFoundError:
        pass
    if (ROOT / "pyproject.toml").is_file():
        versions["pyproject.toml"] = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                                               re.M)[1]
        versions["CMakeLists.txt"] = re.search(r"project\(fusedlstm VERSION (\S+)",
                                               (ROOT / "CMakeLists.txt").read_text())[1]
    assert len(set(versions.values())) == 1, versions


def _dynamic(path):
    """(NEEDED list, RUNPATH/RPATH entries) of an ELF file, from readelf."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)
    paths = [p for m in re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out)
             for p in m.split(":") if p]
    return needed, paths


def _shared_objects():
    return sorted([*PACKAGE.glob("_core*.so"), *PACKAGE.glob("lib/*.so")])


def test_shared_objects_have_no_absolute_runpath():
    """_core, libfusedlstm.so and (CUDA builds) libfusedlstm_cuda.so: every
    RUNPATH entry is $ORIGIN-relative."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    objects = _shared_objects()
    names = [p.name for p in objects]
    assert "libfusedlstm.so" in names and any(n.startswith("_core") for n in names), names
    for path in objects:
        _, paths = _dynamic(path)
        absolute = [p for p in paths if not p.startswith("$ORIGIN")]
        assert not absolute, f"{path.name}: RUNPATH entries outside the package: {absolute}"
    needed, paths = _dynamic(next(p for p in objects if p.name.startswith("_core")))
    assert "libfusedlstm.so" in needed and "$ORIGIN/lib" in paths, (needed, paths)


def test_cuda_backend_finds_cublas_in_the_nvidia_wheel():
    """libfusedlstm_cuda.so (when this build has it) sits beside
    libfusedlstm.so, where the C API looks, and reaches cuBLAS through the
    nvidia-cublas wheel of the same site-packages (the [cuda] extra)."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    cuda = PACKAGE / "lib" / "libfusedlstm_cuda.so"
    if not cuda.is_file():
        pytest.skip("this build has no CUDA backend library")
    needed, paths = _dynamic(cuda)
    cublas = [n for n in needed if n.startswith("libcublas.so")]
    assert cublas, needed
    assert any(re.fullmatch(r"\$ORIGIN/\.\./\.\./nvidia/(cu\d+|cublas)/lib", p) for p in paths), paths
    site = PACKAGE.parent  # site-packages
    for p in paths:
        folder = pathlib.Path(os.path.normpath(p.replace("$ORIGIN", str(cuda.parent))))
        assert folder.parent.parent == site / "nvidia", (p, folder)
    assert os.path.samefile(fusedlstm.get_library_dir(), cuda.parent)
