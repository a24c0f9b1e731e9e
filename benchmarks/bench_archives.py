"""Scanning images inside archives vs the same images extracted, same files, same run.

Datasets ship as WebDataset tar shards, zips, tar.gz and Hugging Face Parquet; extracting them
first costs disk and time, so reading members in place has to keep up with a plain folder and
agree with it. Throughput mode builds every form from the same images, scans each as a fresh
process (``codescan scan X -q --no-cache -o out.jsonl``), rotating the order over ``--repeats``
so no form always runs on a warmer machine, and reports median wall time, files/s and the ratio
against the folder (folder time / this time: >= 1.0 is at least as fast). It also checks that
every form gives the same (status, score) multiset as the folder. codescan embeds identical bytes
once per run, so when images are repeated (``--count`` above the corpus size, and every --rss
shard) files/s weighs reading and decoding more than the model; the ratio stays like for like.

``--rss`` instead builds one shard of about ``--shard-gb`` GB, written streaming so the benchmark
itself stays small, and samples the resident memory of the scanner's whole process tree every
0.2 s: a reader that buffered members or the inflated stream would show here, not in files/s.

    python benchmarks/bench_archives.py                      # labelled corpus, all forms
    python benchmarks/bench_archives.py --count 2048 --repeats 3 --workers 2
    python benchmarks/bench_archives.py --rss --shard-gb 2
    python benchmarks/bench_archives.py --rss --shard-gb 2 --kind tgz

Images come from ``--images DIR``, else ../shared/corpus/labeled if present, else ``--count``
generated 512x512 JPEGs. Weights: ``--home``, else $CODESCAN_HOME, else a random bundle is built
(speed and memory do not depend on weight values). Throughput mode holds the images in memory
while building (the archive builders take member lists), so size it with ``--count``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from archive_kit import parquet_images, tar_of, zip_of  # noqa: E402
from bench_rss import tree_rss  # noqa: E402

CORPUS = HERE.parent.parent / "shared" / "corpus" / "labeled"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
EXE = Path(sys.executable).parent / "codescan"
FORMS = ("folder", "tar", "zip-stored", "zip-deflated", "tar.gz", "parquet")
SHARD_SUFFIX = {"tar": ".tar", "tgz": ".tar.gz", "zip": ".zip"}


def generate_jpegs(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Smooth colour fields plus noise, so JPEG sizes and decode cost resemble photos, not flat fills."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((512, 512), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=90)
        out.append((f"gen/{i:06d}.jpg", buf.getvalue()))
    return out


def source_images(images: Path | None, count: int | None) -> tuple[list[tuple[str, bytes]], str]:
    """(relative name, bytes) for `count` images and a label for the report. A corpus smaller than
    `count` is cycled with a rep<k>/ prefix: identical bytes under distinct names, as shards that
    repeat samples have."""
    folder = images or (CORPUS if CORPUS.is_dir() else None)
    if folder is None:
        return generate_jpegs(count or 512), "generated 512x512 JPEG"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}")
    n = count or len(files)
    base = [(p.relative_to(folder).as_posix(), p.read_bytes()) for p in files[:n]]
    out = []
    for i in range(n):
        name, data = base[i % len(base)]
        out.append((name if i < len(base) else f"rep{i // len(base)}/{name}", data))
    return out, str(folder)


def build_forms(dest: Path, members: list[tuple[str, bytes]]) -> dict[str, Path]:
    """Every form from the same members; a form whose file exists is reused (--keep), so each is
    written to a temporary name and renamed only once complete."""
    targets = {
        "folder": dest / "folder",
        "tar": dest / "shard.tar",
        "zip-stored": dest / "stored.zip",
        "zip-deflated": dest / "deflated.zip",
        "tar.gz": dest / "shard.tar.gz",
        "parquet": dest / "images.parquet",
    }
    dest.mkdir(parents=True, exist_ok=True)
    for form, target in targets.items():
        if target.exists():
            continue
        part = target.with_name(target.name + ".part")
        if form == "folder":
            for name, data in members:
                (part / name).parent.mkdir(parents=True, exist_ok=True)
                (part / name).write_bytes(data)
        elif form == "tar":
            tar_of(part, members)
        elif form == "tar.gz":
            tar_of(part, members, "w:gz")
        elif form == "zip-stored":
            zip_of(part, members, zipfile.ZIP_STORED)
        elif form == "zip-deflated":
            zip_of(part, members, zipfile.ZIP_DEFLATED)
        else:
            parquet_images(part, [d for _, d in members], paths=[n for n, _ in members], row_group_size=64)
        part.rename(target)
    return targets


def write_shard(path: Path, members: list[tuple[str, bytes]], target_bytes: int, kind: str) -> int:
    """Cycle `members` into one shard of about `target_bytes`, one member at a time so neither the
    shard nor its inflated stream is ever in memory; returns the member count. gzip level 6 is what
    `tar czf` writes; zip members are stored, the zip twin of a plain tar shard."""
    part = path.with_name(path.name + ".part")
    written = count = 0
    with part.open("wb") as f:
        if kind == "zip":
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                while written < target_bytes:
                    name, data = members[count % len(members)]
                    zf.writestr(f"{count:08d}{Path(name).suffix.lower()}", data)
                    written, count = written + len(data), count + 1
        else:
            opts = {"compresslevel": 6} if kind == "tgz" else {}
            with tarfile.open(fileobj=f, mode="w:gz" if kind == "tgz" else "w", **opts) as tf:
                while written < target_bytes:
                    name, data = members[count % len(members)]
                    info = tarfile.TarInfo(f"{count:08d}{Path(name).suffix.lower()}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                    written, count = written + len(data), count + 1
    part.rename(path)
    return count


def resolve_home(home: Path | None, tmp: Path) -> Path:
    """A CODESCAN_HOME with bundle 'code'; a random one is enough, as weights do not change speed."""
    if home is not None:
        return home
    if os.environ.get("CODESCAN_HOME"):
        return Path(os.environ["CODESCAN_HOME"])
    from bench_scan import build_checkpoint

    made = tmp / "home"
    ckpt = build_checkpoint(tmp / "ckpt")
    env = {**os.environ, "CODESCAN_HOME": str(made)}
    subprocess.run([str(EXE), "weights", "import", str(ckpt)], env=env, check=True, capture_output=True)
    return made


def scan(target: Path, out: Path, home: Path, extra: list[str], sample: bool = False) -> dict:
    """One fresh `codescan scan` process; with `sample`, the peaks of tree and main-process RSS.
    Sampling /proc costs CPU on a small machine, so throughput runs just wait."""
    cmd = [str(EXE), "scan", str(target), "-q", "--no-cache", "-o", str(out), *extra]
    env = {**os.environ, "CODESCAN_HOME": str(home)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    peak_total = peak_main = 0
    if sample:
        while proc.poll() is None:
            total, main_rss = tree_rss(proc.pid)
            peak_total, peak_main = max(peak_total, total), max(peak_main, main_rss)
            time.sleep(0.2)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t
    results: Counter[tuple[str, float | None]] = Counter()
    summary = None
    with out.open() as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["type"] == "result":
                results[(rec["status"], rec.get("score"))] += 1
            elif rec["type"] == "summary":
                summary = rec
    if summary is None or proc.returncode not in (0, 1, 2):
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode} without a summary:\n{stderr}")
    return {"wall": wall, "results": results, "summary": summary, "rc": proc.returncode,
            "peak_total": peak_total, "peak_main": peak_main}


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def throughput(args: argparse.Namespace, data: Path, tmp: Path, home: Path, extra: list[str]) -> None:
    members, label = source_images(args.images, args.count)
    t = time.perf_counter()
    forms = build_forms(data / f"throughput-{len(members)}", members)
    print(f"built {len(FORMS)} forms of {len(members)} images from {label} in {time.perf_counter() - t:.0f}s", flush=True)
    out = tmp / "out.jsonl"
    scan(forms["folder"], out, home, extra)  # builds and caches the engine once, as a first scan would
    runs: dict[str, list[dict]] = {f: [] for f in FORMS}
    for r in range(args.repeats):
        for form in FORMS[r % len(FORMS):] + FORMS[: r % len(FORMS)]:
            runs[form].append(scan(forms[form], out, home, extra))
    wall = {f: statistics.median(x["wall"] for x in runs[f]) for f in FORMS}
    folder_results = runs["folder"][0]["results"]
    identical = all(x["results"] == folder_results for f in FORMS for x in runs[f])
    print(f"\nimages: {len(members)}; cpus: {os.cpu_count()}; repeats: {args.repeats}; workers: {args.workers or 'default'}\n")
    print("| input | MB | wall s (median) | files/s | vs folder | records | same verdicts |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for f in FORMS:
        n = sum(runs[f][0]["results"].values())
        same = "yes" if all(x["results"] == folder_results for x in runs[f]) else "NO"
        print(f"| {f} | {size_of(forms[f]) / 1e6:.1f} | {wall[f]:.2f} | {len(members) / wall[f]:.1f} "
              f"| {wall['folder'] / wall[f]:.2f} | {n} | {same} |")
    print(f"\nidentical verdicts: {'yes' if identical else 'no'}")
    print(f"each run: {shlex.join([str(EXE), 'scan', 'X', '-q', '--no-cache', '-o', 'out.jsonl', *extra])}")


def rss(args: argparse.Namespace, data: Path, tmp: Path, home: Path, extra: list[str]) -> None:
    members, label = source_images(args.images, args.count)
    shard = data / f"shard-{args.shard_gb:g}gb{SHARD_SUFFIX[args.kind]}"
    if not shard.exists():
        data.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n = write_shard(shard, members, int(args.shard_gb * 1e9), args.kind)
        print(f"built {shard.name}: {n} members from {label}, {shard.stat().st_size / 1e9:.2f} GB "
              f"in {time.perf_counter() - t:.0f}s", flush=True)
    out = tmp / "out.jsonl"
    warm = tmp / "warm" / Path(members[0][0]).name
    warm.parent.mkdir()
    warm.write_bytes(members[0][1])
    scan(warm.parent, out, home, extra)  # engine built outside the measurement
    r = scan(shard, out, home, extra, sample=True)
    files = r["summary"]["files"]
    print(f"\n{shard.name}: {shard.stat().st_size / 1e9:.2f} GB; cpus: {os.cpu_count()}; workers: {args.workers or 'default'}\n")
    print("| kind | peak tree RSS MiB | peak main RSS MiB | files | errors | wall s | files/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.kind} | {r['peak_total'] / 2**20:.0f} | {r['peak_main'] / 2**20:.0f} | {files} "
          f"| {r['summary']['errors']} | {r['wall']:.1f} | {files / r['wall']:.1f} |")
    print(f"\nexit code {r['rc']}; run: {shlex.join([str(EXE), 'scan', str(shard.name), '-q', '--no-cache', '-o', 'out.jsonl', *extra])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help=f"folder of source images (default: {CORPUS} if present, else generated)")
    ap.add_argument("--count", type=int, help="number of images: caps a folder, cycles a smaller one (default: all, or 512 generated)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, help="passed to codescan scan --workers")
    ap.add_argument("--home", type=Path, help="CODESCAN_HOME with bundle 'code' (default: $CODESCAN_HOME, else a random one)")
    ap.add_argument("--rss", action="store_true", help="peak memory on one big shard instead of throughput")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="--rss: shard size in GB")
    ap.add_argument("--kind", "--format", dest="kind", choices=sorted(SHARD_SUFFIX), default="tar", help="--rss: shard type")
    ap.add_argument("--keep", type=Path, help="build data here and keep it; data already there is reused")
    args = ap.parse_args()
    extra = ["--workers", str(args.workers)] if args.workers else []
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        home = resolve_home(args.home, tmp_path)
        data = args.keep or tmp_path
        (rss if args.rss else throughput)(args, data, tmp_path, home, extra)


if __name__ == "__main__":
    main()
