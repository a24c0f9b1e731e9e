"""`codescan scan --ray local` on 1 and 2 CPU cores against the local scan, same files, same run.

Generates distinct images (JPEG/PNG/WebP, 200–480 px), then times, as fresh processes: the
local scan (`--no-cache`, all cores: the reference here) and `--ray local --ray-workers N`
pinned with taskset to N cores (Ray and every process it starts inherit the pinning). Prints
wall time (Ray's start included), files/s, the ratio to the local scan, and whether every
record is identical to the local scan's.

    python benchmarks/bench_ray.py --count 1024 --workers 1 2
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def run(folder: Path, home: Path, extra: list[str], cpus: int | None = None) -> tuple[float, list[dict]]:
    """One scan as a fresh process; `cpus` pins it (and every process it starts) to that many cores."""
    exe = Path(sys.executable).parent / "codescan"
    env = {**os.environ, "CODESCAN_HOME": str(home)}
    pin = ["taskset", "-c", f"0-{cpus - 1}"] if cpus else []
    t = time.perf_counter()
    p = subprocess.run([*pin, str(exe), "scan", str(folder), "-q", *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise RuntimeError(p.stderr[-2000:])
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    lines[-1].pop("seconds")
    return wall, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    from bench_cache import make_tree
    from bench_scan import build_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "images"
        make_tree(folder, args.count)
        home = tmp_path / "home"
        ckpt = build_checkpoint(tmp_path / "ckpt")
        env = {**os.environ, "CODESCAN_HOME": str(home)}
        subprocess.run([str(Path(sys.executable).parent / "codescan"), "weights", "import", str(ckpt)], env=env, check=True)
        local_wall, local = run(folder, home, ["--no-cache"])
        print(f"local scan (all cores): {local_wall:.1f}s, {args.count / local_wall:.1f} files/s", flush=True)
        for n in args.workers:
            wall, records = run(folder, home, ["--ray", "local", "--ray-workers", str(n)], cpus=n)
            print(
                f"--ray local --ray-workers {n}, pinned to {n} core(s): {wall:.1f}s, {args.count / wall:.1f} files/s, "
                f"{local_wall / wall:.2f}x the local scan, identical records: {records == local}",
                flush=True,
            )


if __name__ == "__main__":
    main()
