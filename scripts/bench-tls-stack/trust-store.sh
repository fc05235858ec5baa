#!/usr/bin/env bash
# What the system trust store costs hookrouter: start-up instructions and RSS of a config with
# 3 https targets that have a `tls` table but no ca_file (each used to load Debian's CA bundle),
# the same after SIGHUPs and with 2 workers, and the loop stall at the first https request of a
# target without a `tls` table (inclusive Ir of that hr_http_client_send call). See README.md.
#   scripts/bench-tls-stack/trust-store.sh BIN [BIN...]     e.g. an old and a new build
# Loopback only; every hookrouter it starts is stopped by PID. Scratch in a mktemp folder.
set -euo pipefail
export LC_ALL=C
[ $# -ge 1 ] || { echo "usage: $0 HOOKROUTER_BIN [...]" >&2; exit 2; }
W=$(mktemp -d "${TMPDIR:-/tmp}/tls-trust.XXXXXX")
PID=
cleanup() { if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
mkdir -p "$W/rules"
cat >"$W/rules/default.lua" <<'LUA'
return function(event) forward(event.body.target or "plain", event.body) end
LUA
# config NAME WORKERS TARGETS...: $W/NAME.lua
config() {
  local name=$1 workers=$2
  shift 2
  {
    echo "return {"
    echo "  listen = \"127.0.0.1:$PORT\", tokens = { \"t\" }, rules = \"rules\","
    echo "  endpoints = { [\"/in\"] = \"in\" }, spool_dir = \"spool.$name\", workers = $workers,"
    echo "  log = { level = \"error\" },"
    echo "  targets = { plain = { url = \"http://127.0.0.1:1/x\" },"
    for t in "$@"; do echo "    $t,"; done
    echo "  },"
    echo "}"
  } >"$W/$name.lua"
  rm -rf "$W/spool.$name"
}
# 3 https targets with a tls table (server_name, mTLS-less), no ca_file
T3=('a = { url = "https://127.0.0.1:1/a", tls = { server_name = "a.example" } }'
  'b = { url = "https://127.0.0.1:1/b", tls = { server_name = "b.example" } }'
  'c = { url = "https://127.0.0.1:1/c", tls = { verify = true } }')
config three 1 "${T3[@]}"
config three-w2 2 "${T3[@]}"
config plain 1
# one https target without a tls table, tried once (connection refused: the cost is the send)
config first 1 'd = { url = "https://127.0.0.1:1/d", max_attempts = 1 }'

up() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return 0; sleep 0.1; done; return 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
cg_total() { sed -n 's/^\(totals\|summary\): *\([0-9]*\).*/\2/p' "$1" | head -1; }
cg_incl() { # cg_incl FILE FUNCTION: inclusive Ir of FUNCTION
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk -v f="$2" '{ for (i = 2; i <= NF; i++) if ($i ~ "^(.*:)?" f "( |$)") { gsub(",", "", $1); print $1; exit } }'
}
reload() { # reload N: N SIGHUPs, each waited for in /healthz
  local i want
  for i in $(seq "$1"); do
    want=$(($(curl -sf "http://127.0.0.1:$PORT/healthz" | sed -n 's/.*"reloads":\([0-9]*\).*/\1/p') + 1))
    kill -HUP "$PID"
    for _ in $(seq 600); do
      [ "$(curl -sf "http://127.0.0.1:$PORT/healthz" | sed -n 's/.*"reloads":\([0-9]*\).*/\1/p')" -ge "$want" ] && break
      sleep 0.1
    done
  done
}

for bin in "$@"; do
  tag=$(basename "$(dirname "$bin")")
  # RSS: idle after start, after 5 reloads; plain config as the floor
  for name in plain three three-w2; do
    (cd "$W" && exec "$bin" run -c "$W/$name.lua") 2>"$W/$tag.$name.log" &
    PID=$!
    up
    r0=$(rss)
    reload 5
    r5=$(rss)
    stop
    echo "bin=$tag config=$name rss_start_kib=$r0 rss_after_5_reloads_kib=$r5"
  done
  # callgrind: start-up to listening (then stopped), and a reload
  for name in plain three; do
    (cd "$W" && exec valgrind --tool=callgrind --callgrind-out-file="$W/cg.$tag.$name" \
      "$bin" run -c "$W/$name.lua") 2>"$W/$tag.cg.$name.log" &
    PID=$!
    up
    stop
    (cd "$W" && exec valgrind --tool=callgrind --callgrind-out-file="$W/cg.$tag.$name.hup" \
      "$bin" run -c "$W/$name.lua") 2>"$W/$tag.cg.$name.hup.log" &
    PID=$!
    up
    reload 1
    stop
    t=$(cg_total "$W/cg.$tag.$name") th=$(cg_total "$W/cg.$tag.$name.hup")
    echo "bin=$tag config=$name ir_total=$t ir_config_load=$(cg_incl "$W/cg.$tag.$name" hr_config_load) ir_one_reload=$((th - t))"
  done
  # the first https request of a target without a tls table
  (cd "$W" && exec valgrind --tool=callgrind --callgrind-out-file="$W/cg.$tag.first" \
    "$bin" run -c "$W/first.lua") 2>"$W/$tag.cg.first.log" &
  PID=$!
  up
  curl -sf -o /dev/null -H 'Authorization: Bearer t' -d '{"target":"d"}' "http://127.0.0.1:$PORT/in"
  sleep 3
  stop
  echo "bin=$tag config=first ir_total=$(cg_total "$W/cg.$tag.first") ir_config_load=$(cg_incl "$W/cg.$tag.first" hr_config_load) ir_http_client_send=$(cg_incl "$W/cg.$tag.first" hr_http_client_send)"
done
echo "scratch: $W"
