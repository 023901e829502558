#!/usr/bin/env bash
# A backup, a wiped stack and a restore, end to end: scripts/cluster starts
# Redis, PostgreSQL, S3 (s3s-fs), Chroma, two replicas and nginx on loopback
# with the fake provider; the test makes conversations and files through the
# API, checks retrieval, runs scripts/backup, wipes PostgreSQL, the bucket and
# Sluice's Chroma collections, checks through the API that everything is gone,
# runs scripts/restore, and checks that the same conversations, the same
# files (byte for byte) and retrieval are back, and that the conversations
# take new messages. Also: a restore whose PostgreSQL step fails touches
# nothing else; restore refuses another application's database, and a
# missing --yes without a terminal; only Sluice's tables, objects (files/) and
# collections (sluice-*) are backed up, restored or pruned (another
# application's tables in the same database, in public and in its own
# schema, keep what they had at the restore); a symlink in a backup is
# refused; a password in the PostgreSQL URL (in its query, or with `#`, `?`
# and `/` in its userinfo; over TCP and by socket, postgres:///) never shows
# in any argv nor in any message; the backup is private (umask 077) and
# leaves no temporary files. Then checks the backups' retention (symlinks,
# manifests that are not a backup's, bad values, --skip).
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
pg_bin="$(dirname "$(printf '%s\n' /usr/lib/postgresql/*/bin/psql | sort -V | tail -1)")"

work="$(mktemp -d /tmp/sluice-backup-test.XXXXXX)"
fake_pid="" cluster_dir="" watch_pid=""
cleanup() {
  local status=$?
  if [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null; then wait "$watch_pid" 2>/dev/null || true; fi
  [ -z "$cluster_dir" ] || scripts/cluster down "$cluster_dir" 2>/dev/null || true
  if [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null; then wait "$fake_pid" 2>/dev/null || true; fi
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
# Small clients of the bucket and of Chroma for the checks (the backup
# tool's Python has boto3).
bash -c '. scripts/backup-lib.sh; ensure_python; echo "$BK_PYTHON"' >"$work/python"
bk_python="$(cat "$work/python")"
cat >"$work/s3.py" <<'EOF'
import boto3, sys
from botocore.config import Config
env = dict(l.split("=", 1) for l in open(sys.argv[1]).read().split("\n") if "=" in l and not l.startswith("#"))
s3 = boto3.client("s3", endpoint_url=env["SLUICE_S3_ENDPOINT"], aws_access_key_id=env["SLUICE_S3_ACCESS_KEY"],
                  aws_secret_access_key=env["SLUICE_S3_SECRET_KEY"].strip('"'), region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))
def keys(prefix=""):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sluice", Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out
cmd, args = sys.argv[2], sys.argv[3:]
if cmd == "put":  # KEY TEXT
    s3.put_object(Bucket="sluice", Key=args[0], Body=args[1].encode(), ContentType="text/plain")
elif cmd == "get":  # KEY
    sys.stdout.write(s3.get_object(Bucket="sluice", Key=args[0])["Body"].read().decode())
elif cmd == "keys":  # [PREFIX]
    print("\n".join(keys(args[0] if args else "")))
elif cmd == "delete-prefix":  # PREFIX
    gone = keys(args[0])
    for k in gone:
        s3.delete_object(Bucket="sluice", Key=k)
    assert not keys(args[0]), f"objects are left under {args[0]}"
    print(f"    deleted {len(gone)} objects under {args[0]}", file=sys.stderr)
EOF
s3() { "$bk_python" "$work/s3.py" "$work/sluice.env" "$@"; }
cat >"$work/chroma.py" <<'EOF'
import json, sys, urllib.request
base = sys.argv[1] + "/api/v2/tenants/default_tenant/databases/default_database/collections"
def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as r:
        text = r.read()
        return json.loads(text) if text else None
collections = lambda: call("GET", base + "?limit=1000")
cmd, args = sys.argv[2], sys.argv[3:]
if cmd == "names":
    print("\n".join(sorted(c["name"] for c in collections())))
elif cmd == "make":  # NAME: a collection of another application
    call("POST", base, {"name": args[0], "metadata": {"owner": "another application"}})
elif cmd == "chunks":  # FILE-ID: how many chunks Sluice's collections hold of it
    print(sum(len(call("POST", f"{base}/{c['id']}/get", {"where": {"file_id": args[0]}, "include": ["metadatas"]})["ids"])
              for c in collections() if c["name"].startswith("sluice-")))
elif cmd == "delete-sluice":
    names = [c["name"] for c in collections() if c["name"].startswith("sluice-")]
    for name in names:
        call("DELETE", f"{base}/{name}")
    left = [c["name"] for c in collections() if c["name"].startswith("sluice-")]
    assert not left, left
    print(f"    deleted {len(names)} Chroma collections", file=sys.stderr)
EOF
chroma() { python3 "$work/chroma.py" "$chroma_url" "$@"; }
psql_at() { # URL SQL -> the rows, unaligned
  "$pg_bin/psql" -X -q -t -A -v ON_ERROR_STOP=1 "$1" -c "SET client_min_messages TO warning; $2"
}

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
# Another application's data beside Sluice's: an object outside files/, a
# Chroma collection not named sluice-*, and tables in Sluice's database (one
# in public, one in a schema of its own). No backup, restore or prune may
# touch them.
s3 put other-app/keep.txt "another application's object"
chroma make other-app-notes
psql_at "$postgres_url" "CREATE TABLE public.other_app (id int PRIMARY KEY, note text NOT NULL);
  INSERT INTO public.other_app VALUES (1, 'before the backup');
  CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int PRIMARY KEY, amount int NOT NULL);
  INSERT INTO billing.invoices VALUES (1, 100)" >/dev/null
other_rows() { # -> the other application's rows, both tables
  psql_at "$postgres_url" "SELECT (SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM public.other_app)
    || ' / ' || (SELECT string_agg(id || ':' || amount, ',' ORDER BY id) FROM billing.invoices)"
}
# Sluice's tables, as the backup scripts list them.
# shellcheck disable=SC2016
sluice_tables="$(bash -c '. scripts/backup-lib.sh; echo "$SLUICE_TABLES"')"
[ -n "$sluice_tables" ] || fail "scripts/backup-lib.sh has no SLUICE_TABLES"

# ------------------------------------------------------------ backup

step "scripts/backup"
mkdir "$work/tmp"
t0="$(date +%s%N)"
backup="$(TMPDIR="$work/tmp" scripts/backup --env-file "$work/sluice.env" "$work/backups" 2>"$work/backup.log")" ||
  { cat "$work/backup.log" >&2; fail "scripts/backup failed"; }
backup_ms="$(ms_since "$t0")"
[ -z "$(ls -A "$work/tmp")" ] || fail "the backup left temporary files: $(ls -A "$work/tmp")"
# Private: the backup's directory and files are its owner's only (umask 077).
[ "$(stat -c %a "$backup")" = 700 ] || fail "the backup directory is mode $(stat -c %a "$backup"), not 700"
[ "$(stat -c %a "$backup/postgres.dump")" = 600 ] || fail "postgres.dump is mode $(stat -c %a "$backup/postgres.dump"), not 600"
[ "$(stat -c %a "$backup/objects/files/$file_doc")" = 600 ] || fail "an object's copy is mode $(stat -c %a "$backup/objects/files/$file_doc")"
loose="$(find "$backup" -perm /077 | head -3)"
[ -z "$loose" ] || fail "the backup has files others can read: $loose"
# Only Sluice's data: objects under files/, collections sluice-*.
[ ! -e "$backup/objects/other-app" ] || fail "the backup copied an object outside files/"
if grep -v '"key": "files/' "$backup/objects.jsonl" | grep -q .; then fail "objects.jsonl lists objects outside files/"; fi
if grep -q other-app-notes "$backup/chroma/collections.json"; then fail "the backup copied a collection not named sluice-*"; fi
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
[ "$(py 'd["sluice_version"]')" != null ] || fail "the manifest has no Sluice version"
[ "$(py 'd["objects"]["prefix"]')" = "files/" ] || fail "the manifest's objects prefix is $(py 'd["objects"]["prefix"]')"
[ "$(py 'd["objects"]["skipped"]')" = "[]" ] || fail "the backup skipped objects: $(py 'd["objects"]["skipped"]')"
# Only Sluice's tables: the manifest names them, the dump holds no other.
[ "$(py '" ".join(d["postgres"]["tables"])')" = "$sluice_tables" ] || fail "the manifest's tables: $(py 'd["postgres"]["tables"]')"
[ "$(py 'sorted(d["postgres"]["rows"])')" = "$(python3 -c 'import json,sys; print(json.dumps(sorted(sys.argv[1].split())))' "$sluice_tables")" ] ||
  fail "the dump's rows are of the tables $(py 'sorted(d["postgres"]["rows"])'), not Sluice's"
"$pg_bin/pg_restore" --list "$backup/postgres.dump" >"$work/toc"
dumped="$(sed -n 's/^[0-9]*; [0-9]* [0-9]* TABLE public \([a-z_]*\) .*/\1/p' "$work/toc" | sort | tr '\n' ' ')"
[ "$dumped" = "$(tr ' ' '\n' <<<"$sluice_tables" | sort | tr '\n' ' ')" ] || fail "the dump's tables are $dumped"
if grep -E -q "other_app|billing|invoices|SCHEMA" "$work/toc"; then fail "the dump holds more than Sluice's tables: $(grep -E 'other_app|billing|invoices|SCHEMA' "$work/toc")"; fi
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
# And the other application goes on: its rows must survive the restore.
psql_at "$postgres_url" "INSERT INTO public.other_app VALUES (2, 'after the backup'); INSERT INTO billing.invoices VALUES (2, 200)" >/dev/null
other_after="1:before the backup,2:after the backup / 1:100,2:200"
[ "$(other_rows)" = "$other_after" ] || fail "the other application's rows: $(other_rows)"

# ------------------------------------------------------------ refused restores

step "restores that fail touch nothing: no --yes without a terminal; pg_restore failing"
stop_replicas
late_key="files/$late"
s3 keys files/ | grep -qxF "$late_key" || fail "the late file has no object"
late_chunks="$(chroma chunks "$late")"
[ "$late_chunks" -ge 1 ] || fail "the late file has no chunks in Chroma"
if scripts/restore --env-file "$work/sluice.env" "$backup" </dev/null 2>"$work/refused.log"; then
  fail "restore went on without a terminal and without --yes"
fi
grep -q -- "--yes" "$work/refused.log" || fail "restore's refusal without a terminal does not name --yes: $(cat "$work/refused.log")"
# A view on sessions: --clean's DROP TABLE sessions fails, and the whole
# pg_restore transaction with it.
psql_at "$postgres_url" 'CREATE VIEW backup_test_blocker AS SELECT id FROM sessions' >/dev/null
if scripts/restore --env-file "$work/sluice.env" --yes "$backup" 2>"$work/failed.log"; then
  fail "restore succeeded although pg_restore could not drop sessions"
fi
grep -q "rolled back" "$work/failed.log" || fail "restore's failure does not say it was rolled back: $(tail -5 "$work/failed.log")"
if grep -q "backup-tool: objects:\|backup-tool: chroma:\|backup-tool: redis:" "$work/failed.log"; then
  fail "restore touched the other stores although PostgreSQL failed: $(grep 'backup-tool:' "$work/failed.log")"
fi
s3 keys files/ | grep -qxF "$late_key" || fail "the failed restore deleted the object uploaded after the backup"
[ "$(chroma chunks "$late")" = "$late_chunks" ] || fail "the failed restore changed the late file's chunks in Chroma"
[ "$(psql_at "$postgres_url" "SELECT count(*) FROM sessions WHERE id = '$session_b'")" = 0 ] ||
  fail "the failed restore brought session B back"
[ "$(psql_at "$postgres_url" "SELECT count(*) FROM files WHERE id = '$late'")" = 1 ] ||
  fail "the failed restore removed the late file's row"
psql_at "$postgres_url" 'DROP VIEW backup_test_blocker' >/dev/null
echo "    no --yes: refused; pg_restore failed: rolled back, the late object and its $late_chunks chunks still there" >&2

# ------------------------------------------------------------ wipe

step "wiping the stack: Sluice's tables, Sluice's objects (files/), Sluice's Chroma collections"
stop_replicas
# Sluice's tables only: the other application's stay, with their later rows.
"$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "$postgres_url" \
  -c "SET client_min_messages TO warning; DROP TABLE ${sluice_tables// /, } CASCADE;" >/dev/null
[ "$(other_rows)" = "$other_after" ] || fail "the wipe touched the other application's rows: $(other_rows)"
s3 delete-prefix files/
chroma delete-sluice
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
if s3 keys files/ | grep -qxF "$late_key"; then fail "the object uploaded after the backup was not pruned"; fi
[ "$(chroma chunks "$late")" = 0 ] || fail "chunks of the file uploaded after the backup are left"
[ "$(s3 get other-app/keep.txt)" = "another application's object" ] || fail "the restore touched an object outside files/"
chroma names | grep -qx other-app-notes || fail "the restore deleted a collection not named sluice-*"
[ "$(other_rows)" = "$other_after" ] ||
  fail "the restore touched the other application's tables (public.other_app, billing.invoices): $(other_rows), not $other_after"
found="$(search "Who keeps the lighthouse at Port Vesper?")"
grep -q "Orlaith Quennell-Marsh" <<<"$found" || fail "search_files does not find the fact after the restore: $found"
# The restored conversations go on: their logs were reset with the restore
# (session B's had a deletion's tombstone, session A's had gone further).
# Each new answer must be in the session's event log (a client resuming
# from before it gets its events, not a gap).
replayed() { # SESSION AFTER-SEQ what
  curl -sS -N -m 3 -o "$work/events" "$api/v1/sessions/$1/events?after=$2" 2>/dev/null || true
  if ! grep -q '"generation_end"' "$work/events" || grep -q '"gap"' "$work/events"; then
    fail "$3: the event stream does not replay the new answer: $(head -c 600 "$work/events")"
  fi
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
echo "    sessions and messages as before, files byte for byte, retrieval works, sessions take new messages; the other application's tables untouched" >&2

# ------------------------------------------------------------ checks of the tools themselves

step "restore refuses a backup without MANIFEST.json, and a damaged one"
mkdir -p "$work/broken"
if scripts/restore --env-file "$work/sluice.env" --yes "$work/broken" 2>"$work/refused.log"; then fail "restore took a directory without MANIFEST.json"; fi
grep -q "MANIFEST.json" "$work/refused.log" || fail "restore's refusal does not name MANIFEST.json: $(cat "$work/refused.log")"
cp -a "$backup" "$work/damaged"
printf 'x' >>"$work/damaged/objects/files/$file_doc"
if scripts/restore --check "$work/damaged" 2>"$work/refused.log"; then fail "restore --check took a damaged backup"; fi
grep -q "damaged" "$work/refused.log" || fail "restore's refusal of a damaged backup: $(cat "$work/refused.log")"

step "restore refuses a symlink in a backup"
cp -a "$backup" "$work/linked"
cp "$work/linked/objects/files/$file_doc" "$work/outside-object"
ln -sf "$work/outside-object" "$work/linked/objects/files/$file_doc" # same bytes, same sha256
if scripts/restore --check "$work/linked" 2>"$work/refused.log"; then fail "restore --check took a backup with a symlinked object"; fi
grep -q "symlink" "$work/refused.log" || fail "restore's refusal of a symlink: $(cat "$work/refused.log")"

step "restore refuses an older backup whose dump holds the whole database"
# As scripts/backup made them before it dumped only Sluice's tables: a dump
# of every table (the other application's too), its manifest's sha256 right.
cp -a "$backup" "$work/whole"
"$pg_bin/pg_dump" --format=custom --file="$work/whole/postgres.dump" --dbname="$postgres_url"
python3 - "$work/whole" <<'EOF'
import hashlib, json, os, sys
path = os.path.join(sys.argv[1], "MANIFEST.json")
m = json.load(open(path))
m["postgres"].pop("tables", None)
dump = os.path.join(sys.argv[1], "postgres.dump")
for f in m["files"]:
    if f["path"] == "postgres.dump":
        f["sha256"] = hashlib.sha256(open(dump, "rb").read()).hexdigest()
        f["bytes"] = os.path.getsize(dump)
json.dump(m, open(path, "w"))
EOF
psql_at "$postgres_url" "INSERT INTO public.other_app VALUES (3, 'after the restore')" >/dev/null
other_now="1:before the backup,2:after the backup,3:after the restore / 1:100,2:200"
if scripts/restore --env-file "$work/sluice.env" --yes "$work/whole" 2>"$work/refused.log"; then
  fail "restore took a dump of the whole database"
fi
grep -q "more than Sluice's tables.*other_app" "$work/refused.log" || fail "restore's refusal of a whole database's dump: $(cat "$work/refused.log")"
[ "$(other_rows)" = "$other_now" ] || fail "the refused restore touched the other application's tables: $(other_rows)"

step "restore refuses another application's database"
"$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "$postgres_url" -c 'CREATE DATABASE other_app' >/dev/null
other_url="${postgres_url%/*}/other_app"
psql_at "$other_url" "CREATE TABLE sessions (id int PRIMARY KEY, note text NOT NULL); INSERT INTO sessions VALUES (1, 'not Sluice''s')" >/dev/null
sed "s|^SLUICE_POSTGRES_URL=.*|SLUICE_POSTGRES_URL=$other_url|" "$work/sluice.env" >"$work/other.env"
if scripts/restore --env-file "$work/other.env" --yes "$backup" 2>"$work/refused.log"; then
  fail "restore replaced another application's database"
fi
grep -q "sluice_migrations" "$work/refused.log" || fail "restore's refusal of another database: $(cat "$work/refused.log")"
if grep -q "backup-tool: objects:\|backup-tool: chroma:" "$work/refused.log"; then fail "the refused restore touched the bucket or Chroma"; fi
[ "$(psql_at "$other_url" 'SELECT id, note FROM sessions')" = "1|not Sluice's" ] ||
  fail "the other application's table changed: $(psql_at "$other_url" 'SELECT * FROM sessions')"

step "passwords in the PostgreSQL URL (its query; #, ? and / in its userinfo; by socket): never in argv; --skip backups; restores into empty databases"
# Roles that must give their password (scram), whatever the cluster's
# trust: over TCP, and sluice_pw by the cluster's socket too.
pg_hostport="${postgres_url#*@}"
pg_hostport="${pg_hostport%%/*}"
pg_port="${pg_hostport##*:}"
pg_socket_dir="$cluster_dir/pg"
psql_at "$postgres_url" "CREATE ROLE sluice_bk LOGIN SUPERUSER PASSWORD 'Bk7Secret!@x&y';
  CREATE ROLE sluice_pw LOGIN SUPERUSER PASSWORD 'Hunter2#top?se/cret@x'" >/dev/null
hba="$cluster_dir/pg/data/pg_hba.conf"
{
  echo "host all sluice_bk 127.0.0.1/32 scram-sha-256"
  echo "host all sluice_pw 127.0.0.1/32 scram-sha-256"
  echo "local all sluice_pw scram-sha-256"
  cat "$hba"
} >"$work/pg_hba.conf"
cat "$work/pg_hba.conf" >"$hba"
psql_at "$postgres_url" 'SELECT pg_reload_conf()' >/dev/null
for url in "postgres://sluice_bk@$pg_hostport/postgres" "postgres://sluice_pw@$pg_hostport/postgres"; do
  if PGPASSWORD=wrong "$pg_bin/psql" -X -q -w "$url" -c 'SELECT 1' >/dev/null 2>&1; then
    fail "$url logs in without its password: the checks below would prove nothing"
  fi
done
# By socket (postgres:///, no authority) if the cluster's socket is there.
socket_ok=0
if [ -S "$pg_socket_dir/.s.PGSQL.$pg_port" ] &&
  "$pg_bin/psql" -X -q -w "postgres:///postgres?host=$pg_socket_dir&port=$pg_port&user=postgres" -c 'SELECT 1' >/dev/null 2>&1; then
  socket_ok=1
  if PGPASSWORD=wrong "$pg_bin/psql" -X -q -w "postgres:///postgres?host=$pg_socket_dir&port=$pg_port&user=sluice_pw" -c 'SELECT 1' >/dev/null 2>&1; then
    fail "sluice_pw logs in by socket without its password: the checks below would prove nothing"
  fi
fi
secret_query="password=Bk7Secret%21%40x%26y&application_name=sluice-backup-test"
printf 'SLUICE_POSTGRES_URL=postgres://sluice_bk@%s/postgres?%s\n' "$pg_hostport" "$secret_query" >"$work/pg-only.env"
"$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "$postgres_url" -c 'CREATE DATABASE sluice_fresh' >/dev/null
printf 'SLUICE_POSTGRES_URL=postgres://sluice_bk@%s/sluice_fresh?%s\n' "$pg_hostport" "$secret_query" >"$work/fresh.env"
# Watches every process's argv for the password while the tools run.
rm -f "$work/watch.stop"
# The passwords' telltale parts, in the environment only (never in an argv,
# the test's own commands' included).
export PW_MARKERS="Bk7Secret Hunter2 cret%40x cret@x Wr0ng w%40rd"
# leaks FILE...: names the files that hold a password; redacted FILE: its
# last lines, passwords masked (for a failure's message).
leaks() { python3 -c 'import os, sys; [print(p) for p in sys.argv[1:] if any(m.encode() in open(p, "rb").read() for m in os.environ["PW_MARKERS"].split())]' "$@"; }
redacted() { python3 -c 'import os, sys; t = open(sys.argv[1], errors="replace").read(); [t := t.replace(m, "<PASSWORD>") for m in os.environ["PW_MARKERS"].split()]; print("\n".join(t.splitlines()[-8:]))' "$1"; }
python3 - "$work/watch.stop" "$work/watch.hits" <<'EOF' &
import os, sys, time
markers, me = [m.encode() for m in os.environ["PW_MARKERS"].split()], str(os.getpid())
hits, scans = set(), 0
while not os.path.exists(sys.argv[1]):
    for pid in os.listdir("/proc"):
        if pid.isdigit() and pid != me:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            for marker in markers:
                if marker in cmd:
                    hits.add(cmd.replace(b"\0", b" ").replace(marker, b"<PASSWORD>").decode(errors="replace"))
    scans += 1
    time.sleep(0.002)
with open(sys.argv[2], "w") as f:
    f.write(f"{scans} scans\n" + "".join(h + "\n" for h in sorted(hits)))
EOF
watch_pid=$!
old10="$(date -u -d '10 days ago' +%Y%m%dT%H%M%SZ)"
mkdir "$work/backups/$old10"; echo '{"format": "sluice-backup/1"}' >"$work/backups/$old10/MANIFEST.json"
sleep 1 # one backup a second
pg_only="$(BACKUP_RETENTION_DAYS=7 scripts/backup --env-file "$work/pg-only.env" --skip objects --skip chroma "$work/backups" 2>"$work/pg-only.log")" ||
  { cat "$work/pg-only.log" >&2; fail "the --skip backup with the password in the URL's query failed"; }
# The fresh database holds another application's table, named unlike
# Sluice's: not a reason to refuse, and left alone.
psql_at "${postgres_url%/*}/sluice_fresh" "CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (7)" >/dev/null
scripts/restore --env-file "$work/fresh.env" --yes "$pg_only" 2>"$work/fresh.log" ||
  { cat "$work/fresh.log" >&2; fail "the restore into an empty database failed"; }
[ "$(psql_at "${postgres_url%/*}/sluice_fresh" 'SELECT id FROM notes')" = 7 ] || fail "the restore touched another application's table notes"
# A password with `#`, `?`, `/` and `@` in the userinfo. Sluice's driver
# (tokio-postgres) ends the userinfo at the first `@`, so only that `@`
# needs percent-encoding: `#`, `?` and `/` are the password's as written.
pw_url="postgres://sluice_pw:Hunter2#top?se/cret%40x@$pg_hostport"
sock_query="host=$pg_socket_dir&port=$pg_port&user=sluice_pw&password=Hunter2#top?se/cret%40x"
# Sluice itself takes the URL (the replicas' binary, on its own, with the
# embedded backends but this PostgreSQL): it starts only if it connects.
sluice_takes() { # URL what
  local port pid ok=0
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$work/sluice-pw"
  ( # The URL in the environment, never in an argv; no other store configured.
    while read -r name; do
      if [[ "$name" =~ ^(SLUICE_|POSTGRES_|REDIS_|CHROMA_|S3_|OPENAI_|ARK_) ]]; then unset "$name"; fi
    done < <(compgen -e)
    export SLUICE_POSTGRES_URL="$1" SLUICE_ADDR="127.0.0.1:$port" SLUICE_DATA_DIR="$work/sluice-pw"
    exec "$target/debug/sluice" serve
  ) >"$work/sluice-pw.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    if curl -sf -o /dev/null "http://127.0.0.1:$port/health"; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  [ "$ok" = 1 ] || fail "Sluice does not start with $2: $(redacted "$work/sluice-pw.log")"
}
sluice_takes "$pw_url/postgres" "the password's #, ? and / as they are in the userinfo"
printf 'SLUICE_POSTGRES_URL=%s/postgres\n' "$pw_url" >"$work/pw.env"
"$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "$postgres_url" -c 'CREATE DATABASE sluice_pw_tcp' -c 'CREATE DATABASE sluice_pw_sock' >/dev/null
printf 'SLUICE_POSTGRES_URL=%s/sluice_pw_tcp\n' "$pw_url" >"$work/pw-restore.env"
pw_backup="$(scripts/backup --env-file "$work/pw.env" --skip objects --skip chroma "$work/pw-backups" 2>"$work/pw-backup.log")" ||
  { redacted "$work/pw-backup.log" >&2; fail "the backup with #, ? and / in the URL's password failed"; }
scripts/restore --env-file "$work/pw-restore.env" --yes "$pw_backup" 2>"$work/pw-restore.log" ||
  { redacted "$work/pw-restore.log" >&2; fail "the restore with #, ? and / in the URL's password failed"; }
pw_logs=("$work/pw-backup.log" "$work/pw-restore.log" "$pw_backup/MANIFEST.json")
if [ "$socket_ok" = 1 ]; then
  sluice_takes "postgres:///postgres?$sock_query" "postgres:/// (by socket)"
  printf 'SLUICE_POSTGRES_URL=postgres:///postgres?%s\n' "$sock_query" >"$work/sock.env"
  printf 'SLUICE_POSTGRES_URL=postgres:///sluice_pw_sock?%s\n' "$sock_query" >"$work/sock-restore.env"
  sleep 1 # one backup a second
  sock_backup="$(scripts/backup --env-file "$work/sock.env" --skip objects --skip chroma "$work/pw-backups" 2>"$work/sock-backup.log")" ||
    { redacted "$work/sock-backup.log" >&2; fail "the backup by socket (postgres:///) failed"; }
  scripts/restore --env-file "$work/sock-restore.env" --yes "$sock_backup" 2>"$work/sock-restore.log" ||
    { redacted "$work/sock-restore.log" >&2; fail "the restore by socket (postgres:///) failed"; }
  pw_logs+=("$work/sock-backup.log" "$work/sock-restore.log" "$sock_backup/MANIFEST.json")
  cp "$sock_backup/MANIFEST.json" "$work/body"
  [ "$(py 'd["postgres"]["host"]')" = "$pg_socket_dir" ] || fail "the socket backup's host is $(py 'd["postgres"]["host"]')"
  [ "$(psql_at "${postgres_url%/*}/sluice_pw_sock" 'SELECT count(*) FROM sessions')" = "$(py 'd["postgres"]["rows"]["sessions"]')" ] ||
    fail "the restore by socket did not bring the backup's sessions"
fi
cp "$pw_backup/MANIFEST.json" "$work/body"
[ "$(psql_at "${postgres_url%/*}/sluice_pw_tcp" 'SELECT count(*) FROM sessions')" = "$(py 'd["postgres"]["rows"]["sessions"]')" ] ||
  fail "the restore with #, ? and / in the URL's password did not bring the backup's sessions"
# Failures name no password either: a URL the tools refuse, and a wrong password.
printf 'SLUICE_POSTGRES_URL=%s/postgres?sslmode\n' "$pw_url" >"$work/bad.env"
if scripts/backup --env-file "$work/bad.env" --skip objects --skip chroma "$work/pw-backups" 2>"$work/bad.log"; then
  fail "a URL with a query parameter without a value was taken"
fi
grep -q "cannot read the PostgreSQL URL" "$work/bad.log" || fail "the refused URL: $(redacted "$work/bad.log")"
printf 'SLUICE_POSTGRES_URL=postgres://sluice_pw:Wr0ng#pa?ss/w%%40rd@%s/postgres\n' "$pg_hostport" >"$work/wrong.env"
if scripts/backup --env-file "$work/wrong.env" --skip objects --skip chroma "$work/pw-backups" 2>"$work/wrong.log"; then
  fail "a backup with a wrong password succeeded"
fi
grep -q "password authentication failed" "$work/wrong.log" || fail "the backup with a wrong password: $(redacted "$work/wrong.log")"
pw_logs+=("$work/bad.log" "$work/wrong.log")
leaked="$(leaks "${pw_logs[@]}")"
[ -z "$leaked" ] || fail "a PostgreSQL password was printed, in $leaked"
touch "$work/watch.stop"
wait "$watch_pid" || fail "the argv watcher failed"
watch_pid=""
[ "$(sed -n 1p "$work/watch.hits")" != "0 scans" ] || fail "the argv watcher never looked"
if [ "$(wc -l <"$work/watch.hits")" -gt 1 ]; then fail "the PostgreSQL password showed in argv: $(sed -n '2,4p' "$work/watch.hits")"; fi
[ -z "$(leaks "$work/pg-only.log" "$work/fresh.log" "$pg_only/MANIFEST.json")" ] || fail "the password was printed"
[ -d "$work/backups/$old10" ] || fail "retention ran after a --skip backup"
grep -q "retention: not run" "$work/pg-only.log" || fail "the --skip backup did not say retention was not run"
cp "$pg_only/MANIFEST.json" "$work/body"
[ "$(py 'd["stores"]')" = '["postgres"]' ] || fail "the --skip backup holds $(py 'd["stores"]')"
[ "$(psql_at "${postgres_url%/*}/sluice_fresh" 'SELECT count(*) FROM sessions')" = "$(py 'd["postgres"]["rows"]["sessions"]')" ] ||
  fail "the empty database did not get the backup's sessions"
socket_note="a backup and a restore by socket (postgres:///)"
[ "$socket_ok" = 1 ] || socket_note="by socket: SKIPPED (no socket at $pg_socket_dir)"
echo "    $(sed -n 1p "$work/watch.hits") of every argv: no password (in the query; #, ? and / in the userinfo; $socket_note); retention skipped; the empty databases restored, their other tables untouched" >&2

step "the backup tool's own rules: keys, symlinks, collections, retention's failures, URLs' passwords"
# shellcheck disable=SC2016
pg_split="$(bash -c '. scripts/backup-lib.sh; unset PGPASSWORD; PG_URL="postgres://u:p%40ss@h:5/db?sslmode=disable&password=s%3Dcret%26x&application_name=a%20b"; split_pg_url; printf "%s\n%s\n" "$PG_URL_SAFE" "$PGPASSWORD"')"
[ "$pg_split" = $'postgres://u@h:5/db?sslmode=disable&application_name=a%20b\ns=cret&x' ] ||
  fail "split_pg_url: $pg_split"
# shellcheck disable=SC2016
pg_split="$(bash -c '. scripts/backup-lib.sh; unset PGPASSWORD; PG_URL="postgresql://u:p%40ss%3Aw@h/db"; split_pg_url; printf "%s\n%s\n" "$PG_URL_SAFE" "$PGPASSWORD"')"
[ "$pg_split" = $'postgresql://u@h/db\np@ss:w' ] || fail "split_pg_url (user:password@): $pg_split"
# shellcheck disable=SC2016
pg_split="$(bash -c '. scripts/backup-lib.sh; unset PGPASSWORD; PG_URL="postgres://u:Hunter2#top?se/cret%40x@h:5/db"; split_pg_url; printf "%s|%s|%s|%s\n" "$PG_URL_SAFE" "$PGPASSWORD" "$PG_URL_HOST" "$PG_URL_DB"')"
[ "$pg_split" = 'postgres://u@h:5/db|Hunter2#top?se/cret@x|h|db' ] || fail "split_pg_url (#, ? and / in the password): ${pg_split//Hunter2/<PASSWORD>}"
# shellcheck disable=SC2016
pg_split="$(bash -c '. scripts/backup-lib.sh; unset PGPASSWORD; PG_URL="postgres:///db?host=/tmp/pg&user=x"; split_pg_url; printf "%s|%s\n" "$PG_URL_SAFE" "${PGPASSWORD-unset}"')"
[ "$pg_split" = 'postgres:///db?host=/tmp/pg&user=x|unset' ] || fail "split_pg_url (postgres:///): $pg_split"
# shellcheck disable=SC2016
pg_split="$(bash -c '. scripts/backup-lib.sh; unset PGPASSWORD; PG_URL=$'"'"'postgres://u:new%0Aline%0A@h/db'"'"'; split_pg_url; printf "%s|%s|\n" "$PG_URL_SAFE" "$PGPASSWORD"')"
[ "$pg_split" = $'postgres://u@h/db|new\nline\n|' ] || fail "split_pg_url (newlines in the password): $pg_split"
"$bk_python" - "$root/scripts/backup-tool.py" "$work/unit" <<'EOF' || fail "the backup tool's rules (above)"
import argparse, contextlib, datetime as dt, importlib.util, io, json, os, sys
spec = importlib.util.spec_from_file_location("backup_tool", sys.argv[1])
bt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bt)
work = sys.argv[2]
os.makedirs(work)

def refused(f, *args):
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            f(*args)
    except SystemExit:
        return True
    return False

# Object keys: what a backup can hold, and what it skips.
ok = ["files/ok", "files/ok.sent", "files/d/e", "files/" + "y" * 255]
bad = ["files/a//b", "files/./x", "files/../x", "files/dir/", "files/" + "x" * 256,
       "files/" + "\u00e9" * 128, "files/d", "other-app/x", ""]
kept, skipped = bt.plan_keys([(k, 1) for k in ok + bad])
assert sorted(k for k, _ in kept) == sorted(ok), kept
assert sorted(s["key"] for s in skipped) == sorted(bad), skipped
assert all(s["reason"] for s in skipped)

# Paths in a backup: no symlink, nothing outside it.
b = os.path.join(work, "backup")
os.makedirs(os.path.join(b, "objects", "files"))
open(os.path.join(b, "objects", "files", "real"), "w").write("x")
open(os.path.join(work, "outside"), "w").write("x")
os.symlink(os.path.join(work, "outside"), os.path.join(b, "objects", "files", "link"))
os.makedirs(os.path.join(work, "elsewhere"))
open(os.path.join(work, "elsewhere", "f"), "w").write("x")
os.symlink(os.path.join(work, "elsewhere"), os.path.join(b, "objects", "dirlink"))
assert bt.backup_path(b, "objects/files/real").endswith("objects/files/real")
assert refused(bt.backup_path, b, "objects/files/link")
assert refused(bt.backup_path, b, "objects/dirlink/f")
assert refused(bt.backup_path, b, "objects/../../outside")
assert refused(bt.backup_path, b, "/etc/passwd")

# collections.json: only sluice-* is restored; a file name that is not the collection's is refused.
os.makedirs(os.path.join(b, "chroma"))
def collections(entries):
    with open(os.path.join(b, "chroma", "collections.json"), "w") as f:
        json.dump({"collections": entries}, f)
collections([{"name": "other-app-notes", "file": "other-app-notes.jsonl.gz"},
             {"name": "sluice-abc", "file": "sluice-abc.jsonl.gz"}])
with contextlib.redirect_stderr(io.StringIO()) as err:
    assert [c["name"] for c in bt.saved_collections(b)] == ["sluice-abc"]
assert "other-app-notes" in err.getvalue(), err.getvalue()
collections([{"name": "sluice-abc", "file": "../../outside"}])
assert refused(bt.saved_collections, b)

# Retention: a deletion that fails does not stop the others; a symlink is
# never followed; only a MANIFEST.json that is a backup's (JSON, our format,
# not a symlink) makes a directory a backup.
r = os.path.join(work, "backups")
os.makedirs(r)
name = lambda days: (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).strftime("%Y%m%dT%H%M%SZ")
stuck, old, linked = name(9), name(10), name(11)
empty, text, other_format, manifest_link = name(12), name(13), name(14), name(15)
ours = json.dumps({"format": bt.FORMAT})
for n, manifest in ((stuck, ours), (old, ours), (empty, "{}"), (text, "not JSON"),
                    (other_format, '{"format": "something-else/1"}')):
    os.makedirs(os.path.join(r, n))
    open(os.path.join(r, n, "MANIFEST.json"), "w").write(manifest)
target = os.path.join(work, "linked-target")
os.makedirs(target)
open(os.path.join(target, "MANIFEST.json"), "w").write(ours)
os.symlink(target, os.path.join(r, linked))
os.makedirs(os.path.join(r, manifest_link))
os.symlink(os.path.join(target, "MANIFEST.json"), os.path.join(r, manifest_link, "MANIFEST.json"))
def rmtree(path):
    if path.endswith(stuck):
        raise PermissionError(13, "Permission denied", path)
    bt.shutil.rmtree(path)
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    bt.retention(argparse.Namespace(root=r, days=7, keep=""), rmtree=rmtree)
result = json.loads(out.getvalue())
not_backups = sorted([empty, text, other_format, manifest_link])
assert result == {"deleted": [old], "failed": [stuck], "symlinks": [linked], "not_backups": not_backups}, result
assert os.path.isdir(os.path.join(r, stuck)) and not os.path.exists(os.path.join(r, old))
assert all(os.path.isfile(os.path.join(r, n, "MANIFEST.json")) for n in not_backups)
assert os.path.islink(os.path.join(r, linked)) and os.path.isfile(os.path.join(target, "MANIFEST.json"))

# PostgreSQL URLs read as tokio-postgres reads them: the userinfo ends at
# the first `@`; the password is percent-decoded; the safe URL keeps the rest
# as written; no authority (postgres:///) stays so.
cases = {
    "postgres://u:Hunter2#top?se/cret%40x@h:5/db": ("postgres://u@h:5/db", b"Hunter2#top?se/cret@x", "h", "db"),
    "postgres://u:p%40ss@h/db?password=q%23&sslmode=disable": ("postgres://u@h/db?sslmode=disable", b"q#", "h", "db"),
    "postgres://u%2Bx:a:b@[::1]:5,h2/d%20b": ("postgres://u%2Bx@[::1]:5,h2/d%20b", b"a:b", "::1,h2", "d b"),
    "postgres:///db?host=/tmp/pg&user=x": ("postgres:///db?host=/tmp/pg&user=x", None, "/tmp/pg", "db"),
    "postgres:///db?host=/tmp/pg&password=s#e?c/r&user=x": ("postgres:///db?host=/tmp/pg&user=x", b"s#e?c/r", "/tmp/pg", "db"),
    "postgresql://h?dbname=d&password=x": ("postgresql://h?dbname=d", b"x", "h", "d"),
    "postgres://us/er:pw@h/db": ("postgres://us%2Fer@h/db", b"pw", "h", "db"),
}
for url, expected in cases.items():
    assert bt.pg_url(url) == expected, (url, bt.pg_url(url))
for url in ("mysql://u:Hunter2@h/db", "postgres://u:Hunter2@h/db?a&password=Hunter2", "postgres://u:Hunter2@h/db?sslmode"):
    try:
        bt.pg_url(url)
        raise AssertionError(f"pg_url took {url}")
    except bt.PgUrlError as e:
        assert "Hunter2" not in str(e), str(e)

# A Redis Cluster URL's user and password are percent-decoded.
import redis.cluster
seen = {}
class Stop(Exception):
    pass
class FakeCluster:
    PRIMARIES = "primaries"
    def __init__(self, **kwargs):
        seen.update(kwargs)
        raise Stop()
redis.cluster.RedisCluster = FakeCluster
os.environ["BK_REDIS_URL"] = "redis-cluster://us%40er:p%40ss%3Aw%2Fd@127.0.0.1:7000?node=127.0.0.1:7001"
try:
    bt.redis_reset_logs(None)
except Stop:
    pass
assert seen["username"] == "us@er" and seen["password"] == "p@ss:w/d", {k: seen.get(k) for k in ("username",)}
print("    keys, paths, collections, retention, PostgreSQL URLs and Redis passwords as expected", file=sys.stderr)
EOF

step "retention: BACKUP_RETENTION_DAYS=7"
before="$(ls -A "$work/backups")"
for bad in abc -1 7.5 36501 99999999999999999999; do
  if BACKUP_RETENTION_DAYS="$bad" scripts/backup --env-file "$work/sluice.env" "$work/backups" 2>"$work/refused.log"; then
    fail "scripts/backup took BACKUP_RETENTION_DAYS=$bad"
  fi
  grep -q "BACKUP_RETENTION_DAYS must be a whole number" "$work/refused.log" ||
    fail "BACKUP_RETENTION_DAYS=$bad: $(cat "$work/refused.log")"
done
[ "$(ls -A "$work/backups")" = "$before" ] || fail "a backup with a bad BACKUP_RETENTION_DAYS wrote something"
old8="$(date -u -d '8 days ago' +%Y%m%dT%H%M%SZ)"
old3="$(date -u -d '3 days ago' +%Y%m%dT%H%M%SZ)"
old9="$(date -u -d '9 days ago' +%Y%m%dT%H%M%SZ)"
old12="$(date -u -d '12 days ago' +%Y%m%dT%H%M%SZ)"
manifest='{"format": "sluice-backup/1", "name": "an old one"}'
for d in "$old8" "$old3"; do mkdir "$work/backups/$d"; echo "$manifest" >"$work/backups/$d/MANIFEST.json"; done
mkdir "$work/backups/$old9"                  # no manifest: not a finished backup (kept)
mkdir "$work/backups/keep-me"; echo "$manifest" >"$work/backups/keep-me/MANIFEST.json"
# Old directories whose MANIFEST.json is not a backup's: kept.
old13="$(date -u -d '13 days ago' +%Y%m%dT%H%M%SZ)"
old14="$(date -u -d '14 days ago' +%Y%m%dT%H%M%SZ)"
mkdir "$work/backups/$old13"; echo 'not JSON' >"$work/backups/$old13/MANIFEST.json"
mkdir "$work/backups/$old14"; echo '{"files": []}' >"$work/backups/$old14/MANIFEST.json"
# A symlink named like an old backup, to a directory outside: never followed.
mkdir "$work/not-a-backup"; echo "$manifest" >"$work/not-a-backup/MANIFEST.json"
ln -s "$work/not-a-backup" "$work/backups/$old12"
sleep 1 # one backup a second
second="$(BACKUP_RETENTION_DAYS=7 scripts/backup --env-file "$work/sluice.env" "$work/backups" 2>"$work/backup2.log")" ||
  { cat "$work/backup2.log" >&2; fail "the second scripts/backup failed"; }
[ ! -e "$work/backups/$old8" ] || fail "the 8-day-old backup was kept"
[ ! -e "$work/backups/$old10" ] || fail "the 10-day-old backup was kept"
for d in "$old3" "$old9" "$old13" "$old14" keep-me "$(basename "$backup")" "$(basename "$second")" "$(basename "$pg_only")"; do
  [ -d "$work/backups/$d" ] || fail "retention deleted $d"
done
if [ ! -L "$work/backups/$old12" ] || [ ! -f "$work/not-a-backup/MANIFEST.json" ]; then
  fail "retention followed or deleted a symlink"
fi
grep -q "symlink" "$work/backup2.log" || fail "retention did not say it left a symlink alone"
grep -q "left alone 3 old directories named like backups without a backup's" "$work/backup2.log" ||
  fail "retention did not say it left the directories without a backup's manifest alone: $(grep retention "$work/backup2.log")"

step "stopping"
echo "backup round trip: ok"
echo "backup $backup_bytes bytes (pg_dump $pg_dump_bytes; $summary_counts) in $(secs "$backup_ms") s; restore $(secs "$restore_ms") s"
