#!/usr/bin/env bash
# Sluice's benchmark suite. Builds release binaries, starts the fake upstream
# and Sluice (and, for the cross-replica scenario, Redis, PostgreSQL and two
# replicas through scripts/cluster) on loopback, runs every scenario with
# bench/src (sluice-bench), and writes the results into docs/benchmarks.md
# between the "bench:start" and "bench:end" markers. Every process it starts
# is stopped by pid on exit. Bounded: about ten minutes on two cores.
#
#   bench/run.sh            all scenarios
#   bench/run.sh quick      concurrency 1 and 10 only (a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release"
cargo build --release --quiet -p sluice -p sluice-test-support -p sluice-bench
cargo build --quiet -p sluice # scripts/cluster runs the debug binary unless told
work="$(mktemp -d)"
results="$work/results.jsonl"
pids=()
cluster_dir=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -z "$cluster_dir" ] || scripts/cluster down "$cluster_dir" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_line() { for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "no output in $1" >&2; exit 1; }

"$bin/fake-upstream" >"$work/fake.out" &
pids+=($!)
wait_line "$work/fake.out"
upstream="$(head -1 "$work/fake.out")"
direct="${upstream%/v1}"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
SLUICE_ADDR="127.0.0.1:$port" SLUICE_DATA_DIR="$work/data" SLUICE_LOG_LEVEL=warn \
  SLUICE_LLM_BASE_URL="$upstream" SLUICE_SESSION_IDLE_SECONDS=30 "$bin/sluice" >"$work/sluice.log" 2>&1 &
sluice_pid=$!
pids+=($sluice_pid)
sluice="http://127.0.0.1:$port"
for _ in $(seq 1 300); do curl -sf "$sluice/health" >/dev/null && break; sleep 0.1; done

run() { # scenario label, then sluice-bench arguments
  local label="$1"; shift
  local out
  out="$("$bin/sluice-bench" "$@")"
  echo "{\"scenario\":\"$label\",\"result\":$out}" >>"$results"
  echo "$label: $out" >&2
}

levels=(1 10 100 1000)
[ "$mode" = quick ] && levels=(1 10)
for delay in 0 20; do
  for c in "${levels[@]}"; do
    case "$c" in 1) rounds=10 ;; 10) rounds=3 ;; *) rounds=1 ;; esac
    # Direct and through Sluice back to back, so each pair shares the
    # machine's conditions.
    for pass in 1 2; do
      run "overhead/direct/d$delay/c$c" stream --transport openai --base "$direct" \
        --concurrency "$c" --rounds "$rounds" --delay-ms "$delay"
      for t in openai sse ws; do
        run "overhead/$t/d$delay/c$c" stream --transport "$t" --base "$sluice" \
          --concurrency "$c" --rounds "$rounds" --delay-ms "$delay"
      done
      [ "$c" -ge 100 ] || break # small levels are cheap: one pass is enough
    done
  done
done

if [ "$mode" != quick ]; then
  # Capacity: streams at 50 tokens/s (20 ms apart), more and more at once.
  for c in 500 1000 2000 4000; do
    run "capacity/direct/c$c" stream --transport openai --base "$direct" \
      --concurrency "$c" --tokens 100 --delay-ms 20
    run "capacity/ws/c$c" stream --transport ws --base "$sluice" \
      --concurrency "$c" --tokens 100 --delay-ms 20
  done
  # Idle WebSocket connections: the sandbox allows 20,000 open files per
  # process, so this is as many as the client and the server can each hold.
  run "idle/ws" idle --base "$sluice" --pid "$sluice_pid" --connections 18000 --sessions 100
fi
run "resume/1000" resume --base "$sluice" --events 1000 --repeats 50

# Cross-replica: two replicas sharing Redis and PostgreSQL.
cluster_dir="$(SLUICE_BIN="$bin/sluice" SLUICE_LLM_BASE_URL="$upstream" SLUICE_LOG_LEVEL=warn \
  scripts/cluster up 2)"
read -r r0 r1 < <(sed -n 's/^REPLICA_URLS="\(.*\)"/\1/p' "$cluster_dir/cluster.env")
for c in 1 10 100; do
  run "cross/c$c" cross --owner "$r0" --other "$r1" --concurrency "$c" --tokens 200 --delay-ms 20
done

python3 bench/report.py "$results" "$mode" docs/benchmarks.md
echo "results written to docs/benchmarks.md" >&2
