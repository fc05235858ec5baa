#!/bin/sh
# Set up (Debian packages) and build hookrouter into build/ (or $BUILD_DIR).
#   scripts/build.sh [extra cmake args, e.g. -DHR_SANITIZE=ON]
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
