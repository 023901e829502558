#!/usr/bin/env bash
# A first, rough throughput check (the full benchmark suite is to come):
# streams N tokens from the fake upstream directly, through Sluice's
# OpenAI-compatible route, and through a Sluice session over SSE, at
# concurrency 1 and C, and prints tokens/s for each. Loopback only; every
# process it starts is stopped by pid on exit.
#   bench/rough-throughput.sh [tokens per stream, default 100000] [C, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
tokens="${1:-100000}"
conc="${2:-10}"
cargo build --release --quiet --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin/fake-upstream" > "$work/fake.out" & pids+=($!)
until [ -s "$work/fake.out" ]; do sleep 0.1; done
upstream=$(head -1 "$work/fake.out")
SLUICE_ADDR=127.0.0.1:0 SLUICE_DATA_DIR="$work/data" SLUICE_LOG_FORMAT=json SLUICE_LOG_LEVEL=warn,sluice=info \
  SLUICE_LLM_BASE_URL="$upstream" SLUICE_LLM_MODEL=fake "$bin/sluice" > "$work/sluice.out" & pids+=($!)
until grep -q '"listening"' "$work/sluice.out" 2>/dev/null; do sleep 0.1; done
sluice="http://$(grep '"listening"' "$work/sluice.out" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["addr"])')"

body="{\"model\":\"fake:tokens=$tokens\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"go\"}]}"
openai_stream() { curl -sN "$1/chat/completions" -H 'content-type: application/json' -d "$body" | grep -c '"content":"<' ; }
session_stream() {
  local id
  id=$(curl -s -XPOST "$sluice/v1/sessions" -d "{\"model\":\"fake:tokens=$tokens\"}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
  # Subscribe, send once subscribed, count tokens until generation_end.
  python3 - "$sluice" "$id" <<'PY'
import sys, urllib.request
base, sid = sys.argv[1], sys.argv[2]
events = urllib.request.urlopen(f"{base}/v1/sessions/{sid}/events")
tokens = 0
for raw in events:
    line = raw.decode()
    if line.startswith("event: snapshot"):
        urllib.request.urlopen(urllib.request.Request(
            f"{base}/v1/sessions/{sid}/messages", data=b'{"content":"go"}', method="POST"))
    elif line.startswith("event: token"):
        tokens += 1
    elif line.startswith("event: generation_end"):
        break
print(tokens)
PY
}
run() { # name, concurrency, command...
  local name=$1 c=$2; shift 2
  local start end
  start=$(date +%s.%N)
  local streams=()
  for i in $(seq "$c"); do "$@" > "$work/count.$i" & streams+=($!); done
  wait "${streams[@]}"
  end=$(date +%s.%N)
  python3 -c "import sys; s,e,c,t=map(float,sys.argv[1:5]); print(f'| {sys.argv[5]} | {int(c)} | {c*t/(e-s):,.0f} |')" "$start" "$end" "$c" "$tokens" "$name"
}
echo "| path | streams | tokens/s |"
echo "| --- | --- | --- |"
for c in 1 "$conc"; do
  run "direct to the fake upstream" "$c" openai_stream "$upstream"
  run "through Sluice, OpenAI route" "$c" openai_stream "$sluice/v1"
  run "through Sluice, session over SSE" "$c" session_stream
done
