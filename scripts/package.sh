#!/bin/sh
# Build the Debian package (CPack's DEB generator) and print its path as the last line.
#   scripts/package.sh              build build/ (scripts/build.sh), package its hookrouter
#   HR_BIN=path scripts/package.sh  package that binary as it is (no build; the tests do this)
# The package is laid out in $PKG_DIR (default build-pkg/): nothing is compiled there, it
# holds the install rules (packaging/install.cmake) configured for the /usr prefix.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${HR_BIN:-}" ]; then
    BUILD_DIR=${BUILD_DIR:-build} sh scripts/build.sh >&2
    HR_BIN=${BUILD_DIR:-build}/hookrouter
fi
HR_BIN=$(readlink -f "$HR_BIN")
version=$("$HR_BIN" --version | awk '{print $2}')
PKG_DIR=${PKG_DIR:-build-pkg}
cmake -S packaging -B "$PKG_DIR" -DCMAKE_INSTALL_PREFIX=/usr -DHR_BINARY="$HR_BIN" \
      -DHR_VERSION="$version" >&2
(cd "$PKG_DIR" && cpack -G DEB >&2)
deb=$(ls -t "$PKG_DIR"/hookrouter_"$version"_*.deb | head -1)
readlink -f "$deb"
