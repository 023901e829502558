#!/usr/bin/env bash
# Sluice's benchmark suite. Builds release binaries, starts the fake upstream
# and Sluice (and, for the cross-replica scenario, Redis, PostgreSQL and two
# replicas through scripts/cluster) on loopback, runs every scenario with
# bench/src (sluice-bench), and writes the results into docs/benchmarks.md
# between the "bench:start" and "bench:end" markers. The peer is LiteLLM's
# proxy from PyPI (bench/peer-requirements.txt), installed into
# $CARGO_TARGET_DIR/bench-tools. Every process it starts is stopped by pid on
# exit. Bounded: about fifteen minutes on two cores.
#
#   bench/run.sh            all scenarios
#   bench/run.sh quick      concurrency 1 and 10 only (a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing postgresql redis nginx curl venv
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

# shellcheck source=bench/lib.sh
. bench/lib.sh
start_fake_upstream
start_sluice

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # CPU in 1/100 s
run() { # scenario label, then sluice-bench arguments
  local label="$1"; shift
  local out f0 s0 client
  f0="$(ticks "$fake_pid")"; s0="$(ticks "$sluice_pid")"
  # The client's own CPU (user and system seconds) from bash's time.
  client="$( { TIMEFORMAT='%3U %3S'; time "$bin/sluice-bench" "$@" >"$work/out.json"; } 2>&1 | tail -1)"
  out="$(cat "$work/out.json")"
  # CPU each process spent in the run, in milliseconds: with every process
  # sharing two cores, this is what bounds throughput.
  local cpu
  cpu="$(awk -v f="$(( $(ticks "$fake_pid") - f0 ))" -v s="$(( $(ticks "$sluice_pid") - s0 ))" -v c="$client" \
    'BEGIN { split(c, t, " "); printf "{\"upstream\":%d,\"sluice\":%d,\"client\":%d}", f * 10, s * 10, (t[1] + t[2]) * 1000 }')"
  echo "{\"scenario\":\"$label\",\"result\":$out,\"cpu_ms\":$cpu}" >>"$results"
  echo "$label: $out cpu_ms=$cpu" >&2
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

# Takeover after kill -9 of a session's owner, as the multi-replica test
# measures it (Redis, PostgreSQL, three debug-build replicas, nginx; lease
# 2 s): it prints one "takeover:" line per run.
scripts/cluster down "$cluster_dir" 2>/dev/null || true
cluster_dir=""
for _ in 1 2 3; do
  line="$(cargo test --quiet --test cluster killed -- --nocapture 2>&1 | grep '^takeover:')"
  echo "$line" | sed -E 's/.*lease ([0-9.]+) s, ([0-9]+) ms of it left.*kill to first continued event ([0-9]+) ms; lease expiry to it ([0-9]+) ms.*/{"scenario":"takeover","result":{"lease_s":\1,"lease_left_ms":\2,"kill_to_first_ms":\3,"expiry_to_first_ms":\4}}/' >>"$results"
  echo "$line" >&2
done

# The peer: LiteLLM's proxy in front of the same fake upstream, every model
# routed to it ("*"), in the same scenario as Sluice's OpenAI route.
venv="$target/bench-tools/litellm-venv"
if [ ! -x "$venv/bin/litellm" ] || ! cmp -s bench/peer-requirements.txt "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r bench/peer-requirements.txt
  cp bench/peer-requirements.txt "$venv/requirements.txt"
fi
printf 'model_list:\n  - model_name: "*"\n    litellm_params:\n      model: "openai/*"\n      api_base: "%s"\n      api_key: "unused"\n' \
  "$upstream" >"$work/litellm.yaml"
peer_port="$(free_port)"
"$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$peer_port" >"$work/litellm.log" 2>&1 &
pids+=($!)
peer="http://127.0.0.1:$peer_port"
for _ in $(seq 1 600); do curl -sf "$peer/health/liveliness" >/dev/null && break; sleep 0.1; done
peer_levels=(1 10 100)
[ "$mode" = quick ] && peer_levels=(1 10)
for delay in 0 20; do
  for c in "${peer_levels[@]}"; do
    case "$c" in 1) rounds=10 ;; 10) rounds=3 ;; *) rounds=1 ;; esac
    for path in direct sluice litellm; do
      case "$path" in direct) base="$direct" ;; sluice) base="$sluice" ;; litellm) base="$peer" ;; esac
      run "peer/$path/d$delay/c$c" stream --transport openai --base "$base" \
        --concurrency "$c" --rounds "$rounds" --delay-ms "$delay"
    done
  done
done

# Kept outside the temporary directory, so a report can be redone.
cp "$results" "$target/bench-results.jsonl"
python3 bench/report.py "$results" "$mode" docs/benchmarks.md
echo "results written to docs/benchmarks.md" >&2
