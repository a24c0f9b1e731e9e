"""The pinned open (codescan.inputs.pinned) per file against plain open(), on files a walk listed.

    python benchmarks/bench_open.py [--files 2000] [--depth 3] [--repeats 5]

Prints microseconds per file (open, fstat, read of a 20 KB file, close) for: the read before
pinning (`open(path, "rb")`, fstat, a read bounded by --max-filesize), and `read_limited` with the walk's pin (components below the
argument opened one by one without following links, identity compared, a read sized by fstat),
and `sized`, a plain open() with the same sized read: pinned - sized is what pinning costs.
Medians of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codescan.inputs.read import read_limited  # noqa: E402
from codescan.inputs.walk import walk  # noqa: E402


def build(root: Path, files: int, depth: int) -> Path:
    folder = root.joinpath(*(f"d{i}" for i in range(depth)))
    folder.mkdir(parents=True)
    payload = os.urandom(20_000)
    for i in range(files):
        (folder / f"{i:05d}.jpg").write_bytes(payload)
    return root


def per_file(fn, entries) -> float:
    started = time.perf_counter()
    for entry in entries:
        fn(entry)
    return (time.perf_counter() - started) / len(entries) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--depth", type=int, default=3, help="folders between the argument and the files")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = build(Path(tmp) / "tree", args.files, args.depth)
        entries = list(walk([str(root)]))

        def plain(entry) -> bytes:  # the read before pinning: open by name, fstat, bounded read
            with open(entry.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size > 1 << 28:
                    raise ValueError
                return fh.read((1 << 28) + 1)

        def sized(entry) -> bytes:  # open by name, read sized by fstat: the pinning's own cost is pinned - sized
            with open(entry.path, "rb", buffering=0) as fh:
                return fh.read(os.fstat(fh.fileno()).st_size + 1)

        def pinned(entry) -> bytes:
            return read_limited(entry.path, 1 << 28, entry.pin)

        ways = {"open()": plain, "sized": sized, "pinned": pinned}
        results: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):  # alternating, so drift hits all alike
            for name, fn in ways.items():
                results[name].append(per_file(fn, entries))
    base = statistics.median(results["open()"])
    print(f"{args.files} files of 20 KB, {args.depth + 1} components below the argument, medians of {args.repeats}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:>8}: {med:6.1f} µs/file  ({med / base:.2f}x open())")


if __name__ == "__main__":
    main()
