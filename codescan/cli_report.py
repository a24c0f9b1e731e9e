"""`codescan report`: the HTML review report of one or more verdicts files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import messages


def report_command(
    verdicts: Annotated[
        list[Path], typer.Argument(help="What `codescan scan` wrote: JSONL, JSON, Parquet, or a --shards folder.", show_default=False)
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The page to write; its files go to NAME_files/ beside it.")],
    no_thumbnails: Annotated[bool, typer.Option("--no-thumbnails", help="Skip thumbnails (the page then never reads the images).")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Thumbnail worker processes.")] = 2,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No closing line (notes about the input still go to stderr).")] = False,
) -> None:
    """Write an HTML page to review a scan: counts, score histograms, a sortable, filterable table with thumbnails.

    The page opens from disk with no server and no network; thumbnails are made from the scanned
    files (which must still be where the scan found them) and checked against each record's sha256.
    """
    code = make_report(verdicts, output, thumbnails=not no_thumbnails, workers=workers, quiet=quiet)
    if code:
        raise typer.Exit(code)


def make_report(verdicts: list[Path], output: Path, thumbnails: bool = True, workers: int = 2, quiet: bool = False) -> int:
    """The report of `verdicts` at `output`; 0, or 2 after one error line (`report`, and `scan --report`)."""
    from .report import ReportPaths, VerdictsError, load_verdicts, merge, write_report
    from .thumbs import make_thumbnails

    try:
        loaded = merge([load_verdicts(path) for path in verdicts])
    except VerdictsError as exc:
        messages.error(str(exc))
        return 2
    for line in loaded.notes:
        messages.note(line)
    paths = ReportPaths.beside(output)
    try:
        if not thumbnails:
            states: list[str | None] = [None] * len(loaded.records)
        else:
            paths.thumbs.mkdir(parents=True, exist_ok=True)
            states = make_thumbnails(loaded.records, paths.thumbs, workers)
        write_report(loaded, paths, states)
    except OSError as exc:
        messages.error(f"{exc.filename or output}: {exc.strerror or exc}")
        return 2
    if not quiet:
        made = sum(s == "ok" for s in states)
        lost = sum(s in ("missing", "changed") for s in states)
        messages.info(
            f"{output}: {messages.plural(len(loaded.records), 'record')}, {messages.plural(made, 'thumbnail')}"
            + (f", {lost} missing or changed since the scan" if lost else "")
        )
    return 0


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
