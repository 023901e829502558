"""Files benchmarks against a running Sluice (bench/files.sh starts it).

  files.py rss URL PID PATH       upload the file at PATH; print the server's
                                  RSS before and its peak during the upload
  files.py ingest URL DIR         upload every file in DIR at once (4 at a
                                  time), wait until all are indexed; print
                                  MB/s, pages/s (PDFs) and chunks/s
  files.py corpus DIR N KB        write N prose documents of about KB each
  files.py pdf PATH PAGES         write a PDF of PAGES pages of prose

Only the standard library: uploads are streamed from disk by curl.
Prints one JSON object.
"""

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

WORDS = (
    "harbour quay vessel tug pilot berth cargo crane container ferry tide channel anchor "
    "buoy captain crew engine hull deck bridge rudder propeller mooring line bollard fender "
    "warehouse customs manifest invoice schedule weather storm fog visibility wind wave "
    "repair inspection permit safety report master officer terminal truck rail depot "
    "the a of and to in for on with by at from that this is was were be as it"
).split()


def prose(rng, words):
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) > 8 and rng.random() < 0.15:
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    out.append(" ".join(sentence).capitalize() + ".")
    text, para = [], []
    for s in out:
        para.append(s)
        if len(para) == 5:
            text.append(" ".join(para))
            para = []
    text.append(" ".join(para))
    return "\n\n".join(text) + "\n"


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024  # MiB
    return 0


def upload(url, path):
    out = subprocess.run(
        ["curl", "-s", "-F", f"file=@{path}", f"{url}/v1/files"], capture_output=True, check=True
    )
    return json.loads(out.stdout)


def get(url):
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def rss(url, pid, path):
    before = status(pid, "VmRSS")
    # The peak so far is the start's; the kernel resets it on request.
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    start = time.monotonic()
    created = upload(url, path)
    took = time.monotonic() - start
    peak = status(pid, "VmHWM")
    size = os.path.getsize(path)
    assert created.get("bytes") == size, created
    return {
        "bytes": size,
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "growth_mib": peak - before,
        "seconds": round(took, 2),
        "mib_per_s": round(size / took / 2**20, 1),
    }


def ingest(url, directory):
    paths = sorted(os.path.join(directory, p) for p in os.listdir(directory))
    size = sum(os.path.getsize(p) for p in paths)
    # A PDF's page count is in its name: report1.p50.pdf has 50 pages.
    pages = sum(int(p.rsplit(".", 2)[1][1:]) for p in paths if p.endswith(".pdf"))
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        files = list(pool.map(lambda p: upload(url, p), paths))
    uploaded = time.monotonic() - start
    ids = [f["id"] for f in files]
    chunks = 0
    for file_id in ids:
        while True:
            f = get(f"{url}/v1/files/{file_id}")
            if f["status"] != "stored":
                break
            time.sleep(0.05)
        assert f["status"] == "indexed", f
        chunks += f["chunks"]
    took = time.monotonic() - start
    result = {
        "files": len(paths),
        "mib": round(size / 2**20, 2),
        "chunks": chunks,
        "upload_seconds": round(uploaded, 2),
        "seconds": round(took, 2),
        "mib_per_s": round(size / took / 2**20, 2),
        "chunks_per_s": round(chunks / took, 1),
    }
    if pages:
        result["pages"] = pages
        result["pages_per_s"] = round(pages / took, 1)
    return result


def corpus(directory, n, kb):
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(7)
    for i in range(n):
        with open(os.path.join(directory, f"doc{i:04}.md"), "w") as f:
            f.write(prose(rng, kb * 1024 // 6))


def pdf(path, pages):
    rng = random.Random(11)
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None,
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for _ in range(pages):
        lines = prose(rng, 450).replace("\n\n", " ").split(". ")
        content = "BT /F1 10 Tf 50 760 Td 12 TL\n" + "".join(
            "(" + line[:95].replace("(", "").replace(")", "").replace("\\", "") + ") Tj T*\n" for line in lines[:55]
        ) + "ET"
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R /Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects):
        offsets.append(len(out))
        out += f"{i + 1} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for o in offsets:
        out += f"{o:010} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    with open(path, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "rss":
        print(json.dumps(rss(args[0], int(args[1]), args[2])))
    elif mode == "ingest":
        print(json.dumps(ingest(args[0], args[1])))
    elif mode == "corpus":
        corpus(args[0], int(args[1]), int(args[2]))
    elif mode == "pdf":
        pdf(args[0], int(args[1]))
    else:
        sys.exit(__doc__)
