"""The review report at scale: a 100,000-record report in headless Chromium, and thumbnail throughput.

    python benchmarks/bench_report.py [--records 100000] [--thumbs 64] [--workers 2]

Page times come from report.js itself (attributes on <body> read back with --dump-dom):
data-load-ms is from navigation start to the first page drawn (data.js parsed, histograms,
filter and sort of every record), data-render-ms the time of the last filter+sort+draw. The
filter is given in the URL fragment, so the second load's data-render-ms is one filter applied
to all records; the third load draws the gallery instead of the table. Needs `chromium` (Debian package) on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CODESCAN = str(Path(sys.executable).parent / "codescan")
FILTER = "#status=fake&q=dir1&sort=score-asc"
GALLERY = "#view=gallery&status=real"


def synthetic_record(i: int, rng: random.Random) -> dict:
    """One result as `scan` writes it; about 1 in 50 an error, 1 in 20 with evidence."""
    path = f"photos/dir{i % 997}/img_{i:06d}.jpg"
    sha = hashlib.sha256(str(i).encode()).hexdigest()
    if i % 50 == 0:
        return {"type": "result", "path": path, "status": "error", "error_code": "truncated", "error": "image file is truncated", "sha256": sha}
    score = rng.gauss(0, 2)
    evidence = [{"kind": "comfyui", "detail": "PNG text 'prompt'", "generator": "FLUX.1 [dev]", "conclusive": True}] if i % 20 == 0 else []
    status = "fake" if score > 0 else "real"
    return {"type": "result", "path": path, "status": status, "score": score, "threshold": 0.0, "head": "linear",
            "width": 1024, "height": 768, "format": "JPEG", "crop": [400, 272, 624, 496], "sha256": sha,
            "evidence": evidence, "combined": "fake" if evidence or status == "fake" else "real"}


def write_verdicts(path: Path, count: int) -> None:
    rng = random.Random(0)
    header = {"type": "header", "schema_version": 3, "codescan": "0.1.0", "weights": {"name": "code", "sha256": "0" * 64},
              "engine": "onnxruntime", "device": "cpu", "precision": "fp32", "head": "linear", "thresholds": {"linear": 0.0}}
    with open(path, "w") as fh:
        fh.write(json.dumps(header) + "\n")
        for i in range(count):
            fh.write(json.dumps(synthetic_record(i, rng)) + "\n")
        fh.write(json.dumps({"type": "summary", "files": count, "seconds": 1.0}) + "\n")


def page_times(page: Path, fragment: str) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000", "--dump-dom", page.resolve().as_uri() + fragment],
        capture_output=True, timeout=300, check=True,
    )
    body = re.search(rb"<body([^>]*)>", done.stdout).group(1).decode()
    times = {k: float(v) for k, v in re.findall(r'data-(load-ms|render-ms|shown)="([0-9.]+)"', body)}
    return {**times, "chromium-wall-s": time.perf_counter() - start}


def thumbnail_rate(folder: Path, count: int, workers: int) -> float:
    from codescan.review.thumbs import make_thumbnails

    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(base).resize((1024, 768), Image.BILINEAR).save(path, quality=90)
        records.append({"path": str(path), "status": "real", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    start = time.perf_counter()
    states = make_thumbnails(records, folder / "thumbs", workers)
    seconds = time.perf_counter() - start
    assert states == ["ok"] * count, states
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--thumbs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        sys.exit("needs chromium on PATH (apt-get install -y --no-install-recommends chromium)")
    print("command:", " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "bench_report.py")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_verdicts(work / "v.jsonl", args.records)
        start = time.perf_counter()
        subprocess.run([CODESCAN, "report", str(work / "v.jsonl"), "-o", str(work / "report.html"), "--no-thumbnails", "-q"], check=True)
        print(f"report of {args.records} records written in {time.perf_counter() - start:.2f} s "
              f"(data.js {(work / 'report_files' / 'data.js').stat().st_size / 1e6:.1f} MB)")
        first = page_times(work / "report.html", "")
        print(f"first page: load+render {first['load-ms']:.0f} ms (sort of all records and draw {first['render-ms']:.0f} ms), "
              f"chromium process {first['chromium-wall-s']:.1f} s")
        filtered = page_times(work / "report.html", FILTER)
        print(f"filter {FILTER}: {filtered['render-ms']:.0f} ms to filter, sort and draw ({filtered['shown']:.0f} shown); "
              f"load+render {filtered['load-ms']:.0f} ms")
        gallery = page_times(work / "report.html", GALLERY)
        print(f"gallery {GALLERY}: {gallery['render-ms']:.0f} ms to filter, sort and draw 100 tiles ({gallery['shown']:.0f} shown); "
              f"load+render {gallery['load-ms']:.0f} ms")
        (work / "imgs").mkdir()
        rate = thumbnail_rate(work / "imgs", args.thumbs, args.workers)
        print(f"thumbnails: {rate:.1f} thumbs/s ({args.thumbs} 1024x768 JPEGs, workers={args.workers})")


if __name__ == "__main__":
    main()
