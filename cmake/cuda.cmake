# The CUDA backend: a separate shared library libfusedlstm_cuda.so that the C
# API (csrc/capi/) loads with dlopen on the first FL_DEVICE_CUDA call, so that
# the CPU library and the Python module _core never depend on a CUDA library
# and `import fusedlstm` works on any machine. It exports one symbol,
# fusedlstm_cuda_backend_ops (core/backend.h); it links no part of
# fusedlstm_core (only header-only pieces of csrc/core/).
#
#   FUSEDLSTM_CUDA=auto (default): build it when check_language(CUDA) finds nvcc
#                                  and cuBLAS is found; otherwise skip with a message.
#   FUSEDLSTM_CUDA=on:             build it or fail the configure (CI uses this so a
#                                  CUDA compile error fails CI).
#   FUSEDLSTM_CUDA=off:            CPU only.
#
# cuBLAS comes from the CUDA toolkit when it has it, else from the pip wheel
# nvidia-cublas (site-packages/nvidia/cu13 for CUDA 13, nvidia/cublas for CUDA 12),
# or from FUSEDLSTM_CUBLAS_ROOT (a folder with include/cublas_v2.h and lib/).
# The CUDA runtime is linked statically. The installed library's RUNPATH holds
# no folder of the build machine (see the end of this file): in the wheel it
# reaches the nvidia-cublas wheel relative to itself (`pip install
# "fusedlstm[cuda]"`), else the loader's search path finds cuBLAS.

set(FUSEDLSTM_CUDA "auto" CACHE STRING "Build the CUDA backend: auto, on or off")
set_property(CACHE FUSEDLSTM_CUDA PROPERTY STRINGS auto on off)
string(TOLOWER "${FUSEDLSTM_CUDA}" _fl_cuda)
if(DEFINED ENV{FUSEDLSTM_CUDA} AND NOT "$ENV{FUSEDLSTM_CUDA}" STREQUAL "")
  string(TOLOWER "$ENV{FUSEDLSTM_CUDA}" _fl_cuda)   # environment overrides the cache
endif()
if(NOT _fl_cuda MATCHES "^(auto|on|off)$")
  message(FATAL_ERROR "FUSEDLSTM_CUDA must be auto, on or off, got '${FUSEDLSTM_CUDA}'")
endif()

set(FUSEDLSTM_CUDA_BUILT OFF)
set(FUSEDLSTM_CUDA_SKIP_REASON "disabled (FUSEDLSTM_CUDA=off)")

function(_fl_cuda_unavailable why)
  if(_fl_cuda STREQUAL "on")
    message(FATAL_ERROR "FUSEDLSTM_CUDA=on but ${why}")
  endif()
  message(STATUS "fusedlstm: CUDA backend not built: ${why}")
  set(FUSEDLSTM_CUDA_SKIP_REASON "${why}" PARENT_SCOPE)
endfunction()

if(NOT _fl_cuda STREQUAL "off")
  include(CheckLanguage)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    # nvcc is often installed outside PATH.
    foreach(_dir /usr/local/cuda/bin /usr/local/cuda-13.0/bin /usr/local/cuda-12.9/bin)
      if(EXISTS "${_dir}/nvcc")
        set(CMAKE_CUDA_COMPILER "${_dir}/nvcc")
        break()
      endif()
    endforeach()
  endif()
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    _fl_cuda_unavailable("no CUDA compiler (nvcc) found")
  else()
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      # SASS for A100 (sm_80) and H100 (sm_90), PTX for sm_90 so newer GPUs JIT it.
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)

    # cuBLAS: toolkit first, then the pip wheel next to this interpreter.
    set(_fl_cublas_inc "")
    set(_fl_cublas_lib "")
    set(_fl_toolkit_cublas OFF)
    if(TARGET CUDA::cublas)
      foreach(_inc ${CUDAToolkit_INCLUDE_DIRS})  # a list (include, include/cccl)
        if(EXISTS "${_inc}/cublas_v2.h")
          set(_fl_toolkit_cublas ON)
        endif()
      endforeach()
    endif()
    if(_fl_toolkit_cublas)
      set(_fl_cublas_from "toolkit ${CUDAToolkit_LIBRARY_DIR}")
    else()
      set(_fl_roots "")
      if(FUSEDLSTM_CUBLAS_ROOT)
        list(APPEND _fl_roots "${FUSEDLSTM_CUBLAS_ROOT}")
      endif()
      if(DEFINED ENV{FUSEDLSTM_CUBLAS_ROOT})
        list(APPEND _fl_roots "$ENV{FUSEDLSTM_CUBLAS_ROOT}")
      endif()
      find_package(Python COMPONENTS Interpreter)
      if(Python_EXECUTABLE)
        # sysconfig gives the interpreter's own site-packages even inside pip's
        # isolated build environment, where `import nvidia` would not work.
        execute_process(
          COMMAND "${Python_EXECUTABLE}" -c
            "import site, sysconfig; p = [sysconfig.get_paths()[k] for k in ('purelib', 'platlib')]; p += site.getsitepackages() if hasattr(site, 'getsitepackages') else []; print(';'.join(dict.fromkeys(p)))"
          OUTPUT_VARIABLE _fl_sites OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
        foreach(_site ${_fl_sites})
          list(APPEND _fl_roots "${_site}/nvidia/cu13" "${_site}/nvidia/cublas")
        endforeach()
      endif()
      foreach(_root ${_fl_roots})
        if(EXISTS "${_root}/include/cublas_v2.h")
          file(GLOB _fl_libs "${_root}/lib/libcublas.so*")
          list(FILTER _fl_libs EXCLUDE REGEX "libcublasLt")
          list(SORT _fl_libs)
          if(_fl_libs)
            list(GET _fl_libs 0 _fl_cublas_lib)
            set(_fl_cublas_inc "${_root}/include")
            set(_fl_cublas_from "pip wheel ${_root}")
            break()
          endif()
        endif()
      endforeach()
    endif()

    if(NOT DEFINED _fl_cublas_from)
      _fl_cuda_unavailable("cuBLAS not found (not in the CUDA toolkit; pip install nvidia-cublas or set FUSEDLSTM_CUBLAS_ROOT)")
    else()
      message(STATUS "fusedlstm: CUDA backend ON, archs ${CMAKE_CUDA_ARCHITECTURES}, "
                     "nvcc ${CMAKE_CUDA_COMPILER_VERSION}, cuBLAS from ${_fl_cublas_from}")
      if(_fl_cublas_lib)
        add_library(fl_cublas SHARED IMPORTED)
        get_filename_component(_fl_cublas_dir "${_fl_cublas_lib}" DIRECTORY)
        set_target_properties(fl_cublas PROPERTIES IMPORTED_LOCATION "${_fl_cublas_lib}"
                              INTERFACE_INCLUDE_DIRECTORIES "${_fl_cublas_inc}"
                              INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_fl_cublas_dir}")
        set(_fl_cublas_target fl_cublas)
      else()
        set(_fl_cublas_target CUDA::cublas)
      endif()

      file(GLOB _fl_cuda_sources CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu"
           "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cpp")
      add_library(fusedlstm_cuda SHARED ${_fl_cuda_sources})
      target_include_directories(fusedlstm_cuda PRIVATE csrc/include csrc)
      target_link_libraries(fusedlstm_cuda PRIVATE CUDA::cudart_static ${_fl_cublas_target})
      # Every symbol hidden but the entry point (backend_cuda.cu marks it), so
      # the static CUDA runtime inside never interposes on another library's.
      set_target_properties(fusedlstm_cuda PROPERTIES OUTPUT_NAME fusedlstm_cuda POSITION_INDEPENDENT_CODE ON
                            CUDA_SEPARABLE_COMPILATION OFF CXX_VISIBILITY_PRESET hidden
                            CUDA_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
      target_link_options(fusedlstm_cuda PRIVATE "LINKER:--exclude-libs,ALL" "LINKER:-Bsymbolic"
                          "LINKER:--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cmake/cuda_exports.map")
      set_property(TARGET fusedlstm_cuda APPEND PROPERTY LINK_DEPENDS
                   "${CMAKE_CURRENT_SOURCE_DIR}/cmake/cuda_exports.map")
      # -Xptxas -v prints each kernel's registers, shared memory and spills into
      # the build log (FUSEDLSTM_CUDA_VERBOSE_PTXAS=ON).
      option(FUSEDLSTM_CUDA_VERBOSE_PTXAS "print ptxas resource usage" OFF)
      target_compile_options(fusedlstm_cuda PRIVATE
        $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xcompiler=-Wall>
        $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${FUSEDLSTM_CUDA_VERBOSE_PTXAS}>>:-Xptxas=-v>
        $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra>)
      string(REPLACE ";" "," _fl_archs_csv "${CMAKE_CUDA_ARCHITECTURES}")
      target_compile_definitions(fusedlstm_cuda PRIVATE
        FUSEDLSTM_CUDA_ARCHS="${_fl_archs_csv}"
        FUSEDLSTM_NVCC_VERSION="${CMAKE_CUDA_COMPILER_VERSION}")
      set(FUSEDLSTM_CUDA_BUILT ON)
      # The RUNPATH of the installed library: never a folder of the build
      # machine. Installed as site-packages/fusedlstm/lib/libfusedlstm_cuda.so
      # (the wheel), it looks in the nvidia-cublas wheel of the same
      # site-packages (nvidia/cu13/lib for CUDA 13, nvidia/cublas/lib for 12),
      # then the loader's search path (a system toolkit in ld.so.conf,
      # LD_LIBRARY_PATH). A plain `cmake --install` of a toolkit build: the
      # toolkit's lib folder (the system's own); of a pip-wheel build: the
      # loader's search path only.
      if(CUDAToolkit_VERSION_MAJOR VERSION_GREATER_EQUAL 13)
        set(_fl_wheel_leaf cu13)
      else()
        set(_fl_wheel_leaf cublas)
      endif()
      if(SKBUILD)
        set(FUSEDLSTM_CUDA_RPATH "$ORIGIN/../../nvidia/${_fl_wheel_leaf}/lib")
      elseif(_fl_toolkit_cublas)
        set(FUSEDLSTM_CUDA_RPATH "${CUDAToolkit_LIBRARY_DIR}")
      else()
        set(FUSEDLSTM_CUDA_RPATH "")
      endif()
    endif()
  endif()
endif()

if(FUSEDLSTM_CUDA_BUILT)
  set_target_properties(fusedlstm_cuda PROPERTIES INSTALL_RPATH "${FUSEDLSTM_CUDA_RPATH}"
                        BUILD_WITH_INSTALL_RPATH OFF)
  if(FUSEDLSTM_INSTALL)
    # Beside libfusedlstm.so: the C API looks there first (the folder of the library holding it).
    install(TARGETS fusedlstm_cuda LIBRARY DESTINATION "${FUSEDLSTM_INSTALL_LIBDIR}")
  endif()
endif()
if(SKBUILD)
  # What the build had, for fusedlstm.build_info().
  if(FUSEDLSTM_CUDA_BUILT)
    set(_fl_py_built True)
    set(FUSEDLSTM_CUDA_SKIP_REASON "")
    set(_fl_py_archs "${CMAKE_CUDA_ARCHITECTURES}")
    set(_fl_py_nvcc "${CMAKE_CUDA_COMPILER_VERSION}")
  else()
    set(_fl_py_built False)
    set(_fl_py_archs "")
    set(_fl_py_nvcc "")
  endif()
  string(REPLACE "\"" "'" _fl_py_reason "${FUSEDLSTM_CUDA_SKIP_REASON}")
  file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/_cuda_build.py"
       "# generated by cmake/cuda.cmake: what this build compiled\n"
       "CUDA_BUILT = ${_fl_py_built}\n"
       "CUDA_ARCHS = \"${_fl_py_archs}\"\n"
       "NVCC_VERSION = \"${_fl_py_nvcc}\"\n"
       "SKIP_REASON = \"${_fl_py_reason}\"\n")
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/_cuda_build.py" DESTINATION fusedlstm)
endif()
