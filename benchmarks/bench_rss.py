"""Peak memory while scanning a huge tree: 100,000 small files by default.

Generates the tree (nested folders of tiny PNG/JPEG files plus some non-images), runs
``codescan scan`` on it with output to a file, samples the resident memory of the whole
process tree (the scanner, its decode workers and the forkserver) every 0.2 s from /proc, and
prints the peak of the sum, the peak of the main process, and throughput.

    python benchmarks/bench_rss.py --files 100000
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PAGE = os.sysconf("SC_PAGE_SIZE")


def make_tree(root: Path, files: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(64):
        im = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
        buf = io.BytesIO()
        im.save(buf, "PNG" if i % 2 else "JPEG")
        blobs.append((buf.getvalue(), "png" if i % 2 else "jpg"))
    per_dir = 500
    for i in range(files):
        d = root / f"d{i // (per_dir * 20):03d}" / f"e{(i // per_dir) % 20:02d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        if i % 50 == 49:
            (d / f"f{i:07d}.txt").write_bytes(b"not an image\n")
        else:
            data, ext = blobs[i % len(blobs)]
            (d / f"f{i:07d}.{ext}").write_bytes(data)


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum of RSS over pid and all descendants, RSS of pid), in bytes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, main, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                rss = int(fh.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        total += rss
        main = rss if p == pid else main
        stack.extend(children.get(p, []))
    return total, main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--tree", type=Path, help="reuse an existing tree instead of generating one")
    ap.add_argument("--home", type=Path, help="CODESCAN_HOME with a bundle 'code' (default: build a random one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tree = args.tree or tmp_path / "tree"
        if not args.tree:
            t = time.perf_counter()
            make_tree(tree, args.files)
            print(f"generated {args.files} files in {time.perf_counter() - t:.0f}s", flush=True)
        home = args.home
        if home is None:
            from bench_scan import build_checkpoint

            home = tmp_path / "home"
            ckpt = build_checkpoint(tmp_path / "ckpt")
            env = {**os.environ, "CODESCAN_HOME": str(home)}
            subprocess.run([str(Path(sys.executable).parent / "codescan"), "weights", "import", str(ckpt)], env=env, check=True)
        env = {**os.environ, "CODESCAN_HOME": str(home)}
        out = tmp_path / "out.jsonl"
        exe = Path(sys.executable).parent / "codescan"
        t = time.perf_counter()
        proc = subprocess.Popen([str(exe), "scan", str(tree), "-q", "-o", str(out)], env=env)
        peak_total = peak_main = 0
        while proc.poll() is None:
            total, main_rss = tree_rss(proc.pid)
            peak_total, peak_main = max(peak_total, total), max(peak_main, main_rss)
            time.sleep(0.2)
        wall = time.perf_counter() - t
        lines = out.read_text().splitlines()
        print(f"files: {len(lines) - 2} records, exit code {proc.returncode}, {wall:.0f}s, {(len(lines) - 2) / wall:.0f} files/s")
        print(f"peak RSS, whole process tree: {peak_total / 2**20:.0f} MiB; main process: {peak_main / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
