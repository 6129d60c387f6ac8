"""Where the installed C library lies, for C and C++ programs that embed it.

The wheel holds, in the package folder beside the Python extension::

    fusedlstm/include/fusedlstm/fusedlstm.h, fusedlstm_cuda.h   the C API
    fusedlstm/lib/libfusedlstm.so                               the C API's library (CPU backend)
    fusedlstm/lib/libfusedlstm_cuda.so                          the CUDA backend, loaded at run time (CUDA builds)
    fusedlstm/lib/cmake/fusedlstm/fusedlstmConfig.cmake         find_package(fusedlstm CONFIG)
    fusedlstm/lib/pkgconfig/fusedlstm.pc                        pkg-config

The folder is that of the compiled extension ``fusedlstm._core``, which in an
editable install is not the folder of the Python sources.
"""

import os

from . import _core


def _root() -> str:
    return os.path.dirname(os.path.abspath(_core.__file__))


def get_include() -> str:
    """The folder to put on the include path: ``#include <fusedlstm/fusedlstm.h>``."""
    return os.path.join(_root(), "include")


def get_library_dir() -> str:
    """The folder holding ``libfusedlstm.so`` (link with ``-lfusedlstm``; at run
    time a program finds it through its RUNPATH or ``LD_LIBRARY_PATH``)."""
    return os.path.join(_root(), "lib")


def get_cmake_dir() -> str:
    """The folder holding ``fusedlstmConfig.cmake``: pass it as
    ``CMAKE_PREFIX_PATH`` (or ``fusedlstm_DIR``), then
    ``find_package(fusedlstm CONFIG REQUIRED)`` gives ``fusedlstm::fusedlstm``."""
    return os.path.join(get_library_dir(), "cmake", "fusedlstm")
