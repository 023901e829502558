#!/usr/bin/env python3
"""The monitoring of a live 3-replica topology (issue "Production
deployment", items 5 and 6).

    tests/deploy/monitoring.py CLUSTER_DIR

CLUSTER_DIR is what `scripts/cluster up 3` printed (its cluster.env names
the replicas), after some traffic. This:

  1. scrapes /metrics of every replica and holds the Grafana dashboards and
     the alert rules to what they export (scripts/check-monitoring);
  2. runs a real Prometheus on loopback with compose/prometheus/prometheus.yml
     and its alerts.yml, the `sluice` job pointed at the replicas (DNS
     discovery, as in compose, cannot find them here: the job's static
     targets stand in for it, its relabelling is kept) and the intervals
     shortened to 1 s so the test does not wait 15 s per scrape;
  3. finds every target up, the key series present with a value for every
     replica, and every rule evaluated without an error.

Needs `prometheus` on PATH (Debian's package) and ruamel.yaml (the deploy
venv of scripts/test). Exits nonzero with the reason on any failure.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "compose" / "prometheus"

# Series every replica must export, with the value each must have (None:
# any value).
KEY_SERIES = {
    'up{job="sluice"}': 1,
    "sluice_ready": 1,
    'sluice_backend_up{backend="redis"}': 1,
    'sluice_backend_up{backend="store"}': 1,
    "sluice_build_info": 1,
    "sluice_live_sessions": None,
    'sluice_live_connections{transport="ws"}': None,
    'sluice_tokens_streamed_total{path="openai"}': None,
    'sluice_time_to_first_token_seconds_count{path="session"}': None,
    'sluice_inter_token_seconds_count{path="openai"}': None,
    'sluice_takeovers_total{outcome="continued"}': None,
    'sluice_limited_total{limit="requests"}': None,
    'sluice_provider_requests{state="waiting"}': None,
}


def fail(message):
    print(f"monitoring: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def replica_urls(cluster_dir):
    env = {}
    for line in (Path(cluster_dir) / "cluster.env").read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value.strip('"')
    return env["REPLICA_URLS"].split()


def check_dashboards_and_rules(urls, work):
    scrapes = []
    for i, url in enumerate(urls):
        path = work / f"r{i}.prom"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            path.write_bytes(response.read())
        scrapes.append(str(path))
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check-monitoring"), *scrapes],
        capture_output=True,
        text=True,
    )
    sys.stdout.write(checked.stdout)
    if checked.returncode != 0:
        fail(f"dashboards and rules against the replicas' metrics:\n{checked.stderr}")


def prometheus_config(urls, listen, work):
    yaml = YAML()
    config = yaml.load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sluice = jobs["sluice"]
    if "dns_sd_configs" not in sluice:
        fail("the sluice job no longer finds replicas by DNS; update this test")
    del sluice["dns_sd_configs"]
    sluice["static_configs"] = [
        {"targets": [urllib.parse.urlparse(u).netloc for u in urls]}
    ]
    jobs["prometheus"]["static_configs"] = [{"targets": [listen]}]
    path = work / "prometheus.yml"
    with path.open("w") as f:
        yaml.dump(config, f)
    return path


def wait(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError as e:
            last = e
        time.sleep(0.5)
    fail(f"{what} (after {timeout} s; last error: {last})")


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = get_json(url)
    if answer["status"] != "success":
        fail(f"query {expr}: {answer}")
    return answer["data"]["result"]


def check_prometheus(urls, work):
    port = free_port()
    listen = f"127.0.0.1:{port}"
    base = f"http://{listen}"
    config = prometheus_config(urls, listen, work)
    log = (work / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address={listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait("Prometheus ready", lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200)

        def targets_up():
            active = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
            sluice = [t for t in active if t["labels"]["job"] == "sluice"]
            return len(sluice) == len(urls) and all(t["health"] == "up" for t in sluice) and sluice

        targets = wait("every replica's target up", targets_up)
        instances = sorted(t["labels"]["instance"] for t in targets)
        print(f"monitoring: Prometheus scrapes {len(targets)} replicas: {', '.join(instances)}")

        def all_series():
            missing = []
            for expr, value in KEY_SERIES.items():
                result = query(base, expr)
                found = {r["metric"].get("instance") for r in result}
                if found != set(instances):
                    missing.append(f"{expr}: from {sorted(found - {None})}")
                    continue
                wrong = [r for r in result if value is not None and float(r["value"][1]) != value]
                if wrong:
                    missing.append(f"{expr}: {[(r['metric']['instance'], r['value'][1]) for r in wrong]}")
            return missing

        deadline = time.monotonic() + 60
        while (missing := all_series()) and time.monotonic() < deadline:
            time.sleep(1)
        if missing:
            fail("key series:\n  " + "\n  ".join(missing))
        print(f"monitoring: {len(KEY_SERIES)} key series present for every replica")

        def rules_evaluated():
            groups = get_json(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if not rules or any("lastEvaluation" not in r or r["lastEvaluation"].startswith("0001") for r in rules):
                return None
            return rules

        rules = wait("every rule evaluated", rules_evaluated)
        broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
        if broken:
            fail("rules failing to evaluate:\n  " + "\n  ".join(broken))
        # Every rule has a `for:`, so this run is too short to see one fire:
        # pending is what an alert on a healthy topology would be now.
        active = [f"{r['name']} ({r['state']})" for r in rules if r.get("state") in ("pending", "firing")]
        if active:
            fail(f"alerts pending or firing on a healthy topology: {active}")
        print(f"monitoring: {len(rules)} rules evaluate cleanly, none pending or firing")

        # Series that moved because of the traffic before this test, not only
        # the zeros every replica exports from its start.
        for expr in [
            "sum(sluice_http_requests_total)",
            "sum(sluice_tokens_streamed_total)",
            "sum(sluice_time_to_first_token_seconds_count)",
            "sum(sluice_inter_token_seconds_count)",
        ]:
            result = query(base, expr)
            if not result or float(result[0]["value"][1]) <= 0:
                fail(f"{expr} is 0 after traffic: {result}")
        print("monitoring: requests, tokens and their latencies counted")
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
        log.close()


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    urls = replica_urls(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        check_dashboards_and_rules(urls, work)
        check_prometheus(urls, work)
    print("monitoring: ok")


if __name__ == "__main__":
    main()
