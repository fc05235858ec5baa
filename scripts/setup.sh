#!/bin/sh
# Install what hookrouter needs to build and test, from Debian packages only.
# Idempotent: packages already present are not touched, apt-get runs only if something is missing.
set -eu
PKGS="build-essential cmake pkg-config libuv1-dev liblua5.4-dev libcjson-dev node-llhttp libssl-dev openssl
      python3 curl dpkg-dev groff-base libhiredis-dev redis-server"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    $SUDO apt-get update -qq
    # redis-server's postinst would start a system Redis on 6379; the tests start their own.
    # A policy-rc.d that refuses (101) keeps invoke-rc.d from starting it during the install.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        own_policy=yes
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing || rc=$?
    [ -z "$own_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || exit "$rc"
fi
# Never leave a system Redis running or enabled (it would hold 6379 and outlive the tests).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
