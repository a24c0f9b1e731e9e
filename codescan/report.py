"""The HTML review report: read a scan's verdicts, write a page that opens from disk.

The page is ``report.html`` plus ``report_files/`` beside it. Pages opened from ``file://``
cannot ``fetch()`` a sibling file, so the records travel as a script (``data.js``) that assigns
one global; report.js draws everything from it with DOM setters (textContent, attributes), never
innerHTML, because every string in a verdicts file may come from a hostile file name or
metadata field.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .fsutil import atomic_write_bytes
from .records import is_result_record

ASSETS = Path(__file__).parent / "report_assets"
SHA256 = re.compile(r"[0-9a-f]{64}")
DATA_GLOBAL = "CODESCAN_REPORT"


class VerdictsError(ValueError):
    """The input is not a codescan verdicts file; the message names it and says why."""


@dataclass
class Verdicts:
    """What a scan wrote, whatever its format; `notes` say what was odd about it (torn, interrupted)."""

    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def load_verdicts(path: Path) -> Verdicts:
    """Any output of `codescan scan`: a --shards folder, Parquet, JSON or JSONL (chosen by content)."""
    if path.is_dir():
        return _load_shards(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise VerdictsError(f"{path}: {exc.strerror or exc}") from None
    if raw.startswith(b"PAR1"):
        return _load_parquet(path)
    if raw.lstrip().startswith(b"{") and not _starts_with_header_line(raw):
        whole = _load_json(raw, path)
        if whole is not None:
            return whole
    return _load_jsonl(raw, path)


def _starts_with_header_line(raw: bytes) -> bool:
    """JSONL's first line is a whole header object; `--format json` starts an object that spans lines."""
    try:
        first = json.loads(raw.lstrip().split(b"\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and first.get("type") == "header"


def _load_json(raw: bytes, path: Path) -> Verdicts | None:
    """`--format json`: one object; None when the bytes are not that shape (then try JSONL)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not (isinstance(obj, dict) and isinstance(obj.get("results"), list) and isinstance(obj.get("header"), dict)):
        return None
    verdicts = Verdicts(header=obj["header"], summary=obj.get("summary"))
    verdicts.records = [r for r in obj["results"] if is_result_record(r)]
    _note_interrupted(verdicts, path)
    return verdicts


def _load_jsonl(raw: bytes, path: Path) -> Verdicts:
    """JSONL as `scan` writes it; a torn last line (a killed writer) is dropped with a note."""
    lines = raw.split(b"\n")
    verdicts = Verdicts()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                verdicts.notes.append(f"{path}: the last line is torn (the scan was killed while writing it); ignored")
                continue
            raise VerdictsError(f"{path}: line {number} is not JSON; not a codescan verdicts file") from None
        _add_line(verdicts, obj, path, number)
    if verdicts.header is None:
        raise VerdictsError(f"{path}: no codescan header line; not a codescan verdicts file")
    _note_interrupted(verdicts, path)
    return verdicts


def _add_line(verdicts: Verdicts, obj: Any, path: Path, number: int) -> None:
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "header" and verdicts.header is None and number == 1:
        verdicts.header = obj
    elif kind == "result" and verdicts.header is not None and is_result_record(obj):
        verdicts.records.append(obj)
    elif kind == "summary" and verdicts.header is not None:
        verdicts.summary = obj
    else:
        raise VerdictsError(f"{path}: line {number} is not a codescan record; not a codescan verdicts file")


def _load_shards(folder: Path) -> Verdicts:
    """A `--shards` folder: header.json, part-*.jsonl in listing order, summary.json once finished."""
    head = folder / "header.json"
    if not head.is_file():
        raise VerdictsError(f"{folder}: a folder without header.json; not a codescan --shards folder")
    try:
        head_line = head.read_bytes()
        header = json.loads(head_line)
    except (OSError, ValueError):
        raise VerdictsError(f"{head}: not JSON; not a codescan --shards folder") from None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise VerdictsError(f"{head}: not a codescan header; not a codescan --shards folder")
    verdicts = Verdicts(header=header)
    for part in sorted(folder.glob("part-*.jsonl")):
        shard = _load_jsonl(head_line + b"\n" + part.read_bytes(), part)
        verdicts.records += shard.records
        verdicts.notes += [n for n in shard.notes if "torn" in n]
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            verdicts.summary = json.loads(summary.read_bytes())
        except ValueError:
            verdicts.notes.append(f"{summary}: not JSON; ignored")
    _note_interrupted(verdicts, folder)
    return verdicts


def _load_parquet(path: Path) -> Verdicts:
    """`--format parquet`: the CSV's columns; header and summary in the key-value metadata."""
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = pq.read_metadata(path).metadata or {}  # the footer's key-value pairs, written after the rows
    except ImportError:
        raise VerdictsError(f"{path}: reading Parquet verdicts needs pyarrow (pip install 'codescan[parquet]')") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise VerdictsError(f"{path}: unreadable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    if b"codescan.header" not in meta:
        raise VerdictsError(f"{path}: Parquet without codescan.header metadata; not a codescan verdicts file")
    try:
        verdicts = Verdicts(header=json.loads(meta[b"codescan.header"]))
        if b"codescan.summary" in meta:
            verdicts.summary = json.loads(meta[b"codescan.summary"])
    except ValueError:
        raise VerdictsError(f"{path}: codescan metadata is not JSON") from None
    verdicts.records = [_from_row(row) for row in table.to_pylist()]
    verdicts.notes.append(f"{path}: Parquet verdicts carry no crop boxes or evidence details; shown without them")
    _note_interrupted(verdicts, path)
    return verdicts


def _from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row back into the JSONL record shape (heads nested, evidence as a list)."""
    record: dict[str, Any] = {}
    heads: dict[str, dict[str, Any]] = {}
    for column, value in row.items():
        if value is None or value == "":
            continue
        if column.startswith("score_") or column.startswith("status_"):
            kind, name = column.split("_", 1)
            heads.setdefault(name, {})[kind] = value
        elif column == "evidence":
            record["evidence"] = [_evidence_cell(item) for item in value.split("; ") if item]
        else:
            record[column] = value
    if heads:
        record["heads"] = heads
    return record


def _evidence_cell(item: str) -> dict[str, Any]:
    kind, _, generator = item.partition("=")
    return {"kind": kind, "generator": generator or None}


def _note_interrupted(verdicts: Verdicts, where: Path) -> None:
    if verdicts.summary is None:
        verdicts.notes.append(f"{where}: no summary: the scan was interrupted or is still running; showing what it wrote")
    elif verdicts.summary.get("interrupted"):
        verdicts.notes.append(f"{where}: the scan was interrupted; showing what it wrote")


def merge(loaded: list[Verdicts]) -> Verdicts:
    """Several inputs as one report: the first header, records in argument order, no summary."""
    if len(loaded) == 1:
        return loaded[0]
    merged = Verdicts(header=loaded[0].header)
    for verdicts in loaded:
        merged.records += verdicts.records
        merged.notes += verdicts.notes
    if any(v.header != loaded[0].header for v in loaded[1:]):
        merged.notes.append("the inputs come from scans with different headers; the first header is shown")
    return merged


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    folder: Path  # report_files/ beside the page

    @classmethod
    def beside(cls, html: Path) -> ReportPaths:
        return cls(html=html, folder=html.with_name(html.stem + "_files"))

    @property
    def thumbs(self) -> Path:
        return self.folder / "thumbs"


def data_script(payload: dict[str, Any]) -> str:
    """The records as a script: JSON with every character that could end the script or the line escaped.

    ensure_ascii turns U+2028/U+2029 (line terminators in older JS) and lone surrogates
    (undecodable name bytes) into \\u escapes; <, > and & become \\u escapes too, so no
    ``</script>`` or ``<!--`` ever appears in the file, whoever loads it.
    """
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"window.{DATA_GLOBAL} = {text};\n"


def _clean_numbers(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (shown as no score)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _clean_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_numbers(v) for v in value]
    return value


def write_report(verdicts: Verdicts, paths: ReportPaths, thumbs: list[str | None]) -> None:
    """The page, its assets and data.js; `thumbs[i]` is record i's thumbnail state (see thumbs.py)."""
    paths.folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "header": verdicts.header,
        "summary": verdicts.summary,
        "notes": verdicts.notes,
        "records": [{k: v for k, v in r.items() if k != "type"} for r in verdicts.records],
        "thumbs": thumbs,
    }
    atomic_write_bytes(paths.folder / "data.js", data_script(_clean_numbers(payload)).encode("ascii"))
    for asset in ("report.js", "report.css"):
        shutil.copyfile(ASSETS / asset, paths.folder / asset)
    folder = html.escape(quote(paths.folder.name), quote=True)  # the user's -o name, as a URL in an attribute
    page = (ASSETS / "report.html").read_text(encoding="utf-8").replace("report_files/", folder + "/")
    atomic_write_bytes(paths.html, page.encode("utf-8"))


def thumb_key(record: dict[str, Any]) -> str | None:
    """The record's content hash when it is safe to use as a file name (the input may be hostile)."""
    sha = record.get("sha256")
    return sha if isinstance(sha, str) and SHA256.fullmatch(sha) else None
