#!/usr/bin/env python3
"""The driver of bench/stores.sh: answers through two replicas, and what
they cost Redis and PostgreSQL. Standard library only.

    bench/stores.py CLUSTER_DIR ANSWERS TOKENS CONCURRENCY
"""

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def env_of(cluster_dir):
    env = {}
    for line in (Path(cluster_dir) / "cluster.env").read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value.strip('"')
    return env


def redis_stats(url):
    port = str(urllib.parse.urlparse(url).port)
    out = subprocess.run(
        ["redis-cli", "-p", port, "INFO", "all"], capture_output=True, text=True, check=True
    ).stdout
    commands, counters = {}, {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            calls = int(dict(f.split("=") for f in fields.split(","))["calls"])
            commands[name[len("cmdstat_"):]] = calls
        elif line.startswith(("total_net_input_bytes", "total_net_output_bytes", "used_memory:")):
            key, _, value = line.partition(":")
            counters[key] = int(value)
        elif line.startswith(("used_cpu_sys:", "used_cpu_user:")):
            key, _, value = line.partition(":")
            counters[key] = float(value)
    return commands, counters


def postgres_stats(url):
    query = (
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched "
        "FROM pg_stat_database WHERE datname = current_database()"
    )
    # The statistics collector reports with a delay: ask for a fresh view.
    out = subprocess.run(
        ["psql", url, "-Atc", f"SELECT pg_stat_clear_snapshot(); {query}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    names = ["transactions", "rows_inserted", "rows_updated", "rows_deleted", "rows_fetched"]
    return dict(zip(names, map(int, out.split("|"))))


def post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def one_answer(replicas, model, i):
    """Creates a session on one replica, follows it by SSE there, sends
    through the other; returns the tokens seen."""
    here, there = replicas[i % 2], replicas[(i + 1) % 2]
    session = post(f"{here}/v1/sessions", {"model": model})
    sid = session["id"]
    stream = urllib.request.urlopen(f"{here}/v1/sessions/{sid}/events", timeout=60)
    tokens, event = 0, None
    sent = False
    for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: "):]
            if event == "snapshot" and not sent:
                post(f"{there}/v1/sessions/{sid}/messages", {"content": "go"})
                sent = True
            elif event == "token":
                tokens += 1
            elif event == "generation_end":
                break
    stream.close()
    return tokens


def main():
    cluster_dir, answers, tokens, concurrency = sys.argv[1], *map(int, sys.argv[2:5])
    env = env_of(cluster_dir)
    replicas = env["REPLICA_URLS"].split()
    model = f"fake:tokens={tokens},delay_ms=5"
    # One warm-up answer (connections, migrations, the first lease).
    one_answer(replicas, model, 0)
    time.sleep(1)
    redis_before, net_before = redis_stats(env["REDIS_URL"])
    pg_before = postgres_stats(env["POSTGRES_URL"])
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        seen = list(pool.map(lambda i: one_answer(replicas, model, i), range(answers)))
    elapsed = time.monotonic() - started
    # Writes behind the answer (the session's record) land within a second.
    time.sleep(2)
    redis_after, net_after = redis_stats(env["REDIS_URL"])
    pg_after = postgres_stats(env["POSTGRES_URL"])
    total_tokens = sum(seen)
    assert total_tokens == answers * tokens, (total_tokens, answers * tokens)
    commands = {
        name: redis_after[name] - redis_before.get(name, 0)
        for name in redis_after
        if redis_after[name] - redis_before.get(name, 0) > 0
    }
    pg = {k: pg_after[k] - pg_before[k] for k in pg_after}
    per_answer = lambda n: round(n / answers, 2)
    print(json.dumps({
        "answers": answers,
        "tokens_per_answer": tokens,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "answers_per_second": round(answers / elapsed, 1),
        "redis_commands_per_answer": {k: per_answer(v) for k, v in sorted(commands.items())},
        "redis_commands_per_token": round(sum(commands.values()) / total_tokens, 3),
        "redis_bytes_in_per_token": round(
            (net_after["total_net_input_bytes"] - net_before["total_net_input_bytes"]) / total_tokens),
        "redis_bytes_out_per_token": round(
            (net_after["total_net_output_bytes"] - net_before["total_net_output_bytes"]) / total_tokens),
        "redis_cpu_us_per_token": round(
            (net_after["used_cpu_sys"] + net_after["used_cpu_user"]
             - net_before["used_cpu_sys"] - net_before["used_cpu_user"]) * 1e6 / total_tokens, 2),
        "redis_memory_bytes_per_answer": round(
            (net_after["used_memory"] - net_before["used_memory"]) / answers),
        "postgres_per_answer": {k: per_answer(v) for k, v in pg.items()},
    }))


if __name__ == "__main__":
    main()
