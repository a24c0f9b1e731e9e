"""The HTML review report: read a scan's verdicts, write a page that opens from disk.

The page ``NAME.html`` (any ``-o``: its name less its last suffix is NAME) has its files in
``NAME_files/`` beside it. Pages opened from ``file://`` cannot ``fetch()`` a sibling file, so
the records travel as a script (``data.js``) that assigns one global, with the folder's name
in it for the thumbnails; report.js draws everything from it with DOM setters (textContent,
attributes), never innerHTML, because every string in a verdicts file may come from a hostile
file name or metadata field.

The report owns its files folder: it is built whole in a fresh private folder beside the page
and renamed into place, then the page is written by rename. Nothing already there is read,
followed or kept: an existing ``NAME_files`` is replaced only when codescan made it (its
MARKER file, the user's, no group/other write, not a link); anything else is refused.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from codescan.core.fsutil import unsafe_status
from codescan.core.records import is_result_record
from codescan.output.reporters import CSV_COLUMNS

ASSETS = Path(__file__).parent / "report_assets"
SHA256 = re.compile(r"[0-9a-f]{64}")
DATA_GLOBAL = "CODESCAN_REPORT"
FILES_PLACEHOLDER = "{{files}}"  # in report.html: the files folder's name, as a URL path segment
MARKER = ".codescan-report"  # in every files folder codescan writes; replaced only with this content
MARKER_TEXT = b"codescan report files: the next `codescan report` of this page replaces this folder whole\n"
REFUSED_HINT = "not replaced (remove it, or choose another -o)"


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
    if raw.startswith(",".join(CSV_COLUMNS[:3]).encode() + b","):
        raise VerdictsError(
            f"{path}: a CSV of verdicts, which holds no header (weights, engine, thresholds) for the page: "
            "scan with -o FILE.jsonl, .json or .parquet"
        )
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


class OutputRefused(Exception):
    """The output location holds something codescan will not replace; the message is one line."""


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    folder: Path  # NAME_files/ beside the page NAME.html

    @classmethod
    def beside(cls, html: Path) -> ReportPaths:
        """The one naming rule: the page's name less its last suffix, plus ``_files``."""
        return cls(html=html, folder=html.with_name(html.stem + "_files"))


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


def check_output(paths: ReportPaths) -> tuple[int, int] | None:
    """The (device, inode) of a files folder codescan may replace, None when there is none; else OutputRefused.

    Looked at without following links: the folder itself (lstat; a link is refused), then its
    marker opened relative to the folder's own descriptor with O_NOFOLLOW.
    """
    try:
        page = os.lstat(paths.html)
    except FileNotFoundError:
        page = None
    if page is not None and stat.S_ISDIR(page.st_mode):
        raise OutputRefused(f"{paths.html}: a folder, not a page; {REFUSED_HINT}")
    folder = paths.folder
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise OutputRefused(f"{folder}: a symbolic link where the report's files go; {REFUSED_HINT}")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputRefused(f"{folder}: not a folder; {REFUSED_HINT}")
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputRefused(f"{folder}: {exc.strerror}; {REFUSED_HINT}") from None
    try:
        st = os.fstat(fd)
        problem = _not_private(st)
        if problem is not None:
            raise OutputRefused(f"{folder}: {problem}; {REFUSED_HINT}")
        if not _has_marker(fd):
            raise OutputRefused(f"{folder}: not made by codescan report (no {MARKER} marker of yours in it); {REFUSED_HINT}")
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def check_target(paths: ReportPaths, inputs: tuple[Path, ...] = ()) -> None:
    """Whether the page can be written, before any work (OutputRefused, one line); write_report checks again.

    The page must not be one of the verdicts it is made from (the rename would replace them), its
    files folder must be absent or one codescan made (check_output), and the nearest existing
    folder above the page must be a folder this user can write in.
    """
    for source in inputs:
        for mine in (paths.html, paths.folder):
            if _same_path(mine, source):
                raise OutputRefused(f"{mine}: the report would replace its own input {source}; choose another -o")
    above = paths.html.parent
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise OutputRefused(f"{above}: not a folder, so {paths.html} cannot be written there; choose another -o")
    if not os.access(above, os.W_OK | os.X_OK):
        raise OutputRefused(f"{above}: no permission to write there, so {paths.html} cannot be written; choose another -o")
    check_output(paths)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet (the scan's -o, a first report)
        return os.path.abspath(a) == os.path.abspath(b)


def _not_private(st: os.stat_result) -> str | None:
    return unsafe_status(st, (os.geteuid(),))


def _has_marker(folder_fd: int) -> bool:
    try:
        fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _not_private(st) is not None or st.st_size != len(MARKER_TEXT):
            return False
        return os.read(fd, len(MARKER_TEXT) + 1) == MARKER_TEXT
    finally:
        os.close(fd)


def _umask() -> int:
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def write_new(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """A file that did not exist (O_EXCL, O_NOFOLLOW): nothing is written through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_report(verdicts: Verdicts, paths: ReportPaths, thumbnails: Callable[[Path], list[str | None]]) -> list[str | None]:
    """The page and its files; `thumbnails(folder)` fills the new thumbs/ folder and returns each record's state.

    Order: refuse what may not be replaced, build NAME_files whole in a private temporary folder
    beside it, rename the old folder aside, rename the new one in, write the page by rename, then
    remove the old folder (rmtree removes links, never follows them).
    """
    previous = check_output(paths)
    parent = paths.html.parent
    parent.mkdir(parents=True, exist_ok=True)
    umask = _umask()
    build: Path | None = Path(tempfile.mkdtemp(prefix=f".{paths.folder.name}.", dir=parent))
    aside: Path | None = None
    try:
        os.mkdir(build / "thumbs", 0o700)
        thumbs = thumbnails(build / "thumbs")
        payload = {
            "header": verdicts.header,
            "summary": verdicts.summary,
            "notes": verdicts.notes,
            "files": quote(paths.folder.name),  # the page's folder, as a relative URL (report.js: its thumbnails)
            "records": [{k: v for k, v in r.items() if k != "type"} for r in verdicts.records],
            "thumbs": thumbs,
        }
        write_new(build / "data.js", data_script(_clean_numbers(payload)).encode("ascii"))
        for asset in ("report.js", "report.css"):
            write_new(build / asset, (ASSETS / asset).read_bytes())
        write_new(build / MARKER, MARKER_TEXT)
        for folder in (build / "thumbs", build):
            os.chmod(folder, 0o755 & ~umask)
        aside = _move_aside(paths, previous)
        try:
            os.rename(build, paths.folder)
        except OSError:
            if aside is not None:  # the previous report stays whole
                os.rename(aside / "old", paths.folder)
                os.rmdir(aside)
                aside = None
            raise
        build = None
        _write_page(paths, 0o644 & ~umask)
    finally:
        for leftover in (build, aside):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return thumbs


def _move_aside(paths: ReportPaths, previous: tuple[int, int] | None) -> Path | None:
    """The previous files folder renamed into a private folder to be removed; it must still be the one checked."""
    now = check_output(paths)
    if now is None:
        return None
    if now != previous:
        raise OutputRefused(f"{paths.folder}: replaced by another folder while the report was made; {REFUSED_HINT}")
    aside = Path(tempfile.mkdtemp(prefix=f".{paths.folder.name}.old.", dir=paths.html.parent))
    os.rename(paths.folder, aside / "old")
    moved = os.lstat(aside / "old")
    if (moved.st_dev, moved.st_ino) != previous:  # swapped between the check and the rename: put it back untouched
        os.rename(aside / "old", paths.folder)
        os.rmdir(aside)
        raise OutputRefused(f"{paths.folder}: replaced by another folder while the report was made; {REFUSED_HINT}")
    return aside


def _write_page(paths: ReportPaths, mode: int) -> None:
    """The page last, by rename over whatever name is there (a link there is replaced, never followed)."""
    folder = html.escape(quote(paths.folder.name), quote=True)  # the user's -o name, as a URL in an attribute
    page = (ASSETS / "report.html").read_text(encoding="utf-8").replace(FILES_PLACEHOLDER, folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{paths.html.name}.", dir=paths.html.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(page.encode("utf-8"))
        os.chmod(tmp, mode)
        os.replace(tmp, paths.html)
    except BaseException:
        os.unlink(tmp)
        raise


def thumb_key(record: dict[str, Any]) -> str | None:
    """The record's content hash when it is safe to use as a file name (the input may be hostile)."""
    sha = record.get("sha256")
    return sha if isinstance(sha, str) and SHA256.fullmatch(sha) else None
