"""Splits a `perf script` of Sluice, recorded while sluice-bench ran rounds
with `--pause-ms`, into its phases, and says where each phase's CPU went.

    perf script -F comm,tid,time,ip,sym,dso | python3 bench/phases.py FREQ STREAMS

Samples closer than 100 ms belong to one burst; bursts come in pairs, a
round's setup (create, subscribe) and then its sends (send to the last
event). For each phase: Sluice's CPU per stream, the share per thread, the
share in the kernel, and the functions with the largest inclusive share.
"""

import collections
import re
import sys

# Frames worth naming: Sluice's own and the crates on its hot paths.
NAMED = re.compile(r"sluice|actix|redb|hyper|reqwest|serde|tungstenite|malloc|free|memmove")


def short(name):
    """Drops generic arguments, which make Rust names unreadably long."""
    for _ in range(8):
        name = re.sub(r"<[^<>]*>", "", name)
    return name[:100]


def samples(lines):
    current = None
    for line in lines:
        if not line.strip():
            continue
        if not line.startswith("\t"):
            m = re.match(r"(.+?)\s+(\d+)\s+([\d.]+):", line)
            if m:
                current = {"comm": m.group(1).strip(), "time": float(m.group(3)), "frames": []}
                yield current
            continue
        parts = line.strip().split(None, 1)
        if current is not None and len(parts) == 2 and "(inlined)" not in parts[1]:
            m = re.match(r"(.*?)\s+\(([^()]*)\)$", parts[1])
            sym, dso = (m.group(1), m.group(2)) if m else (parts[1], "")
            current["frames"].append((short(sym), "kernel" in dso))


def main():
    freq, streams = float(sys.argv[1]), int(sys.argv[2])
    everything = sorted(samples(sys.stdin), key=lambda s: s["time"])
    if not everything:
        sys.exit("no samples")
    bursts = [[everything[0]]]
    for s in everything[1:]:
        if s["time"] - bursts[-1][-1]["time"] > 0.1:
            bursts.append([])
        bursts[-1].append(s)
    # Stray samples (timers, the log) are not a phase.
    bursts = [b for b in bursts if len(b) >= 10]
    rounds = len(bursts) // 2
    if rounds == 0:
        sys.exit(f"expected pairs of bursts, found {len(bursts)}")
    per_round = streams / rounds
    for name, phase in (("setup", bursts[0::2]), ("send", bursts[1::2])):
        picked = [s for b in phase for s in b]
        n = len(picked)
        print(f"## {name}: {n} samples in {len(phase)} rounds, "
              f"{n / freq / len(phase) / per_round * 1e6:.0f} µs of Sluice CPU per stream")
        threads = collections.Counter(re.sub(r"[|:].*", "", s["comm"]) for s in picked)
        print("threads: " + ", ".join(f"{t} {100 * k / n:.0f} %" for t, k in threads.most_common()))
        kernel = sum(1 for s in picked if s["frames"] and s["frames"][0][1])
        print(f"in the kernel: {100 * kernel / n:.0f} %")
        inclusive = collections.Counter()
        for s in picked:
            inclusive.update({f for f, _ in s["frames"] if NAMED.search(f)})
        print("largest inclusive shares:")
        for frame, k in inclusive.most_common(25):
            print(f"  {100 * k / n:5.1f} %  {frame}")
        print()


if __name__ == "__main__":
    main()
