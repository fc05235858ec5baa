#!/bin/sh
# One command to test hookrouter: install what is missing, build, run every test (ctest).
#   scripts/test.sh                 normal build in build/
#   scripts/test.sh --sanitize      ASan + UBSan build in build-asan/
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sanitize" ]; then
    export BUILD_DIR=build-asan BUILD_TYPE=Debug
    sh scripts/build.sh -DHR_SANITIZE=ON
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
else
    export BUILD_DIR=build
    sh scripts/build.sh
fi
cd "$BUILD_DIR"
ctest --output-on-failure -j2 --timeout 300
