#!/usr/bin/env bash
# What an answer costs Redis and PostgreSQL (issue "Production deployment",
# the sizing in docs/deploy.md): two release replicas sharing a Redis and a
# PostgreSQL (scripts/cluster), the fake provider, and a client that, per
# answer, creates a session, opens its SSE stream on one replica and sends
# the message through the other (so the events also cross the bus). Redis's
# INFO commandstats and network counters, and PostgreSQL's
# pg_stat_database, are read before and after; the difference is divided
# by the answers and tokens. Loopback only, every process stopped by pid.
# Prints JSON lines; docs/benchmarks.md quotes a run. About a minute.
#
#   bench/stores.sh [ANSWERS] [TOKENS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing curl redis postgresql nginx
answers="${1:-200}" tokens="${2:-100}" concurrency="${3:-20}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release"
cargo build --release --quiet -p sluice -p sluice-test-support -p sluice-s3-server
work="$(mktemp -d)"
pids=()
cluster_dir=""
cleanup() {
  [ -z "$cluster_dir" ] || scripts/cluster down "$cluster_dir" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_fake_upstream
cluster_dir="$(SLUICE_BIN="$bin/sluice" SLUICE_LLM_BASE_URL="$upstream" SLUICE_LOG_LEVEL=warn \
  SLUICE_CHROMA_PYTHON=/nonexistent SLUICE_LOG_FORMAT=json scripts/cluster up 2 2>/dev/null)"
python3 bench/stores.py "$cluster_dir" "$answers" "$tokens" "$concurrency"
