"""Thumbnails for the report, made from the scanned bytes in killable, confined workers.

The files named in a verdicts file are as hostile as the ones the scan read, so thumbnails are
made the way the scan decodes: in the decode workers' kind of pool (workers.WorkerPool: forkserver
children under the same memory cap, each file under a deadline, a worker that misses it killed
and replaced), with the same limits and decoder allow-list. A file whose bytes no longer hash to
the record's sha256 gets no thumbnail: the page would otherwise show a picture never judged.

States, per record: ``ok`` (thumbs/<sha256>.jpg exists), ``missing`` (the file is gone),
``changed`` (other bytes now), ``failed`` (unreadable or undecodable now), ``timeout``, or None
(no thumbnail wanted: errors, skips, --no-thumbnails).

Thumbnails made once are kept in the user's store (ThumbCache: ``$CODESCAN_HOME/thumbs/``,
0700, checked as the scan cache is), never read back from beside a page: a cached one is a
thumbnail of exactly the bytes the record hashes, so it is shown whatever became of the file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codescan.decoding.decode import DecodeLimits, _enabled_formats, configure_pillow
from codescan.decoding.workers import Run, WorkerPool
from codescan.inputs.fetch import read_member
from codescan.inputs.pinned import Pin
from codescan.inputs.read import DecodeFailure, read_limited
from codescan.inputs.walk import Entry, WalkOptions

# Read long after the scan, with no listing to pin to: the file itself is opened without following a
# link (a link to a FIFO or a device is never opened), and its bytes must still hash to the record's.
LATER = Pin(beneath=1)
LONG_SIDE = 256
DRAFT = (512, 512)  # JPEG draft: libjpeg scales by 1/2..1/8 while decoding, to at least this size
DEADLINE = 10.0  # seconds per file, as a decode worker's
MAX_CACHED = 1 << 20  # bytes: a cached thumbnail larger than this is not one codescan wrote


@dataclass(frozen=True)
class ThumbTask:
    sha256: str
    entry: Entry  # a plain file, or an archive member as its archive lists it
    target: str  # thumbs/<sha256>.jpg


def render(data: bytes, limits: DecodeLimits) -> bytes:
    """A JPEG at most LONG_SIDE px on its long side, of the first frame, in the scan's pixel grid.

    No EXIF rotation: the scan's crop box is in stored pixels, and the page outlines it on this.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=_enabled_formats()) as im:
        width, height = im.size
        if width * height > limits.max_pixels:
            raise DecodeFailure("too_large", f"{width}x{height} pixels exceed --max-pixels")
        im.draft("RGB", DRAFT)
        im.thumbnail((LONG_SIDE, LONG_SIDE))
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=80)
        return out.getvalue()


def make_thumb(task: ThumbTask, limits: DecodeLimits) -> str:
    """One thumbnail written atomically to task.target; returns its state."""
    entry = task.entry
    if entry.error is not None:
        return "missing"
    try:
        if entry.span is not None or entry.data is not None:
            data = read_member(entry, limits.max_filesize)
        else:
            data = read_limited(entry.path, limits.max_filesize, entry.pin)
    except DecodeFailure:
        return "failed" if os.path.lexists(entry.path) else "missing"
    if hashlib.sha256(data).hexdigest() != task.sha256:
        return "changed"
    try:
        jpeg = render(data, limits)
    except Exception:  # noqa: BLE001 - any decoder failure: the record is shown without a thumbnail
        return "failed"
    tmp = f"{task.target}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(jpeg)
    os.replace(tmp, task.target)
    return "ok"


def _setup(limits: DecodeLimits) -> Run:
    """In the worker: Pillow's limits and allow-list, as the decode workers have them."""
    configure_pillow(limits)
    return lambda task, slot: (make_thumb(task, limits), 0)


class ThumbPool(WorkerPool[ThumbTask, str]):
    """``pool.results(tasks)`` yields (task, state) in task order; the decode workers' pool, other work."""

    def __init__(self, workers: int, limits: DecodeLimits, deadline: float = DEADLINE) -> None:
        super().__init__(workers, functools.partial(_setup, limits), deadline, window=4 * max(1, workers))

    def timed_out(self, task: ThumbTask) -> str:
        return "timeout"

    def crashed(self, task: ThumbTask) -> str:
        return "failed"  # the worker died: a decoder crash, the memory cap


def _wanted(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Record indexes by content hash, for the records that were judged (the only ones with pixels)."""
    from codescan.review.report import thumb_key

    wanted: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        key = thumb_key(record)
        if key is not None and record.get("status") in ("real", "fake"):
            wanted.setdefault(key, []).append(i)
    return wanted


def _member_entries(archive: str, indexes: set[int]) -> dict[int, Entry]:
    """The listed entries of an archive's members, by member_index (the archive is listed once, confined)."""
    from codescan.inputs.sources import expand

    found: dict[int, Entry] = {}
    listing = Entry(display=archive, path=os.fsencode(archive), pin=LATER)
    for entry in expand(listing, WalkOptions()):
        if entry.origin is not None and entry.origin.member_index in indexes:
            found[entry.origin.member_index] = entry
    return found


def located(path: str, root: Path | None) -> str:
    """A record's path as the scan wrote it (relative to where the scan ran), found from `root` (None: here)."""
    return path if root is None else os.path.join(root, path)  # an absolute path stays itself


def _entries(records: list[dict[str, Any]], firsts: Iterable[int], root: Path | None = None) -> dict[int, Entry]:
    """The entry to read for each record index in `firsts`; a member its archive no longer lists is absent."""
    entries: dict[int, Entry] = {}
    by_archive: dict[str, dict[int, int]] = {}
    for i in firsts:
        record = records[i]
        archive, index = record.get("archive"), record.get("member_index")
        if isinstance(archive, str) and isinstance(index, int):
            by_archive.setdefault(located(archive, root), {})[index] = i
        else:
            entries[i] = Entry(display=record["path"], path=os.fsencode(located(record["path"], root)), pin=LATER)
    for archive, members in by_archive.items():
        if not os.path.exists(archive):
            continue
        for index, entry in _member_entries(archive, set(members)).items():
            entries[members[index]] = entry
    return entries


class ThumbCacheError(Exception):
    """The thumbnail cache cannot be trusted or made; the message says why (a note, then none is used)."""


class ThumbCache:
    """Thumbnails by content: ``<source sha256>-<LONG_SIDE>-<sha256 of the JPEG>.jpg`` in a folder only the user can write.

    The JPEG's own hash is in its name and checked on every read, so a torn or edited file is
    dropped and remade, never copied into a page. Files are opened without following links.
    """

    NAME = re.compile(rf"([0-9a-f]{{64}})-{LONG_SIDE}-([0-9a-f]{{64}})\.jpg")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._names: dict[str, list[str]] | None = None

    @classmethod
    def default(cls) -> ThumbCache:
        """``thumbs/`` in the store (weights.ensure_store): the store trusted as the scan cache's folder is, and
        thumbs/ itself a real folder only the user can enter (0700, the user's, not a link)."""
        from codescan.core.fsutil import private_folder_problem, unsafe_status
        from codescan.weights.store import ensure_store

        try:
            root = ensure_store()
            folder = root / "thumbs"
            problem = unsafe_status(os.stat(root), (os.geteuid(), 0))
            if problem is None:
                try:
                    os.mkdir(folder, 0o700)
                except FileExistsError:
                    pass
                problem = private_folder_problem(folder)
            else:
                problem = f"in a folder {problem}"
        except OSError as exc:
            raise ThumbCacheError(f"thumbnail cache is not used: {exc.filename}: {exc.strerror}; thumbnails are made afresh") from None
        if problem is not None:
            raise ThumbCacheError(f"thumbnail cache {folder} is not used: it is {problem}; thumbnails are made afresh")
        return cls(folder)

    def _index(self) -> dict[str, list[str]]:
        if self._names is None:
            self._names = {}
            with os.scandir(self.folder) as listing:
                for item in listing:
                    match = self.NAME.fullmatch(item.name)
                    if match:
                        self._names.setdefault(match.group(1), []).append(item.name)
        return self._names

    def get(self, sha: str) -> bytes | None:
        """The cached thumbnail of content `sha`, its bytes checked against its name; None when there is none."""
        names = self._index().get(sha, [])
        for name in list(names):
            data = self._read(name)
            if data is not None and hashlib.sha256(data).hexdigest() == self.NAME.fullmatch(name).group(2):  # type: ignore[union-attr]
                return data
            names.remove(name)
            try:
                os.unlink(self.folder / name)  # torn or edited: remade below
            except OSError:
                pass
        return None

    def _read(self, name: str) -> bytes | None:
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > MAX_CACHED:
                return None
            with os.fdopen(os.dup(fd), "rb") as fh:
                return fh.read(MAX_CACHED + 1)
        finally:
            os.close(fd)

    def put(self, sha: str, data: bytes) -> None:
        """Keep a thumbnail made now (best effort: a full disk only costs the next report the remaking)."""
        name = f"{sha}-{LONG_SIDE}-{hashlib.sha256(data).hexdigest()}.jpg"
        if name in self._index().get(sha, []) or len(data) > MAX_CACHED:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.folder / name)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            return
        self._index().setdefault(sha, []).append(name)


def _read_made(path: str) -> bytes:
    """A thumbnail a worker just wrote into the report's private folder."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_CACHED + 1)


def make_thumbnails(
    records: list[dict[str, Any]],
    folder: Path,
    workers: int,
    limits: DecodeLimits = DecodeLimits(),
    deadline: float = DEADLINE,
    cache: ThumbCache | None = None,
    root: Path | None = None,
) -> list[str | None]:
    """Each record's thumbnail state; thumbnails go to folder/<sha256>.jpg, one per content hash.

    `folder` is a new folder only codescan writes (the report's private build folder): nothing in
    it is read as a thumbnail. A hash in `cache` is copied from there (re-running a report is
    cheap); one made now is added to it. Relative paths in the records are found from `root`.
    """
    from codescan.review.report import write_new

    folder.mkdir(parents=True, exist_ok=True)
    wanted = _wanted(records)
    states: list[str | None] = [None] * len(records)
    fresh: dict[str, list[int]] = {}
    for sha, idx in wanted.items():
        cached = cache.get(sha) if cache is not None else None
        if cached is None:
            fresh[sha] = idx
            continue
        write_new(folder / f"{sha}.jpg", cached)
        for i in idx:
            states[i] = "ok"
    entries = _entries(records, (idx[0] for idx in fresh.values()), root)
    tasks: list[ThumbTask] = []
    for sha, idx in fresh.items():
        if idx[0] in entries:
            tasks.append(ThumbTask(sha, entries[idx[0]], str(folder / f"{sha}.jpg")))
        else:
            for i in idx:
                states[i] = "missing"
    if tasks:
        pool = ThumbPool(min(workers, len(tasks)), limits, deadline)
        for task, state in pool.results(iter(tasks)):
            for i in fresh[task.sha256]:
                states[i] = state
            if state == "ok" and cache is not None:
                cache.put(task.sha256, _read_made(task.target))
    return states
