#!/usr/bin/env bash
# CI sanitizer step (called by .ci/run after the test suite): the core built
# with AddressSanitizer + UndefinedBehaviorSanitizer, UB fatal
# (-fno-sanitize-recover=undefined; CMake's FUSEDLSTM_SANITIZE), then
#   (a) the C API test program (tests/c/test_capi.c), leaks checked too;
#   (b) a slice of the Python suite against an ASan build of the extension,
#       installed into its own directory (build/asan-site, first on
#       PYTHONPATH: the same interpreter and packages, the normal install
#       untouched); the sanitizer runtime is preloaded into Python.
# Fails on a build error, a test failure, or any sanitizer report. Bounded:
# about 3 minutes on 2 cores, the build most of it. Logs in build/asan-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
ROOT=$PWD
LOGS=$ROOT/build/asan-logs
mkdir -p "$LOGS"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The out-of-memory cases ask for terabytes: malloc must return NULL, not abort.
ASAN_COMMON=allocator_may_return_null=1:halt_on_error=1:detect_odr_violation=0

fail_on_reports() {  # a report that did not stop the run still fails it
  if grep -E -n "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$1"; then
    echo "sanitize.sh: sanitizer report in $1" >&2
    exit 1
  fi
}

step() {  # step NAME LOG CMD...: runs CMD with its output in LOG; prints the tail on failure
  local name=$1 log=$2
  shift 2
  local start=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "sanitize.sh: $name failed (log: $log)" >&2
    exit 1
  fi
  fail_on_reports "$log"
  echo "sanitize.sh: $name ok ($((SECONDS - start)) s)"
}

# The Python extension, built with the sanitizers into its own directory;
# the C program then links the same sanitized core from the same build.
BUILD=$ROOT/build/asan-py
SITE=$ROOT/build/asan-site
ISOLATION=()  # build in the interpreter's environment when it has the build tools (faster), else isolated
if "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then ISOLATION=(--no-build-isolation); fi
install_asan() {  # CMakeLists.txt's FUSEDLSTM_SANITIZE: the flags, for the extension and the C program
  rm -rf "$SITE" &&
    "$PY" -m pip install --quiet --no-deps "${ISOLATION[@]}" --target "$SITE" \
      -Cbuild-dir="$BUILD" -Ccmake.define.FUSEDLSTM_CUDA=off -Ccmake.define.FUSEDLSTM_SANITIZE=ON "$ROOT"
}
step "build (Python extension)" "$LOGS/py-build.log" install_asan
step "build (C API program)" "$LOGS/c-build.log" cmake --build "$BUILD" --target fusedlstm_capi_test --parallel 2

# (a) The C program, leaks checked too.
ASAN_OPTIONS=$ASAN_COMMON:detect_leaks=1 step "C API program" "$LOGS/c-run.log" "$BUILD/fusedlstm_capi_test"
# (Counts reworded: the only "N passed" line CI reads is the suite's own.)
tail -n 1 "$LOGS/c-run.log" |
  sed -E 's/^([0-9]+) passed, ([0-9]+) failed$/sanitize.sh: C API program: \1 cases, \2 failures/'

# (b) The Python slice.
# Python is not linked with the sanitizers: preload their runtime, and
# libstdc++ with it (ASan intercepts __cxa_throw, which it must find loaded).
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
for lib in $PRELOAD; do [ -f "$lib" ] || { echo "sanitize.sh: $lib not found" >&2; exit 1; }; done
# The slice (about 1 min): argument errors (the C API's below Python's too),
# the C program (through the suite), forward / backward of every mode, feed,
# stride layout and ISA, the layer stacks (reserves, lengths, dropout), the
# chunked input projection, the property suite (random layouts). Not the torch tests (torch.compile is slow under
# ASan). Its pytest summary stays in the log.
run_python() (  # a subshell: the preload and paths stay inside
  export LD_PRELOAD=$PRELOAD ASAN_OPTIONS=$ASAN_COMMON:detect_leaks=0 FUSEDLSTM_CAPI_TEST_BUILD=$BUILD \
    PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  cd "$ROOT" &&
    "$PY" -c 'import sys, fusedlstm as f; assert f.__file__.startswith(sys.argv[1]), f.__file__' "$SITE" &&
    "$PY" -m pytest -q -s -p no:cacheprovider \
      tests/test_errors.py tests/test_capi_c.py tests/test_forward_backward.py tests/test_layers.py \
      tests/test_chunking.py tests/test_properties.py tests/test_cells.py
)
step "Python slice under ASan + UBSan" "$LOGS/py-run.log" run_python
grep -E "^[0-9]+ passed" "$LOGS/py-run.log" | tail -n 1 |
  sed -E 's/^([0-9]+) passed/sanitize.sh: Python slice: \1 tests ok/'
