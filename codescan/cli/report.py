"""`codescan report`: the HTML review report of one or more verdicts files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from codescan.cli.options import Command
from codescan.output import messages


def report_command(
    verdicts: Annotated[
        list[Path], typer.Argument(metavar="VERDICTS", help="What `codescan scan` wrote: JSONL, JSON, Parquet, or a --shards folder.", show_default=False)
    ],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE.html", help="The page to write, NAME.html; its files go to NAME_files/ beside it, a folder codescan replaces whole.")],
    root: Annotated[
        Optional[Path],  # noqa: UP007 - typer reads the annotation at run time
        typer.Option(
            "--root", metavar="DIR", show_default=False,
            help="The folder the scan ran in: relative paths in the verdicts are found from here (default: the current folder).",
        ),
    ] = None,
    no_thumbnails: Annotated[bool, typer.Option("--no-thumbnails", help="Skip thumbnails (the page then never reads the images).")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, metavar="N", help="Thumbnail worker processes.")] = 2,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No closing line (notes about the input still go to stderr).")] = False,
) -> None:
    """Write an HTML page to review a scan: counts, score histograms, a sortable, filterable table and a gallery of thumbnails.

    The page opens from disk with no server and no network; thumbnails are made from the scanned
    files and checked against each record's sha256. Paths in the verdicts are as the scan was
    given them: run the report where the scan ran, or name that folder with --root.
    """
    if root is not None and not root.is_dir():
        messages.error(f"--root {root}: not a folder")
        raise typer.Exit(2)
    code = make_report(verdicts, output, thumbnails=not no_thumbnails, workers=workers, quiet=quiet, root=root)
    if code:
        raise typer.Exit(code)


def check_report_target(page: Path | str, *inputs: Path | str) -> None:
    """Before `scan --report` loads a model: the page can be written and is not the scan's own output.

    Raises UsageError (one line, exit 2); the report checks again when it writes.
    """
    from codescan.cli.options import UsageError
    from codescan.review.report import (
        REFUSED_HINT,
        OutputRefused,
        ReportPaths,
        check_target,
    )

    try:
        check_target(ReportPaths.beside(Path(page)), tuple(Path(i) for i in inputs))
    except OutputRefused as exc:
        message = str(exc).replace(REFUSED_HINT, REFUSED_HINT.replace("-o", "--report"))
        raise UsageError("--report: " + message.replace("choose another -o", "choose another --report")) from None


def make_report(
    verdicts: list[Path], output: Path, thumbnails: bool = True, workers: int = 2, quiet: bool = False, root: Path | None = None
) -> int:
    """The report of `verdicts` at `output`; 0, or 2 after one error line (`report`, and `scan --report`).

    Relative paths in the records are found from `root` (None: the current folder, where `scan
    --report` ran its scan).
    """
    from codescan.review.report import (
        OutputRefused,
        ReportPaths,
        VerdictsError,
        check_target,
        load_verdicts,
        merge,
        write_report,
    )
    from codescan.review.thumbs import ThumbCache, ThumbCacheError, make_thumbnails

    paths = ReportPaths.beside(output)
    try:
        check_target(paths, tuple(verdicts))
        loaded = merge([load_verdicts(path) for path in verdicts])
    except (OutputRefused, VerdictsError) as exc:
        messages.error(str(exc))
        return 2
    for line in loaded.notes:
        messages.note(line)

    def fill(folder: Path) -> list[str | None]:
        if not thumbnails:
            return [None] * len(loaded.records)
        try:
            cache: ThumbCache | None = ThumbCache.default()
        except ThumbCacheError as exc:
            messages.note(str(exc))
            cache = None
        return make_thumbnails(loaded.records, folder, workers, cache=cache, root=root)

    try:
        states = write_report(loaded, paths, fill)
    except OutputRefused as exc:
        messages.error(str(exc))
        return 2
    except OSError as exc:
        messages.error(f"{exc.filename or output}: {exc.strerror or exc}")
        return 2
    missing = [r for r, s in zip(loaded.records, states) if s == "missing"]
    if missing:
        _say_missing(missing, root)
    if not quiet:
        made = sum(s == "ok" for s in states)
        changed = sum(s == "changed" for s in states)
        messages.info(
            f"{output}: {messages.plural(len(loaded.records), 'record')}, {messages.plural(made, 'thumbnail')}"
            + (f", {len(missing)} not found" if missing else "")
            + (f", {changed} changed since the scan" if changed else "")
        )
    return 0


def _say_missing(missing: list[dict], root: Path | None) -> None:
    """How many judged files were not found, and --root as the fix when their paths are relative."""
    files = {r.get("archive") or r["path"] for r in missing}
    what = messages.plural(len(files), "scanned file") + (f" ({len(missing)} records)" if len(missing) != len(files) else "")
    if any(not os.path.isabs(f) for f in files):
        where = os.path.abspath(root if root is not None else os.curdir)
        messages.note(
            f"{what} not found, relative paths looked for from {where}: if the scan ran in another folder, "
            "give it with --root DIR; shown without thumbnails"
        )
    else:
        messages.note(f"{what} not found (moved or deleted since the scan); shown without thumbnails")


def register(app: typer.Typer) -> None:
    app.command("report", cls=Command)(report_command)
