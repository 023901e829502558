"""Turns bench/run.sh's results (JSON lines) into the tables of
docs/benchmarks.md, replacing what is between the bench:start and bench:end
markers (added at the end if missing).

    python3 bench/report.py RESULTS MODE docs/benchmarks.md
"""

import json
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load(path):
    runs = defaultdict(list)
    for line in open(path):
        record = json.loads(line)
        result = record["result"]
        if "cpu_ms" in record:
            result["cpu_ms"] = record["cpu_ms"]
        runs[record["scenario"]].append(result)
    return runs


def mean(runs, key):
    values = [r[key] for r in runs if r.get(key) == r.get(key)]  # skip NaN
    return statistics.mean(values) if values else float("nan")


def fmt(x, digits=1):
    if x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def machine():
    cpu = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"{cores} cores ({cpu}), Linux {platform.release()}, commit {commit}"


def overhead(runs, out):
    out.append("### Proxy overhead: direct to the fake upstream vs through Sluice\n")
    out.append(
        "200-token streams. *tokens/s* is all streams' tokens over the time from the common "
        "start to the last stream's end; *% direct* compares with the direct row measured "
        "just before. TTFT is from the request (OpenAI) or the `send` (sessions) to the first "
        "token; *added* is Sluice's TTFT minus direct at the same percentile. ITL is the gap "
        "between token frames as the client receives them. *CPU µs per token* is the CPU time "
        "each process spent in the run (from `/proc`, in 10 ms ticks, so shown from concurrency "
        "100 up) over the tokens delivered: the fake upstream, Sluice, and the load generator.\n"
    )
    out.append("| delay | conc. | path | tokens/s | % direct | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms | ITL p99 ms | CPU µs per token: upstream / Sluice / client | errors |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for delay in (0, 20):
        for c in (1, 10, 100, 1000):
            base = runs.get(f"overhead/direct/d{delay}/c{c}")
            if not base:
                continue
            d_tps = mean(base, "tokens_per_s")
            d50, d99 = mean(base, "ttft_p50_ms"), mean(base, "ttft_p99_ms")
            for path in ("direct", "openai", "sse", "ws"):
                r = runs.get(f"overhead/{path}/d{delay}/c{c}")
                if not r:
                    continue
                tps = mean(r, "tokens_per_s")
                t50, t99 = mean(r, "ttft_p50_ms"), mean(r, "ttft_p99_ms")
                direct = path == "direct"
                out.append(
                    f"| {delay} ms | {c} | {'direct' if direct else 'Sluice ' + path} | {fmt(tps, 0)} | "
                    f"{'' if direct else fmt(100 * tps / d_tps, 0) + ' %'} | {fmt(t50, 2)} | {fmt(t99, 2)} | "
                    f"{'' if direct else fmt(t50 - d50, 2)} | {'' if direct else fmt(t99 - d99, 2)} | "
                    f"{fmt(mean(r, 'itl_p99_ms'), 2)} | {cpu_per_token(r, c, direct)} | "
                    f"{sum(x['errors'] for x in r)} |"
                )
    out.append("")


def cpu_per_token(runs, concurrency, direct):
    """Each process's CPU µs per delivered token, averaged over the runs."""
    if concurrency < 100 or not all("cpu_ms" in r and r.get("tokens") for r in runs):
        return ""
    def per(who):
        return statistics.mean(1000 * r["cpu_ms"][who] / r["tokens"] for r in runs)
    sluice = "-" if direct else fmt(per("sluice"), 1)
    return f"{fmt(per('upstream'), 1)} / {sluice} / {fmt(per('client'), 1)}"


def capacity(runs, out):
    rows = [c for c in (500, 1000, 2000, 4000) if f"capacity/ws/c{c}" in runs]
    if not rows:
        return
    out.append("### Capacity: live streams at 50 tokens/s each (WebSocket sessions)\n")
    out.append(
        "100-token answers, 20 ms apart at the upstream. *added ITL p99* is Sluice's p99 gap "
        "between token frames minus the direct run's at the same concurrency.\n"
    )
    out.append("| streams | direct ITL p99 ms | Sluice ITL p99 ms | added ITL p99 ms | Sluice tokens/s | errors |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for c in rows:
        d, s = runs[f"capacity/direct/c{c}"], runs[f"capacity/ws/c{c}"]
        d99, s99 = mean(d, "itl_p99_ms"), mean(s, "itl_p99_ms")
        out.append(
            f"| {c} | {fmt(d99, 2)} | {fmt(s99, 2)} | {fmt(s99 - d99, 2)} | "
            f"{fmt(mean(s, 'tokens_per_s'), 0)} | {sum(x['errors'] for x in s)} |"
        )
    out.append("")


def peer(runs, out):
    rows = [(d, c) for d in (0, 20) for c in (1, 10, 100) if f"peer/litellm/d{d}/c{c}" in runs]
    if not rows:
        return
    out.append("### The peer: LiteLLM's proxy vs Sluice, OpenAI API, same fake upstream\n")
    out.append(
        "LiteLLM's proxy (PyPI `litellm[proxy]`, the version in `bench/peer-requirements.txt`, "
        "default settings) routes every model to the same fake upstream. Direct, Sluice and "
        "LiteLLM run back to back at each level. Concurrency 1000 is left out for the peer: at "
        "its measured rate one round would take many minutes.\n"
    )
    out.append(
        "| delay | conc. | direct tokens/s | Sluice tokens/s | LiteLLM tokens/s | Sluice TTFT p50 / p99 ms "
        "| LiteLLM TTFT p50 / p99 ms | Sluice ITL p99 ms | LiteLLM ITL p99 ms | errors (Sluice / LiteLLM) |"
    )
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d, c in rows:
        dr, sr, lr = (runs[f"peer/{p}/d{d}/c{c}"] for p in ("direct", "sluice", "litellm"))
        out.append(
            f"| {d} ms | {c} | {fmt(mean(dr, 'tokens_per_s'), 0)} | {fmt(mean(sr, 'tokens_per_s'), 0)} | "
            f"{fmt(mean(lr, 'tokens_per_s'), 0)} | {fmt(mean(sr, 'ttft_p50_ms'), 2)} / {fmt(mean(sr, 'ttft_p99_ms'), 2)} | "
            f"{fmt(mean(lr, 'ttft_p50_ms'), 2)} / {fmt(mean(lr, 'ttft_p99_ms'), 2)} | {fmt(mean(sr, 'itl_p99_ms'), 2)} | "
            f"{fmt(mean(lr, 'itl_p99_ms'), 2)} | {sum(x['errors'] for x in sr)} / {sum(x['errors'] for x in lr)} |"
        )
    out.append("")


def singles(runs, out):
    idle = runs.get("idle/ws")
    if idle:
        r = idle[0]
        out.append("### Idle WebSocket connections\n")
        out.append("| connections | sessions | RSS before | RSS after | RSS per connection | errors |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        out.append(
            f"| {r['connections']} | {r['sessions']} | {r['rss_before_kib'] / 1024:.0f} MiB | "
            f"{r['rss_after_kib'] / 1024:.0f} MiB | {r['rss_per_connection_kib']:.1f} KiB | {r['errors']} |"
        )
        out.append("")
    resume = runs.get("resume/1000")
    if resume:
        r = resume[0]
        out.append("### Resume\n")
        out.append(
            f"A WebSocket client resuming from cursor 0 of a session holding {r['events']} events, "
            f"until it has the last one (connect, `hello`, replay), {r['repeats']} times: "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms.\n"
        )
    cross = [c for c in (1, 10, 100) if f"cross/c{c}" in runs]
    if cross:
        out.append("### Cross-replica delivery\n")
        out.append(
            "Two replicas sharing Redis and PostgreSQL. Each session has a WebSocket client on "
            "the replica that owns it and one on the other replica (fed through Redis pub/sub); "
            "*added* is how much later each event reaches the second. 200-token answers, 20 ms apart.\n"
        )
        out.append("| sessions | events | added p50 ms | added p99 ms | errors |")
        out.append("| --- | --- | --- | --- | --- |")
        for c in cross:
            r = runs[f"cross/c{c}"][0]
            out.append(f"| {c} | {r['events']} | {r['added_p50_ms']:.2f} | {r['added_p99_ms']:.2f} | {r['errors']} |")
        out.append("")
    takeover = runs.get("takeover")
    if takeover:
        out.append("### Takeover after `kill -9` of the owner\n")
        out.append(
            "The multi-replica test (`cargo test --test cluster killed`: Redis, PostgreSQL, three "
            "debug-build replicas and nginx) kills the replica owning a session in the middle of a "
            "600-token answer. It reads the owner's remaining lease (`PTTL`) just before the kill; "
            "*first continued event* is when the WebSocket client, reconnected through nginx, "
            f"receives the next token of the answer, continued by another replica. Lease "
            f"{takeover[0]['lease_s']} s.\n"
        )
        out.append("| run | lease left at kill ms | kill → first continued event ms | lease expiry → first continued event ms |")
        out.append("| --- | --- | --- | --- |")
        for i, r in enumerate(takeover, 1):
            out.append(f"| {i} | {r['lease_left_ms']} | {r['kill_to_first_ms']} | {r['expiry_to_first_ms']} |")
        out.append("")


def main():
    results, mode, doc = sys.argv[1:4]
    runs = load(results)
    out = [START, "", "## Benchmark suite results", ""]
    out.append(f"Machine: {machine()}. Run: `bench/run.sh{'' if mode == 'full' else ' ' + mode}` "
               "(release build; the fake upstream, Sluice and the load generator share the cores).\n")
    overhead(runs, out)
    capacity(runs, out)
    peer(runs, out)
    singles(runs, out)
    out.append(END)
    text = open(doc).read()
    block = "\n".join(out)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    open(doc, "w").write(text)


if __name__ == "__main__":
    main()
