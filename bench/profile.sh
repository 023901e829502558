#!/usr/bin/env bash
# Profiles Sluice with perf while sluice-bench runs rounds of streams, and
# splits the samples into each round's setup (create, subscribe) and its sends
# (send to the last event), so the per-request work behind time to first
# token can be seen apart from the rest (bench/phases.py).
#
#   bench/profile.sh [TRANSPORT [CONCURRENCY [ROUNDS [TOKENS]]]]
#   bench/profile.sh ws 100 10 1     the default: 100 sends at once, one token each
#
# Installs perf if missing (Debian: linux-perf). Starts its own fake upstream and Sluice on
# loopback and stops them by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
transport="${1:-ws}" concurrency="${2:-100}" rounds="${3:-10}" tokens="${4:-1}"
freq=2000
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing curl perf
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release"
cargo build --release --quiet -p sluice -p sluice-test-support -p sluice-bench
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_fake_upstream
start_sluice
base="$sluice"
[ "$transport" = direct ] && { base="$direct"; transport=openai; }

perf record -q -F "$freq" --call-graph dwarf,32768 -p "$sluice_pid" -o "$work/perf.data" 2>/dev/null &
perf_pid=$!
sleep 1
"$bin/sluice-bench" stream --transport "$transport" --base "$base" --concurrency "$concurrency" \
  --rounds "$rounds" --tokens "$tokens" --delay-ms 20 --pause-ms 300
kill -INT "$perf_pid"
wait "$perf_pid" || true
perf script -i "$work/perf.data" -F comm,tid,time,ip,sym,dso 2>/dev/null |
  python3 bench/phases.py "$freq" "$((concurrency * rounds))"
