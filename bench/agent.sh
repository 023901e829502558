#!/usr/bin/env bash
# Agent and cache benchmarks (issue 12): the time one built-in tool step adds
# to an answer (its calls stored, run, their results stored, and the
# provider asked again), and the response cache's hit latency against a
# miss, on the OpenAI route and in a session; and the Responses API's
# follow-up as its conversation grows. The fake provider answers at
# once (so the numbers are Sluice's own) and, for the cache, also with a
# first-token delay like a real provider's. Release binaries, loopback
# only, every process stopped by pid. Prints JSON lines; docs/benchmarks.md
# quotes a run. About a minute.
#
#   bench/agent.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing curl
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
# Deterministic session answers (temperature 0) so the session cache applies
# where tools are off.
export SLUICE_LLM_TEMPERATURE=0
start_sluice
python3 bench/agent.py "$sluice"
