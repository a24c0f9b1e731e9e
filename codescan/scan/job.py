"""A scan job: header → (resume | shards) → results → summary → exit code, whatever runs the scan.

The job is the one place that decides what is already done, counts outcomes, times the run
and closes the output; an *executor* only turns inputs into outcomes in input order (the local
pipeline, or Ray Data collecting rows back, or Ray workers writing shards themselves), and a
*reporter* is the only writer. So a resumed JSONL file and a continued shard folder follow the
same rules, and a new executor cannot forget one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from codescan.core.records import Header, Ident, Summary
from codescan.output.reporters import Reporter
from codescan.output.resume import check_compatible


class Tally(Protocol):
    """What the job needs of an outcome: a Result, or (from shard-writing workers) its status only."""

    status: str
    combined: str | None


class Executor(Protocol):
    """`Scanner` (the local pipeline) and `RayExecutor` (codescan.scan.ray_executor). `header` resolves
    the engine where it will run (here, or on a Ray worker). Outcomes come in lists (records
    made together locally: an engine batch's, or all that arrived at once): the job's own work is per
    list, not per file."""

    def header(self) -> Header: ...

    def batches(self, arguments: list[str | bytes], skip: Collection[Ident]) -> Iterator[Sequence[Tally]]: ...


class OutputClosed(Exception):
    """The reader of stdout went away (`| head`): the caller exits 141, as after SIGPIPE."""


@dataclass
class JobResult:
    summary: Summary
    scanned: int  # outcomes of this run (a resumed run's earlier records excluded)
    interrupted: bool

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else self.summary.exit_code()


def run(
    executor: Executor,
    reporter: Reporter,
    header: Header,
    arguments: list[str | bytes],
    summary: Summary,
    on_start: Callable[[int], None] = lambda done: None,
    on_result: Callable[[Summary, int], None] = lambda summary, files: None,  # after each list: how many it held
    target: str = "",
) -> JobResult:
    """Run the scan into `reporter`, continuing what it already holds (a resumed file, shards).

    On a failure the reporter is closed without committing (a JSON document's temporary file is
    removed; JSONL, CSV and shards keep their complete lines); Ctrl-C still writes the summary.
    """
    started = time.perf_counter()
    previous = reporter.previous()
    done: set[Ident] = set()
    if previous is not None and previous.header is not None:
        check_compatible(previous, header.to_dict(), target)
        for record in previous.results:
            summary.count(record["status"], record.get("combined"))
        done = previous.done
    on_start(len(done))
    scanned, interrupted = 0, False
    try:
        reporter.header(header)
        for outcomes in executor.batches(arguments, done):
            reporter.results(outcomes)  # type: ignore[arg-type]  # a Counted reaches only the shards reporter, which writes nothing
            summary.count_all(outcomes)
            scanned += len(outcomes)
            on_result(summary, len(outcomes))
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
    return JobResult(summary, scanned, interrupted)
