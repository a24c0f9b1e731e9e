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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from codescan.core import strictjson
from codescan.core.records import HEAD_NAMES, Header, Result, Summary, is_result_record
from codescan.core.textsafe import csv_cell, printable
from codescan.output import resume
from codescan.output.resume import ResumeState

Format = Literal["jsonl", "json", "csv", "parquet"]
FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "parquet")
CSV_COLUMNS = (
    "path", "status", "score", "threshold", "head", "width", "height", "format", "error_code", "error", "sha256",
    "archive", "member", "member_index", "key",  # empty for plain files: the columns never depend on the inputs
)
EVIDENCE_COLUMNS = ("combined", "evidence")  # evidence: "kind=generator; kind" for each item found

_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    return text if text.isascii() else _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# ensure_ascii=False keeps names readable; the surrogate pass turns the only characters UTF-8
# cannot carry into JSON escapes, which decode back to the same surrogates. allow_nan=False: a
# NaN or infinity raises instead of becoming a bare NaN (not JSON). One encoder for every line:
# json.dumps with options builds a new one per call, and so does JSONEncoder.encode inside, so
# the C encoder it would build is built once here (the same arguments, so the same bytes). It
# keeps no circular-reference markers: records are trees, and the C encoder leaves a marker behind
# when it raises (a NaN), so a shared marker dict could refuse a later record at the same address.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), allow_nan=False)
_C_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _ENCODER.default, json.encoder.encode_basestring, None, _ENCODER.key_separator, _ENCODER.item_separator,
    _ENCODER.sort_keys, _ENCODER.skipkeys, _ENCODER.allow_nan,
)


def _encode(obj: dict[str, Any] | list[Any]) -> str:
    """JSON text, strict; surrogates not yet escaped."""
    return "".join(_C_ENCODER(obj, 0)) if _C_ENCODER else _ENCODER.encode(obj)


def dumps(obj: dict[str, Any] | list[Any]) -> str:
    """One record (or document) as JSON text: strict, surrogates escaped."""
    return escape_surrogates(_encode(obj))


_quote = json.encoder.encode_basestring  # a JSON string, non-ASCII kept: what _C_ENCODER writes for a str
_float = float.__repr__  # what it writes for a float


def _judged_line(r: Result) -> str | None:
    """``dumps(r.to_dict())`` without the dict, for the record a scan writes most: a judged file with
    one box, no archive, no per-head scores, no evidence found (or none looked for); None for any
    other record. 1.7 µs a line where the dict and the encoder take 3.9 (`timeit`); tests hold the two equal."""
    if r.origin is not None or r.boxes is not None or r.heads is not None or r.error_code is not None or r.error is not None:
        return None
    status, score, threshold, evidence, crop = r.status, r.score, r.threshold, r.evidence, r.crop
    if not (type(crop) is tuple and len(crop) == 4):
        return None
    x0, y0, x1, y1 = crop
    if not (
        (status == "real" or status == "fake")
        and type(score) is float and score - score == 0.0  # finite: a NaN or infinity takes the encoder's error
        and type(threshold) is float and threshold - threshold == 0.0
        and type(r.width) is int and type(r.height) is int
        and type(r.head) is str and type(r.format) is str and type(r.sha256) is str
        and type(x0) is int and type(y0) is int and type(x1) is int and type(y1) is int
        and (evidence is None or evidence == ())
    ):
        return None
    line = (
        f'{{"type": "result", "path": {_quote(r.path)}, "status": "{status}", "score": {_float(score)}, '
        f'"threshold": {_float(threshold)}, "head": {_quote(r.head)}, "width": {r.width}, "height": {r.height}, '
        f'"format": {_quote(r.format)}, "crop": [{x0}, {y0}, {x1}, {y1}], "sha256": {_quote(r.sha256)}'
    )
    return line + "}" if evidence is None else f'{line}, "evidence": [], "combined": "{status}"}}'


def result_lines(records: Sequence[Result]) -> str:
    """Records as JSONL text, each line as ``dumps(record.to_dict())`` writes it (none at the end)."""
    lines = [_judged_line(r) or _encode(r.to_dict()) for r in records]
    return escape_surrogates("\n".join(lines))  # once for the batch


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

    def __init__(self, target: str | None, atomic: bool, append: bool = False, binary: bool = False) -> None:
        try:
            self._open(target, atomic, append, binary)
        except OSError as exc:
            raise OutputError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from None

    def _open(self, target: str | None, atomic: bool, append: bool, binary: bool) -> None:
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
            self.stream = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        elif binary:
            self.stream = open(target, "ab" if append else "wb")  # type: ignore[assignment]
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
    def results(self, records: Sequence[Result]) -> None: ...  # records made together (a batch's or more), in order
    def summary(self, summary: Summary, interrupted: bool = False) -> None: ...
    def close(self, commit: bool = True) -> None: ...


class _Fresh:
    """Reporters whose target starts empty: nothing to continue."""

    def previous(self) -> ResumeState | None:
        return None


# JSONL lines go out in groups of whole lines, one write each: a write and a flush per record cost
# the scanning process more than making the record. A group is written once it holds GROUP_LINES
# lines or GROUP_SECONDS have passed since the last write, and always at the header, the summary,
# an interrupt and a failure, so a killed scan still leaves only complete lines.
GROUP_LINES = 64
GROUP_SECONDS = 0.25


class JsonlReporter(_Fresh):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._start_groups()

    def _start_groups(self) -> None:
        self._held: list[str] = []  # blocks of whole lines, each without its last newline
        self._lines = 0
        self._written = time.monotonic()

    def _hold(self, text: str, lines: int, now: bool = False) -> None:
        self._held.append(text)
        self._lines += lines
        if now or self._lines >= GROUP_LINES or time.monotonic() - self._written >= GROUP_SECONDS:
            self._write_held()

    def _write_held(self) -> None:
        if self._held:
            self.sink.stream.write("\n".join(self._held) + "\n")
            self.sink.flush()
            self._held.clear()
            self._lines = 0
        self._written = time.monotonic()

    def header(self, header: Header) -> None:
        self._hold(dumps(header.to_dict()), 1, now=True)

    def results(self, records: Sequence[Result]) -> None:
        if records:
            self._hold(result_lines(records), len(records))

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        self._hold(dumps({**summary.to_dict(), **({"interrupted": True} if interrupted else {})}), 1, now=True)

    def close(self, commit: bool = True) -> None:
        try:
            self._write_held()  # complete lines: valid even when the scan failed
        finally:
            self.sink.close(commit)


class ResumedJsonlReporter(JsonlReporter):
    """`--resume FILE`: keeps the file's complete results and appends only what is new.

    The file is opened at `header`, after the job checked that the old header matches: a torn
    last line and the old summary are dropped (rewritten atomically), then lines are appended.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.state = resume.load(target)
        self._start_groups()  # the sink is opened at `header`, once the old header is checked

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

    def results(self, records: Sequence[Result]) -> None:
        self.doc["results"].extend(r.to_dict() for r in records)

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        self.doc["summary"] = {**summary.to_dict(), **({"interrupted": True} if interrupted else {})}

    def close(self, commit: bool = True) -> None:
        if commit:
            self.sink.stream.write(escape_surrogates(json.dumps(self.doc, ensure_ascii=False, indent=2, allow_nan=False)) + "\n")
        self.sink.close(commit)


class CsvReporter(_Fresh):
    """Fixed columns, then per-head columns (--head all), then the evidence columns (unless --evidence none)."""

    def __init__(self, sink: Sink, heads: list[str] | None = None, evidence: bool = False) -> None:
        self.sink = sink
        self.heads = [h for h in HEAD_NAMES if heads and h in heads]
        self.evidence = evidence
        self.writer = csv.writer(sink.stream, lineterminator="\n")
        self.writer.writerow(table_columns(self.heads, evidence))
        sink.flush()

    def header(self, header: Header) -> None:
        pass  # CSV has one row shape; run metadata lives in the JSONL/JSON header only

    def results(self, records: Sequence[Result]) -> None:
        for result in records:
            row = ["" if x is None else x for x in table_row(result, self.heads, self.evidence)]
            self.writer.writerow([_text_cell(x) if isinstance(x, str) else x for x in row])
        self.sink.flush()

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        pass

    def close(self, commit: bool = True) -> None:
        self.sink.close(commit)


def table_columns(heads: list[str], evidence: bool) -> list[str]:
    """The columns of the table formats (CSV, Parquet), fixed before the first row."""
    return [*CSV_COLUMNS, *(c for h in heads for c in (f"score_{h}", f"status_{h}")), *(EVIDENCE_COLUMNS if evidence else ())]


def table_row(result: Result, heads: list[str], evidence: bool) -> list[Any]:
    """One record as the table formats hold it, None for an empty cell."""
    d = result.to_dict()
    row: list[Any] = [d.get(c) for c in CSV_COLUMNS]
    for h in heads:
        v = (result.heads or {}).get(h)
        row += [v.score, v.status] if v else [None, None]
    if evidence:
        found = result.evidence or ()
        row += [result.combined, "; ".join(e.kind + (f"={e.generator}" if e.generator else "") for e in found)]
    return row


def _text_cell(text: str) -> str:
    """CSV text: control characters escaped (a raw CR cannot split a row in a lax reader), and
    formula-like starts neutralised with a leading ``'`` (OWASP); JSONL keeps the original."""
    return csv_cell(printable(escape_surrogates(text)))


class ParquetReporter(_Fresh):
    """`--format parquet -o FILE`: the CSV's columns, typed, written to a temporary file beside the
    target in row groups of `ROWS_PER_GROUP` and renamed over it at the end, so the file is whole
    or absent. The header and summary records ride along as the file's key-value metadata
    (``codescan.header``, ``codescan.summary``: ``pq.read_metadata(f).metadata``); the header is
    also the Arrow schema's (``pq.read_table(f).schema.metadata``), the summary cannot be, being
    known only after the rows. Text is stored as JSON writes it (undecodable
    name bytes as ``\\udcXX``), with no spreadsheet escaping: Parquet is read by programs."""

    ROWS_PER_GROUP = 8192

    def __init__(self, sink: Sink, heads: list[str] | None = None, evidence: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.sink = sink
        self.heads = [h for h in HEAD_NAMES if heads and h in heads]
        self.evidence = evidence
        numbers = {"score": pa.float64(), "threshold": pa.float64(), "width": pa.int64(), "height": pa.int64(),
                   "member_index": pa.int64(), **{f"score_{h}": pa.float64() for h in self.heads}}
        self.schema = pa.schema([(c, numbers.get(c, pa.string())) for c in table_columns(self.heads, evidence)])
        self.writer: pq.ParquetWriter | None = None  # opened by header(): a writer writes its magic bytes at once
        self.rows: list[list[Any]] = []

    def header(self, header: Header) -> None:
        """In the Arrow schema's metadata too, so `pq.read_table(f).schema.metadata` shows it: the
        header comes before any row, while the writer can still take another schema."""
        import pyarrow.parquet as pq

        text = dumps(header.to_dict())
        self.schema = self.schema.with_metadata({"codescan.header": text})
        self.writer = pq.ParquetWriter(self.sink.stream, self.schema)
        self.writer.add_key_value_metadata({"codescan.header": text})

    def results(self, records: Sequence[Result]) -> None:
        for result in records:
            row = table_row(result, self.heads, self.evidence)
            self.rows.append([escape_surrogates(x) if isinstance(x, str) else x for x in row])
            if len(self.rows) >= self.ROWS_PER_GROUP:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            columns = list(zip(*self.rows))
            self.writer.write_table(pa.table([pa.array(c, f.type) for c, f in zip(columns, self.schema)], schema=self.schema))
            self.rows = []

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        closing = {**summary.to_dict(), **({"interrupted": True} if interrupted else {})}
        self.writer.add_key_value_metadata({"codescan.summary": dumps(closing)})

    def close(self, commit: bool = True) -> None:
        if commit:
            self._flush()
        if self.writer is not None:
            self.writer.close()
        self.sink.close(commit)


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
            header = strictjson.loads(head.read_text())
        except ValueError:
            raise resume.ResumeError(f"{head} is not JSON; not a codescan shard folder") from None
        results = list(read_shards(self.folder))
        if not all(is_result_record(r) for r in results):
            raise resume.ResumeError(f"{self.folder} holds a shard line that is not a codescan record")
        return ResumeState(header=header, results=results)

    def header(self, header: Header) -> None:
        from codescan.core.fsutil import atomic_write_bytes

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / "header.json", (dumps(header.to_dict()) + "\n").encode())

    def results(self, records: Sequence[Result]) -> None:
        pass  # written by the worker that made it

    def summary(self, summary: Summary, interrupted: bool = False) -> None:
        from codescan.core.fsutil import atomic_write_bytes

        closing = {**summary.to_dict(), **({"interrupted": True} if interrupted else {})}
        atomic_write_bytes(self.folder / "summary.json", (dumps(closing) + "\n").encode())

    def close(self, commit: bool = True) -> None:
        pass


def write_shard(folder: Path, first: tuple[int, int], records: list[Result]) -> None:
    """One part file, named by the place of its first record (the input's listing number, the
    member's index in its archive), written atomically: a shard is whole or absent, and a
    retried task rewrites the same name with the same content."""
    from codescan.core.fsutil import atomic_write_bytes

    text = result_lines(records) + "\n"
    atomic_write_bytes(folder / f"part-{first[0]:012d}-{first[1]:012d}.jsonl", text.encode("utf-8"))


def read_shards(folder: Path) -> Iterator[dict[str, Any]]:
    """The result records of a shard folder, in listing order."""
    for shard in sorted(folder.glob("part-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            yield strictjson.loads(line)


def make_reporter(
    fmt: Format, target: str | None, heads: list[str] | None = None, evidence: bool = False, resuming: bool = False
) -> Reporter:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if resuming:
        return ResumedJsonlReporter(target)  # type: ignore[arg-type]
    if fmt == "parquet":
        return ParquetReporter(Sink(target, atomic=True, binary=True), heads, evidence)
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
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)  # type: ignore[return-value]
