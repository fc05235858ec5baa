#!/usr/bin/env bash
# TLS stack comparison (issue 11): libcurl multi on libuv vs hookrouter's own client, plain HTTP
# and (libcurl only) HTTPS, against an nginx sink on loopback. See README.md beside this file.
#   scripts/bench-tls-stack/run.sh            defaults: N=50000 C=16, callgrind N 1000 / 5000
#   N=50000 C=64 RUNS=3 CG_N1=1000 CG_N2=5000 BODY=path scripts/bench-tls-stack/run.sh
# Installs libcurl4-openssl-dev, nginx and valgrind if missing (bench tool, not a dependency).
# Prints a markdown table; scratch files in a mktemp folder (kept, path printed). Every process
# it starts is stopped by PID.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=${N:-50000}
C=${C:-16}
RUNS=${RUNS:-3}
CG_N1=${CG_N1:-1000}
CG_N2=${CG_N2:-5000}
HS_N=${HS_N:-2000} # requests with a new connection each (handshake rate)
HS_CG_N1=${HS_CG_N1:-100} # the same under callgrind (a TLS handshake is ~5 M Ir)
HS_CG_N2=${HS_CG_N2:-500}
BODY=${BODY:-$ROOT/../shared/bench/payloads/left-2k.json}
[ -f "$BODY" ] || BODY=$ROOT/tests/fixtures/checkout-zone-left.json
BUILD=${BUILD:-$ROOT/build-bench}

log() { printf '%s\n' "$*" >&2; }

# --- packages (only what is missing; the nginx postinst may start the distro nginx) ---------
missing=()
for pkg in libcurl4-openssl-dev nginx valgrind pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  before=$(cat /run/nginx.pid 2>/dev/null || true)
  log "installing: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  after=$(cat /run/nginx.pid 2>/dev/null || true)
  if [ -n "$after" ] && [ "$after" != "$before" ] && kill -0 "$after" 2>/dev/null; then
    log "stopping the distro nginx the install started (pid $after)"
    kill -QUIT "$after"
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --- scratch, cleanup -----------------------------------------------------------------------
W=$(mktemp -d "${TMPDIR:-/tmp}/tls-stack.XXXXXX")
chmod 755 "$W"
NGINX_PID=
cleanup() {
  if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
    kill -QUIT "$NGINX_PID"
    wait "$NGINX_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build: hr_core (Release) and the two clients ---------------------------------------------
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target hookrouter >/dev/null
CFLAGS="-O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter"
# shellcheck disable=SC2086
cc $CFLAGS "$HERE/curl_client.c" $(pkg-config --cflags --libs libcurl libuv) -o "$W/curl_client"
# shellcheck disable=SC2086
cc $CFLAGS -I"$ROOT/include" "$HERE/own_client.c" "$BUILD/libhr_core.a" "$BUILD/libllhttp.a" \
  $(pkg-config --libs libuv lua5.4 libcjson) -lm -o "$W/own_client"
# shellcheck disable=SC2086
cc $CFLAGS -DBENCH_WITH_OPENSSL -I"$ROOT/include" "$HERE/own_client.c" "$BUILD/libhr_core.a" \
  "$BUILD/libllhttp.a" $(pkg-config --libs libuv lua5.4 libcjson libssl) -lm -o "$W/own_client_sslctx"

# --- certificates: a CA and a server certificate for 127.0.0.1 / localhost (RSA 2048) ---------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$W/ca.key" -out "$W/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
  -keyout "$W/srv.key" -out "$W/srv.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$W/srv.ext"
openssl x509 -req -in "$W/srv.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial \
  -days 2 -extfile "$W/srv.ext" -out "$W/srv.crt" 2>/dev/null

# --- CPUs: clients on the first allowed CPU, nginx on the others (if there are two) -----------
read -r -a cpus <<<"$(sed -n 's/^Cpus_allowed_list:\s*//p' /proc/self/status | tr ',-' '  ')"
CPIN=() SPIN=()
if [ "$(nproc)" -ge 2 ]; then
  CPIN=(taskset -c 0) SPIN=(taskset -c 1-$(($(nproc) - 1)))
fi

# --- sink: nginx, one worker, POST /legacy -> 200, plain and TLS listeners -------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
TLS_PORT=$(free_port)
HS_PORT=$(free_port) # TLS too, logging whether each handshake resumed a session
mkdir -p "$W/nginx"
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench:1m;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        listen 127.0.0.1:$TLS_PORT ssl;
        ssl_certificate $W/srv.crt;
        ssl_certificate_key $W/srv.key;
        location = /legacy { return 200; }
        location / { return 404; }
    }
    log_format hs '\$ssl_protocol \$ssl_cipher reused=\$ssl_session_reused';
    server {
        listen 127.0.0.1:$HS_PORT ssl;
        ssl_certificate $W/srv.crt;
        ssl_certificate_key $W/srv.key;
        access_log $W/nginx/hs.log hs;
        location = /legacy { return 200; }
    }
}
EOF
"${SPIN[@]}" "$NGINX" -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" &
NGINX_PID=$!
for _ in $(seq 50); do
  curl -fsS -o /dev/null -X POST "http://127.0.0.1:$HTTP_PORT/legacy" 2>/dev/null && break
  sleep 0.1
done
HTTP_URL=http://127.0.0.1:$HTTP_PORT/legacy
TLS_URL=https://127.0.0.1:$TLS_PORT/legacy
HS_URL=https://127.0.0.1:$HS_PORT/legacy

# run_client NAME N C: one run; prints the client's key=value line.
run_client() {
  local name=$1 n=$2 c=$3
  case $name in
    curl-http) "${CPIN[@]}" "$W/curl_client" "$HTTP_URL" "$n" "$c" "$BODY" ;;
    own-http) "${CPIN[@]}" "$W/own_client" "$HTTP_URL" "$n" "$c" "$BODY" ;;
    own-http-sslctx) "${CPIN[@]}" "$W/own_client_sslctx" "$HTTP_URL" "$n" "$c" "$BODY" "$W/ca.crt" ;;
    curl-https) "${CPIN[@]}" "$W/curl_client" "$TLS_URL" "$n" "$c" "$BODY" "$W/ca.crt" ;;
    curl-https-new) BENCH_NO_REUSE=1 "${CPIN[@]}" "$W/curl_client" "$HS_URL" "$n" "$c" "$BODY" "$W/ca.crt" ;;
    curl-https-full) BENCH_NO_REUSE=1 BENCH_NO_SESSION=1 "${CPIN[@]}" "$W/curl_client" "$HS_URL" "$n" "$c" "$BODY" "$W/ca.crt" ;;
    curl-http-new) BENCH_NO_REUSE=1 "${CPIN[@]}" "$W/curl_client" "$HTTP_URL" "$n" "$c" "$BODY" ;;
  esac
}
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p"; }

CLIENTS="curl-http own-http curl-https own-http-sslctx"
log "body: $BODY ($(wc -c <"$BODY") bytes); N=$N C=$C; sink nginx $("$NGINX" -v 2>&1 | sed 's/.*\///')"
log "scratch: $W"

# --- 1. requests/s, RUNS interleaved rounds ---------------------------------------------------
: >"$W/rps.txt"
run_client curl-http 2000 "$C" >/dev/null # warm-up (page cache, nginx)
for r in $(seq "$RUNS"); do
  for cl in $CLIENTS; do
    line=$(run_client "$cl" "$N" "$C")
    echo "round=$r $line" | tee -a "$W/rps.txt" >&2
  done
done
# handshakes: a new connection per request: HTTPS resuming sessions, HTTPS full handshakes,
# and plain HTTP (the TCP share). The HS listener logs whether nginx resumed each session.
hs_count() { grep -c "reused=$1" "$W/nginx/hs.log" 2>/dev/null || true; }
for r in $(seq "$RUNS"); do
  for cl in curl-https-new curl-https-full curl-http-new; do
    r0=$(hs_count r) f0=$(hs_count '\.')
    line=$(run_client "$cl" "$HS_N" "$C" | sed "s/client=curl-[a-z]*/client=$cl/")
    echo "round=$r $line resumed=$(($(hs_count r) - r0)) full=$(($(hs_count '\.') - f0))" | tee -a "$W/rps.txt" >&2
  done
done

# --- 2. callgrind: instructions per request, start-up subtracted with two N's ----------------
# cg_total FILE: the "totals:" (or "summary:") Ir of a callgrind output file.
cg_total() { sed -n 's/^\(totals\|summary\): *\([0-9]*\).*/\2/p' "$1" | head -1; }
# cg_by_obj FILE: "Ir object" lines, self cost summed per shared object.
cg_by_obj() {
  callgrind_annotate --threshold=100 "$1" 2>/dev/null |
    sed -n 's/^ *\([0-9,]*\) ([ 0-9.]*%) *.*\[\(.*\)\]$/\1 \2/p' | tr -d , |
    awk '{split($2, p, "/"); o = p[length(p)]; sub(/\.so.*/, "", o); s[o] += $1}
         END {for (o in s) print s[o], o}' | sort -rn
}
: >"$W/cg.txt"
for cl in $CLIENTS curl-https-new curl-https-full curl-http-new; do
  n1=$CG_N1 n2=$CG_N2
  case $cl in *-new | *-full) n1=$HS_CG_N1 n2=$HS_CG_N2 ;; esac
  for n in "$n1" "$n2"; do
    # shellcheck disable=SC2030
    (
      case $cl in *-new | *-full) export BENCH_NO_REUSE=1 ;; esac
      [ "$cl" = curl-https-full ] && export BENCH_NO_SESSION=1
      bin=own_client; [ "${cl#curl}" != "$cl" ] && bin=curl_client
      url=$HTTP_URL; ca=(); [ "${cl#curl-https}" != "$cl" ] && url=$TLS_URL ca=("$W/ca.crt")
      [ "$cl" = own-http-sslctx ] && bin=own_client_sslctx ca=("$W/ca.crt")
      case $cl in curl-https-*) url=$HS_URL ;; esac
      valgrind --tool=callgrind --callgrind-out-file="$W/cg.$cl.$n" \
        "$W/$bin" "$url" "$n" "$C" "$BODY" "${ca[@]}" >/dev/null 2>"$W/cg.$cl.$n.log"
    )
  done
  t1=$(cg_total "$W/cg.$cl.$n1")
  t2=$(cg_total "$W/cg.$cl.$n2")
  per=$(((t2 - t1) / (n2 - n1)))
  echo "client=$cl n1=$n1 n2=$n2 ir_n1=$t1 ir_n2=$t2 ir_per_req=$per startup_ir=$((t1 - per * n1))" | tee -a "$W/cg.txt" >&2
  # per object, per request (difference of the two runs)
  join -1 2 -2 2 -a 1 -e 0 -o 0,1.1,2.1 <(cg_by_obj "$W/cg.$cl.$n2" | sort -k2) \
    <(cg_by_obj "$W/cg.$cl.$n1" | sort -k2) |
    awk -v d=$((n2 - n1)) -v cl="$cl" '{printf "obj client=%s %s %d\n", cl, $1, ($2 - $3) / d}' |
    sort -k4 -rn | tee -a "$W/cg.txt" >&2
done

# --- 3. size of what each route links -----------------------------------------------------------
libs() { ldd "$1" | awk '/=>/ {print $3} !/=>/ && /^[ \t]*\// {print $1}' | grep -v '^$' | sort -u; }
lib_bytes() { local t=0 f; for f in $(libs "$1"); do t=$((t + $(stat -L -c %s "$f"))); done; echo "$t"; }
CURL_SO=$(ldconfig -p | sed -n 's/.*libcurl\.so\.4 .*=> //p' | head -1)
SSL_SO=$(ldconfig -p | sed -n 's/.*libssl\.so\.3 .*=> //p' | head -1)
{
  echo "size own_client libs=$(libs "$W/own_client" | wc -l) bytes=$(lib_bytes "$W/own_client")"
  echo "size curl_client libs=$(libs "$W/curl_client" | wc -l) bytes=$(lib_bytes "$W/curl_client")"
  echo "size libcurl.so.4 deps=$(libs "$CURL_SO" | wc -l) self_bytes=$(stat -L -c %s "$CURL_SO") closure_bytes=$(($(stat -L -c %s "$CURL_SO") + $(lib_bytes "$CURL_SO")))"
  echo "size libssl.so.3 deps=$(libs "$SSL_SO" | wc -l) self_bytes=$(stat -L -c %s "$SSL_SO") closure_bytes=$(($(stat -L -c %s "$SSL_SO") + $(lib_bytes "$SSL_SO")))"
  echo "size hookrouter libs=$(libs "$BUILD/hookrouter" | wc -l) bytes=$(lib_bytes "$BUILD/hookrouter")"
  echo "libcurl deps: $(libs "$CURL_SO" | xargs -n1 basename | tr '\n' ' ')"
  # what each route adds to hookrouter: the library and those of its dependencies not loaded yet
  for so in "$CURL_SO" "$SSL_SO"; do
    t=$(stat -L -c %s "$so") k=1
    for f in $(comm -23 <(libs "$so") <(libs "$BUILD/hookrouter")); do t=$((t + $(stat -L -c %s "$f"))) k=$((k + 1)); done
    echo "adds $(basename "$so"): new_objects=$k new_bytes=$t (ldd lines: $(ldd "$so" | wc -l); hookrouter: $(ldd "$BUILD/hookrouter" | wc -l))"
  done
} | tee "$W/size.txt" >&2

# --- 4. table -------------------------------------------------------------------------------------
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
echo
echo "| client | sink | req/s (median of $RUNS; runs) | Ir/request | start-up Ir | RSS end / peak KiB | connections | resumed / full handshakes | failed |"
echo "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |"
for cl in $CLIENTS curl-https-new curl-https-full curl-http-new; do
  lines=$(grep " client=$cl " "$W/rps.txt")
  runs=$(echo "$lines" | field rps | tr '\n' ' ' | sed 's/ $//; s/ /, /g')
  med=$(echo "$lines" | field rps | median)
  rss=$(echo "$lines" | tail -1 | field rss_kib)
  peak=$(echo "$lines" | tail -1 | field maxrss_kib)
  conns=$(echo "$lines" | tail -1 | field conns)
  failed=$(echo "$lines" | field failed | paste -sd+ | bc)
  cg=$(grep "^client=$cl " "$W/cg.txt" || true)
  ir=$(echo "$cg" | field ir_per_req)
  su=$(echo "$cg" | field startup_ir)
  sink=nginx-http; [ "${cl#curl-https}" != "$cl" ] && sink=nginx-https
  case $cl in curl-https-*) sink="nginx-https (logging)" ;; esac
  hs=-
  case $cl in curl-https-*) hs="$(echo "$lines" | field resumed | paste -sd+ | bc) / $(echo "$lines" | field full | paste -sd+ | bc)" ;; esac
  echo "| $cl | $sink | $med ($runs) | ${ir:--} | ${su:--} | $rss / $peak | ${conns/-1/-} | $hs | $failed |"
done
echo
echo "Ir per request by object (self cost, difference of the N=$CG_N2 and N=$CG_N1 runs; *-new: $HS_CG_N2 and $HS_CG_N1):"
grep '^obj ' "$W/cg.txt" | awk '$4 > 0 {print "  " $2, $3, $4}'
echo
cat "$W/size.txt"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
