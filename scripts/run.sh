#!/bin/sh
# One command to try hookrouter: install what is missing, build, and serve the example config.
#   scripts/run.sh [hookrouter args]   (default: run -c examples/hookrouter.lua)
set -eu
cd "$(dirname "$0")/.."
sh scripts/build.sh
[ $# -gt 0 ] || set -- run -c examples/hookrouter.lua
exec build/hookrouter "$@"
