#!/usr/bin/env bash
# A backup, a wiped stack and a restore, end to end: scripts/cluster starts
# Redis, PostgreSQL, S3 (s3s-fs), Chroma, two replicas and nginx on loopback
# with the fake provider; the test makes conversations and files through the
# API, checks retrieval, runs scripts/backup, wipes PostgreSQL, the bucket and
# Sluice's Chroma collections, checks through the API that everything is gone,
# runs scripts/restore, and checks that the same conversations, the same
# files (byte for byte) and retrieval are back, and that the conversations
# take new messages. Then checks the backups' retention.
#
#   tests/deploy/backup_roundtrip.sh
#
# Needs the debug binaries (cargo build --workspace: sluice, s3-server,
# fake-upstream), redis-server, PostgreSQL, nginx, and Chroma's wheel in
# $CARGO_TARGET_DIR/test-tools/chroma (installed here if missing, as
# scripts/test does). Prints `backup round trip: ok` and a summary line.
# BACKUP_TEST_KEEP=1 keeps the work directory (backups, logs) for a look.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TARGET_DIR="$target"

fail() { echo "backup round trip: FAILED: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }

for bin in sluice s3-server fake-upstream; do
  [ -x "$target/debug/$bin" ] || fail "no $target/debug/$bin (cargo build --workspace)"
done
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
install_missing postgresql redis nginx curl venv
if ! "$target/test-tools/chroma/bin/python" -c 'import chromadb_rust_bindings' 2>/dev/null; then
  step "installing Chroma (chromadb==1.5.9)"
  rm -rf "$target/test-tools/chroma"
  python3 -m venv "$target/test-tools/chroma"
  "$target/test-tools/chroma/bin/pip" install -q --disable-pip-version-check --no-deps chromadb==1.5.9
fi
pg_bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/psql | sort -V | tail -1)")"

work="$(mktemp -d /tmp/sluice-backup-test.XXXXXX)"
fake_pid="" cluster_dir=""
cleanup() {
  local status=$?
  [ -z "$cluster_dir" ] || scripts/cluster down "$cluster_dir" 2>/dev/null || true
  [ -z "$fake_pid" ] || { kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null || true; }
  if [ "${BACKUP_TEST_KEEP:-0}" = 1 ]; then
    echo "backup round trip: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ helpers

# req METHOD URL [JSON]: the answer's status in $status, its body in $work/body.
req() {
  local args=(-sS -o "$work/body" -w '%{http_code}' -X "$1" "$2")
  [ $# -lt 3 ] || args+=(-H 'Content-Type: application/json' --data-binary "$3")
  status="$(curl "${args[@]}")" || fail "$1 $2: no answer"
}
expect() { # STATUS what
  [ "$status" = "$1" ] || fail "$2: expected $1, got $status: $(head -c 500 "$work/body")"
}
# py EXPR: evaluates EXPR with `d` the JSON of $work/body.
py() {
  python3 -c 'import json, sys; d = json.load(open(sys.argv[2])); v = eval(sys.argv[1]); print(v if isinstance(v, str) else json.dumps(v, sort_keys=True))' \
    "$1" "$work/body"
}
# Waits until the session's last message but tool messages is no longer
# streaming; prints its status.
settled() { # SESSION
  local state
  for _ in $(seq 1 300); do
    req GET "$api/v1/sessions/$1"
    expect 200 "GET session $1"
    state="$(py '[m for m in d["messages"] if m["role"] != "tool"][-1]["status"]')"
    [ "$state" = streaming ] || { echo "$state"; return; }
    sleep 0.1
  done
  fail "the answer in session $1 never settled"
}
send() { # SESSION JSON-BODY -> waits for the answer, fails unless complete
  req POST "$api/v1/sessions/$1/messages" "$2"
  expect 202 "send to $1"
  local state
  state="$(settled "$1")"
  [ "$state" = complete ] || fail "the answer in $1 ended $state: $(py 'd["messages"][-1]')"
}
new_session() { # MODEL -> id
  req POST "$api/v1/sessions" "{\"model\": \"$1\"}"
  expect 201 "create a session"
  py 'd["id"]'
}
upload() { # FILE NAME -> file id
  status="$(curl -sS -o "$work/body" -w '%{http_code}' -F "file=@$1;filename=$2" -F purpose=assistants "$api/v1/files")"
  expect 201 "upload $2"
  py 'd["id"]'
}
indexed() { # FILE-ID: waits until it is no longer stored; fails unless indexed
  local state
  for _ in $(seq 1 600); do
    req GET "$api/v1/files/$1"
    expect 200 "GET file $1"
    state="$(py 'd["status"]')"
    [ "$state" = stored ] || break
    sleep 0.1
  done
  [ "$state" = indexed ] || fail "file $1 is $state, not indexed: $(cat "$work/body")"
}
# A session's state as compared before and after: the session's fields and
# its messages, times at PostgreSQL's precision (microseconds), without what
# moves on its own (updated_at, last_seq).
session_state() { # SESSION -> prints
  req GET "$api/v1/sessions/$1"
  expect 200 "GET session $1"
  python3 - "$work/body" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
def micro(v):
    if isinstance(v, str):
        return re.sub(r"(\.\d{1,6})\d*Z$", lambda m: m.group(1).rstrip("0").rstrip(".") + "Z", v)
    return v
def norm(o):
    return {k: micro(v) for k, v in o.items() if k not in ("updated_at", "last_seq", "messages")}
print(json.dumps({"session": norm(d), "messages": [norm(m) for m in d["messages"]]}, sort_keys=True))
EOF
}
files_state() { # -> prints the file list (first 100) as compared before and after
  req GET "$api/v1/files?limit=100"
  expect 200 "GET /v1/files"
  python3 - "$work/body" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
micro = lambda v: re.sub(r"(\.\d{1,6})\d*Z$", lambda m: m.group(1).rstrip("0").rstrip(".") + "Z", v)
print(json.dumps([{**f, "created_at": micro(f["created_at"])} for f in d["data"]], sort_keys=True))
EOF
}
content_sha() { # FILE-ID -> sha256 of GET /v1/files/{id}/content
  curl -sSf "$api/v1/files/$1/content" | sha256sum | cut -d' ' -f1
}
# search_files through the agent: a session whose fake model calls the tool
# with QUERY; prints the tool's result.
search() { # QUERY
  local s
  s="$(new_session "fake:tools,tokens=3")"
  send "$s" "$(python3 -c 'import json,sys; print(json.dumps({"content": json.dumps({"steps": [[{"name": "search_files", "arguments": {"query": sys.argv[1]}}]]})}))' "$1")"
  req GET "$api/v1/sessions/$s"
  py '[m for m in d["messages"] if m["role"] == "tool"][-1]["content"]'
}
# The text of the last request the fake provider got.
last_prompt() {
  curl -sSf "$fake_url/_requests" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[-1]["messages"]))'
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
secs() { printf '%d.%02d' $(($1 / 1000)) $((($1 % 1000) / 10)); }

# The replicas, stopped (SIGTERM) and started again as scripts/cluster
# started them: same binary, environment and address.
stop_replicas() { scripts/cluster stop-replicas "$cluster_dir" 2>/dev/null; }
start_replicas() { scripts/cluster start-replicas "$cluster_dir" || fail "the replicas did not start again"; }

# ------------------------------------------------------------ the stack

step "starting the fake provider and a cluster of 2 replicas"
"$target/debug/fake-upstream" >"$work/fake.out" 2>"$work/fake.log" &
fake_pid=$!
for _ in $(seq 1 100); do [ -s "$work/fake.out" ] && break; sleep 0.1; done
fake_url="$(head -1 "$work/fake.out")"
[ -n "$fake_url" ] || fail "the fake provider did not start"
fake_url="${fake_url%/v1}"
cluster_dir="$(SLUICE_LLM_BASE_URL="$fake_url/v1" SLUICE_LLM_MODEL="fake:tokens=25" \
  SLUICE_RATE_LIMIT_RPM=0 SLUICE_SHUTDOWN_GRACE_SECONDS=5 scripts/cluster up 2)"
env_of() { sed -n "s/^$1=//p" "$cluster_dir/cluster.env" | tr -d '"'; }
api="$(env_of CLUSTER_URL)"
postgres_url="$(env_of POSTGRES_URL)"
chroma_url="$(env_of CHROMA_URL)"
[ -n "$chroma_url" ] || fail "the cluster has no Chroma"
# The backup scripts' configuration, as a deployment's env file.
cat >"$work/sluice.env" <<EOF
# what the replicas of $cluster_dir use
SLUICE_POSTGRES_URL=$postgres_url
SLUICE_S3_ENDPOINT=$(env_of S3_URL)
SLUICE_S3_ACCESS_KEY=sluice-cluster
SLUICE_S3_SECRET_KEY="sluice-cluster-secret"
SLUICE_S3_BUCKET=sluice
SLUICE_CHROMA_URL=$chroma_url
SLUICE_REDIS_URL=$(env_of REDIS_URL)
EOF
export SLUICE_BIN="$target/debug/sluice"

# ------------------------------------------------------------ data

step "conversations and files through the API"
fact="The lighthouse keeper of Port Vesper is Orlaith Quennell-Marsh, who counts the gulls every Tuesday."
{
  echo "# Harbour notes"
  for i in $(seq 1 30); do printf '\nParagraph %d: routine entries about tides, ropes and the weather.\n' "$i"; done
  printf '\n%s\n' "$fact"
} >"$work/harbour.md"
python3 - "$work/pixel.png" <<'EOF'
import struct, sys, zlib
w = h = 16
rows = b"".join(b"\0" + b"".join(bytes((x * 16, y * 16, 128)) for x in range(w)) for y in range(h))
chunk = lambda t, data: struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF
session_a="$(new_session "fake:tokens=25")"
send "$session_a" '{"content": "Hello before the backup"}'
file_doc="$(upload "$work/harbour.md" harbour.md)"
file_png="$(upload "$work/pixel.png" pixel.png)"
indexed "$file_doc"
indexed "$file_png"
# Retrieval, two ways: the file attached to a message grounds its prompt,
# and the search_files tool finds the passage.
send "$session_a" "{\"content\": \"Who keeps the lighthouse at Port Vesper?\", \"attachments\": [\"$file_doc\"]}"
last_prompt | grep -q "Orlaith Quennell-Marsh" || fail "the attached file did not ground the prompt"
found="$(search "Who keeps the lighthouse at Port Vesper?")"
grep -q "Orlaith Quennell-Marsh" <<<"$found" || fail "search_files did not find the fact: $found"
session_b="$(new_session "fake:tokens=5")"
send "$session_b" '{"content": "A second conversation"}'
req GET "$api/v1/sessions?limit=100"
sessions_before="$(py 'sorted(s["id"] for s in d["data"])')"
state_a="$(session_state "$session_a")"
state_b="$(session_state "$session_b")"
files_before="$(files_state)"
sha_doc="$(sha256sum "$work/harbour.md" | cut -d' ' -f1)"
sha_png="$(sha256sum "$work/pixel.png" | cut -d' ' -f1)"
[ "$(content_sha "$file_doc")" = "$sha_doc" ] || fail "harbour.md does not read back whole"
[ "$(content_sha "$file_png")" = "$sha_png" ] || fail "pixel.png does not read back whole"
echo "    sessions $(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])))' "$sessions_before"), files 2 (sha256 ${sha_doc:0:12}…, ${sha_png:0:12}…), retrieval found the fact" >&2

# ------------------------------------------------------------ backup

step "scripts/backup"
t0="$(date +%s%N)"
backup="$(scripts/backup --env-file "$work/sluice.env" "$work/backups" 2>"$work/backup.log")" ||
  { cat "$work/backup.log" >&2; fail "scripts/backup failed"; }
backup_ms="$(ms_since "$t0")"
[ -f "$backup/MANIFEST.json" ] || fail "the backup has no MANIFEST.json"
[[ "$(basename "$backup")" =~ ^[0-9]{8}T[0-9]{6}Z$ ]] || fail "the backup's name is not a UTC timestamp: $backup"
if grep -q "sluice-cluster-secret" "$work/backup.log" "$backup/MANIFEST.json"; then fail "the backup printed the S3 secret"; fi
compgen -G "$work/backups/.incomplete*" >/dev/null && fail "the backup left its temporary directory"
backup_bytes="$(du -sb "$backup" | cut -f1)"
cp "$backup/MANIFEST.json" "$work/body"
[ "$(py 'd["postgres"]["rows"]["sessions"]')" -ge 3 ] || fail "the manifest counts $(py 'd["postgres"]["rows"]["sessions"]') sessions"
[ "$(py 'd["postgres"]["rows"]["files"]')" = 2 ] || fail "the manifest counts $(py 'd["postgres"]["rows"]["files"]') files"
[ "$(py 'd["objects"]["count"]')" -ge 2 ] || fail "the manifest counts $(py 'd["objects"]["count"]') objects"
[ "$(py 'd["chroma"]["records"]')" -ge 1 ] || fail "the manifest counts no chunks"
[ "$(py 'd["consistency"]["file_rows_without_object"]')" = "[]" ] || fail "file rows without objects: $(py 'd["consistency"]')"
[ "$(py 'd["sluice_version"]')" != None ] || fail "the manifest has no Sluice version"
summary_counts="$(py '"%d sessions, %d messages, %d objects (%d bytes), %d chunks in %d collections" % (d["postgres"]["rows"]["sessions"], d["postgres"]["rows"]["messages"], d["objects"]["count"], d["objects"]["bytes"], d["chroma"]["records"], d["chroma"]["collections"])')"
pg_dump_bytes="$(stat -c %s "$backup/postgres.dump")"
echo "    $backup: $backup_bytes bytes in $(secs "$backup_ms") s ($summary_counts)" >&2
scripts/restore --check "$backup" 2>/dev/null || fail "restore --check refuses a fresh backup"

step "after the backup: a message, a file and a deletion that the restore undoes"
send "$session_a" '{"content": "Said after the backup"}'
late="$(printf 'A late note.\n' >"$work/late.md"; upload "$work/late.md" late.md)"
indexed "$late"
req DELETE "$api/v1/sessions/$session_b"
[[ "$status" == 20[04] ]] || fail "delete session B: $status"

# ------------------------------------------------------------ wipe

step "wiping the stack: PostgreSQL's schema, the bucket, Sluice's Chroma collections"
stop_replicas
"$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "$postgres_url" \
  -c 'SET client_min_messages TO warning; DROP SCHEMA public CASCADE; CREATE SCHEMA public;' >/dev/null
bash -c '. scripts/backup-lib.sh; ensure_python; echo "$BK_PYTHON"' >"$work/python"
"$(cat "$work/python")" - "$work/sluice.env" <<'EOF'
import boto3, sys
from botocore.config import Config
env = dict(l.split("=", 1) for l in open(sys.argv[1]).read().split("\n") if "=" in l and not l.startswith("#"))
s3 = boto3.client("s3", endpoint_url=env["SLUICE_S3_ENDPOINT"], aws_access_key_id=env["SLUICE_S3_ACCESS_KEY"],
                  aws_secret_access_key=env["SLUICE_S3_SECRET_KEY"].strip('"'), region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sluice").get("Contents", [])]
for k in keys:
    s3.delete_object(Bucket="sluice", Key=k)
assert not s3.list_objects_v2(Bucket="sluice").get("Contents"), "the bucket is not empty"
print(f"    deleted {len(keys)} objects", file=sys.stderr)
EOF
python3 - "$chroma_url" <<'EOF'
import json, sys, urllib.request
base = sys.argv[1] + "/api/v2/tenants/default_tenant/databases/default_database/collections"
names = [c["name"] for c in json.load(urllib.request.urlopen(base)) if c["name"].startswith("sluice-")]
for name in names:
    urllib.request.urlopen(urllib.request.Request(f"{base}/{name}", method="DELETE")).read()
left = [c["name"] for c in json.load(urllib.request.urlopen(base)) if c["name"].startswith("sluice-")]
assert not left, left
print(f"    deleted {len(names)} Chroma collections", file=sys.stderr)
EOF
# Started again on the empty stores, the replicas make empty tables.
start_replicas
for s in "$session_a" "$session_b"; do
  req GET "$api/v1/sessions/$s"
  expect 404 "session $s after the wipe"
done
req GET "$api/v1/sessions"
expect 200 "list sessions after the wipe"
[ "$(py 'len(d["data"])')" = 0 ] || fail "sessions are left after the wipe"
req GET "$api/v1/files"
expect 200 "list files after the wipe"
[ "$(py 'len(d["data"])')" = 0 ] || fail "files are left after the wipe"
req GET "$api/v1/files/$file_doc/content"
expect 404 "the file's content after the wipe"
found="$(search "Who keeps the lighthouse at Port Vesper?")"
grep -q "Orlaith" <<<"$found" && fail "search_files still finds the fact after the wipe"
echo "    sessions 404, no sessions, no files, search finds nothing" >&2

# ------------------------------------------------------------ restore

step "scripts/restore (replicas stopped, then started)"
stop_replicas
t0="$(date +%s%N)"
scripts/restore --env-file "$work/sluice.env" --yes "$backup" 2>"$work/restore.log" ||
  { cat "$work/restore.log" >&2; fail "scripts/restore failed"; }
restore_ms="$(ms_since "$t0")"
grep -q "now start the Sluice replicas" "$work/restore.log" || fail "restore did not say what to do next"
if grep -q "sluice-cluster-secret" "$work/restore.log"; then fail "the restore printed the S3 secret"; fi
start_replicas

step "checking what came back"
[ "$(session_state "$session_a")" = "$state_a" ] ||
  fail "session A differs after the restore: $(session_state "$session_a") vs $state_a"
[ "$(session_state "$session_b")" = "$state_b" ] ||
  fail "session B (deleted after the backup) differs after the restore: $(session_state "$session_b")"
req GET "$api/v1/sessions?limit=100"
sessions_after="$(py 'sorted(s["id"] for s in d["data"])')"
[ "$sessions_after" = "$sessions_before" ] || fail "the sessions listed differ: $sessions_after vs $sessions_before"
[ "$(files_state)" = "$files_before" ] || fail "the files differ after the restore: $(files_state) vs $files_before"
[ "$(content_sha "$file_doc")" = "$sha_doc" ] || fail "harbour.md's bytes differ after the restore"
[ "$(content_sha "$file_png")" = "$sha_png" ] || fail "pixel.png's bytes differ after the restore"
req GET "$api/v1/files/$late"
expect 404 "the file uploaded after the backup"
found="$(search "Who keeps the lighthouse at Port Vesper?")"
grep -q "Orlaith Quennell-Marsh" <<<"$found" || fail "search_files does not find the fact after the restore: $found"
# The restored conversations go on: their logs were reset with the restore
# (session B's had a deletion's tombstone, session A's had gone further).
# Each new answer must be in the session's event log (a client resuming
# from before it gets its events, not a gap).
replayed() { # SESSION AFTER-SEQ what
  curl -sS -N -m 3 -o "$work/events" "$api/v1/sessions/$1/events?after=$2" 2>/dev/null || true
  grep -q '"generation_end"' "$work/events" && ! grep -q '"gap"' "$work/events" ||
    fail "$3: the event stream does not replay the new answer: $(head -c 600 "$work/events")"
}
req GET "$api/v1/sessions/$session_a"
seq_a="$(py 'd["last_seq"]')"
send "$session_a" "{\"content\": \"Who keeps the lighthouse at Port Vesper, again?\", \"attachments\": [\"$file_doc\"]}"
last_prompt | grep -q "Orlaith Quennell-Marsh" || fail "the restored file did not ground the prompt"
replayed "$session_a" "$seq_a" "session A"
req GET "$api/v1/sessions/$session_b"
seq_b="$(py 'd["last_seq"]')"
send "$session_b" '{"content": "Back from the backup"}'
replayed "$session_b" "$seq_b" "session B (deleted after the backup)"
echo "    sessions and messages as before, files byte for byte, retrieval works, sessions take new messages" >&2

# ------------------------------------------------------------ checks of the tools themselves

step "restore refuses a backup without MANIFEST.json, and a damaged one"
mkdir -p "$work/broken"
if scripts/restore --env-file "$work/sluice.env" --yes "$work/broken" 2>"$work/refused.log"; then fail "restore took a directory without MANIFEST.json"; fi
grep -q "MANIFEST.json" "$work/refused.log" || fail "restore's refusal does not name MANIFEST.json: $(cat "$work/refused.log")"
cp -a "$backup" "$work/damaged"
printf 'x' >>"$work/damaged/objects/files/$file_doc"
if scripts/restore --check "$work/damaged" 2>"$work/refused.log"; then fail "restore --check took a damaged backup"; fi
grep -q "damaged" "$work/refused.log" || fail "restore's refusal of a damaged backup: $(cat "$work/refused.log")"

step "retention: BACKUP_RETENTION_DAYS=7"
old8="$(date -u -d '8 days ago' +%Y%m%dT%H%M%SZ)"
old3="$(date -u -d '3 days ago' +%Y%m%dT%H%M%SZ)"
old9="$(date -u -d '9 days ago' +%Y%m%dT%H%M%SZ)"
for d in "$old8" "$old3"; do mkdir "$work/backups/$d"; echo '{}' >"$work/backups/$d/MANIFEST.json"; done
mkdir "$work/backups/$old9"                  # no manifest: not a finished backup
mkdir "$work/backups/keep-me"; echo '{}' >"$work/backups/keep-me/MANIFEST.json"
sleep 1 # one backup a second
second="$(BACKUP_RETENTION_DAYS=7 scripts/backup --env-file "$work/sluice.env" "$work/backups" 2>"$work/backup2.log")" ||
  { cat "$work/backup2.log" >&2; fail "the second scripts/backup failed"; }
[ ! -e "$work/backups/$old8" ] || fail "the 8-day-old backup was kept"
for d in "$old3" "$old9" keep-me "$(basename "$backup")" "$(basename "$second")"; do
  [ -d "$work/backups/$d" ] || fail "retention deleted $d"
done

step "stopping"
echo "backup round trip: ok"
echo "backup $backup_bytes bytes (pg_dump $pg_dump_bytes; $summary_counts) in $(secs "$backup_ms") s; restore $(secs "$restore_ms") s"
