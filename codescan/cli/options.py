"""What the commands share: exit codes, the usage error, stderr, and the options of `scan`.

The options are declared once here as typed aliases (each with its `CODESCAN_*` mirror and
help), so the command signatures stay one line per option.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand

from codescan.core.records import HEAD_NAMES, CropCount, EvidenceLevel, HeadChoice
from codescan.engines.protocol import EngineName, Precision
from codescan.output import messages
from codescan.output.reporters import Format

EXIT_FATAL = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141


STDOUT_CLOSED = threading.Event()  # set once by main() when fd 1 was closed at start (`>&-`)


class UsageError(Exception):
    """Bad option values discovered after parsing (exit 2 with a one-line message)."""


def err_console() -> Console:
    """Rich output on stderr for tables and bars (messages go through codescan.output.messages)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


class Command(TyperCommand):
    """Every codescan command, for two habits of click and typer that mislead a user.

    Click gives an option the next word as its value even when that word is one of the command's
    options: `scan DIR --resume -o out.jsonl` resumed into a file named `-o` and scanned out.jsonl
    as an input. Such a word is refused before parsing; a value spelled like an option is written
    `--resume=-o`. Typer's help writes an argument's Python type after its name (`format_options`).
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        options = [p for p in self.params if p.param_type_name == "option"]
        takes_value = {n: p for p in options if not (p.is_flag or p.count) for n in (*p.opts, *p.secondary_opts)}
        names = {n for p in options for n in (*p.opts, *p.secondary_opts)} | set(self.get_help_option_names(ctx))
        for word, after in itertools.pairwise(() if ctx.resilient_parsing else args):  # completion: no errors
            if word == "--":
                break
            if word in takes_value and after.partition("=")[0] in names:
                raise typer.BadParameter(f"{after!r} is an option, not a value (to pass it as the value: {word}={after})",
                                         ctx=ctx, param=takes_value[word])
        return super().parse_args(ctx, args)

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        """typer writes each argument's Python type after its name (`PATH <list[str]>`); every
        argument here has a metavar that says what it takes, so the name stands alone, as an
        option's metavar does."""
        records: dict[str, list[tuple[str, str]]] = {"argument": [], "option": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.param_type_name in records:
                name, text = record
                records[param.param_type_name].append((name.partition(" <")[0] if param.param_type_name == "argument" else name, text))
        for title, kind in (("Arguments", "argument"), ("Options", "option")):
            if records[kind]:
                with formatter.section(title):
                    formatter.write_dl(records[kind])


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
            value = float(num)
        except ValueError:
            raise UsageError(f"--threshold: {num!r} is not a number") from None
        if not math.isfinite(value):  # nan: every file "real"; inf, -inf, 1e999: every file one class
            raise UsageError(f"--threshold: {num!r} is not a finite number")
        out[name] = value
    return out


def scan_arguments(paths: list[str] | None, files_from: str | None, null: bool) -> list[str | bytes]:
    from codescan.inputs.walk import read_path_list

    arguments: list[str | bytes] = list(paths or [])
    if files_from is not None:
        data = sys.stdin.buffer.read() if files_from == "-" else Path(files_from).read_bytes()
        arguments += read_path_list(data, null)
    if not arguments:
        raise UsageError("nothing to scan: give PATH... or --files-from")
    _announce_missing(arguments)
    return arguments


def check_output(output: str) -> None:
    """Fail before the model loads when the output cannot be written (naming the user's path)."""
    if output == "-":
        if STDOUT_CLOSED.is_set():
            raise UsageError("standard output is closed; give -o FILE")
        return
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) and not os.access(output, os.W_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)  # os.access says no to both alike
        raise UsageError(f"cannot write {output}: {'read-only file system' if read_only else 'permission denied'}")


def _announce_missing(arguments: list[str | bytes]) -> None:
    """A mistyped PATH is said in one line at once, besides its error record."""
    from codescan.inputs.sources import is_uri

    for arg in arguments:
        if not is_uri(arg) and not os.path.lexists(arg):
            messages.error(f"{os.fsdecode(arg)}: No such file or directory")


PathsOpt = Annotated[Optional[list[str]], typer.Argument(help="Files, folders and URIs to scan.", show_default=False, metavar="PATH")]
FilesFromOpt = Annotated[
    Optional[str], typer.Option("--files-from", metavar="FILE", help="Read paths from FILE ('-' = stdin), one per line.")
]
NullOpt = Annotated[bool, typer.Option("-0", "--null", help="--files-from paths are NUL-separated.")]
OutputOpt = Annotated[str, typer.Option("-o", "--output", metavar="FILE", help="Write data here ('-' = stdout).")]
ResumeOpt = Annotated[
    Optional[str], typer.Option(metavar="FILE", help="Continue the JSONL scan in FILE: keep its results, append the rest.")
]
FmtOpt = Annotated[
    Optional[Format],
    typer.Option("--format", "-f", envvar="CODESCAN_FORMAT", help="Default: from the -o suffix, else jsonl."),
]
HeadOpt = Annotated[HeadChoice, typer.Option(envvar="CODESCAN_HEAD", help="Head that sets status; all = every head.")]
ThresholdOpt = Annotated[
    Optional[list[str]],
    typer.Option(metavar="X|HEAD=X", help="Score above which a file is fake: X for the selected head, or HEAD=X (repeatable)."),
]
EngineOpt = Annotated[EngineName, typer.Option(envvar="CODESCAN_ENGINE", help="auto: GPU if usable, else CPU.")]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(envvar="CODESCAN_PRECISION", help="auto: fp32 unless a gate passed; fp32 = the reference; fp16 = GPU."),
]
BatchSizeOpt = Annotated[
    Optional[int], typer.Option(envvar="CODESCAN_BATCH_SIZE", min=1, max=4096, metavar="N", help="Default: 8 on CPU, 64 on GPU.")
]
WorkersOpt = Annotated[
    Optional[int], typer.Option(envvar="CODESCAN_WORKERS", min=1, max=256, metavar="N", help="Decode processes (default: CPUs, max 8).")
]
ExcludeOpt = Annotated[
    Optional[list[str]], typer.Option(envvar="CODESCAN_EXCLUDE", metavar="GLOB", help="Skip names or paths matching GLOB (repeatable).")
]
FollowSymlinksOpt = Annotated[
    bool, typer.Option(envvar="CODESCAN_FOLLOW_SYMLINKS", help="Follow symlinks found while walking.")
]
MaxFilesizeOpt = Annotated[int, typer.Option(envvar="CODESCAN_MAX_FILESIZE", min=1, metavar="BYTES", help="Larger files are too_large.")]
MaxPixelsOpt = Annotated[int, typer.Option(envvar="CODESCAN_MAX_PIXELS", min=1, metavar="N", help="Larger images are too_large.")]
DecodeTimeoutOpt = Annotated[
    float, typer.Option(envvar="CODESCAN_DECODE_TIMEOUT", min=0.1, metavar="SECONDS", help="Seconds per file before its decoder is killed.")
]
# None: the stored default (`codescan weights default NAME`), else `code` (weights.chosen_name).
WeightsOpt = Annotated[
    Optional[str],
    typer.Option(envvar="CODESCAN_WEIGHTS", metavar="NAME", help="Installed bundle (default: `codescan weights default`, else code).", show_default=False),
]
EvidenceOpt = Annotated[
    EvidenceLevel,
    typer.Option(
        envvar="CODESCAN_EVIDENCE",
        help="Provenance read from each file: metadata (generator parameters, EXIF, XMP, C2PA), "
        "all (+ SD/SDXL watermark), none.",
    ),
]
CacheOpt = Annotated[
    Optional[str],
    typer.Option(envvar="CODESCAN_CACHE", metavar="FILE", help="Scan cache file (SQLite). Default: scan-cache.sqlite3 in the store."),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", envvar="CODESCAN_NO_CACHE", help="Neither read nor write the scan cache.")
]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        envvar="CODESCAN_RAY",
        metavar="local|auto|ADDRESS",
        help="Run on Ray Data: 'local' (a private instance here), 'auto' (the running cluster) or an address.",
    ),
]
RayWorkersOpt = Annotated[
    Optional[int],
    typer.Option(envvar="CODESCAN_RAY_WORKERS", min=1, metavar="N", help="--ray: decode actors (local: also the CPUs Ray may use)."),
]
ShardsOpt = Annotated[
    Optional[str],
    typer.Option(
        envvar="CODESCAN_SHARDS",
        metavar="DIR",
        help="--ray: workers write JSONL shards into DIR (header.json, part-*.jsonl, summary.json); "
        "rerun to continue.",
    ),
]
CropsOpt = Annotated[
    CropCount,
    typer.Option(
        envvar="CODESCAN_CROPS",
        help="1: the central 224×224, as the reference; 5: centre + four corners, each head's score the max.",
    ),
]
ReportOpt = Annotated[
    Optional[str],
    typer.Option(
        "--report", envvar="CODESCAN_REPORT", metavar="FILE.html",
        help="Also write the HTML review report of this scan (needs -o FILE, --resume FILE or --shards DIR).",
    ),
]
ArchivesOpt = Annotated[
    bool,
    typer.Option(
        "--archives",
        envvar="CODESCAN_ARCHIVES",
        help="Also open archives (.tar, .tar.gz, .tgz, .zip) and .parquet files met in folders; named ones always are.",
    ),
]
ColumnOpt = Annotated[
    Optional[str],
    typer.Option("--column", envvar="CODESCAN_COLUMN", metavar="NAME", help="Parquet: the image column (default: found by type and name)."),
]
IdColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        "--id-column", envvar="CODESCAN_ID_COLUMN", metavar="NAME",
        help="Parquet: the column that identifies a row (default: the image's path, else the row number).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", envvar="CODESCAN_QUIET", help="No progress or summary.")]
