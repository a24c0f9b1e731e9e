"""One writer per output format, and the rules for where bytes go.

JSONL and CSV stream: each record is written and flushed as it arrives, so a killed scan
leaves complete lines. JSON is one document, written to a temporary file beside the target
and renamed over it at the end (only for regular files: ``/dev/null``, FIFOs and terminals are
written in place, never replaced). Undecodable file-name bytes arrive as lone surrogates
(``\\udcXX``) and are written as that escape text, so output is always valid UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from collections.abc import Iterator
from typing import IO, Any, Literal, Protocol

from . import resume
from .records import HEAD_NAMES, Header, Result, Summary
from .resume import ResumeState
from .textsafe import csv_cell, printable

Format = Literal["jsonl", "json", "csv"]
FORMATS: tuple[str, ...] = ("jsonl", "json", "csv")
CSV_COLUMNS = (
    "path", "status", "score", "threshold", "head", "width", "height", "format", "error_code", "error", "sha256",
)
EVIDENCE_COLUMNS = ("combined", "evidence")  # evidence: "kind=generator; kind" for each item found

_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(obj: Any) -> str:
    # ensure_ascii=False keeps names readable; the surrogate pass turns the only characters
    # UTF-8 cannot carry into JSON escapes, which decode back to the same surrogates.
    return escape_surrogates(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")))


def _final_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


class OutputError(OSError):
    """The output cannot be opened; the message names the user's path, never a temporary file."""


class Sink:
    """Where the data goes: stdout, a special file in place, or a regular file (atomic if asked)."""

    def __init__(self, target: str | None, atomic: bool, append: bool = False) -> None:
        try:
            self._open(target, atomic, append)
        except OSError as exc:
            raise OutputError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from None

    def _open(self, target: str | None, atomic: bool, append: bool) -> None:
        self.target = target
        self._tmp: str | None = None
        if target in (None, "-"):
            self.stream: IO[str] = io.TextIOWrapper(
                sys.stdout.buffer, encoding="utf-8", newline="\n", write_through=True
            )
            self._owned = False
            return
        self._owned = True
        special = os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode)
        if atomic and not special:
            # Replace what the name points at (keep a symlink a symlink) with the mode an
            # ordinary open() would give, not mkstemp's 0600.
            self.target = target = os.path.realpath(target)
            fd, self._tmp = tempfile.mkstemp(prefix=".codescan.", suffix=".tmp", dir=os.path.dirname(target))
            os.fchmod(fd, _final_mode(target))
            self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        else:
            self.stream = open(target, "a" if append else "w", encoding="utf-8", newline="\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self, commit: bool = True) -> None:
        self.stream.flush()
        if self._tmp is not None:
            os.fsync(self.stream.fileno())
        if self._owned:
            self.stream.close()
        else:
            self.stream.detach()
        if self._tmp is not None:
            if commit:
                os.replace(self._tmp, self.target)  # type: ignore[arg-type]
            else:
                os.unlink(self._tmp)


class Reporter(Protocol):
    def previous(self) -> ResumeState | None: ...  # what the target already holds, to continue
    def header(self, header: Header) -> None: ...
    def result(self, result: Result) -> None: ...
    def summary(self, summary: Summary, interrupted: bool = False) -> None: ...
    def close(self, commit: bool = True) -> None: ...


class _Fresh:
    """Reporters whose target starts empty: nothing to continue."""

    def previous(self) -> ResumeState | None:
        return None


class JsonlReporter(_Fresh):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def _line(self, obj: dict[str, Any]) -> None:
        self.sink.stream.write(dumps(obj) + "\n")
        self.sink.flush()

    def header(self, header: Header) -> None:
        self._line(header.to_dict())

    def result(self, result: Result) -> None:
        self._line(result.to_dict())

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        self._line({**summary.to_dict(), **({"interrupted": True} if interrupted else {})})

    def close(self, commit: bool = True) -> None:
        self.sink.close(commit)


class ResumedJsonlReporter(JsonlReporter):
    """`--resume FILE`: keeps the file's complete results and appends only what is new.

    The file is opened at `header`, after the job checked that the old header matches: a torn
    last line and the old summary are dropped (rewritten atomically), then lines are appended.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.state = resume.load(target)

    def previous(self) -> ResumeState | None:
        return self.state

    def header(self, header: Header) -> None:
        if self.state.header is None:
            self.sink = Sink(self.target, atomic=False)
            super().header(header)
            return
        self._rewrite()
        self.sink = Sink(self.target, atomic=False, append=True)

    def _rewrite(self) -> None:
        """Atomically keep only the header and complete results, ready for appending."""
        sink = Sink(self.target, atomic=True)  # through a symlink it rewrites the target; keeps the mode
        try:
            for obj in [self.state.header, *self.state.results]:
                sink.stream.write(dumps(obj) + "\n")
        except BaseException:
            sink.close(commit=False)
            raise
        sink.close()


class JsonReporter(_Fresh):
    """Holds records until the end: one JSON document, replaced atomically."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.doc: dict[str, Any] = {"header": None, "results": [], "summary": None}

    def header(self, header: Header) -> None:
        self.doc["header"] = header.to_dict()

    def result(self, result: Result) -> None:
        self.doc["results"].append(result.to_dict())

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        self.doc["summary"] = {**summary.to_dict(), **({"interrupted": True} if interrupted else {})}

    def close(self, commit: bool = True) -> None:
        if commit:
            self.sink.stream.write(escape_surrogates(json.dumps(self.doc, ensure_ascii=False, indent=2)) + "\n")
        self.sink.close(commit)


class CsvReporter(_Fresh):
    """Fixed columns, then per-head columns (--head all), then the evidence columns (unless --evidence none)."""

    def __init__(self, sink: Sink, heads: list[str] | None = None, evidence: bool = False) -> None:
        self.sink = sink
        self.heads = [h for h in HEAD_NAMES if heads and h in heads]
        self.evidence = evidence
        extra = [c for h in self.heads for c in (f"score_{h}", f"status_{h}")]
        self.writer = csv.writer(sink.stream, lineterminator="\n")
        self.writer.writerow([*CSV_COLUMNS, *extra, *(EVIDENCE_COLUMNS if evidence else ())])
        sink.flush()

    def header(self, header: Header) -> None:
        pass  # CSV has one row shape; run metadata lives in the JSONL/JSON header only

    def result(self, result: Result) -> None:
        d = result.to_dict()
        row = ["" if d.get(c) is None else d[c] for c in CSV_COLUMNS]
        for h in self.heads:
            v = (result.heads or {}).get(h)
            row += [v.score, v.status] if v else ["", ""]
        if self.evidence:
            found = result.evidence or ()
            row += [result.combined or "", "; ".join(e.kind + (f"={e.generator}" if e.generator else "") for e in found)]
        self.writer.writerow([_text_cell(x) if isinstance(x, str) else x for x in row])
        self.sink.flush()

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        pass

    def close(self, commit: bool = True) -> None:
        self.sink.close(commit)


def _text_cell(text: str) -> str:
    """CSV text: control characters escaped (a raw CR cannot split a row in a lax reader), and
    formula-like starts neutralised with a leading ``'`` (OWASP); JSONL keeps the original."""
    return csv_cell(printable(escape_surrogates(text)))


class ShardsReporter:
    """`--shards DIR`: header.json and summary.json here; the workers write the part files
    (``write_shard``), each record exactly as JSONL writes it. A folder that holds shards of the
    same header is continued."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def previous(self) -> ResumeState | None:
        head = self.folder / "header.json"
        if not head.is_file():
            if any(self.folder.glob("part-*.jsonl")):
                raise resume.ResumeError(f"{self.folder} holds shards but no header.json; not a codescan shard folder")
            return None
        try:
            header = json.loads(head.read_text())
        except ValueError:
            raise resume.ResumeError(f"{head} is not JSON; not a codescan shard folder") from None
        return ResumeState(header=header, results=list(read_shards(self.folder)))

    def header(self, header: Header) -> None:
        from .fsutil import atomic_write_bytes

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / "header.json", (dumps(header.to_dict()) + "\n").encode())

    def result(self, result: Result) -> None:
        pass  # written by the worker that made it

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        from .fsutil import atomic_write_bytes

        closing = {**summary.to_dict(), **({"interrupted": True} if interrupted else {})}
        atomic_write_bytes(self.folder / "summary.json", (dumps(closing) + "\n").encode())

    def close(self, commit: bool = True) -> None:
        pass


def write_shard(folder: Path, first: int, records: list[Result]) -> None:
    """One part file, named by the listing number of its first record, written atomically (a
    shard is whole or absent, and a retried task rewrites the same name with the same content)."""
    from .fsutil import atomic_write_bytes

    text = "".join(dumps(r.to_dict()) + "\n" for r in records)
    atomic_write_bytes(folder / f"part-{first:012d}.jsonl", text.encode("utf-8"))


def read_shards(folder: Path) -> Iterator[dict[str, Any]]:
    """The result records of a shard folder, in listing order."""
    for shard in sorted(folder.glob("part-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            yield json.loads(line)


def make_reporter(
    fmt: Format, target: str | None, heads: list[str] | None = None, evidence: bool = False, resuming: bool = False
) -> Reporter:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if resuming:
        return ResumedJsonlReporter(target)  # type: ignore[arg-type]
    sink = Sink(target, atomic=(fmt == "json"))
    if fmt == "jsonl":
        return JsonlReporter(sink)
    if fmt == "json":
        return JsonReporter(sink)
    return CsvReporter(sink, heads, evidence)


def guess_format(target: str | None) -> Format | None:
    if not target or target == "-":
        return None
    suffix = Path(target).suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}.get(suffix)  # type: ignore[return-value]
