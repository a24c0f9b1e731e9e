"""How well the scan feeds its engine: files/s through the whole scan with a null engine, per core,
beside the rate of the decode worker's own per-file function run in one process.

With the model replaced by zeros (``null_engine.py``), what is left of a scan is the feed: walk →
decode pool → batches → engine → heads → records → a JSONL reporter (to /dev/null). Its rate per
core, divided by the in-process rate per core of the worker's whole per-file function
(``Examiner(config)(entry)``: read + hash + limits + evidence + decode), is the share of the CPU
that does the work rather than move it between processes (issue 18's target: ≥ 85% on 512² JPEGs).

    python benchmarks/bench_feed.py                      # 512² JPEG, 1024² JPEG and a mixed set
    python benchmarks/bench_feed.py --count 300 --evidence none
    python benchmarks/bench_feed.py --images DIR [DIR ...] --batch-size 64   # a GPU scan's batch
    python benchmarks/bench_feed.py --baseline ../before --repeats 3   # an earlier checkout, same run; medians

Sets: ``--count`` distinct 512² JPEGs (default 1,500), 2/5 as many 1024² JPEGs and 1/5 as many
JPEG/PNG/WebP files of 256–2048 px (each decodes slower), so each run takes under a minute on two
cores. Each measurement is a fresh process, pinned with ``taskset`` to as many cores as it has
decode workers (the parent, its dispatcher thread and the workers share them) when taskset is
there; the in-process rate is one process on one core. The scan's rate is steady state, from its
first record to its last: worker start-up (once per scan) is left out, as the in-process rate
leaves out the imports. No scan cache (``--no-cache``), so every file is decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

if "--measure" in sys.argv:  # a measuring child starts as `codescan` does, with its CLI module, which
    import codescan.cli  # noqa: F401  may set the environment before numpy loads (OPENBLAS_NUM_THREADS)

import null_engine  # noqa: E402  (benchmarks/ is not a package)
from bench_scan import build_checkpoint, make_images  # noqa: E402

if TYPE_CHECKING:
    from codescan.core.records import EvidenceLevel

SETS: tuple[tuple[str, str, float], ...] = (  # label, bench_scan.make_images kind, share of --count
    ("512² JPEG", "jpeg512", 1.0),
    ("1024² JPEG", "jpeg1024", 0.4),
    ("mixed JPEG/PNG/WebP", "mixed", 0.2),
)


@dataclass(frozen=True)
class ScanRate:
    files: int  # records written
    timed: int  # records written after the clock opened (the job hands over records in lists: a batch's)
    seconds: float  # from the first list of records to the last
    start: float  # from the scan's start to its first records (workers starting, the first batch)
    parent_cpu: float  # CPU seconds of the scanning process (all its threads; not the workers), same span
    whole_cpu: float  # the same from before the Scanner is made to the summary: start-up included

    @property
    def rate(self) -> float:
        """Files/s in steady state: the first list of records opens the clock, so it is not counted."""
        return self.timed / self.seconds

    @property
    def parent_us(self) -> float:
        """µs of the scanning process's CPU per file: its threads share one GIL, so one process
        can scan at most 1e6 / parent_us files/s however many workers feed it."""
        return self.parent_cpu / self.timed * 1e6

    @property
    def whole_us(self) -> float:
        """µs of the scanning process's CPU per file over the whole scan (issue #26's measure)."""
        return self.whole_cpu / self.files * 1e6


def measure_scan(
    folder: Path, workers: int, evidence: EvidenceLevel, out: str = os.devnull, batch_size: int | None = None
) -> ScanRate:
    """Scan `folder` as ``codescan scan FOLDER --engine null --no-cache -o OUT`` would (the same
    job, pipeline and reporter), with `workers` decode workers and `batch_size` crops per engine
    call (None: the null engine's default, a CPU's 8; a GPU scan's default is 64). Needs the bundle ``code`` in
    $CODESCAN_HOME (its heads run) and the null engine registered (``null_engine.register()``)."""
    from codescan.core.records import Summary
    from codescan.output.reporters import make_reporter
    from codescan.scan import job
    from codescan.scan.pipeline import Scanner
    from codescan.scan.plan import ScanConfig

    cpu_at_start = time.process_time()
    scanner = Scanner(engine=null_engine.NAME, precision="fp32", config=ScanConfig(decode_workers=workers, evidence=evidence, batch_size=batch_size))
    arguments: list[str | bytes] = [str(folder)]
    header = scanner.header().with_inputs(arguments)  # builds the engine, as the CLI does before timing
    times: list[tuple[float, float, int]] = []  # after each list of records the job writes
    started = time.perf_counter()
    job.run(
        scanner, make_reporter("jsonl", out), header, arguments, Summary.for_evidence(evidence),
        # `files` optional: a --baseline tree from before #26 calls on_result(summary) once per record.
        on_result=lambda summary, files=1: times.append((time.perf_counter(), time.process_time(), summary.files)),
    )
    if len(times) < 2:
        raise ValueError(f"{folder}: a rate needs at least two lists of records, found {len(times)}")
    (t0, c0, n0), (t1, c1, n1) = times[0], times[-1]
    whole = time.process_time() - cpu_at_start
    return ScanRate(files=n1, timed=n1 - n0, seconds=t1 - t0, start=t0 - started, parent_cpu=c1 - c0, whole_cpu=whole)


def measure_examine(folder: Path, evidence: EvidenceLevel) -> float:
    """Files/s of a decode worker's per-file function over `folder`, here, in one process."""
    from codescan.decoding.decode import configure_pillow
    from codescan.decoding.examine import ExamineConfig, Examiner
    from codescan.inputs.sources import entries

    config = ExamineConfig(evidence=evidence)
    configure_pillow(config.limits)  # as each worker does before its first file
    examine = Examiner(config)
    todo = list(entries([str(folder)]))
    examine(todo[0])  # first use loads what a worker loads before it reports ready
    started = time.perf_counter()
    for entry in todo:
        examine(entry)
    return len(todo) / (time.perf_counter() - started)


def pinned(cores: int) -> list[str]:
    """The taskset prefix confining a command to the first `cores` CPUs, or [] where it cannot."""
    allowed = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or cores > len(allowed):
        return []
    return ["taskset", "-c", ",".join(map(str, allowed[:cores]))]


def child(
    what: str, folder: Path, workers: int, evidence: str, home: Path, tree: Path | None = None, batch_size: int | None = None
) -> tuple[dict, int]:
    """One measurement in a fresh process, pinned (its forkserver and workers inherit the pinning):
    what the child printed, and the cores it had. `tree`: measure that source tree's codescan."""
    prefix = pinned(1 if what == "examine" else workers)
    cmd = [*prefix, sys.executable, __file__, "--measure", what, "--images", str(folder),
           "--workers", str(workers), "--evidence", evidence, *(["--batch-size", str(batch_size)] if batch_size else [])]
    env = {**os.environ, "CODESCAN_HOME": str(home)}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{p.stderr}")
    return json.loads(p.stdout), (1 if what == "examine" else workers if prefix else len(os.sched_getaffinity(0)))


def weights_home(tmp: Path) -> Path:
    """$CODESCAN_HOME when it holds the bundle ``code`` (weight values do not change speed),
    else a new one in `tmp` with a random official-layout checkpoint imported."""
    from codescan.weights.bundle import load_bundle
    from codescan.weights.store import WeightsError

    if "CODESCAN_HOME" in os.environ:
        try:
            load_bundle("code")
            return Path(os.environ["CODESCAN_HOME"])
        except WeightsError:
            pass
    home = tmp / "home"
    exe = Path(sys.executable).parent / "codescan"
    ckpt = build_checkpoint(tmp / "ckpt")
    subprocess.run([str(exe), "weights", "import", str(ckpt)], env={**os.environ, "CODESCAN_HOME": str(home)},
                   check=True, capture_output=True)
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, nargs="+", help="existing folders to measure, one set each")
    ap.add_argument("--count", type=int, default=1500, help="512² JPEGs to generate (fewer of the larger sets)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decode workers (and cores) per scan")
    ap.add_argument("--evidence", choices=["none", "metadata"], default="metadata")
    ap.add_argument("--batch-size", type=int, help="crops per engine call (default: the null engine's, a CPU's 8; "
                    "64 is a GPU scan's default, where the scanning process sets the ceiling)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per measurement; the table shows medians")
    ap.add_argument("--baseline", type=lambda p: Path(p).resolve(), help="also measure the codescan/ of this source tree (an earlier "
                    "commit's checkout with its compiled decoder), in the same run, before each measurement of this one")
    ap.add_argument("--measure", choices=["scan", "examine"], help=argparse.SUPPRESS)  # one child measurement
    args = ap.parse_args()

    if args.measure == "scan":
        import codescan
        from codescan.decoding.decode import jpeg_decoder

        null_engine.register()
        measured = vars(measure_scan(args.images[0], args.workers[0], args.evidence, batch_size=args.batch_size))
        print(json.dumps({"scan": measured, "code": str(Path(codescan.__file__).parent), "jpeg": jpeg_decoder()}))
        return
    if args.measure == "examine":
        print(json.dumps({"rate": measure_examine(args.images[0], args.evidence)}))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        home = weights_home(tmp_path)
        if args.images:
            sets = [(d.name, d) for d in args.images]
        else:
            sets = []
            for label, kind, share in SETS:
                count = max(2, int(args.count * share))
                sets.append((f"{label} ({count})", make_images(kind, count, tmp_path / kind)))
        rows = []
        decoders: set[str] = set()
        for label, folder in sets:
            for f in folder.rglob("*"):  # into the page cache: neither measurement pays for the disk
                if f.is_file():
                    f.read_bytes()
            alone = statistics.median(child("examine", folder, 1, args.evidence, home)[0]["rate"] for _ in range(args.repeats))
            trees = ([args.baseline] if args.baseline else []) + [None]
            for w in args.workers:
                scans: dict[Path | None, list[ScanRate]] = {tree: [] for tree in trees}
                for _ in range(args.repeats):  # alternating, so drift on a shared machine hits both alike
                    for tree in trees:
                        measured, cores = child("scan", folder, w, args.evidence, home, tree, args.batch_size)
                        scans[tree].append(ScanRate(**measured["scan"]))
                        decoders.add(measured["jpeg"])
                        if tree and measured["code"] != str(tree / "codescan"):
                            raise SystemExit(f"--baseline {tree}: the child imported {measured['code']} instead")
                for tree in trees:
                    rate = statistics.median(r.rate for r in scans[tree])
                    parent = statistics.median(r.parent_us for r in scans[tree])
                    whole = statistics.median(r.whole_us for r in scans[tree])
                    start = statistics.median(r.start for r in scans[tree])
                    per_core = rate / cores
                    name = f"{label}, baseline" if tree else label
                    rows.append(f"| {name} | {w} ({cores} cores) | {rate:.0f} | {per_core:.0f} | {alone:.0f} "
                                f"| {per_core / alone:.0%} | {parent:.0f} µs | {whole:.0f} µs | {start:.2f} s |")
        if len(decoders) > 1:
            print(f"warning: the trees decode JPEGs differently: {sorted(decoders)}")
        pinning = "taskset" if pinned(1) else "not pinned (no taskset): cores = all allowed"
        batch = args.batch_size or "the null engine's default (8)"
        print(f"cpus: {len(os.sched_getaffinity(0))}; evidence: {args.evidence}; batch: {batch}; {pinning}; null engine, no cache")
        print("| set | workers | scan files/s | per core | in-process files/s per core | ratio | scanner CPU per file "
              "| same, whole scan | first record after |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))
        print(f"command: python benchmarks/bench_feed.py {shlex.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
