"""The scan's progress line on stderr: files done (of a total when known), rate, fakes, errors, ETA.

Every column reads its numbers from one place, :func:`_fields`, used both when the task is
created and on every update, so no code path can draw a column whose field is missing (the
crash of the first release). The total comes from a background count of the same inputs the
scan walks, which never delays the first verdict: until it finishes the line shows no total.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TimeElapsedColumn,
)
from rich.text import Text

from codescan.core.records import Summary
from codescan.output.messages import plural

COUNT_SECONDS = 10.0  # a pre-count still running after this is abandoned: the line stays without a total
# The line takes the files done at most this often (rich redraws it 10 times a second anyway): an
# update of rich's task costs the scanning process about 6 µs, more than a file's record.
SHOW_SECONDS = 0.1


def _fields(summary: Summary) -> dict[str, int]:
    return {"fake": summary.fake, "errors": summary.errors}


class _Files(ProgressColumn):
    """Cumulative, like the fake and error counts: a resumed scan counts the earlier run's files
    too, and says how many of them came from it."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        text = plural(done, "file") if task.total is None else f"{done}/{int(task.total)} files"
        resumed = task.fields.get("resumed", 0)
        return Text(f"{text} ({resumed} resumed)" if resumed else text)


def _rate(task: Task) -> float:
    """Files per second of this run since it started (the first files arrive in one burst after
    the model loads, so a short-window speed would swing wildly)."""
    elapsed = task.elapsed or 0.0
    scanned = task.completed - task.fields.get("resumed", 0)
    return scanned / elapsed if elapsed > 0 and scanned > 0 else 0.0


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = _rate(task)
        return Text(f"{rate:.1f}/s" if rate else "")


class _Counts(ProgressColumn):
    def render(self, task: Task) -> Text:
        fake, errors = task.fields["fake"], task.fields["errors"]
        text = Text(f"{fake} fake", style="red" if fake else "")
        text.append(", ")
        text.append(plural(errors, "error"), style="yellow" if errors else "")
        return text


class _Eta(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = _rate(task)
        if task.total is None or not rate or task.finished:
            return Text("")
        left = max(0.0, (task.total - task.completed) / rate)  # both cumulative
        minutes, seconds = divmod(int(left + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours}:{minutes:02d}:{seconds:02d}" if hours else f"ETA {minutes}:{seconds:02d}")


def columns() -> list[ProgressColumn]:
    return [SpinnerColumn(), _Files(), _Rate(), _Counts(), TimeElapsedColumn(), _Eta()]


class ScanProgress:
    """A transient progress line, drawn only when stderr is an interactive terminal."""

    def __init__(self, quiet: bool, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        enabled = not quiet and self.console.is_interactive
        self._progress = Progress(*columns(), console=self.console, transient=True, disable=not enabled)
        self._task = self._progress.add_task("scanning", total=None, resumed=0, **_fields(Summary()))
        self._lock = threading.Lock()
        self.enabled = enabled
        self._unshown = 0  # files done since the line last took them
        self._shown = 0.0  # when it did
        self._last: Summary | None = None

    def __enter__(self) -> ScanProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._show()
        self._progress.__exit__(kind, exc, tb)

    def set_total(self, total: int) -> None:
        with self._lock:
            task = self._progress.tasks[0]
            self._progress.update(self._task, total=max(total, int(task.completed)))

    def advance(self, summary: Summary, files: int) -> None:
        """`files` more done (a batch's); the line takes them at most every SHOW_SECONDS, and at the end."""
        self._unshown += files
        self._last = summary
        now = time.monotonic()
        if now - self._shown >= SHOW_SECONDS:
            self._shown = now
            self._show()

    def _show(self) -> None:
        if self._last is not None:
            with self._lock:
                self._progress.update(self._task, advance=self._unshown, **_fields(self._last))
            self._unshown = 0

    def count_in_background(self, listing: Callable[[], Iterable[object]], already_done: int = 0) -> None:
        """Start from the `already_done` files of a resumed run; count what `listing` yields in a
        daemon thread and set the total (theirs included) when it is known."""
        with self._lock:
            self._progress.update(self._task, completed=already_done, resumed=already_done)
        if not self.enabled:
            return

        def run() -> None:
            deadline = time.monotonic() + COUNT_SECONDS
            n = 0
            try:
                for _ in listing():
                    n += 1
                    if time.monotonic() > deadline:
                        return
            except Exception:  # noqa: BLE001 - a failed count only means no total; the scan reports the error
                return
            self.set_total(n)

        threading.Thread(target=run, name="codescan-count", daemon=True).start()
