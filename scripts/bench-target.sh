#!/bin/sh
# hookrouter as a target of ../shared/bench/run-peers.sh (see its README, "Slotting in").
# Builds a config around the reference rule from the BENCH_* environment, then execs the
# router in the foreground. The reference rule (BENCH_RULE) returns the legacy table or nil;
# hookrouter's rule wraps it: forward mode forwards the table to the sink, ack mode does not.
set -eu
HR_BIN=${HR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/build/hookrouter}
dir=$(mktemp -d "${TMPDIR:-/tmp}/hr-bench.XXXXXX")
mkdir -p "$dir/rules"
cp "$BENCH_RULE" "$dir/rules/reference.lua"
cat >"$dir/rules/default.lua" <<'LUA'
local reference = require("reference")
local forwarding = os.getenv("BENCH_MODE") == "forward"
return function(event)
  local legacy = reference(event.body)
  if legacy == nil then return drop("reference rule dropped it") end
  if forwarding then forward("sink", legacy) end
end
LUA
# HR_BENCH_STORES=N: N store rule files (rules/stores/1.lua ... N.lua, the same rule; the
# payload's store 42 is one of them when N >= 42, else N is 1 and the file is 42.lua), to
# measure the cost of an event against the number of stores.
if [ -n "${HR_BENCH_STORES:-}" ]; then
  mkdir -p "$dir/rules/stores"
  if [ "$HR_BENCH_STORES" -lt 42 ]; then
    cp "$dir/rules/default.lua" "$dir/rules/stores/42.lua"
  else
    i=1
    while [ "$i" -le "$HR_BENCH_STORES" ]; do
      cp "$dir/rules/default.lua" "$dir/rules/stores/$i.lua"
      i=$((i + 1))
    done
  fi
fi
HR_BENCH_WORKERS=${HR_BENCH_WORKERS:-}
case $HR_BENCH_WORKERS in
'') HR_BENCH_WORKERS_LUA=nil ;; # the product's default ("auto")
auto) HR_BENCH_WORKERS_LUA='"auto"' ;;
*[!0-9]*) echo "HR_BENCH_WORKERS must be a number or auto" >&2; exit 2 ;;
*) HR_BENCH_WORKERS_LUA=$HR_BENCH_WORKERS ;;
esac
cat >"$dir/hookrouter.lua" <<LUA
return {
  listen = "127.0.0.1:${BENCH_PORT:-18080}",
  tokens = { os.getenv("BENCH_TOKEN") or "bench-token" },
  endpoints = { [os.getenv("BENCH_PATH") or "/aifi/checkout-zone/left"] = "checkout-zone.left" },
  rules = "rules",
  targets = { sink = { url = os.getenv("BENCH_SINK_URL") or "http://127.0.0.1:18090/legacy",
                       max_attempts = 5 } },
  log = { level = os.getenv("HR_BENCH_LOG") or "warn" },
  -- HR_BENCH_FSYNC=always|interval|never picks the spool's fsync mode (unset: the default).
  fsync = os.getenv("HR_BENCH_FSYNC"),
  -- The runner SIGKILLs a target that takes over 5 s to stop; what is still queued then
  -- goes to the dead letters in this temporary folder.
  shutdown_grace_ms = 2000,
  -- HR_BENCH_WORKERS: front worker threads (an integer or "auto"); the product's default
  -- unless set, whatever BENCH_WORKERS the runner passes, so a run measures what it says.
  workers = ${HR_BENCH_WORKERS_LUA},
}
LUA
exec "$HR_BIN" run -c "$dir/hookrouter.lua"
