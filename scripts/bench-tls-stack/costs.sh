#!/usr/bin/env bash
# What TLS costs hookrouter on the outbound side (issue 11 "Measure"), in one run: forwarding
# the bench workload (../shared/bench, 2 KB events in, the legacy JSON out) to an HTTPS sink vs
# a plain HTTP one (delivered events/s and callgrind Ir/event), reconnect rate against a sink
# that closes every connection (resumed vs full handshakes vs plain TCP), and the RSS of
# hookrouter holding 1,000 outbound keep-alive connections, TLS vs plain. See README.md.
#   scripts/bench-tls-stack/costs.sh
#   HR_BIN=build/hookrouter DURATION=10 RUNS=3 HS_DURATION=5 CG_SECS=10 CONNS=1000 HOLD=10 \
#     scripts/bench-tls-stack/costs.sh
# Loopback only; every process it starts (nginx, hookrouter, the Python hold sink) is stopped by
# PID. Scratch files in a mktemp folder (kept, path printed).
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
HR_BIN=${HR_BIN:-$ROOT/build/hookrouter}
DURATION=${DURATION:-10} # seconds of wrk load per forward run
RUNS=${RUNS:-3}
HS_DURATION=${HS_DURATION:-5}
CG_SECS=${CG_SECS:-10} # seconds of wrk load on hookrouter under callgrind
CONNS=${CONNS:-1000}
HOLD=${HOLD:-10} # seconds the hold sink waits before answering (RSS test)
PAYLOAD=$BENCH/payloads/left-2k.json
for f in "$HR_BIN" "$PAYLOAD" "$BENCH/rules/store42.lua" "$BENCH/wrk/post.lua"; do
  [ -e "$f" ] || { echo "costs.sh: $f not found" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
log() { printf '%s\n' "$*" >&2; }

W=$(mktemp -d "${TMPDIR:-/tmp}/tls-costs.XXXXXX")
chmod 755 "$W"
PIDS=()
stop() { # stop PID: TERM, then wait for it
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && stop "$p"; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- certificates: a CA and a server certificate for 127.0.0.1 (RSA 2048, as run.sh) ----------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$W/ca.key" -out "$W/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$W/srv.key" -out "$W/srv.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$W/srv.ext"
openssl x509 -req -in "$W/srv.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial \
  -days 2 -extfile "$W/srv.ext" -out "$W/srv.crt" 2>/dev/null

# --- CPUs: hookrouter on the first, sinks and wrk on the others --------------------------------
HPIN=() SPIN=()
if [ "$(nproc)" -ge 2 ]; then HPIN=(taskset -c 0) SPIN=(taskset -c 1-$(($(nproc) - 1))); fi

# --- nginx sink: keep-alive plain + TLS; closing plain, TLS resumable, TLS full only ----------
HTTP=$(free_port) TLS=$(free_port) CL_HTTP=$(free_port) CL_RES=$(free_port) CL_FULL=$(free_port)
mkdir -p "$W/nginx"
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $W/srv.crt;
    ssl_certificate_key $W/srv.key;
    log_format hs '\$ssl_protocol reused=\$ssl_session_reused';
    server {
        listen 127.0.0.1:$HTTP;
        listen 127.0.0.1:$TLS ssl;
        keepalive_timeout 65s;
        location = /legacy { return 200; }
    }
    server {
        listen 127.0.0.1:$CL_HTTP;
        keepalive_timeout 0;
        location = /legacy { return 200; }
    }
    server {
        listen 127.0.0.1:$CL_RES ssl;
        keepalive_timeout 0;
        ssl_session_cache shared:bench:1m;
        access_log $W/nginx/res.log hs;
        location = /legacy { return 200; }
    }
    server {
        listen 127.0.0.1:$CL_FULL ssl;
        keepalive_timeout 0;
        ssl_session_cache off;
        ssl_session_tickets off;
        access_log $W/nginx/full.log hs;
        location = /legacy { return 200; }
    }
}
EOF
"${SPIN[@]}" "$NGINX" -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for _ in $(seq 50); do curl -fsS -o /dev/null -X POST "http://127.0.0.1:$HTTP/legacy" 2>/dev/null && break; sleep 0.1; done

# --- hookrouter: the bench's config and rule (scripts/bench-target.sh), target as given ----------
HR_PORT=$(free_port)
mkdir -p "$W/rules"
cp "$BENCH/rules/store42.lua" "$W/rules/reference.lua"
cat >"$W/rules/default.lua" <<'LUA'
local reference = require("reference")
return function(event)
  local legacy = reference(event.body)
  if legacy == nil then return drop("reference rule dropped it") end
  forward("sink", legacy)
end
LUA
# write_config NAME URL [CONCURRENCY [TIMEOUT_MS]]: $W/NAME.lua, spool in $W/spool.NAME
write_config() {
  local name=$1 url=$2 conc=${3:-64} timeout=${4:-5000} tls=
  case $url in https:*) tls="tls = { ca_file = \"$W/ca.crt\" }," ;; esac
  rm -rf "$W/spool.$name"
  cat >"$W/$name.lua" <<LUA
return {
  listen = "127.0.0.1:$HR_PORT",
  tokens = { "bench-token" },
  endpoints = { ["/aifi/checkout-zone/left"] = "checkout-zone.left" },
  rules = "rules",
  spool_dir = "spool.$name",
  targets = { sink = { url = "$url", max_attempts = 5, concurrency = $conc, timeout_ms = $timeout, $tls } },
  delivery = { max_connections = $conc },
  log = { level = "warn" },
  shutdown_grace_ms = 2000,
}
LUA
}
HR_PID=
start_hr() { # start_hr NAME [wrapper...]
  local name=$1
  shift
  (cd "$W" && exec "${HPIN[@]}" "$@" "$HR_BIN" run -c "$W/$name.lua") 2>"$W/hr.$name.log" &
  HR_PID=$!
  PIDS+=("$HR_PID")
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$HR_PORT/healthz" >/dev/null && return 0; sleep 0.1; done
  log "hookrouter ($name) did not come up"; cat "$W/hr.$name.log" >&2; exit 1
}
health() { curl -sf "http://127.0.0.1:$HR_PORT/healthz"; }
hfield() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" | head -1; }
wait_drained() { # until pending is 0 (at most 10 minutes)
  local i
  for i in $(seq 12000); do [ "$(health | hfield pending)" = 0 ] && return 0; sleep 0.05; done
  log "hookrouter's queue did not drain"; exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ms() { # user + system CPU of a process so far, in ms
  awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%d", ($12 + $13) * 1000 / hz}' "/proc/$1/stat"
}
sys_ms() { # system CPU of a process so far, in ms
  awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%d", $13 * 1000 / hz}' "/proc/$1/stat"
}
load() { # load SECONDS CONNS: wrk against hookrouter, prints its RESULT line
  BENCH_PAYLOAD=$PAYLOAD BENCH_TOKEN=bench-token "${SPIN[@]}" wrk -t1 -c"$2" -d"$1"s \
    -s "$BENCH/wrk/post.lua" "http://127.0.0.1:$HR_PORT/aifi/checkout-zone/left" | grep '^RESULT'
}
# post N: N events, one keep-alive connection
post() {
  python3 - "$HR_PORT" "$1" "$PAYLOAD" <<'PY'
import http.client, sys
port, n, body = int(sys.argv[1]), int(sys.argv[2]), open(sys.argv[3], "rb").read()
c = http.client.HTTPConnection("127.0.0.1", port)
h = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}
for _ in range(n):
    c.request("POST", "/aifi/checkout-zone/left", body, h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}

# delivered NAME URL SECONDS CONNS: one run; prints "name= delivered_per_s= ack_rps= ..."
delivered() {
  local name=$1 url=$2 secs=$3 c=$4
  write_config "$name" "$url"
  start_hr "$name"
  local d0 t0 t1 d1 dead line c0 c1 n0 n1 s0 s1
  d0=$(health | hfield delivered)
  t0=$(date +%s.%N)
  c0=$(cpu_ms "$HR_PID") s0=$(sys_ms "$HR_PID") n0=$(pgrep -P "$NGINX_PID" | while read -r p; do cpu_ms "$p"; done | paste -sd+ | bc)
  line=$(load "$secs" "$c")
  wait_drained
  t1=$(date +%s.%N)
  c1=$(cpu_ms "$HR_PID") s1=$(sys_ms "$HR_PID") n1=$(pgrep -P "$NGINX_PID" | while read -r p; do cpu_ms "$p"; done | paste -sd+ | bc)
  d1=$(health | hfield delivered)
  dead=$(health | hfield dead)
  local rss
  rss=$(rss_kib "$HR_PID")
  stop "$HR_PID"
  echo "name=$name delivered=$((d1 - d0)) dead=$dead delivered_per_s=$(echo "$((d1 - d0)) $t0 $t1" | awk '{printf "%.0f", $1 / ($3 - $2)}') ack_rps=$(echo "$line" | sed -n 's/.* rps=\([0-9]*\).*/\1/p') hr_cpu_us_per_event=$(((c1 - c0) * 1000 / (d1 - d0 > 0 ? d1 - d0 : 1))) hr_sys_us_per_event=$(((s1 - s0) * 1000 / (d1 - d0 > 0 ? d1 - d0 : 1))) sink_cpu_us_per_event=$(((n1 - n0) * 1000 / (d1 - d0 > 0 ? d1 - d0 : 1))) rss_kib=$rss"
}

log "hookrouter: $HR_BIN; nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'); scratch: $W"
: >"$W/results.txt"
# --- 1. forward: HTTPS vs HTTP sink, keep-alive, RUNS interleaved rounds -----------------------
for r in $(seq "$RUNS"); do
  for s in http https; do
    url=http://127.0.0.1:$HTTP/legacy
    [ $s = https ] && url=https://127.0.0.1:$TLS/legacy
    echo "forward round=$r $(delivered "fwd-$s" "$url" "$DURATION" 64)" | tee -a "$W/results.txt" >&2
  done
done
# --- 2. reconnects: the sink closes every connection (plain, TLS resumed, TLS full) -----------
hs() { grep -c "reused=$2" "$W/nginx/$1.log" 2>/dev/null || true; }
for r in $(seq "$RUNS"); do
  for s in close-http close-res close-full; do
    case $s in
      close-http) url=http://127.0.0.1:$CL_HTTP/legacy ;;
      close-res) url=https://127.0.0.1:$CL_RES/legacy ;;
      close-full) url=https://127.0.0.1:$CL_FULL/legacy ;;
    esac
    lg=${s#close-}
    r0=$(hs "$lg" r) f0=$(hs "$lg" '\.')
    line=$(delivered "$s" "$url" "$HS_DURATION" 16)
    echo "reconnect round=$r $line resumed=$(($(hs "$lg" r) - r0)) full=$(($(hs "$lg" '\.') - f0))" | tee -a "$W/results.txt" >&2
  done
done
# --- 3. callgrind: Ir per event under the same load (wrk, 64 connections), counted from a
# zeroing after a warm-up to a dump once the queue drained; per shared object (self cost).
cg_total() { sed -n 's/^\(totals\|summary\): *\([0-9]*\).*/\2/p' "$1" | head -1; }
cg_by_obj() {
  callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null |
    sed -n 's/^ *\([0-9,]*\) ([ 0-9.]*%) *.*\[\(.*\)\]$/\1 \2/p' | tr -d , |
    awk '{split($2, p, "/"); o = p[length(p)]; sub(/\.so.*/, "", o); s[o] += $1}
         END {for (o in s) print s[o], o}' | sort -rn
}
for s in http https close-res close-full; do
  case $s in
    http) url=http://127.0.0.1:$HTTP/legacy c=64 ;;
    https) url=https://127.0.0.1:$TLS/legacy c=64 ;;
    close-res) url=https://127.0.0.1:$CL_RES/legacy c=16 ;;
    close-full) url=https://127.0.0.1:$CL_FULL/legacy c=16 ;;
  esac
  write_config "cg-$s" "$url"
  start_hr "cg-$s" valgrind --tool=callgrind --callgrind-out-file="$W/cg.$s"
  load 2 "$c" >/dev/null # warm-up: connections, pools, sessions
  wait_drained
  callgrind_control -z "$HR_PID" >/dev/null
  d0=$(health | hfield delivered)
  load "$CG_SECS" "$c" >/dev/null
  wait_drained
  d1=$(health | hfield delivered)
  callgrind_control -d "$HR_PID" >/dev/null
  stop "$HR_PID"
  n=$((d1 - d0))
  t=$(cg_total "$W/cg.$s.1")
  objs=$(cg_by_obj "$W/cg.$s.1" | awk -v n="$n" '$1 / n >= 500 {printf "%s%s=%d", sep, $2, $1 / n; sep = ","}')
  echo "callgrind sink=$s events=$n ir=$t ir_per_event=$((t / n)) by_object=$objs" | tee -a "$W/results.txt" >&2
done
# --- 4. RSS with CONNS outbound keep-alive connections open ------------------------------------
# A Python sink that answers each request after HOLD seconds, so hookrouter (target concurrency
# and delivery.max_connections = CONNS) opens CONNS connections; it reports how many it holds.
cat >"$W/hold.py" <<'PY'
import asyncio, ssl, sys
port, tls, hold, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
open_now = 0
async def conn(r, w):
    global open_now
    open_now += 1
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"): n = int(line.split(b":")[1])
            await r.readexactly(n)
            await asyncio.sleep(hold)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
    except Exception:
        pass
    finally:
        open_now -= 1
        w.close()
async def report():
    while True:
        with open(out, "w") as f: f.write(str(open_now))
        await asyncio.sleep(0.1)
async def main():
    ctx = None
    if tls != "-":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls + "/srv.crt", tls + "/srv.key")
    srv = await asyncio.start_server(conn, "127.0.0.1", port, ssl=ctx, backlog=4096)
    asyncio.ensure_future(report())
    await srv.serve_forever()
asyncio.run(main())
PY
for s in plain tls; do
  port=$(free_port)
  cert=-; scheme=http
  [ $s = tls ] && cert=$W scheme=https
  "${SPIN[@]}" python3 "$W/hold.py" "$port" "$cert" "$HOLD" "$W/hold.$s.count" &
  HOLD_PID=$!
  PIDS+=("$HOLD_PID")
  sleep 1
  write_config "hold-$s" "$scheme://127.0.0.1:$port/legacy" "$CONNS" $(((HOLD + 30) * 1000))
  start_hr "hold-$s"
  idle=$(rss_kib "$HR_PID")
  post "$CONNS" # answered at once; the deliveries wait on the sink
  for _ in $(seq 600); do [ "$(cat "$W/hold.$s.count" 2>/dev/null)" -ge "$CONNS" ] && break; sleep 0.1; done
  sleep 1
  held=$(cat "$W/hold.$s.count")
  rss=$(rss_kib "$HR_PID")
  fds=$(ls "/proc/$HR_PID/fd" | wc -l)
  # then the answers come: the connections stay open, idle in the keep-alive pool
  wait_drained
  sleep 1
  kept=$(cat "$W/hold.$s.count")
  rss_ka=$(rss_kib "$HR_PID")
  echo "rss sink=$s in_flight_connections=$held fds=$fds rss_start_kib=$idle rss_in_flight_kib=$rss per_conn_in_flight_kib=$(((rss - idle) / (held > 0 ? held : 1))) keepalive_connections=$kept rss_keepalive_kib=$rss_ka per_conn_keepalive_kib=$(((rss_ka - idle) / (kept > 0 ? kept : 1)))" | tee -a "$W/results.txt" >&2
  kill -9 "$HR_PID"; wait "$HR_PID" 2>/dev/null || true # nothing to drain: the spool is scratch
  stop "$HOLD_PID"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$W/results.txt" >&2
cat "$W/results.txt"
