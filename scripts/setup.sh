#!/bin/sh
# Install what hookrouter needs to build and test, from Debian packages only.
# Idempotent: packages already present are not touched, apt-get runs only if something is missing.
set -eu
PKGS="build-essential cmake pkg-config libuv1-dev liblua5.4-dev libcjson-dev node-llhttp libssl-dev openssl
      python3 curl dpkg-dev groff-base"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
