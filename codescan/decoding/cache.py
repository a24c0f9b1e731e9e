"""Content-addressed scan cache: a rescan of unchanged files skips decode and model.

Keyed by the sha256 of the file's bytes, never by path or mtime, so a moved, renamed or
copied file is still a hit and an edited one never is. A verdict row also carries the model
key (weights digest, preprocessing version, engine, precision): anything that could change a
score makes a different key. The row holds every head's score, not a verdict, so thresholds
and ``--head`` can change between scans and still hit. Evidence rows are keyed by the
evidence level and EVIDENCE_VERSION.

SQLite in WAL mode: decode workers read through their own read-only connections while the
scan process writes; concurrent scans share one file. The cache is disposable: an
unreadable, locked or foreign file disables it for the run with one warning. Errors are not
cached (a timeout or a crash depends on the machine).

The file is data, not trust. Whoever can write it decides verdicts, so it is used only when
it, its WAL/journal companions and its directory are the scanning user's own and nobody else
can write them. Its schema must be exactly the tables codescan creates (no view, trigger,
index or other table, whose SQL would run inside the scan), every statement is bounded by a
progress handler, and a row that is not what ``CacheWriter.put`` stores is a miss.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from codescan.core import defaults
from codescan.core.fsutil import (
    unsafe_status as _unsafe,  # why a file or directory could hold someone else's verdicts
)
from codescan.core.records import Evidence, EvidenceKind

SCHEMA = 1
_BUSY_MS = 10_000
_PROGRESS_EVERY = 1_000  # virtual-machine steps between two progress-handler calls
STATEMENT_STEPS = 10_000_000  # per statement: ours take ~35 per row, a runaway loop stops within about a second
_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite replays these into the database: same trust as the file
_TABLES = (
    "CREATE TABLE IF NOT EXISTS verdicts (sha256 BLOB NOT NULL, model TEXT NOT NULL, width INTEGER NOT NULL, "
    "height INTEGER NOT NULL, format TEXT NOT NULL, box TEXT NOT NULL, scores TEXT NOT NULL, "
    "PRIMARY KEY (sha256, model)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS evidence (sha256 BLOB NOT NULL, level TEXT NOT NULL, items TEXT NOT NULL, "
    "PRIMARY KEY (sha256, level)) WITHOUT ROWID",
)
_EVIDENCE_KINDS: frozenset[str] = frozenset(EvidenceKind.__args__)  # type: ignore[attr-defined]
_EVIDENCE_KEYS = frozenset({"kind", "detail", "generator", "conclusive", "valid"})


class CacheError(Exception):
    """The cache cannot be used; the scan goes on without it."""


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """What a decode worker needs to look things up (picklable)."""

    path: str
    model: str  # e.g. "<weights digest>/p1/s2/onnxruntime/fp32"
    evidence: str | None  # e.g. "metadata/v1"; None when evidence is off
    heads: tuple[str, ...]  # every head of the bundle: a verdict row must score exactly these
    crops: int = defaults.CROPS  # boxes judged per image (scan --crops); also in `model`, so modes never mix


Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class CachedVerdict:
    width: int
    height: int
    format: str
    boxes: tuple[Box, ...]  # the boxes judged, the centre first
    scores: tuple[dict[str, float], ...]  # per box, every head of the bundle

    def row(self) -> tuple[str, str]:
        """(box, scores) as stored: one box as in the first cache format, several as lists."""
        if len(self.boxes) == 1:
            return json.dumps(self.boxes[0]), json.dumps(self.scores[0], allow_nan=False)
        return json.dumps(self.boxes), json.dumps(self.scores, allow_nan=False)


def default_path() -> Path:
    from codescan.weights.store import store_root

    return store_root() / "scan-cache.sqlite3"


def _trusted_path(path: str, create_dir: bool) -> str:
    """The real path of a cache file only the scanning user can have written, else CacheError.

    Ownership and modes are checked on the resolved file and its directory, and SQLite then
    opens that resolved path: nobody else can swap a file in a directory only we can write.
    The directory may be root's (root can change anything anyway); the files must be ours.
    """
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if create_dir:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    uid = os.geteuid()
    problem = _unsafe(os.stat(folder), (uid, 0))
    if problem is not None:
        raise CacheError(f"scan cache {path} is not used: its directory is {problem}; scanning without it")
    for name in (real, *(real + suffix for suffix in _COMPANIONS)):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        problem = "not a regular file" if not stat.S_ISREG(st.st_mode) else _unsafe(st, (uid,))
        if problem is not None:
            what = os.path.basename(name)
            raise CacheError(f"scan cache {path} is not used: {what} is {problem}; scanning without it")
    return real


class BoundedConnection:
    """An SQLite connection on which no statement can run away.

    A progress handler aborts any statement past STATEMENT_STEPS virtual-machine steps, and
    ``trusted_schema`` is off, so nothing stored in the file can keep the scan busy; waiting
    for another scan's lock is bounded by the busy timeout.
    """

    def __init__(self, path: str, readonly: bool) -> None:
        if readonly:
            uri = Path(path).as_uri() + "?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._calls_left = 0
        self.conn.set_progress_handler(self._progress, _PROGRESS_EVERY)
        self.run(f"PRAGMA busy_timeout = {_BUSY_MS}")
        self.run("PRAGMA trusted_schema = OFF")

    def _progress(self) -> bool:
        self._calls_left -= 1
        return self._calls_left < 0  # true: SQLite interrupts the statement

    def _start(self) -> None:
        self._calls_left = STATEMENT_STEPS // _PROGRESS_EVERY

    def run(self, sql: str, args: tuple = ()) -> None:
        self._start()
        self.conn.execute(sql, args)

    def many(self, sql: str, rows: list[tuple]) -> None:
        self._start()
        self.conn.executemany(sql, rows)

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        self._start()
        return self.conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple = ()) -> tuple | None:
        self._start()
        return self.conn.execute(sql, args).fetchone()

    def close(self) -> None:
        self.conn.close()


@cache
def _expected_schema() -> list[tuple[str, str, str, str]]:
    """sqlite_master as codescan's own DDL leaves it: compared whole, so the SQL text must match."""
    conn = sqlite3.connect(":memory:")
    for ddl in _TABLES:
        conn.execute(ddl)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    conn.close()
    return rows


def _is_fresh(db: BoundedConnection, path: str) -> bool:
    """True for an empty database, False for codescan's schema; CacheError for anything else.

    Runs before any statement that touches the tables, so a view or trigger in a foreign
    file is refused, never executed.
    """
    expected = _expected_schema()
    found = db.rows("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
    version = db.one("PRAGMA user_version")
    if not found and version == (0,):
        return True
    if found == expected and version == (SCHEMA,):
        return False
    kinds = ", ".join(sorted({str(row[0]) for row in found})) or "no tables"
    raise CacheError(
        f"scan cache {path} is not used: its schema is not the one codescan creates ({kinds}, version "
        f"{version[0] if version else '?'}); delete it to start afresh; scanning without it"
    )


def _open(spec: CacheSpec, readonly: bool) -> tuple[BoundedConnection, bool]:
    """A checked connection and whether the file is still empty; CacheError if it cannot be trusted."""
    path = _trusted_path(spec.path, create_dir=not readonly)
    db = BoundedConnection(path, readonly)
    try:
        if readonly:
            return db, _is_fresh(db, spec.path)
        db.run("BEGIN IMMEDIATE")  # a concurrent scan creating the tables is seen whole or not at all
        fresh = _is_fresh(db, spec.path)
        if fresh:
            for ddl in _TABLES:
                db.run(ddl)
            db.run(f"PRAGMA user_version = {SCHEMA}")
        db.run("COMMIT")
        db.run("PRAGMA journal_mode = WAL")
        db.run("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a crash loses at most the last batch
        return db, fresh
    except BaseException:
        db.close()
        raise


class CacheWriter:
    """The scan process's connection: checks or creates the schema, stores fresh results once per batch."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        try:
            self.db, _ = _open(spec, readonly=False)
        except (sqlite3.Error, OSError) as exc:
            raise CacheError(f"scan cache {spec.path} is unusable ({exc}); scanning without it") from None

    def put(
        self,
        verdicts: list[tuple[bytes, CachedVerdict]],
        evidence: list[tuple[bytes, tuple[Evidence, ...]]],
    ) -> None:
        if not verdicts and not evidence:
            return
        try:
            self.db.run("BEGIN")
            self.db.many(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (sha, self.spec.model, v.width, v.height, v.format, *v.row())
                    for sha, v in verdicts
                    if _finite_scores(v.scores)  # a NaN or infinite score is an error record: never cached
                ],
            )
            if self.spec.evidence is not None:
                self.db.many(
                    "INSERT OR REPLACE INTO evidence VALUES (?, ?, ?)",
                    [(sha, self.spec.evidence, json.dumps([e.to_dict() for e in ev], allow_nan=False)) for sha, ev in evidence],
                )
            self.db.run("COMMIT")
        except sqlite3.Error as exc:
            if self.db.conn.in_transaction:
                self.db.run("ROLLBACK")
            raise CacheError(f"scan cache {self.spec.path}: write failed ({exc}); scanning without it") from None

    def close(self) -> None:
        self.db.close()


class CacheReader:
    """A decode worker's read-only view; any failure, and any row put() would not have written, reads as a miss."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self._db: BoundedConnection | None = None
        self._broken = False

    def _query(self, sql: str, args: tuple) -> tuple | None:
        if self._broken:
            return None
        try:
            if self._db is None:
                db, fresh = _open(self.spec, readonly=True)
                if fresh:  # no tables: nothing to read
                    db.close()
                    self._broken = True
                    return None
                self._db = db
            return self._db.one(sql, args)
        except (sqlite3.Error, OSError, CacheError):
            self._broken = True
            return None

    def verdict(self, sha: bytes) -> CachedVerdict | None:
        row = self._query(
            "SELECT width, height, format, box, scores FROM verdicts WHERE sha256 = ? AND model = ?",
            (sha, self.spec.model),
        )
        return None if row is None else _verdict(row, self.spec.heads, self.spec.crops)

    def evidence(self, sha: bytes) -> tuple[Evidence, ...] | None:
        if self.spec.evidence is None:
            return None
        row = self._query("SELECT items FROM evidence WHERE sha256 = ? AND level = ?", (sha, self.spec.evidence))
        return None if row is None else _evidence(row[0])


def _json(text: object) -> Any:
    """Parsed JSON text, or None for anything else (bytes, malformed, nested past the recursion limit)."""
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass, and never a size


def _verdict(row: tuple, heads: tuple[str, ...], crops: int) -> CachedVerdict | None:
    """The row as put() writes it, or None: a miss, so the file is scored again instead of crashing the judge."""
    width, height, fmt, box_text, scores_text = row
    boxes, scores = _json(box_text), _json(scores_text)
    if not (_is_int(width) and _is_int(height) and width > 0 and height > 0 and isinstance(fmt, str)):
        return None
    if crops == 1:
        boxes, scores = [boxes], [scores]
    if not (isinstance(boxes, list) and isinstance(scores, list) and len(boxes) == len(scores) == crops):
        return None
    if not all(isinstance(b, list) and len(b) == 4 and all(_is_int(v) for v in b) for b in boxes):
        return None
    if not all(isinstance(s, dict) and set(s) == set(heads) for s in scores):
        return None
    if not _finite_scores(scores):
        return None
    return CachedVerdict(width, height, fmt, tuple((b[0], b[1], b[2], b[3]) for b in boxes), tuple(scores))


def _finite_scores(scores: Any) -> bool:
    """Every score a float and finite: what put() stores, and all a read may take (a NaN is a miss, never a verdict)."""
    return all(type(v) is float and math.isfinite(v) for s in scores for v in s.values())


def _evidence(text: object) -> tuple[Evidence, ...] | None:
    """The evidence list as put() writes it, or None (a miss: the metadata is read again)."""
    items = _json(text)
    if not isinstance(items, list):
        return None
    found = []
    for d in items:
        item = _evidence_item(d)
        if item is None:
            return None
        found.append(item)
    return tuple(found)


def _evidence_item(d: object) -> Evidence | None:
    if not (isinstance(d, dict) and _EVIDENCE_KEYS.issuperset(d)):
        return None
    kind, detail, generator = d.get("kind"), d.get("detail"), d.get("generator")
    conclusive, valid = d.get("conclusive"), d.get("valid")
    if not (isinstance(kind, str) and kind in _EVIDENCE_KINDS and isinstance(detail, str)):
        return None
    if not ((generator is None or isinstance(generator, str)) and type(conclusive) is bool):
        return None
    if not (valid is None or type(valid) is bool):
        return None
    return Evidence.from_dict(d)
