"""The latency of `GET /v1/sessions` on one kept-alive connection, one
request at a time: what a per-request limit check adds. Prints one JSON
line: the configuration's name, the median and p95 in milliseconds."""

import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlparse

WARMUP = 200
REQUESTS = 3000


def main() -> None:
    base, name = sys.argv[1], sys.argv[2]
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    took = []
    for i in range(WARMUP + REQUESTS):
        started = time.perf_counter()
        conn.request("GET", "/v1/sessions")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{name}: status {response.status}")
        if i >= WARMUP:
            took.append((time.perf_counter() - started) * 1000)
    took.sort()
    print(json.dumps({
        "limits": name,
        "requests": REQUESTS,
        "median_ms": round(statistics.median(took), 3),
        "p95_ms": round(took[int(len(took) * 0.95)], 3),
    }))


if __name__ == "__main__":
    main()
