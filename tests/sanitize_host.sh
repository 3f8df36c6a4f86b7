#!/usr/bin/env bash
# cunet._host (the C++ kernels in kernels/host/) under AddressSanitizer and UBSan.
#
#   tests/sanitize_host.sh              # from the repository root, in the project's venv
#   tests/sanitize_host.sh -k forward   # extra arguments go to pytest
#
# 1. Builds the module with CUNET_HOST_SANITIZE=1 (setup.py: -fsanitize=address,undefined
#    -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g) into a temporary folder; the
#    installed module is not touched.
# 2. Proves the sanitizers are armed: the sanitizer build's planted errors
#    (_sanitizer_selftest: a heap read one float past a block, a signed integer overflow)
#    must each be reported. A run whose sanitizers report nothing proves nothing.
# 3. Runs tests/test_host_conv.py on that build (CUNET_HOST_MODULE points the tests at it),
#    with libasan (and libstdc++) preloaded into Python (an uninstrumented program loading an
#    instrumented module: the ASan runtime must come first) and leak detection off (the interpreter
#    keeps its objects at exit by design). Every report stops the process (ASan's default;
#    UBSan: -fno-sanitize-recover=all and halt_on_error=1) and goes to stderr; pytest runs
#    with -s, so a report that kills it mid-test is not lost in pytest's capture.
# Fails (exit 1) on a failed test or on any sanitizer report in the output; exit 2 when
# it cannot run at all (no compiler, no libasan).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CXX=${CXX:-g++}

work=$(mktemp -d "${TMPDIR:-/tmp}/cunet-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT

asan=$("$CXX" -print-file-name=libasan.so)
if [[ "$asan" != /* || ! -e "$asan" ]]; then
    echo "sanitize_host: $CXX has no libasan.so (got '$asan'); install the compiler's sanitizer runtime" >&2
    exit 2
fi
# libstdc++ is preloaded too: ASan intercepts __cxa_throw and looks for the real one when it
# starts, before Python (which does not link libstdc++) loads the module; without it the
# first C++ exception (every ValueError of an argument check) stops ASan with a CHECK failure.
stdcxx=$("$CXX" -print-file-name=libstdc++.so.6)

echo "== building cunet._host with AddressSanitizer + UBSan into $work"
start=$SECONDS
CUNET_HOST_SANITIZE=1 "$PYTHON" setup.py -q build_ext --build-lib "$work/lib" --build-temp "$work/tmp" \
    > "$work/build.log" 2>&1 || { cat "$work/build.log"; echo "sanitize_host: the build failed" >&2; exit 2; }
module=$(ls "$work"/lib/cunet/_host*.so)
echo "   $module ($((SECONDS - start)) s)"

export CUNET_HOST_MODULE="$module"
export ASAN_OPTIONS="detect_leaks=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# What the sanitizers write at the head or the end of each report.
REPORT='ERROR: AddressSanitizer|SUMMARY: AddressSanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer'

# Runs Python with the ASan runtime preloaded (only that process, not this script).
sanitized() { LD_PRELOAD="$asan $stdcxx" "$PYTHON" "$@"; }

echo "== the sanitizers are armed: each planted error must be reported"
load='import importlib.util, os
spec = importlib.util.spec_from_file_location("cunet._host", os.environ["CUNET_HOST_MODULE"])
host = importlib.util.module_from_spec(spec); spec.loader.exec_module(host)
assert host.SANITIZE, "not a sanitizer build"'
for planted in "heap-buffer-overflow:AddressSanitizer: heap-buffer-overflow" \
               "signed-integer-overflow:runtime error: signed integer overflow"; do
    kind=${planted%%:*}
    expected=${planted#*:}
    if sanitized -c "$load
host._sanitizer_selftest('$kind')" > "$work/planted.out" 2>&1; then
        cat "$work/planted.out"
        echo "sanitize_host: the planted $kind ran to the end unreported: the sanitizers are not armed" >&2
        exit 1
    fi
    if ! grep -q "$expected" "$work/planted.out"; then
        cat "$work/planted.out"
        echo "sanitize_host: the planted $kind failed, but with no '$expected' report" >&2
        exit 1
    fi
    echo "   $kind: reported ($(grep -m1 "$expected" "$work/planted.out" | sed 's/^[^A-Za-z]*//' | cut -c1-110))"
done

echo "== tests/test_host_conv.py on the sanitizer build"
status=0
sanitized -m pytest -q -s -p no:cacheprovider tests/test_host_conv.py "$@" 2>&1 | tee "$work/tests.out" || status=$?
if grep -Eq "$REPORT" "$work/tests.out"; then
    echo "sanitize_host: FAILED: the sanitizers reported errors:" >&2
    grep -E "$REPORT" "$work/tests.out" >&2
    exit 1
fi
if [[ $status -ne 0 ]]; then
    echo "sanitize_host: FAILED: pytest exited with $status" >&2
    exit 1
fi
echo "sanitize_host: passed, no sanitizer reports"
