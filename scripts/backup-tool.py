#!/usr/bin/env python3
"""The parts of scripts/backup and scripts/restore that speak to S3, Chroma
and Redis, and write or check a backup's manifests. Run by those scripts
(with the venv they make, which has `boto3` and `redis`); not meant to be
run by hand.

Configuration comes from the environment the scripts resolve: BK_S3_*
(endpoint, bucket, region, access and secret key), BK_CHROMA_URL,
BK_REDIS_URL. Progress goes to stderr; a command's result (a JSON object)
to stdout. No secret is ever printed.

A backup directory holds:
  postgres.dump           pg_dump -Fc of Sluice's tables (SLUICE_TABLES in
                          backup-lib.sh), none of the database's others
  objects/<key>           every object under Sluice's key prefix (files/), its key
                          as its path (a key that cannot be a safe relative path
                          is skipped and listed in MANIFEST.json)
  objects.jsonl           one line per object: key, size, sha256, content type, metadata
  chroma/collections.json Sluice's collections (sluice-*): name, metadata, configuration, count
  chroma/<name>.jsonl.gz  one line per record: id, embedding, document, metadata, uri
  MANIFEST.json           what was backed up, counts, and the sha256 of every file above

Only Sluice's data is ever read, written or deleted: its tables,
objects under OBJECT_PREFIX and Chroma collections named sluice-*; whatever
else the database, the bucket or Chroma holds is left alone.
"""

import argparse
import concurrent.futures
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

FORMAT = "sluice-backup/1"
# Chroma's tenant and database (actors/backends/src/vectors/chroma.rs).
CHROMA_TENANT = "default_tenant"
CHROMA_DATABASE = "default_database"
# Every collection Sluice makes is named `sluice-<hash>`.
CHROMA_PREFIX = "sluice-"
# A name this tool backs up, makes or deletes: Sluice's prefix, then
# Chroma's alphabet (a name also makes a file name and a URL segment).
CHROMA_NAME = re.compile(r"sluice-[A-Za-z0-9._-]{1,500}")  # whole names: fullmatch
# Every object Sluice stores is under this prefix: `files/<id>` and
# `files/<id>.sent` (file_key in actors/backends/src/objects.rs,
# actors/src/files/images.rs).
OBJECT_PREFIX = "files/"
# Longest file name most filesystems take.
NAME_MAX = 255
CHROMA_PAGE = 250
CHROMA_ADD_BATCH = 250
TIMESTAMP = re.compile(r"^\d{8}T\d{6}Z$")
PIECE = 1 << 20


def log(message):
    print(f"backup-tool: {message}", file=sys.stderr, flush=True)


def fail(message):
    log(message)
    sys.exit(1)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------- S3


def s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("BK_S3_ENDPOINT", "")
    if not endpoint:
        fail("no S3 endpoint (SLUICE_S3_ENDPOINT)")
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        fail("SLUICE_S3_ENDPOINT must be http(s)://host:port")
    # Path-style with static keys, as Sluice's client; checksums only where
    # S3 requires them (S3-compatible servers differ on the newer ones):
    # every object's sha256 is checked here anyway.
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=16,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint.rstrip("/"),
        aws_access_key_id=os.environ["BK_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["BK_S3_SECRET_KEY"],
        region_name=os.environ.get("BK_S3_REGION") or "us-east-1",
        config=config,
    )


def s3_error(e):
    """An S3 failure in a line, without the request (it names no secret,
    but the code and message are what matter)."""
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"S3 answered {err.get('Code', '?')}: {err.get('Message') or 'no message'}"
    return f"S3 request failed: {type(e).__name__}: {e}"


def list_keys(client, bucket):
    """Every object of the bucket under Sluice's prefix: (key, size)."""
    out = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=OBJECT_PREFIX)
    for page in pages:
        for obj in page.get("Contents", []):
            out.append((obj["Key"], obj["Size"]))
    return out


def bucket_exists(client, bucket):
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise


def key_problem(key):
    """Why object `key` cannot be kept in a backup as a relative path under
    objects/ (or is not Sluice's); None if it can. Sluice's own keys are
    `files/<id>` and `files/<id>.sent`."""
    if not key:
        return "an empty key"
    if not key.startswith(OBJECT_PREFIX):
        return f"not under Sluice's prefix {OBJECT_PREFIX}"
    if "\0" in key:
        return "holds a NUL byte"
    if key.endswith("/"):
        return "ends with /"
    parts = key.split("/")
    if "" in parts:
        return "has an empty segment (//)"
    if any(p in (".", "..") for p in parts):
        return "has a . or .. segment"
    if any(len(p.encode("utf-8", "surrogatepass")) > NAME_MAX for p in parts):
        return f"has a segment over {NAME_MAX} bytes"
    return None


def plan_keys(listed):
    """Splits the listed objects, (key, size), into those a backup can hold
    and those it skips: [{"key", "reason"}]. Besides each key's own
    problems, a key that other keys use as a directory (`files/a` beside
    `files/a/b`) cannot be a file as well: it is the one skipped."""
    kept, skipped = [], []
    for key, size in listed:
        reason = key_problem(key)
        if reason:
            skipped.append({"key": key, "reason": reason})
        else:
            kept.append((key, size))
    directories = {}
    for key, _ in kept:
        parts = key.split("/")
        for i in range(1, len(parts)):
            directories.setdefault("/".join(parts[:i]), key)
    out = []
    for key, size in kept:
        if key in directories:
            skipped.append({"key": key, "reason": f"is also a directory of another key ({directories[key]})"})
        else:
            out.append((key, size))
    skipped.sort(key=lambda s: s["key"])
    return out, skipped


def backup_path(backup, rel):
    """The path of `rel` (a /-separated relative path) in the backup
    directory. Fails if it is not a plain relative path, if it or any
    directory on the way is a symlink, or if it resolves outside the
    backup: a restore reads nothing but the backup's own files."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        fail(f"the backup names {rel!r}, which is not a relative path inside it")
    path = backup
    for part in parts:
        path = os.path.join(path, part)
        if os.path.islink(path):
            fail(f"the backup's {rel} is or passes through a symlink ({os.path.relpath(path, backup)}): refused")
    base = os.path.realpath(backup)
    if os.path.commonpath([base, os.path.realpath(path)]) != base:
        fail(f"the backup's {rel} resolves outside the backup: refused")
    return path


def object_path(root, key):
    """Where object `key` is written under `root` (objects/) by a backup;
    `key` has passed plan_keys."""
    return os.path.join(root, *key.split("/"))


def objects_backup(args):
    client = s3_client()
    bucket = os.environ["BK_S3_BUCKET"]
    if not bucket_exists(client, bucket):
        fail(f"the bucket {bucket} does not exist")
    root = os.path.join(args.dir, "objects")
    os.makedirs(root, exist_ok=True)
    listed, skipped = plan_keys(list_keys(client, bucket))
    for s in skipped:
        log(f"objects: skipped {s['key']!r}: {s['reason']} (listed in MANIFEST.json)")

    def fetch(item):
        key, listed_size = item
        path = object_path(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digest, size = hashlib.sha256(), 0
        response = client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            with open(path, "wb") as f:
                for piece in body.iter_chunks(PIECE):
                    f.write(piece)
                    digest.update(piece)
                    size += len(piece)
        finally:
            body.close()
        if size != listed_size:
            fail(f"object {key}: listed as {listed_size} bytes, read {size}")
        return {
            "key": key,
            "size": size,
            "sha256": digest.hexdigest(),
            "content_type": response.get("ContentType") or "application/octet-stream",
            "metadata": response.get("Metadata") or {},
        }

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(fetch, listed))
    entries.sort(key=lambda e: e["key"])
    with open(os.path.join(args.dir, "objects.jsonl"), "w") as f:
        for entry in entries:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
    total = sum(e["size"] for e in entries)
    log(
        f"objects: {len(entries)} under {OBJECT_PREFIX} from bucket {bucket}, {total} bytes"
        + (f"; {len(skipped)} skipped (keys that cannot be paths)" if skipped else "")
    )
    print(json.dumps({"bucket": bucket, "prefix": OBJECT_PREFIX, "count": len(entries),
                      "bytes": total, "skipped": skipped}))


def read_objects_manifest(backup):
    with open(backup_path(backup, "objects.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def restorable_objects(backup):
    """The objects of a backup to put back: those under Sluice's prefix
    (an older backup may hold others: they are left out, with a note).
    Fails on a key that is not a safe relative path."""
    out, outside = [], []
    for entry in read_objects_manifest(backup):
        key = entry.get("key")
        if not isinstance(key, str):
            fail(f"objects.jsonl has an entry without a key: {entry!r:.200}")
        reason = key_problem(key)
        if reason and key.startswith(OBJECT_PREFIX):
            fail(f"objects.jsonl lists {key!r}, which {reason}: refused")
        if reason:
            outside.append(key)
        else:
            out.append(entry)
    if outside:
        log(f"objects: {len(outside)} objects of the backup are not under {OBJECT_PREFIX} and are not put back, e.g. {outside[0]!r}")
    return out


def objects_restore(args):
    from boto3.s3.transfer import TransferConfig

    client = s3_client()
    bucket = os.environ["BK_S3_BUCKET"]
    region = os.environ.get("BK_S3_REGION") or "us-east-1"
    entries = restorable_objects(args.dir)
    paths = {e["key"]: backup_path(args.dir, "objects/" + e["key"]) for e in entries}
    if not bucket_exists(client, bucket):
        if region == "us-east-1":
            client.create_bucket(Bucket=bucket)
        else:
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
            )
        log(f"objects: created the bucket {bucket}")
    transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20, use_threads=False)

    def put(entry):
        path = paths[entry["key"]]
        extra = {"ContentType": entry.get("content_type") or "application/octet-stream"}
        if entry.get("metadata"):
            extra["Metadata"] = entry["metadata"]
        client.upload_file(path, bucket, entry["key"], ExtraArgs=extra, Config=transfer)
        # Read it back: the bucket holds what the backup does.
        digest, size = hashlib.sha256(), 0
        body = client.get_object(Bucket=bucket, Key=entry["key"])["Body"]
        try:
            for piece in body.iter_chunks(PIECE):
                digest.update(piece)
                size += len(piece)
        finally:
            body.close()
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            fail(f"object {entry['key']}: the bucket does not hold what was put (sha256 differs)")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, entries))
    total = sum(e["size"] for e in entries)
    summary = (
        f"{len(entries)} objects under {OBJECT_PREFIX} ({total} bytes) put back into bucket {bucket}, "
        "each read back and its sha256 checked"
    )
    log(f"objects: {summary}")
    print(json.dumps({"count": len(entries), "bytes": total, "summary": summary}))


def objects_prune(args):
    """Deletes the objects under Sluice's prefix that the backup lacks (run
    once everything else is restored). A key no backup could hold (see
    plan_keys) is left alone: its absence from the backup says nothing.
    Nothing outside the prefix is ever listed or deleted."""
    client = s3_client()
    bucket = os.environ["BK_S3_BUCKET"]
    keep = {e["key"] for e in restorable_objects(args.dir)}
    holdable, unholdable = plan_keys(list_keys(client, bucket))
    extra = [key for key, _ in holdable if key not in keep]
    unholdable = len(unholdable)
    failed = []
    for i in range(0, len(extra), 1000):
        answer = client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in extra[i : i + 1000]], "Quiet": True},
        )
        failed.extend(answer.get("Errors") or [])
    if failed:
        first = failed[0]
        fail(f"objects: {len(failed)} objects not in the backup could not be deleted: {first.get('Key')}: {first.get('Code')}")
    summary = f"{len(extra)} objects under {OBJECT_PREFIX} not in the backup deleted"
    if unholdable:
        summary += f" ({unholdable} whose keys no backup can hold left alone)"
    log(f"objects: {summary}")
    print(json.dumps({"pruned": len(extra), "left": unholdable, "summary": summary}))


# ---------------------------------------------------------------- Chroma


class Chroma:
    def __init__(self, url):
        if not url:
            fail("no Chroma URL (SLUICE_CHROMA_URL or CHROMA_HOST)")
        self.root = url.rstrip("/") + "/api/v2"
        self.base = f"{self.root}/tenants/{CHROMA_TENANT}/databases/{CHROMA_DATABASE}"

    def call(self, method, url, body=None, missing_ok=False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    text = response.read()
                    return json.loads(text) if text else None
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code == 404 and missing_ok:
                    return None
                if e.code >= 500 and attempt < 4:
                    time.sleep(1 + attempt)
                    continue
                fail(f"Chroma answered {e.code} to {method} {urllib.parse.urlsplit(url).path}: {detail}")
            except urllib.error.URLError as e:
                if attempt < 4:
                    time.sleep(1 + attempt)
                    continue
                fail(f"Chroma cannot be reached: {e.reason}")
        return None

    def version(self):
        return self.call("GET", f"{self.root}/version")

    def max_batch(self):
        checks = self.call("GET", f"{self.root}/pre-flight-checks", missing_ok=True) or {}
        return int(checks.get("max_batch_size") or CHROMA_ADD_BATCH)

    def collections(self):
        out, offset = [], 0
        while True:
            page = self.call("GET", f"{self.base}/collections?limit=100&offset={offset}")
            out.extend(page)
            if len(page) < 100:
                return out
            offset += len(page)

    def sluice_collections(self):
        """Sluice's collections (sluice-*), and only those."""
        return sorted(
            (c for c in self.collections() if CHROMA_NAME.fullmatch(c["name"])),
            key=lambda c: c["name"],
        )

    def collection_url(self, name):
        return f"{self.base}/collections/{urllib.parse.quote(name, safe='')}"


def saved_collections(backup):
    """The collections of a backup's collections.json to restore: Sluice's
    (sluice-*) only; any other is skipped, with a note."""
    with open(backup_path(backup, "chroma/collections.json")) as f:
        saved = json.load(f)["collections"]
    out = []
    for collection in saved:
        name = collection.get("name")
        if not isinstance(name, str) or not CHROMA_NAME.fullmatch(name):
            log(f"chroma: skipped the collection {name!r} of collections.json: not one of Sluice's ({CHROMA_PREFIX}*)")
            continue
        if collection.get("file") != f"{name}.jsonl.gz":
            fail(f"chroma: collections.json names the file {collection.get('file')!r} for {name}: refused")
        out.append(collection)
    return out


def chroma_backup(args):
    chroma = Chroma(os.environ.get("BK_CHROMA_URL", ""))
    version = chroma.version()
    root = os.path.join(args.dir, "chroma")
    os.makedirs(root, exist_ok=True)
    listed = []
    records_total = 0
    for collection in chroma.sluice_collections():
        name, cid = collection["name"], collection["id"]
        count = chroma.call("GET", f"{chroma.base}/collections/{cid}/count")
        path = os.path.join(root, f"{name}.jsonl.gz")
        seen = set()
        with gzip.open(path, "wt", compresslevel=6) as f:
            offset = 0
            while True:
                page = chroma.call(
                    "POST",
                    f"{chroma.base}/collections/{cid}/get",
                    {
                        "limit": CHROMA_PAGE,
                        "offset": offset,
                        "include": ["embeddings", "documents", "metadatas", "uris"],
                    },
                )
                ids = page.get("ids") or []
                for i, rid in enumerate(ids):
                    if rid in seen:
                        continue
                    seen.add(rid)
                    record = {
                        "id": rid,
                        "embedding": (page.get("embeddings") or [None] * len(ids))[i],
                        "document": (page.get("documents") or [None] * len(ids))[i],
                        "metadata": (page.get("metadatas") or [None] * len(ids))[i],
                        "uri": (page.get("uris") or [None] * len(ids))[i],
                    }
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                if len(ids) < CHROMA_PAGE:
                    break
                offset += len(ids)
        if len(seen) != count:
            # Written to while it was read: Sluice indexed or deleted a file.
            log(f"chroma: {name} counted {count} records but {len(seen)} were read (written meanwhile)")
        records_total += len(seen)
        listed.append(
            {
                "name": name,
                "id": cid,
                "metadata": collection.get("metadata"),
                "configuration": collection.get("configuration_json"),
                "dimension": collection.get("dimension"),
                "count": len(seen),
                "file": f"{name}.jsonl.gz",
            }
        )
    write_json(
        os.path.join(root, "collections.json"),
        {"tenant": CHROMA_TENANT, "database": CHROMA_DATABASE, "collections": listed},
    )
    log(f"chroma: {len(listed)} collections, {records_total} records")
    print(json.dumps({"collections": len(listed), "records": records_total, "version": version}))


def chroma_restore(args):
    chroma = Chroma(os.environ.get("BK_CHROMA_URL", ""))
    saved = saved_collections(args.dir)
    paths = {c["name"]: backup_path(args.dir, f"chroma/{c['file']}") for c in saved}
    batch = max(1, min(CHROMA_ADD_BATCH, chroma.max_batch()))
    # With the files of the restored database: chunks of files it has no
    # row for (uploaded after its dump, or deleted before the chunks were
    # read) are left out; they could only take places in search results.
    known = None
    if args.files:
        with open(args.files) as f:
            known = {row["id"] for row in json.load(f)["files"]}
    records_total = skipped_total = 0
    for collection in saved:
        name = collection["name"]
        chroma.call("DELETE", chroma.collection_url(name), missing_ok=True)
        body = {"name": name, "metadata": collection.get("metadata")}
        if collection.get("configuration"):
            body["configuration"] = collection["configuration"]
        made = chroma.call("POST", f"{chroma.base}/collections", body)
        cid = made["id"]
        added = skipped = 0

        def add(records):
            body = {
                "ids": [r["id"] for r in records],
                "embeddings": [r["embedding"] for r in records],
                "documents": [r["document"] for r in records],
                "metadatas": [r["metadata"] for r in records],
            }
            if any(r.get("uri") is not None for r in records):
                body["uris"] = [r.get("uri") for r in records]
            chroma.call("POST", f"{chroma.base}/collections/{cid}/upsert", body)

        pending = []
        with gzip.open(paths[name], "rt") as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                file_id = (record.get("metadata") or {}).get("file_id")
                if known is not None and isinstance(file_id, str) and file_id not in known:
                    skipped += 1
                    continue
                pending.append(record)
                if len(pending) == batch:
                    add(pending)
                    added += len(pending)
                    pending = []
        if pending:
            add(pending)
            added += len(pending)
        count = chroma.call("GET", f"{chroma.base}/collections/{cid}/count")
        if count != collection["count"] - skipped or added != count:
            fail(f"chroma: {name} holds {count} records after the restore, the backup {collection['count']} ({skipped} left out)")
        records_total += added
        skipped_total += skipped
    summary = (
        f"{len(saved)} collections made again with {records_total} chunks (in batches of {batch}), "
        f"each counted; {skipped_total} chunks of files without a row left out"
    )
    log(f"chroma: {summary}")
    print(json.dumps({"collections": len(saved), "records": records_total, "skipped": skipped_total,
                      "summary": summary}))


def chroma_prune(args):
    """Deletes Sluice's collections (sluice-*) that the backup lacks (run
    once everything else is restored); no other collection is touched."""
    chroma = Chroma(os.environ.get("BK_CHROMA_URL", ""))
    keep = {c["name"] for c in saved_collections(args.dir)}
    pruned = []
    for collection in chroma.sluice_collections():
        if collection["name"] not in keep:
            chroma.call("DELETE", chroma.collection_url(collection["name"]), missing_ok=True)
            pruned.append(collection["name"])
    summary = f"{len(pruned)} Sluice collections ({CHROMA_PREFIX}*) not in the backup deleted"
    log(f"chroma: {summary}")
    print(json.dumps({"pruned": len(pruned), "summary": summary}))


# ---------------------------------------------------------------- Redis


def redis_reset_logs(args):
    """Deletes every session's event log, epoch and log fence: the state a
    Redis that lost its data would be in. Done after a restore because the
    restored store's sessions are older than their logs (their `last_seq`
    went back, and a session deleted since the backup keeps a tombstone
    fence that would refuse every event). Clients reload, as the protocol
    says they do when the epoch changes."""
    import redis

    url = os.environ.get("BK_REDIS_URL", "")
    if not url:
        fail("no Redis URL")
    scheme, _, rest = url.partition("://")
    cluster = scheme in ("redis-cluster", "rediss-cluster")
    if cluster:
        # Sluice's (fred's) form: redis-cluster://[user:pass@]host:port?node=host:port&...
        from redis.cluster import ClusterNode, RedisCluster

        parsed = urllib.parse.urlparse(f"redis://{rest}")
        nodes = [ClusterNode(parsed.hostname, parsed.port or 6379)]
        for node in urllib.parse.parse_qs(parsed.query).get("node", []):
            host, _, port = node.rpartition(":")
            nodes.append(ClusterNode(host, int(port)))
        # The user and password as written in the URL: percent-encoded.
        unquote = lambda v: None if v is None else urllib.parse.unquote(v)
        client = RedisCluster(
            startup_nodes=nodes,
            username=unquote(parsed.username),
            password=unquote(parsed.password),
            ssl=scheme == "rediss-cluster",
            socket_timeout=30,
        )
    else:
        client = redis.Redis.from_url(url, socket_timeout=30)
    deleted = 0
    for kind in ("log", "epoch", "fence"):
        # On a cluster, SCAN runs on every primary; each key is deleted on
        # its own (a session's keys are in its own slot).
        scan = (
            client.scan_iter(match=f"sluice:{{*}}:{kind}", count=1000, target_nodes=RedisCluster.PRIMARIES)
            if cluster
            else client.scan_iter(match=f"sluice:{{*}}:{kind}", count=1000)
        )
        keys = []
        for key in scan:
            keys.append(key)
            if len(keys) == 500 or cluster:
                deleted += sum(client.delete(k) for k in keys) if cluster else client.delete(*keys)
                keys = []
        if keys:
            deleted += client.delete(*keys)
    summary = f"{deleted} keys of sessions' event logs deleted (clients reload; a new epoch)"
    log(f"redis: {summary}")
    print(json.dumps({"deleted": deleted, "summary": summary}))


# ---------------------------------------------------------------- PostgreSQL


class PgUrlError(ValueError):
    """A PostgreSQL URL that cannot be read. Its message never quotes the
    URL (it may hold a password)."""


def pg_url(url):
    """Splits a PostgreSQL URL the way Sluice's driver reads it
    (tokio-postgres 0.7, `UrlParser` in its config.rs) into (safe,
    password, host, database): `safe` is the URL without its password, for
    libpq's tools; `password` is bytes, percent-decoded, or None; `host`
    and `database` are for messages ("" when the URL names none).

    The driver's rules, which are not a browser's: after `postgres://` or
    `postgresql://`, everything before the first `@` (wherever it is) is
    the userinfo, `user[:password]`, the password after its first `:`; then
    the hosts, up to the first `/` or `?`; then `/database`, up to the first
    `?`; then `key=value` parameters, each value up to the next `&` (a
    `password=` there wins over the userinfo's: the last one read wins).
    `#` means nothing. So a password may hold `#`, `?`, `/` and `:` as they
    are; only `@` (and `%`) must be percent-encoded.

    The safe URL is the URL as written with `:password` taken out of the
    userinfo and `password=` out of the query; its percent-encoding is kept
    (a `/` in the user name is encoded, since libpq would end the userinfo
    there). `postgres:///db?host=/run/postgresql` stays as it is."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            break
    else:
        raise PgUrlError("the PostgreSQL URL must start with postgres:// or postgresql://")
    rest = url[len(prefix) :]
    password, userinfo = None, None
    at = rest.find("@")
    if at >= 0:
        creds, rest = rest[:at], rest[at + 1 :]
        user, colon, secret = creds.partition(":")
        if colon:
            password = urllib.parse.unquote_to_bytes(os.fsencode(secret))
        userinfo = user.replace("/", "%2F")
    mark = rest.find("?")
    location, query = (rest, "") if mark < 0 else (rest[:mark], rest[mark + 1 :])
    slash = location.find("/")
    hosts, path = (location, "") if slash < 0 else (location[:slash], location[slash + 1 :])
    kept, params = [], {}
    while query:
        eq = query.find("=")
        # `?a&b=c`: the driver reads a key `a&b` (and refuses it), libpq a
        # parameter `a` without a value (and refuses it).
        if eq < 0 or "&" in query[:eq]:
            raise PgUrlError("the PostgreSQL URL's query has a parameter without a value (no `=`)")
        key, query = query[:eq], query[eq + 1 :]
        amp = query.find("&")
        value, query = (query, "") if amp < 0 else (query[:amp], query[amp + 1 :])
        name = urllib.parse.unquote(key)
        if name == "password":
            password = urllib.parse.unquote_to_bytes(os.fsencode(value))
        else:
            kept.append(f"{key}={value}")
            params[name] = urllib.parse.unquote(value)
    if password is not None and b"\0" in password:
        raise PgUrlError("the PostgreSQL password holds a NUL byte (%00), which no client can send")
    safe = prefix + ("" if userinfo is None else userinfo + "@") + location
    if kept:
        safe += "?" + "&".join(kept)
    names = []
    for chunk in hosts.split(",") if hosts else []:
        if chunk.startswith("[") and "]" in chunk:
            chunk = chunk[1 : chunk.index("]")]
        else:
            chunk = chunk.partition(":")[0]
        names.append(urllib.parse.unquote(chunk))
    host = ",".join(names) or params.get("host", "")
    database = urllib.parse.unquote(path) or params.get("dbname", "")
    return safe, password, host, database


def pg_url_command(args):
    """PG_URL from the environment (never argv): writes its safe form, its
    password, its host and its database to stdout, each ended by a NUL
    byte (a password may hold a newline). Writes nothing on a failure."""
    try:
        safe, password, host, database = pg_url(os.environ.get("PG_URL", ""))
        out = b"".join(os.fsencode(v) + b"\0" for v in (safe, password or b"", host, database))
    except PgUrlError as e:
        fail(str(e))
    except Exception as e:  # never a traceback, which could quote the URL
        fail(f"cannot read the PostgreSQL URL ({type(e).__name__})")
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()


# pg_restore --list's entries that name a relation, a schema or code: a dump
# of Sluice's tables has only its tables (and their own sequences), a dump
# of a whole database (a backup made before backups held only Sluice's
# tables) has everything. Longest first: "TABLE DATA" before "TABLE".
TOC_KINDS = sorted(
    ("TABLE", "TABLE DATA", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE", "SEQUENCE", "SEQUENCE SET",
     "SEQUENCE OWNED BY", "SCHEMA", "EXTENSION", "FUNCTION", "PROCEDURE", "AGGREGATE", "TYPE", "DOMAIN"),
    key=len,
    reverse=True,
)


def pg_dump_tables(args):
    """Reads `pg_restore --list` of a dump on stdin: which of Sluice's
    tables (args.tables, space-separated) it holds, and what else (tables,
    views, schemas, functions... that a restore with --clean would replace)."""
    sluice = set(args.tables.split())
    tables, other = set(), set()
    entry = re.compile(r"^\d+; \d+ \d+ (.*)$")
    for line in sys.stdin:
        m = entry.match(line.rstrip("\n"))
        if not m:
            continue
        kind = next((k for k in TOC_KINDS if m.group(1).startswith(k + " ")), None)
        if kind is None:
            continue  # indexes, constraints, comments, grants: of the tables above
        schema, name = (m.group(1)[len(kind) + 1 :].split(" ") + ["", ""])[:2]
        if kind in ("TABLE", "TABLE DATA") and schema == "public" and name in sluice:
            tables.add(name)
        elif kind.startswith("SEQUENCE") and schema == "public":
            pass  # a serial or identity column's, dumped with its table
        elif kind == "SCHEMA" and name == "public":
            pass
        else:
            other.add(f"{kind} {name}" if schema == "-" else f"{kind} {schema}.{name}")
    print(json.dumps({"tables": sorted(tables), "other": sorted(other)}))


def copy_unescape(value):
    if value == "\\N":
        return None
    return re.sub(
        r"\\(.)",
        lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(m.group(1), m.group(1)),
        value,
    )


def pg_summary(args):
    """Reads `pg_restore --data-only -f -` of a dump on stdin: rows per
    table, Sluice's schema version, and the files' ids."""
    tables, files, schema = {}, [], None
    table, columns = None, []
    header = re.compile(r"^COPY ([^ ]+) \(([^)]*)\) FROM stdin;$")
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if table is None:
            m = header.match(line)
            if m:
                table = m.group(1).split(".")[-1].strip('"')
                columns = [c.strip().strip('"') for c in m.group(2).split(",")]
                tables.setdefault(table, 0)
            continue
        if line == "\\.":
            table = None
            continue
        tables[table] += 1
        if table == "files":
            row = dict(zip(columns, line.split("\t")))
            files.append(
                {
                    "id": copy_unescape(row.get("id", "")),
                    "status": copy_unescape(row.get("status", "")),
                    "bytes": int(row.get("bytes") or 0),
                }
            )
        elif table == "sluice_migrations":
            version = int(line.split("\t")[0])
            schema = max(schema or 0, version)
    print(json.dumps({"tables": tables, "schema_version": schema, "files": files}))


# ---------------------------------------------------------------- manifests


def backup_files(backup):
    """Every file of a backup but MANIFEST.json and the objects (which
    objects.jsonl lists with their own sha256)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(backup):
        rel = os.path.relpath(dirpath, backup)
        if rel == "objects" or rel.startswith("objects" + os.sep):
            dirnames[:] = []
            continue
        for name in filenames:
            path = os.path.relpath(os.path.join(dirpath, name), backup)
            if path != "MANIFEST.json":
                out.append(path)
    return sorted(out)


def manifest(args):
    """Writes MANIFEST.json from what each step found out (META/*.json:
    info, pg, pg-info, objects, chroma; a store skipped has none)."""
    backup = args.dir

    def found(name):
        path = os.path.join(args.meta, f"{name}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    info = found("info")
    pg = found("pg")
    pg_info = found("pg-info") or {}
    objects = found("objects")
    chroma = found("chroma")
    files = []
    for path in backup_files(backup):
        full = os.path.join(backup, path)
        files.append({"path": path, "bytes": os.path.getsize(full), "sha256": sha256_file(full)})
    total = sum(f["bytes"] for f in files)
    consistency = {}
    if objects is not None:
        total += objects["bytes"]
    if pg is not None:
        ids = {f["id"] for f in pg["files"]}
        if objects is not None:
            keys = {e["key"] for e in read_objects_manifest(backup)}
            consistency["file_rows_without_object"] = sorted(
                i for i in ids if f"{OBJECT_PREFIX}{i}" not in keys
            )
            consistency["objects_without_file_row"] = sum(
                1
                for k in keys
                if k[len(OBJECT_PREFIX) :].removesuffix(".sent") not in ids
            )
        if chroma is not None:
            orphans = 0
            with open(os.path.join(backup, "chroma", "collections.json")) as f:
                collections = json.load(f)["collections"]
            for c in collections:
                with gzip.open(os.path.join(backup, "chroma", c["file"]), "rt") as f:
                    for line in f:
                        meta = json.loads(line).get("metadata") or {}
                        if meta.get("file_id") not in ids:
                            orphans += 1
            consistency["chunks_of_files_without_row"] = orphans
    doc = {
        "format": FORMAT,
        **info,
        "bytes": total,
        "postgres": None
        if pg is None
        else {
            **pg_info,
            "file": "postgres.dump",
            "tables": pg_info.get("tables") or sorted(pg["tables"]),
            "schema_version": pg["schema_version"],
            "rows": pg["tables"],
            "files_by_status": count_by(pg["files"], "status"),
        },
        "objects": None
        if objects is None
        else {**objects, "dir": "objects", "manifest": "objects.jsonl"},
        "chroma": None
        if chroma is None
        else {
            **chroma,
            "tenant": CHROMA_TENANT,
            "database": CHROMA_DATABASE,
            "dir": "chroma",
        },
        "consistency": consistency,
        "files": files,
    }
    write_json(os.path.join(backup, "MANIFEST.json"), doc)
    print(json.dumps({"bytes": total, "consistency": consistency}))


def count_by(rows, key):
    out = {}
    for row in rows:
        out[row[key]] = out.get(row[key], 0) + 1
    return out


def verify(args):
    """Checks a backup before anything is restored from it: its manifest,
    the sha256 of every file it lists, and of every object. Refuses a
    backup with a symlink under objects/ or a file that resolves outside it."""
    path = os.path.join(args.dir, "MANIFEST.json")
    try:
        if os.path.islink(path):
            raise OSError("a symlink")
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    if doc.get("format") != FORMAT:
        fail(f"{path}: not a {FORMAT} manifest")
    # No symlink anywhere under objects/ (a restore would upload what it
    # points to).
    objects_dir = os.path.join(args.dir, "objects")
    if os.path.islink(objects_dir):
        fail("the backup's objects/ is a symlink: refused")
    for dirpath, dirnames, filenames in os.walk(objects_dir):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                rel = os.path.relpath(os.path.join(dirpath, name), args.dir)
                fail(f"the backup holds a symlink, {rel}: refused")
    bad = []
    for entry in doc["files"]:
        full = backup_path(args.dir, entry["path"])
        if not os.path.isfile(full) or sha256_file(full) != entry["sha256"]:
            bad.append(entry["path"])
    objects = 0
    if doc.get("objects") is not None and "objects.jsonl" not in bad:
        for entry in read_objects_manifest(args.dir):
            objects += 1
            key = entry.get("key")
            if not isinstance(key, str) or (key_problem(key) and key.startswith(OBJECT_PREFIX)):
                bad.append(f"objects.jsonl (the key {key!r})")
                continue
            if not key.startswith(OBJECT_PREFIX):
                continue  # an older backup's object of another prefix: not restored
            full = backup_path(args.dir, "objects/" + key)
            if not os.path.isfile(full) or sha256_file(full) != entry["sha256"]:
                bad.append("objects/" + key)
        if objects != doc["objects"]["count"]:
            bad.append("objects.jsonl (count)")
    if bad:
        fail(f"the backup is damaged: {len(bad)} files missing or altered, e.g. {', '.join(bad[:5])}")
    log(f"verified {len(doc['files'])} files and {objects} objects against their sha256")
    print(json.dumps({"files": len(doc["files"]), "objects": objects}))


def is_backup(path):
    """Whether `path` is a backup this tool wrote: a directory (not a
    symlink) holding a MANIFEST.json (a file, not a symlink) that parses as
    JSON with our "format" (a file that merely has the name does not)."""
    manifest = os.path.join(path, "MANIFEST.json")
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    if os.path.islink(manifest) or not os.path.isfile(manifest):
        return False
    try:
        with open(manifest, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def retention(args, rmtree=shutil.rmtree):
    """Deletes backups in ROOT older than DAYS: only directories named like
    a backup's UTC timestamp, not symlinks, that hold a MANIFEST.json (a
    complete backup) which parses as JSON with this tool's "format" (see
    is_backup). A symlink is never followed nor deleted (skipped, with a
    note); an old directory that is not a backup is left alone (with a
    note); a deletion that fails is reported and the others go on (the
    backup that ran before is whole either way)."""
    if args.days <= 0:
        log("retention: off (BACKUP_RETENTION_DAYS=0)")
        print(json.dumps({"deleted": [], "failed": [], "symlinks": [], "not_backups": []}))
        return
    now = dt.datetime.now(dt.timezone.utc)
    deleted, failed, symlinks, not_backups = [], [], [], []
    for name in sorted(os.listdir(args.root)):
        path = os.path.join(args.root, name)
        if name == args.keep or not TIMESTAMP.match(name):
            continue
        if os.path.islink(path):
            symlinks.append(name)
            continue
        if not os.path.isdir(path):
            continue
        try:
            taken = dt.datetime.strptime(name, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        if now - taken > dt.timedelta(days=args.days):
            if not is_backup(path):
                not_backups.append(name)
                continue
            try:
                rmtree(path)
                deleted.append(name)
            except OSError as e:
                failed.append(name)
                log(f"retention: could not delete {name}: {e.strerror or e}")
    if symlinks:
        log(f"retention: left alone {len(symlinks)} symlinks named like backups (never followed): {', '.join(symlinks)}")
    if not_backups:
        log(f"retention: left alone {len(not_backups)} old directories named like backups without a backup's "
            f"MANIFEST.json (missing, a symlink, not JSON, or not {FORMAT}): {', '.join(not_backups)}")
    stale = [n for n in os.listdir(args.root) if n.startswith(".incomplete-")]
    if stale:
        log(f"retention: left alone {len(stale)} .incomplete-* directories (a backup running, or one killed)")
    log(f"retention: deleted {len(deleted)} backups older than {args.days} days" + (f": {', '.join(deleted)}" if deleted else ""))
    if failed:
        log(f"retention: warning: {len(failed)} old backups could not be deleted: {', '.join(failed)}")
    print(json.dumps({"deleted": deleted, "failed": failed, "symlinks": symlinks, "not_backups": not_backups}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("objects-backup", "chroma-backup", "verify"):
        sub.add_parser(name).add_argument("dir")
    for name in ("objects-restore", "objects-prune", "chroma-prune"):
        sub.add_parser(name).add_argument("dir")
    p = sub.add_parser("chroma-restore")
    p.add_argument("dir")
    p.add_argument("--files", help="pg-summary JSON of the restored database's files")
    sub.add_parser("redis-reset-logs")
    sub.add_parser("pg-summary")
    sub.add_parser("pg-url")
    sub.add_parser("pg-dump-tables").add_argument("tables")
    p = sub.add_parser("manifest")
    p.add_argument("dir")
    p.add_argument("meta")
    p = sub.add_parser("retention")
    p.add_argument("root")
    p.add_argument("days", type=int)
    p.add_argument("--keep", default="")
    args = parser.parse_args()
    handlers = {
        "objects-backup": objects_backup,
        "objects-restore": objects_restore,
        "objects-prune": objects_prune,
        "chroma-backup": chroma_backup,
        "chroma-restore": chroma_restore,
        "chroma-prune": chroma_prune,
        "redis-reset-logs": redis_reset_logs,
        "pg-summary": pg_summary,
        "pg-url": pg_url_command,
        "pg-dump-tables": pg_dump_tables,
        "manifest": manifest,
        "verify": verify,
        "retention": retention,
    }
    try:
        handlers[args.command](args)
    except KeyboardInterrupt:
        fail("interrupted")
    except Exception as e:  # one line, not a traceback
        if type(e).__module__.startswith(("botocore", "boto3")):
            fail(s3_error(e))
        if type(e).__module__.startswith("redis"):
            fail(f"Redis: {type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    main()
