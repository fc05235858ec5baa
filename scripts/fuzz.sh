#!/bin/sh
# Build the libFuzzer targets (tests/fuzz) with clang into build-fuzz/ and run each for a while.
#   scripts/fuzz.sh                    every target, FUZZ_TIME seconds each (default 60)
#   scripts/fuzz.sh fuzz_json ...      only these
#   FUZZ_TIME=600 scripts/fuzz.sh fuzz_rule -- -jobs=2   extra arguments go to libFuzzer
# New inputs are kept in build-fuzz/corpus/<target>/ (reused by later runs), seeds are made
# from tests/fixtures and examples/ into build-fuzz/seeds/, crashes are written as
# build-fuzz/artifacts/<target>-crash-...; reproduce one with
#   build-fuzz/tests/fuzz/<target> build-fuzz/artifacts/<file>
# Without clang it prints why and exits 0.
set -eu
cd "$(dirname "$0")/.."
CLANG=${CLANG:-clang}
if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "fuzz: skipped: $CLANG not found (apt-get install clang to build the libFuzzer targets)"
    exit 0
fi
ALL="fuzz_http fuzz_json fuzz_spool fuzz_config fuzz_rule"
targets=""
while [ $# -gt 0 ]; do
    [ "$1" = "--" ] && { shift; break; }
    targets="$targets $1"
    shift
done
targets=${targets:-$ALL}
B=build-fuzz
sh scripts/setup.sh
CC="$CLANG" cmake -S . -B "$B" -DHR_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$B" --target fuzz -j"$(nproc)"
rm -rf "$B/seeds"
python3 tests/fuzz/seeds.py "$B/seeds"
mkdir -p "$B/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=""
for t in $targets; do
    case $t in
    fuzz_http) opts="-max_len=8192 -dict=tests/fuzz/http.dict" ;;
    fuzz_json) opts="-max_len=16384 -dict=tests/fuzz/json.dict" ;;
    fuzz_spool) opts="-max_len=8192" ;;
    fuzz_config) opts="-max_len=4096 -dict=tests/fuzz/rule.dict" ;;
    fuzz_rule) opts="-max_len=2048 -dict=tests/fuzz/rule.dict" ;;
    *) echo "fuzz: unknown target $t (one of: $ALL)" >&2; exit 2 ;;
    esac
    mkdir -p "$B/corpus/$t"
    echo "fuzz: $t for ${FUZZ_TIME:-60} s"
    # -timeout: one input taking longer is a finding (a hang the budgets did not stop).
    # shellcheck disable=SC2086
    if ! "$B/tests/fuzz/$t" $opts -timeout=10 -max_total_time="${FUZZ_TIME:-60}" \
        -print_final_stats=1 -artifact_prefix="$B/artifacts/$t-" \
        "$B/corpus/$t" "$B/seeds/$t" "$@" >"$B/$t.log" 2>&1; then
        failed="$failed $t"
        echo "fuzz: $t FAILED (log: $B/$t.log); the tail:"
        tail -n 40 "$B/$t.log"
    else
        grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^Done' "$B/$t.log" |
            tr '\n' ' '
        echo
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed"
    exit 1
fi
echo "fuzz: ok"
