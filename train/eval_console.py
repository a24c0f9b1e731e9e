"""The human side of `codescan eval` on stderr: a progress bar, then one Rich table per head.

stdout carries only the JSON, so `codescan eval ... | jq` works while a person still reads
the tables on the terminal.
"""

from __future__ import annotations

from codescan.train.evaluate import EvalReport
from codescan.train.metrics import BinaryMetrics
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from codescan.core.textsafe import printable

# Two-line headers and no vertical rules keep the tables narrow.
_COLUMNS = ("set", "n\nreal", "n\nfake", "acc\nreal", "acc\nfake", "bal\nacc", "AUC", "AP", "TN", "FP", "FN", "TP")


def progress_bar(console: Console, quiet: bool) -> Progress:
    """Shown only on a terminal: a log file should not fill with redraws."""
    return Progress(
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _row(name: str, m: BinaryMetrics) -> list[str | Text]:
    c = m.confusion
    return [
        Text(printable(name)),  # a generator is a folder name: neither markup nor escape sequences
        str(m.n_real),
        str(m.n_fake),
        _num(m.real_accuracy),
        _num(m.fake_accuracy),
        _num(m.balanced_accuracy),
        _num(m.auc),
        _num(m.ap),
        *(str(v) for v in (c.tn, c.fp, c.fn, c.tp)),
    ]


def print_uncut(console: Console, table: Table) -> None:
    """Rich shrinks a table wider than the console and cuts its cells; widen the console for it instead."""
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


def render(report: EvalReport, console: Console) -> None:
    run, counts = report.run, report.counts
    console.print(
        printable(
            f"{run['weights']['name']} on {run['data']}: {counts['scored']} images scored "
            f"({counts['real']} real, {counts['fake']} fake), {run['engine']} {run['precision']}, "
            f"{run['crops']} crop{'s' if run['crops'] > 1 else ''}"
        ),
        markup=False,
    )
    for name, head in report.heads.items():
        table = Table(
            title=f"{name}: fake when score > {head.threshold:g}; per generator: its fakes vs all reals",
            box=box.SIMPLE_HEAD,
            title_justify="left",
        )
        for i, col in enumerate(_COLUMNS):
            table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
        table.add_row(*_row("all", head.overall), end_section=True)
        for generator, metrics in head.generators.items():
            table.add_row(*_row(generator, metrics))
        print_uncut(console, table)
    if report.undecodable:
        console.print(f"{len(report.undecodable)} undecodable files not scored (listed in the JSON under \"undecodable\")")
