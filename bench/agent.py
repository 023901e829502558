"""Measures what bench/agent.sh describes, against a running Sluice whose
provider is the fake upstream. Standard library only; prints JSON lines."""

import http.client
import json
import statistics
import sys
import time
import urllib.parse
import uuid

BASE = urllib.parse.urlparse(sys.argv[1])
RUNS = 200


def conn():
    return http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=30)


def post(c, path, body):
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    return r, data


def session(c, model, tools=None):
    body = {"model": model}
    if tools is not None:
        body["tools"] = tools
    _, data = post(c, "/v1/sessions", body)
    return json.loads(data)["id"]


def answer_ms(c, sid, content):
    """Send, then follow the SSE stream to generation_end; milliseconds."""
    events = conn()
    events.request("GET", f"/v1/sessions/{sid}/events", headers={"Accept": "text/event-stream"})
    stream = events.getresponse()
    assert stream.status == 200, (stream.status, stream.read())
    # Past hello and snapshot before sending.
    seen = 0
    while seen < 2:
        line = stream.fp.readline()
        assert line, "the event stream ended before its snapshot"
        if line.startswith(b"data:"):
            seen += 1
    start = time.perf_counter()
    r, _ = post(c, f"/v1/sessions/{sid}/messages", {"content": content})
    assert r.status == 202, r.status
    end = None
    while True:
        line = stream.fp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            if event.get("type") == "generation_end":
                end = event
                break
    elapsed = (time.perf_counter() - start) * 1000
    events.close()
    return elapsed, end


def summary(name, samples, **extra):
    samples = sorted(samples)
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print(json.dumps({"bench": name, "runs": len(samples), "median_ms": round(statistics.median(samples), 3),
                      "p95_ms": round(p(0.95), 3), **extra}), flush=True)


def tool_step():
    c = conn()
    calc = json.dumps({"steps": [[{"name": "calculator", "arguments": {"expression": "6*7"}}]]})
    plain, tooled = [], []
    for i in range(RUNS):
        # Alternate, on fresh sessions, so both see the same conditions.
        sid = session(c, "fake:tokens=20", tools=[])
        ms, end = answer_ms(c, sid, f"plain {i}")
        assert end["finish_reason"] == "stop", end
        plain.append(ms)
        sid = session(c, "fake:tools,tokens=20", tools=["calculator"])
        ms, end = answer_ms(c, sid, calc)
        assert end["finish_reason"] == "stop", end
        tooled.append(ms)
    summary("answer without tools (20 tokens)", plain)
    summary("answer with one calculator step (20 tokens)", tooled)
    print(json.dumps({"bench": "time added by one built-in tool step",
                      "median_ms": round(statistics.median(tooled) - statistics.median(plain), 3)}), flush=True)


def relay_ms(c, body):
    start = time.perf_counter()
    r, data = post(c, "/v1/chat/completions", body)
    ms = (time.perf_counter() - start) * 1000
    assert r.status == 200, data
    return ms, r.getheader("X-Sluice-Cache")


def cache(first_delay_ms):
    c = conn()
    model = f"fake:tokens=200,first_delay_ms={first_delay_ms}"
    hits, misses = [], []
    for i in range(RUNS if first_delay_ms == 0 else 40):
        body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": f"q {uuid.uuid4()}"}]}
        ms, state = relay_ms(c, body)
        assert state == "miss", state
        misses.append(ms)
        ms, state = relay_ms(c, body)
        assert state == "hit", state
        hits.append(ms)
    label = f"provider first token after {first_delay_ms} ms" if first_delay_ms else "provider answering at once"
    summary(f"OpenAI route, 200-token answer, miss ({label})", misses)
    summary(f"OpenAI route, 200-token answer, hit ({label})", hits)


def session_cache():
    c = conn()
    hits, misses = [], []
    for i in range(40):
        content = f"question {uuid.uuid4()}"
        ms, end = answer_ms(c, session(c, "fake:tokens=200,first_delay_ms=300", tools=[]), content)
        assert not end.get("cached"), end
        misses.append(ms)
        ms, end = answer_ms(c, session(c, "fake:tokens=200,first_delay_ms=300", tools=[]), content)
        assert end.get("cached") is True, end
        hits.append(ms)
    summary("session, 200-token answer, miss (provider first token after 300 ms)", misses)
    summary("session, 200-token answer, hit (provider first token after 300 ms)", hits)


def responses_chain():
    """The Responses API: a 20-token response whole, and a follow-up's time
    as its conversation grows (each follow-up reads the chain back and
    sends it whole), at turns 1-20 and 481-500 of one chain."""
    c = conn()
    previous, times = None, []
    for turn in range(500):
        body = {"model": "fake:tokens=20", "input": f"turn {turn}: a short question of a few words"}
        if previous:
            body["previous_response_id"] = previous
        start = time.perf_counter()
        r, data = post(c, "/v1/responses", body)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status == 200, data
        previous = json.loads(data)["id"]
    summary("Responses API, whole, turns 1-20 of a chain (20 tokens)", times[:20])
    summary("Responses API, whole, turns 481-500 of a chain (20 tokens)", times[-20:])


tool_step()
cache(0)
cache(300)
session_cache()
responses_chain()
