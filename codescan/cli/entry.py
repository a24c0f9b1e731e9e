"""The `codescan` command: option parsing, output choice and exit codes, nothing else.

Data goes to stdout (or -o); everything meant for a human (progress, summary, errors) goes
to stderr. Every option has a CODESCAN_* environment mirror. Tracebacks only with
CODESCAN_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from codescan.cli.calibrate import register as register_calibrate
from codescan.cli.options import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    STDOUT_CLOSED,
    ArchivesOpt,
    BatchSizeOpt,
    CacheOpt,
    ColumnOpt,
    Command,
    CropsOpt,
    DecodeTimeoutOpt,
    EngineOpt,
    EvidenceOpt,
    ExcludeOpt,
    FilesFromOpt,
    FmtOpt,
    FollowSymlinksOpt,
    HeadOpt,
    IdColumnOpt,
    MaxFilesizeOpt,
    MaxPixelsOpt,
    NoCacheOpt,
    NullOpt,
    OutputOpt,
    PathsOpt,
    PrecisionOpt,
    QuietOpt,
    RayOpt,
    RayWorkersOpt,
    ReportOpt,
    ResumeOpt,
    ShardsOpt,
    ThresholdOpt,
    UsageError,
    WeightsOpt,
    WorkersOpt,
    check_output,
    parse_thresholds,
    scan_arguments,
)
from codescan.cli.report import register as register_report
from codescan.cli.tools import register as register_tools
from codescan.core import defaults
from codescan.core.records import Summary
from codescan.core.version import __version__
from codescan.output import messages
from codescan.scan import job

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
register_tools(app, weights_app)
register_report(app)
register_calibrate(app)


def version_callback(value: bool) -> None:
    if value:
        from codescan.decoding.decode import jpeg_decoder

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


@app.command(cls=Command)
def scan(
    paths: PathsOpt = None,
    files_from: FilesFromOpt = None,
    null: NullOpt = False,
    output: OutputOpt = "-",
    resume: ResumeOpt = None,
    fmt: FmtOpt = None,
    head: HeadOpt = defaults.HEAD,
    threshold: ThresholdOpt = None,
    crops: CropsOpt = defaults.CROPS,
    engine: EngineOpt = defaults.ENGINE,
    precision: PrecisionOpt = defaults.PRECISION,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    exclude: ExcludeOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    archives: ArchivesOpt = False,
    column: ColumnOpt = None,
    id_column: IdColumnOpt = None,
    max_filesize: MaxFilesizeOpt = defaults.MAX_FILESIZE,
    max_pixels: MaxPixelsOpt = defaults.MAX_PIXELS,
    decode_timeout: DecodeTimeoutOpt = defaults.DECODE_TIMEOUT,
    weights: WeightsOpt = None,
    evidence: EvidenceOpt = defaults.EVIDENCE,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    shards: ShardsOpt = None,
    report: ReportOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Scan files and folders; one record per file. Exit 2 if any error, else 1 if any fake (model or evidence), else 0."""
    from codescan.decoding.decode import DecodeLimits
    from codescan.inputs.walk import WalkOptions
    from codescan.scan.plan import OutputConfig, ScanConfig, ScanPlan, check_options

    config = ScanConfig(
        head=head,  # type: ignore[arg-type]
        thresholds=parse_thresholds(threshold or [], head),  # type: ignore[arg-type]
        batch_size=batch_size,
        decode_timeout=decode_timeout,
        limits=DecodeLimits(max_filesize=max_filesize, max_pixels=max_pixels),
        walk=WalkOptions(
            excludes=tuple(exclude or ()),
            follow_symlinks=follow_symlinks,
            archives=archives,
            column=column,
            id_column=id_column,
            max_filesize=max_filesize,
        ),
        evidence=evidence,  # type: ignore[arg-type]
        cache=False if no_cache else (cache or True),
        crops=crops,
        **({"decode_workers": workers} if workers else {}),
    )
    asked = OutputConfig(target=output, format=fmt, resume=resume, shards=shards, report=report)
    ray_options = _ray_options(ray, ray_workers)
    _, out = check_options(config, asked, ray_options)  # the rules, before anything is read or loaded
    assert out is not None
    check_output(out.target)
    if out.report is not None:
        from codescan.cli.report import check_report_target

        check_report_target(out.report, out.shards or out.target)  # before the model loads; checked again at write time
    arguments = scan_arguments(paths, files_from, null)
    weights = _ensure_weights(weights, quiet)
    plan = ScanPlan.resolve(weights, engine, precision, config, asked, ray_options)
    outcome = _run_job(plan, arguments, quiet)
    if not quiet:
        messages.summary(outcome.summary, outcome.scanned, outcome.interrupted)
        if not outcome.interrupted and _found_nothing(outcome.summary) and not config.walk.archives:
            _hint_archives(arguments)
    if out.report is not None and not outcome.interrupted:
        from codescan.cli.report import make_report

        if make_report([Path(out.shards or out.target)], Path(out.report), quiet=quiet):
            raise typer.Exit(2)
    raise typer.Exit(outcome.exit_code)


def _found_nothing(summary: Summary) -> bool:
    return summary.skipped > 0 and summary.real + summary.fake + summary.errors == 0


def _hint_archives(arguments: list) -> None:
    """Only when a scan found nothing but skipped files: were some of them archives left shut?
    (A bounded second look, so a scan that found images never pays for it.)"""
    from itertools import islice

    from codescan.inputs.archives import archive_kind
    from codescan.inputs.walk import walk

    shut = sum(archive_kind(e.path) is not None for e in islice(walk(arguments), 100_000) if e.error is None)
    if shut:
        what = "is an archive or a Parquet file" if shut == 1 else "are archives or Parquet files"
        messages.note(f"{shut} of them {what}, not opened when met in a folder: add --archives to scan inside")


def _ensure_weights(weights: str | None, quiet: bool) -> str:
    """The bundle's name, fetched first when it is the default and not yet installed."""
    from codescan.weights.install import ensure_default
    from codescan.weights.store import chosen_name

    weights = chosen_name(weights)
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ensure_default(weights, messages.note)
    return weights


def _ray_options(address: str | None, workers: int | None):
    if address is None:
        return None
    from codescan.scan.ray_cluster import RayOptions

    return RayOptions(address=address, workers=workers)


def _run_job(plan, arguments: list, quiet: bool) -> job.JobResult:
    from codescan.output.progress import ScanProgress
    from codescan.scan.executors import make_executor

    executor = make_executor(plan, messages.warn)
    header = executor.header().with_inputs(arguments)  # resolves the engine where it will run
    if plan.precision == "auto" and header.precision != "fp32":
        from codescan.engines.gates_file import gate_note

        said = gate_note(plan.bundle, header.engine, header.precision)
        if said is not None:  # a reduced precision is used only because a gate passed: say which, once
            messages.note(said)
    progress = ScanProgress(quiet)
    try:
        with progress:
            return _job(executor, plan, arguments, progress, header)
    except BaseException:
        log = getattr(executor, "log", None)  # Ray's own lines went to a file, off the terminal
        if log is not None and log.is_file() and log.stat().st_size:
            messages.note(f"Ray's own messages from this scan are in {log}")
        raise


def _job(executor, plan, arguments: list, progress, header) -> job.JobResult:
    from codescan.inputs.sources import entries

    out = plan.output
    return job.run(
            executor,
            plan.reporter(),
            header,
            arguments,
            Summary.for_evidence(plan.config.evidence),
            on_start=lambda done: progress.count_in_background(
                lambda: entries(arguments, plan.config.walk, counting=True), done
            ),
            on_result=progress.advance,
            target=out.resume or out.shards or "",
        )


def _known_errors() -> tuple[type[BaseException], ...]:
    """Failures with a message written for the user: no traceback, exit 2."""
    from codescan.engines.protocol import EngineError
    from codescan.evidence.provenance import ProvenanceError
    from codescan.weights.store import WeightsError

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
        STDOUT_CLOSED.set()
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
    except (BrokenPipeError, job.OutputClosed):
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
