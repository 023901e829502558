#!/usr/bin/env bash
# What the per-user limits cost a request (issue 13): the latency of a
# cheap authenticated request (`GET /v1/sessions`, which counts against
# the requests per minute) with the limits off, kept in the process, and
# kept in Redis (one Lua script per request). Release binaries, loopback
# only, every process stopped by pid. Prints JSON lines; docs/benchmarks.md
# quotes a run. About half a minute once built.
#
#   bench/limits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing curl redis
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release"
cargo build --release --quiet -p sluice -p sluice-test-support
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
redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# One Sluice at a time, with the given variables; stopped after its run.
run() {
  local name="$1" kv
  shift
  rm -rf "$work/data"
  for kv in "$@"; do export "${kv?}"; done
  start_sluice
  python3 bench/limits.py "$sluice" "$name"
  kill "$sluice_pid"
  wait "$sluice_pid" 2>/dev/null || true
  for kv in "$@"; do unset "${kv%%=*}"; done
}
run off SLUICE_RATE_LIMIT_RPM=0 SLUICE_RATE_LIMIT_TPM=0
run in-process SLUICE_RATE_LIMIT_RPM=100000000
run redis SLUICE_RATE_LIMIT_RPM=100000000 SLUICE_REDIS_URL="redis://127.0.0.1:$redis_port"
