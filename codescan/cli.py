"""The `codescan` command: option parsing, output choice and exit codes, nothing else.

Data goes to stdout (or -o); everything meant for a human (progress, summary, errors) goes
to stderr. Every option has a CODESCAN_* environment mirror. Tracebacks only with
CODESCAN_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console

from codescan.engines.protocol import EngineName, Precision

from . import __version__, messages
from .records import HEAD_NAMES, EvidenceLevel, HeadChoice, Summary
from .reporters import Format

EXIT_FATAL = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
_STDOUT_CLOSED = threading.Event()  # set once by main() when fd 1 was closed at start (`>&-`)

app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Tell which images are AI-generated, with the CoDE encoder (ECCV 2024).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
weights_app = typer.Typer(no_args_is_help=True, help="Install, inspect and verify weight bundles.")
app.add_typer(weights_app, name="weights")


class UsageError(Exception):
    """Bad option values discovered after parsing (exit 2 with a one-line message)."""


class OutputClosed(Exception):
    """The reader of stdout went away (`| head`): exit 141 like a program killed by SIGPIPE."""


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def parse_thresholds(values: list[str], head: str) -> dict[str, float]:
    """`--threshold 0.3` sets the selected head; `--threshold knn=0.1` names one (repeatable)."""
    out: dict[str, float] = {}
    for raw in values:
        name, sep, num = raw.partition("=")
        if not sep:
            if head == "all":
                raise UsageError("with --head all, name the head: --threshold linear=0.5")
            name, num = head, raw
        if name not in HEAD_NAMES:
            raise UsageError(f"--threshold: unknown head {name!r} (choose from {', '.join(HEAD_NAMES)})")
        try:
            out[name] = float(num)
        except ValueError:
            raise UsageError(f"--threshold: {num!r} is not a number") from None
    return out


def version_callback(value: bool) -> None:
    if value:
        from .decode import jpeg_decoder

        print(f"codescan {__version__}")
        print(f"JPEG decoding: {jpeg_decoder()}")  # which libjpeg a bug report's pixels came from
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


@app.command()
def scan(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Files, folders and URIs to scan.", show_default=False, metavar="PATH")] = None,
    files_from: Annotated[
        Optional[str], typer.Option("--files-from", metavar="FILE", help="Read paths from FILE ('-' = stdin), one per line.")
    ] = None,
    null: Annotated[bool, typer.Option("-0", "--null", help="--files-from paths are NUL-separated.")] = False,
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE", help="Write data here ('-' = stdout).")] = "-",
    resume: Annotated[
        Optional[str], typer.Option(metavar="FILE", help="Continue the JSONL scan in FILE: keep its results, append the rest.")
    ] = None,
    fmt: Annotated[
        Optional[Format],
        typer.Option("--format", "-f", envvar="CODESCAN_FORMAT", help="Default: from the -o suffix, else jsonl."),
    ] = None,
    head: Annotated[HeadChoice, typer.Option(envvar="CODESCAN_HEAD", help="Head that sets status; all = every head.")] = "linear",
    threshold: Annotated[
        Optional[list[str]],
        typer.Option(metavar="X|HEAD=X", help="Score above which a file is fake: X for the selected head, or HEAD=X (repeatable)."),
    ] = None,
    engine: Annotated[EngineName, typer.Option(envvar="CODESCAN_ENGINE", help="auto: GPU if usable, else CPU.")] = "auto",
    precision: Annotated[
        Precision,
        typer.Option(envvar="CODESCAN_PRECISION", help="auto: fp32 unless a gate passed; fp32 = the reference; fp16 = GPU."),
    ] = "auto",
    batch_size: Annotated[
        Optional[int], typer.Option(envvar="CODESCAN_BATCH_SIZE", min=1, max=4096, metavar="N", help="Default: 8 on CPU, 64 on GPU.")
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(envvar="CODESCAN_WORKERS", min=1, max=256, metavar="N", help="Decode processes (default: CPUs, max 8).")
    ] = None,
    exclude: Annotated[
        Optional[list[str]], typer.Option(envvar="CODESCAN_EXCLUDE", metavar="GLOB", help="Skip names or paths matching GLOB (repeatable).")
    ] = None,
    follow_symlinks: Annotated[
        bool, typer.Option(envvar="CODESCAN_FOLLOW_SYMLINKS", help="Follow symlinks found while walking.")
    ] = False,
    max_filesize: Annotated[int, typer.Option(envvar="CODESCAN_MAX_FILESIZE", min=1, metavar="BYTES", help="Larger files are too_large.")] = 256 * 1024 * 1024,
    max_pixels: Annotated[int, typer.Option(envvar="CODESCAN_MAX_PIXELS", min=1, metavar="N", help="Larger images are too_large.")] = 89_478_485,
    decode_timeout: Annotated[
        float, typer.Option(envvar="CODESCAN_DECODE_TIMEOUT", min=0.1, metavar="SECONDS", help="Seconds per file before its decoder is killed.")
    ] = 20.0,
    weights: Annotated[str, typer.Option(envvar="CODESCAN_WEIGHTS", metavar="NAME", help="Installed bundle name.")] = "code",
    evidence: Annotated[
        EvidenceLevel,
        typer.Option(
            envvar="CODESCAN_EVIDENCE",
            help="Provenance read from each file: metadata (generator parameters, EXIF, XMP, C2PA), "
            "all (+ SD/SDXL watermark), none.",
        ),
    ] = "metadata",
    cache: Annotated[
        Optional[str],
        typer.Option(envvar="CODESCAN_CACHE", metavar="FILE", help="Scan cache file (SQLite). Default: scan-cache.sqlite3 in the store."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", envvar="CODESCAN_NO_CACHE", help="Neither read nor write the scan cache.")
    ] = False,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            envvar="CODESCAN_RAY",
            metavar="local|auto|ADDRESS",
            help="Run on Ray Data: 'local' (a private instance here), 'auto' (the running cluster) or an address.",
        ),
    ] = None,
    ray_workers: Annotated[
        Optional[int],
        typer.Option(envvar="CODESCAN_RAY_WORKERS", min=1, metavar="N", help="--ray: decode actors (local: also the CPUs Ray may use)."),
    ] = None,
    shards: Annotated[
        Optional[str],
        typer.Option(
            envvar="CODESCAN_SHARDS",
            metavar="DIR",
            help="--ray: workers write JSONL shards into DIR (header.json, part-*.jsonl, summary.json); "
            "rerun to continue.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", envvar="CODESCAN_QUIET", help="No progress or summary.")] = False,
) -> None:
    """Scan files and folders; one record per file. Exit 2 if any error, else 1 if any fake (model or evidence), else 0."""
    from .cache import default_path
    from .decode import DecodeLimits
    from .pipeline import ScanConfig
    from .reporters import FORMATS, guess_format, make_reporter
    from .walk import WalkOptions, read_path_list

    if resume is not None:
        if output not in ("-", resume) or (fmt or "jsonl") != "jsonl":
            raise UsageError("--resume FILE writes JSONL to FILE itself; drop -o/--format")
        output, fmt = resume, "jsonl"
    fmt = fmt or guess_format(output) or "jsonl"
    if fmt not in FORMATS:
        raise UsageError(f"--format: choose from {', '.join(FORMATS)}")
    _check_output(output)
    arguments: list[str | bytes] = list(paths or [])
    if files_from is not None:
        data = sys.stdin.buffer.read() if files_from == "-" else Path(files_from).read_bytes()
        arguments += read_path_list(data, null)
    if not arguments:
        raise UsageError("nothing to scan: give PATH... or --files-from")
    _announce_missing(arguments)

    config = ScanConfig(
        head=head,  # type: ignore[arg-type]
        thresholds=parse_thresholds(threshold or [], head),  # type: ignore[arg-type]
        batch_size=batch_size,
        decode_timeout=decode_timeout,
        limits=DecodeLimits(max_filesize=max_filesize, max_pixels=max_pixels),
        walk=WalkOptions(excludes=tuple(exclude or ()), follow_symlinks=follow_symlinks),
        evidence=evidence,  # type: ignore[arg-type]
        cache=None if no_cache or ray else (cache or str(default_path())),
        **({"decode_workers": workers} if workers else {}),
    )
    scanner = _open_scanner(weights, engine, precision, config, quiet)
    if shards is not None:
        if ray is None or resume is not None or output != "-" or fmt != "jsonl":
            raise UsageError("--shards DIR needs --ray and replaces -o/--format/--resume")
        _require_ray()
        from .ray_scan import RayOptions, scan_to_shards

        options = RayOptions(address=ray, workers=ray_workers, **({"batch_size": batch_size} if batch_size else {}))
        summary, interrupted = scan_to_shards(scanner, arguments, Path(shards), options)
        _print_summary(summary, summary.files, interrupted, quiet)
        raise typer.Exit(EXIT_INTERRUPTED if interrupted else summary.exit_code())
    header = scanner.header().with_inputs(arguments)
    summary = Summary.for_evidence(evidence)  # type: ignore[arg-type]
    done: set[str] = set()
    appending = False
    if resume is not None:
        from . import resume as resuming

        state = resuming.load(resume)
        resuming.check_compatible(state, header.to_dict(), resume)
        if state.header is not None:
            resuming.rewrite(resume, state)
        for old in state.results:
            summary.count(old["status"], old.get("combined"))
        done, appending = state.done, state.header is not None
    reporter = make_reporter(
        fmt, output, list(scanner.judge.judged) if head == "all" else None, append=appending, evidence=evidence != "none"  # type: ignore[arg-type]
    )
    summary, scanned, interrupted = _run(scanner, reporter, header, summary, arguments, done, quiet, ray, ray_workers, batch_size)
    _print_summary(summary, scanned, interrupted, quiet)
    raise typer.Exit(EXIT_INTERRUPTED if interrupted else summary.exit_code())


def _run(scanner, reporter, header, summary: Summary, arguments: list, done: set[str], quiet: bool,
         ray: str | None, ray_workers: int | None, batch: int | None) -> tuple[Summary, int, bool]:
    """Header, one record per result, summary; the reporter is closed whatever happens.

    On a failure a JSON document's temporary file is removed (nothing replaces the target);
    JSONL and CSV keep the complete lines already written.
    """
    from .progress import ScanProgress
    from .sources import entries

    started = time.perf_counter()
    interrupted = False
    scanned = 0
    progress = ScanProgress(quiet)
    try:
        reporter.header(header)
        with progress:
            progress.count_in_background(lambda: entries(arguments, scanner.config.walk), already_done=len(done))
            for result in _results(scanner, arguments, done, ray, ray_workers, batch):
                reporter.result(result)
                summary.add(result)
                scanned += 1
                progress.advance(summary)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:
        with contextlib.suppress(BrokenPipeError):
            reporter.close(commit=False)
        if isinstance(exc, BrokenPipeError):
            raise OutputClosed from None  # not an OSError: click would turn EPIPE into exit 1 ("fake")
        raise
    summary.seconds = time.perf_counter() - started
    reporter.summary(summary, interrupted=interrupted)
    reporter.close(commit=True)
    return summary, scanned, interrupted


def _check_output(output: str) -> None:
    """Fail before the model loads when the output cannot be written (naming the user's path)."""
    if output == "-":
        if _STDOUT_CLOSED.is_set():
            raise UsageError("standard output is closed; give -o FILE")
        return
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) and not os.access(output, os.W_OK):
        raise UsageError(f"cannot write {output}: permission denied")


def _announce_missing(arguments: list[str | bytes]) -> None:
    """A mistyped PATH is said in one line at once, besides its error record."""
    from .sources import is_uri

    for arg in arguments:
        if not is_uri(arg) and not os.path.lexists(arg):
            messages.error(f"{os.fsdecode(arg)}: No such file or directory")


def _open_scanner(weights: str, engine: str, precision: str, config, quiet: bool):
    from .pipeline import Scanner
    from .weights import ensure_default

    ensure_default(weights, messages.note)
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return Scanner(weights=weights, engine=engine, precision=precision, config=config, warn=messages.warn)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_summary(summary: Summary, scanned: int, interrupted: bool, quiet: bool) -> None:
    """The human summary; the rate counts only the files scanned by this run (not resumed ones)."""
    if quiet:
        return
    rate = scanned / summary.seconds if summary.seconds > 0 else 0.0
    extra = (summary.combined_fake or 0) - summary.fake
    flagged = f" (+{extra} by evidence)" if extra > 0 else ""
    messages.info(
        f"{'interrupted: ' if interrupted else ''}{_plural(summary.files, 'file')}: {summary.real} real, "
        f"{summary.fake} fake{flagged}, {_plural(summary.errors, 'error')}, {summary.skipped} skipped "
        f"in {summary.seconds:.1f}s ({rate:.1f} files/s)"
    )
    if not interrupted and summary.real + summary.fake + summary.errors == 0:
        messages.note("no images found" + (f" ({_plural(summary.skipped, 'other file')} skipped)" if summary.files else ""))


def _require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs the ray extra: pip install 'codescan[ray]'")


def _results(scanner, arguments: list, done: set[str], ray: str | None, workers: int | None, batch: int | None):
    if ray is None:
        return scanner.scan(arguments, skip=done)
    _require_ray()
    from .ray_scan import RayOptions
    from .ray_scan import scan as ray_scan

    options = RayOptions(address=ray, workers=workers, **({"batch_size": batch} if batch else {}))
    return ray_scan(scanner, arguments, skip=done, options=options)


@app.command()
def gate(
    data: Annotated[list[str], typer.Argument(help="Folders or files of labelled-or-not images to measure on.")],
    weights: Annotated[str, typer.Option(envvar="CODESCAN_WEIGHTS", metavar="NAME", help="Installed bundle name.")] = "code",
) -> None:
    """Measure reduced precisions (int8, bf16; fp16 on a GPU) against fp32; `--precision auto` uses those that pass."""
    import json

    import numpy as np

    from codescan.engines.gate import MIN_AGREEMENT, MIN_COSINE, run_gate

    from .examine import ExamineConfig, Examined
    from .walk import walk
    from .weights import load_bundle
    from .workers import DecodePool

    bundle = load_bundle(weights)
    pool = DecodePool(workers=os.cpu_count() or 1, config=ExamineConfig(evidence="none"), timeout=20.0, window=64)
    crops = [o.decoded.crop for _, o in pool.outcomes(walk(data)) if isinstance(o, Examined) and o.decoded]
    if not crops:
        raise UsageError("no decodable images under the given paths")
    results = run_gate(bundle, np.stack(crops))
    err = _err()
    err.print(f"gate: cosine ≥ {MIN_COSINE}, verdict agreement ≥ {MIN_AGREEMENT:.1%} per head, {len(crops)} images")
    for r in results:
        agree = ", ".join(f"{h} {v:.2%}" for h, v in r.agreement.items())
        err.print(f"  {r.engine}:{r.precision}: cosine min {r.cosine_min:.6f}, {agree} -> {'PASS' if r.passed else 'fail'}")
    print(json.dumps([r.__dict__ for r in results], indent=2))


@app.command("compile")
def compile_command(
    weights: Annotated[str, typer.Option(envvar="CODESCAN_WEIGHTS", metavar="NAME", help="Installed bundle name.")] = "code",
    precision: Annotated[str, typer.Option(help="fp16 | fp32: the ONNX graph's types (strongly typed build).")] = "fp16",
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=4096, help="Largest batch the engine takes (profile: min 1, opt = max = N).")
    ] = 64,
) -> None:
    """Build the TensorRT engine for this GPU from the bundle (once; cached beside the bundle)."""
    from codescan.engines.tensorrt_engine import (
        TRT_PRECISIONS,
        compile_engine,
        import_tensorrt,
    )

    from .weights import load_bundle

    if precision not in TRT_PRECISIONS:
        raise UsageError(f"--precision: choose from {', '.join(TRT_PRECISIONS)}")
    import_tensorrt()  # fails first, in one line, where TensorRT is not installed
    bundle = load_bundle(weights)
    info = compile_engine(bundle, precision, max_batch)
    key = info.key
    _err().print(
        f"{'built' if info.built else 'already cached'}: TensorRT {key['tensorrt']} {precision} engine for "
        f"{key['gpu']} (sm {key['compute_capability']}), batch 1..{max_batch}",
        markup=False,
    )
    print(info.path)


@app.command("eval")
def eval_command(
    data: Annotated[
        Path,
        typer.Option(help="Folder with real/** and fake/<generator>/**, or a CSV manifest (path,label[,generator]).", show_default=False),
    ],
    weights: Annotated[str, typer.Option(envvar="CODESCAN_WEIGHTS", metavar="NAME", help="Installed bundle name.")] = "code",
    head: Annotated[HeadChoice, typer.Option(help="Head to measure; all = every head in the bundle.")] = "all",
    crops: Annotated[
        Literal[1, 5], typer.Option(help="1: the central 224×224, as scan judges; 5: centre + four corners, score = max.")
    ] = 1,
    engine: Annotated[EngineName, typer.Option(envvar="CODESCAN_ENGINE", help="auto: GPU if usable, else CPU.")] = "auto",
    precision: Annotated[Precision, typer.Option(envvar="CODESCAN_PRECISION", help="auto: fp32 unless a gate passed; fp32 = the reference.")] = "auto",
    batch_size: Annotated[
        Optional[int], typer.Option(envvar="CODESCAN_BATCH_SIZE", min=1, max=4096, help="Images per engine call (default 32).")
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option(help="Also draw ROC curves per generator into this PNG (needs matplotlib: the plot extra).")
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", envvar="CODESCAN_QUIET", help="No progress or tables.")] = False,
) -> None:
    """Measure a bundle on labelled images, overall and per generator: tables on stderr, JSON on stdout."""
    import json

    from codescan.train.eval_console import progress_bar, render
    from codescan.train.evaluate import EvalConfig, build_report, score_samples

    if plot is not None:
        from codescan.train.roc_plot import MISSING, available, plot_roc

        if not available():
            raise UsageError(MISSING)
        if not plot.parent.is_dir():
            raise UsageError(f"--plot: folder {plot.parent} does not exist")
    config = EvalConfig(
        data=data, weights=weights, head=head, crops=crops, engine=engine, precision=precision, batch_size=batch_size
    )
    err = _err()
    with progress_bar(err, quiet) as progress:
        task = progress.add_task("embedding", total=None)
        scored = score_samples(config, lambda done, total: progress.update(task, completed=done, total=total))
    report = build_report(scored)
    if not quiet:
        render(report, err)
    if plot is not None:
        plot_roc(scored, plot)
    print(json.dumps(report.to_dict(), indent=2))


@weights_app.command("pull")
def weights_pull(
    name: Annotated[str, typer.Option(help="Bundle name to install as.")] = "code",
    revision: Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit); re-pins.")] = None,
    repo: Annotated[str, typer.Option(help="Hub repository.")] = "aimagelab/CoDE",
) -> None:
    """Download aimagelab/CoDE from the Hugging Face hub and install it (pinned by commit + sha256)."""
    from .weights import pull

    bundle = pull(name=name, repo=repo, revision=revision)
    messages.info(f"installed {bundle.name} ({repo}@{bundle.revision}) at {bundle.path}")


@weights_app.command("import")
def weights_import(
    directory: Annotated[Path, typer.Argument(help="A downloaded aimagelab/CoDE folder.", show_default=False)],
    name: Annotated[str, typer.Option(help="Bundle name to install as.")] = "code",
) -> None:
    """Convert a folder in the official layout into a bundle (heads read without executing pickles)."""
    from .weights import import_official

    bundle = import_official(directory, name=name)
    messages.info(f"installed {bundle.name} from {directory} at {bundle.path}")


@weights_app.command("list")
def weights_list() -> None:
    """Installed bundles: a heading line, then one tab-separated line per bundle."""
    from .weights import list_bundles, weights_dir

    bundles = list_bundles()
    if not bundles:
        messages.note(f"no bundles in {weights_dir()}; run `codescan weights pull` or `codescan weights import DIR`")
        return
    print("name\tdigest\trevision\tlicense")
    for b in bundles:
        print(f"{b.name}\t{b.digest[:16]}\t{b.revision or '-'}\t{b.meta.get('license', '?')}")


@weights_app.command("info")
def weights_info(
    name: Annotated[str, typer.Argument(help="Bundle name.")] = "code",
) -> None:
    """Everything bundle.json records, after re-verifying every file's sha256."""
    import json

    from .weights import load_bundle

    bundle = load_bundle(name, verify=True)
    print(json.dumps({"name": bundle.name, "path": str(bundle.path), "digest": bundle.digest, **bundle.meta}, indent=2))


@app.command("train")
def train_command(
    data: Annotated[
        Optional[Path],
        typer.Option(
            envvar="CODESCAN_TRAIN_DATA",
            help="Folder with real/** and fake/<generator>/**, or a CSV manifest (path,label[,generator]). "
            "With --resume: the checkpoint's.",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        Optional[str], typer.Option(envvar="CODESCAN_TRAIN_INIT", help="scratch, or an installed bundle to start from. Default: scratch.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(envvar="CODESCAN_TRAIN_EPOCHS", min=1, help="Default: 10.")] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(envvar="CODESCAN_TRAIN_BATCH_SIZE", min=4, help="Images per step, half real, half fake; even. Default: 32."),
    ] = None,
    steps_per_epoch: Annotated[
        Optional[int],
        typer.Option(envvar="CODESCAN_TRAIN_STEPS_PER_EPOCH", min=1, help="Default: training images / batch size, rounded up."),
    ] = None,
    views: Annotated[
        Optional[Literal[3, 4]],
        typer.Option(
            envvar="CODESCAN_TRAIN_VIEWS",
            help="Views per image: 4 = clean, augmented, global, local; 3 = the global view is also the augmented one "
            "(25% less compute). Default: 4.",
        ),
    ] = None,
    lr: Annotated[Optional[float], typer.Option(envvar="CODESCAN_TRAIN_LR", min=0.0, help="Peak AdamW learning rate. Default: 0.002.")] = None,
    seed: Annotated[Optional[int], typer.Option(envvar="CODESCAN_TRAIN_SEED", help="Default: 0.")] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            envvar="CODESCAN_TRAIN_VAL_FRACTION", min=0.0, max=0.99, help="Held out by file hash to pick thresholds. Default: 0.1."
        ),
    ] = None,
    device: Annotated[
        Optional[Literal["auto", "cpu", "cuda"]],
        typer.Option(envvar="CODESCAN_TRAIN_DEVICE", help="auto: CUDA if usable, else CPU. Default: auto."),
    ] = None,
    out: Annotated[
        str, typer.Option(envvar="CODESCAN_TRAIN_OUT", help="Bundle to install the result as; also names the work folder.")
    ] = "trained",
    resume: Annotated[bool, typer.Option(help="Continue the run checkpointed under --out, with its settings.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", envvar="CODESCAN_QUIET", help="No progress or summary.")] = False,
) -> None:
    """Train a CoDE encoder and its heads on labelled images; install them as a bundle for scan."""
    import importlib.util
    import json

    missing = [m for m in ("torch", "timm", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"codescan train needs {', '.join(missing)}: pip install 'codescan[train]'")
    from codescan.train.console import TrainConsole
    from codescan.train.run import requested_config, train_bundle

    options = {
        "data": str(data.resolve()) if data is not None else None, "init": init, "epochs": epochs, "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch, "views": views, "lr": lr, "seed": seed, "val_fraction": val_fraction, "device": device,
    }
    config = requested_config(out, {k: v for k, v in options.items() if v is not None}, resume)
    with TrainConsole(quiet) as console:
        try:
            result = train_bundle(config, resume=resume, on_event=console)
        except KeyboardInterrupt:
            console.interrupted(out)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    console.finished(result)
    print(json.dumps(result.summary(), indent=2))


def _known_errors() -> tuple[type[BaseException], ...]:
    """Failures with a message written for the user: no traceback, exit 2."""
    from codescan.engines.protocol import EngineError

    from .provenance import ProvenanceError
    from .weights import WeightsError

    return (UsageError, WeightsError, EngineError, ProvenanceError, ValueError, OSError)


class _Signals:
    """Remembers that the user asked to stop, so a failure that the interrupt itself caused (an
    import cut short becomes an ImportError) still exits 130 quietly."""

    received = False

    @classmethod
    def stop(cls, signum: int, frame: object) -> None:
        cls.received = True
        raise KeyboardInterrupt


def main() -> None:
    import click

    if messages.ensure_standard_fds():
        _STDOUT_CLOSED.set()
    signal.signal(signal.SIGINT, _Signals.stop)
    signal.signal(signal.SIGTERM, _Signals.stop)
    debug = os.environ.get("CODESCAN_DEBUG") == "1"
    known: tuple[type[BaseException], ...] = ()
    try:
        known = _known_errors()
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except SystemExit:
        raise
    except (typer.Exit, click.exceptions.Exit) as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort, click.exceptions.Abort):
        sys.exit(EXIT_INTERRUPTED)
    except (BrokenPipeError, OutputClosed):
        _quiet_stdout()
        sys.exit(EXIT_PIPE)
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes a message
        if _Signals.received:
            sys.exit(EXIT_INTERRUPTED)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            if isinstance(getattr(exc, "message", None), str):
                exc.message = exc.message.replace("Value error, ", "")  # typer's validation prefix says nothing
            exc.show()  # a usage error from click (typer vendors its own copy): its own message, exit 2
            sys.exit(exc.exit_code)
        if debug:
            raise
        if isinstance(exc, known):
            messages.error(_describe(exc))
        else:
            messages.note(f"internal error: {type(exc).__name__}: {exc} (set CODESCAN_DEBUG=1 for a traceback)")
        sys.exit(EXIT_FATAL)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        if exc.errno == errno.ENOSPC:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"no space left on device while writing output{where}; the output is incomplete"
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _quiet_stdout() -> None:
    # Python flushes stdout at exit; point it at /dev/null so a closed pipe cannot raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
