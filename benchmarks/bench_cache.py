"""Rescan of an unchanged tree: the second scan answers from the scan cache.

Generates a tree of distinct images (10,000 by default, JPEG/PNG/WebP, 200–480 px, in 100
folders), scans it twice with a fresh cache file, and prints both wall times (whole process,
imports and engine start included), their ratio, and whether the two outputs are identical
record for record (the summary's `seconds` aside). `--baseline` adds a `--no-cache` scan to
show what writing the cache costs the first scan.

    python benchmarks/bench_cache.py --files 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def make_tree(root: Path, files: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(files):
        folder = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(200, 481, 2))
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        fmt, ext = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"))[i % 3]
        im.save(folder / f"{i:06d}.{ext}", fmt, **({"quality": 90} if fmt != "PNG" else {}))


def scan(tree: Path, home: Path, extra: list[str]) -> tuple[float, int, list[dict]]:
    exe = Path(sys.executable).parent / "codescan"
    env = {**os.environ, "CODESCAN_HOME": str(home)}
    t = time.perf_counter()
    p = subprocess.run([str(exe), "scan", str(tree), "-q", *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise RuntimeError(p.stderr)
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    lines[-1].pop("seconds")
    return wall, p.returncode, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--baseline", action="store_true", help="also time a --no-cache scan")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tree = tmp_path / "tree"
        t = time.perf_counter()
        make_tree(tree, args.files)
        print(f"generated {args.files} distinct images in {time.perf_counter() - t:.0f}s", flush=True)
        from bench_scan import build_checkpoint

        home = tmp_path / "home"
        ckpt = build_checkpoint(tmp_path / "ckpt")
        env = {**os.environ, "CODESCAN_HOME": str(home)}
        subprocess.run([str(Path(sys.executable).parent / "codescan"), "weights", "import", str(ckpt)], env=env, check=True)
        cache = ["--cache", str(tmp_path / "cache.sqlite3")]
        if args.baseline:
            wall0, _, _ = scan(tree, home, ["--no-cache"])
            print(f"--no-cache scan: {wall0:.1f}s ({args.files / wall0:.0f} files/s)", flush=True)
        wall1, rc1, first = scan(tree, home, cache)
        print(f"first scan (empty cache): {wall1:.1f}s ({args.files / wall1:.0f} files/s)", flush=True)
        wall2, rc2, second = scan(tree, home, cache)
        print(f"second scan (unchanged tree): {wall2:.1f}s ({args.files / wall2:.0f} files/s)")
        same = (rc1, first) == (rc2, second)
        size = (tmp_path / "cache.sqlite3").stat().st_size
        print(f"speed-up: {wall1 / wall2:.1f}x; identical records: {same}; cache file {size / 2**20:.1f} MiB")
        if not same:
            raise SystemExit("records differ between the two scans")


if __name__ == "__main__":
    main()
