#!/usr/bin/env bash
# Files benchmarks (issue 11): the server's memory while it takes a 100 MiB
# upload, and ingest throughput (upload, extract, chunk, embed, index) of
# Markdown and PDF, on the embedded backends (a directory, redb, the local
# embedder) and on the real ones (S3 through the workspace's s3s-fs server,
# Chroma). Release binaries, loopback only, every process stopped by pid.
# Prints JSON lines; docs/benchmarks.md quotes a run. About three minutes.
#
#   bench/files.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing curl venv
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release"
cargo build --release --quiet -p sluice -p sluice-s3-server
chroma_python="${SLUICE_CHROMA_PYTHON:-$target/test-tools/chroma/bin/python}"
[ -x "$chroma_python" ] || { echo "no Chroma at $chroma_python: run scripts/test once" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh
wait_for() { for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "did not start: $*" >&2; exit 1; }

"$bin/s3-server" "$work/s3" bench bench-secret-key >"$work/s3.url" 2>/dev/null &
pids+=($!)
wait_for test -s "$work/s3.url"
s3_url="$(head -1 "$work/s3.url")"
chroma_port="$(free_port)"
ANONYMIZED_TELEMETRY=False "$chroma_python" -c "import chromadb_rust_bindings as c; \
  c.cli(['chroma', 'run', '--path', '$work/chroma', '--host', '127.0.0.1', '--port', '$chroma_port'])" \
  >"$work/chroma.log" 2>&1 &
pids+=($!)
wait_for curl -sf "http://127.0.0.1:$chroma_port/api/v2/heartbeat"

# Starts Sluice on the named backends; sets sluice and sluice_pid.
start_sluice() { # embedded|real, data dir
  local port env=()
  port="$(free_port)"
  if [ "$1" = real ]; then
    env=(SLUICE_S3_ENDPOINT="$s3_url" SLUICE_S3_ACCESS_KEY=bench SLUICE_S3_SECRET_KEY=bench-secret-key
         SLUICE_S3_BUCKET="b$RANDOM" SLUICE_CHROMA_URL="http://127.0.0.1:$chroma_port")
  fi
  env SLUICE_ADDR="127.0.0.1:$port" SLUICE_DATA_DIR="$2" SLUICE_LOG_LEVEL=warn "${env[@]}" \
    "$bin/sluice" >"$2.log" 2>&1 &
  sluice_pid=$!
  pids+=("$sluice_pid")
  sluice="http://127.0.0.1:$port"
  wait_for curl -sf "$sluice/ready"
}
stop_sluice() { kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true; }

# 100 MiB of text (base64 lines): the upload path's UTF-8 check sees every byte.
head -c 80000000 /dev/urandom | base64 -w 76 >"$work/big.txt"
truncate -s $((100 * 1024 * 1024)) "$work/big.txt"
python3 bench/files.py corpus "$work/md" 200 50
mkdir -p "$work/pdf"
for i in 1 2 3 4; do python3 bench/files.py pdf "$work/pdf/report$i.p50.pdf" 50; done

for backends in embedded real; do
  start_sluice "$backends" "$work/data-$backends"
  echo "{\"scenario\":\"upload-100MiB/$backends\",\"result\":$(python3 bench/files.py rss "$sluice" "$sluice_pid" "$work/big.txt")}"
  echo "{\"scenario\":\"ingest-markdown/$backends\",\"result\":$(python3 bench/files.py ingest "$sluice" "$work/md")}"
  echo "{\"scenario\":\"ingest-pdf/$backends\",\"result\":$(python3 bench/files.py ingest "$sluice" "$work/pdf")}"
  stop_sluice
done
echo "retrieval: $(cargo test --quiet -p sluice-actors --test retrieval -- --nocapture 2>&1 | grep '^retrieval')"
