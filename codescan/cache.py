"""Content-addressed scan cache: a rescan of unchanged files skips decode and model.

Keyed by the sha256 of the file's bytes, never by path or mtime, so a moved, renamed or
copied file is still a hit and an edited one never is. A verdict row also carries the model
key (weights digest, preprocessing version, engine, precision): anything that could change a
score makes a different key. The row holds every head's score, not a verdict, so thresholds
and ``--head`` can change between scans and still hit. Evidence rows are keyed by the
evidence level and EVIDENCE_VERSION.

SQLite in WAL mode: decode workers read through their own read-only connections while the
scan process writes; concurrent scans share one file. The cache is disposable: an
unreadable, locked or foreign file disables it for the run with one warning, and a schema
change starts it afresh. Errors are not cached (a timeout or a crash depends on the machine).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .records import Evidence

SCHEMA = 1
_BUSY_MS = 10_000
_TABLES = (
    "CREATE TABLE IF NOT EXISTS verdicts (sha256 BLOB NOT NULL, model TEXT NOT NULL, width INTEGER NOT NULL, "
    "height INTEGER NOT NULL, format TEXT NOT NULL, box TEXT NOT NULL, scores TEXT NOT NULL, "
    "PRIMARY KEY (sha256, model)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS evidence (sha256 BLOB NOT NULL, level TEXT NOT NULL, items TEXT NOT NULL, "
    "PRIMARY KEY (sha256, level)) WITHOUT ROWID",
)


class CacheError(Exception):
    """The cache cannot be used; the scan goes on without it."""


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """What a decode worker needs to look things up (picklable)."""

    path: str
    model: str  # e.g. "<weights digest>/p1/onnxruntime/fp32"
    evidence: str | None  # e.g. "metadata/v1"; None when evidence is off


@dataclass(frozen=True, slots=True)
class CachedVerdict:
    width: int
    height: int
    format: str
    box: tuple[int, int, int, int]
    scores: dict[str, float]  # every head of the bundle


def default_path() -> Path:
    from .weights import store_root

    return store_root() / "scan-cache.sqlite3"


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(Path(path).absolute().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
    return conn


class CacheWriter:
    """The scan process's connection: creates the schema, stores fresh results once per batch."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        try:
            self.conn = _connect(spec.path, readonly=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a crash loses at most the last batch
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA):
                self.conn.executescript("DROP TABLE IF EXISTS verdicts; DROP TABLE IF EXISTS evidence;")
            for ddl in _TABLES:
                self.conn.execute(ddl)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA}")
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
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (sha, self.spec.model, v.width, v.height, v.format, json.dumps(v.box), json.dumps(v.scores))
                    for sha, v in verdicts
                ],
            )
            if self.spec.evidence is not None:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO evidence VALUES (?, ?, ?)",
                    [(sha, self.spec.evidence, json.dumps([e.to_dict() for e in ev])) for sha, ev in evidence],
                )
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise CacheError(f"scan cache {self.spec.path}: write failed ({exc}); scanning without it") from None

    def close(self) -> None:
        self.conn.close()


class CacheReader:
    """A decode worker's read-only view; any failure reads as a miss, never as an error."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self._conn: sqlite3.Connection | None = None
        self._broken = False

    def _query(self, sql: str, args: tuple) -> tuple | None:
        if self._broken:
            return None
        try:
            if self._conn is None:
                self._conn = _connect(self.spec.path, readonly=True)
            return self._conn.execute(sql, args).fetchone()
        except sqlite3.Error:
            self._broken = True
            return None

    def verdict(self, sha: bytes) -> CachedVerdict | None:
        row = self._query(
            "SELECT width, height, format, box, scores FROM verdicts WHERE sha256 = ? AND model = ?",
            (sha, self.spec.model),
        )
        if row is None:
            return None
        width, height, fmt, box, scores = row
        return CachedVerdict(width, height, fmt, tuple(json.loads(box)), json.loads(scores))  # type: ignore[arg-type]

    def evidence(self, sha: bytes) -> tuple[Evidence, ...] | None:
        if self.spec.evidence is None:
            return None
        row = self._query("SELECT items FROM evidence WHERE sha256 = ? AND level = ?", (sha, self.spec.evidence))
        return None if row is None else tuple(Evidence.from_dict(d) for d in json.loads(row[0]))
