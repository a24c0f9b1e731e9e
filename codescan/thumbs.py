"""Thumbnails for the report, made from the scanned bytes in killable, confined workers.

The files named in a verdicts file are as hostile as the ones the scan read, so thumbnails are
made the way the scan decodes: in the decode workers' kind of pool (workers.WorkerPool: forkserver
children under the same memory cap, each file under a deadline, a worker that misses it killed
and replaced), with the same limits and decoder allow-list. A file whose bytes no longer hash to
the record's sha256 gets no thumbnail: the page would otherwise show a picture never judged.

States, per record: ``ok`` (thumbs/<sha256>.jpg exists), ``missing`` (the file is gone),
``changed`` (other bytes now), ``failed`` (unreadable or undecodable now), ``timeout``, or None
(no thumbnail wanted: errors, skips, --no-thumbnails).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .decode import DecodeFailure, DecodeLimits, _enabled_formats, configure_pillow, read_limited
from .fetch import read_member
from .walk import Entry, WalkOptions
from .workers import Run, WorkerPool

LONG_SIDE = 256
DRAFT = (512, 512)  # JPEG draft: libjpeg scales by 1/2..1/8 while decoding, to at least this size
DEADLINE = 10.0  # seconds per file, as a decode worker's


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
            data = read_limited(entry.path, limits.max_filesize)
    except DecodeFailure:
        return "failed" if os.path.lexists(entry.path) else "missing"
    if hashlib.sha256(data).hexdigest() != task.sha256:
        return "changed"
    try:
        jpeg = render(data, limits)
    except Exception:  # noqa: BLE001 - any decoder failure: the record is shown without a thumbnail
        return "failed"
    tmp = f"{task.target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
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
    from .report import thumb_key

    wanted: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        key = thumb_key(record)
        if key is not None and record.get("status") in ("real", "fake"):
            wanted.setdefault(key, []).append(i)
    return wanted


def _member_entries(archive: str, indexes: set[int]) -> dict[int, Entry]:
    """The listed entries of an archive's members, by member_index (the archive is listed once, confined)."""
    from .sources import expand

    found: dict[int, Entry] = {}
    listing = Entry(display=archive, path=os.fsencode(archive))
    for entry in expand(listing, WalkOptions()):
        if entry.origin is not None and entry.origin.member_index in indexes:
            found[entry.origin.member_index] = entry
    return found


def _entries(records: list[dict[str, Any]], firsts: Iterable[int]) -> dict[int, Entry]:
    """The entry to read for each record index in `firsts`; a member its archive no longer lists is absent."""
    entries: dict[int, Entry] = {}
    by_archive: dict[str, dict[int, int]] = {}
    for i in firsts:
        record = records[i]
        archive, index = record.get("archive"), record.get("member_index")
        if isinstance(archive, str) and isinstance(index, int):
            by_archive.setdefault(archive, {})[index] = i
        else:
            entries[i] = Entry(display=record["path"], path=os.fsencode(record["path"]))
    for archive, members in by_archive.items():
        if not os.path.exists(archive):
            continue
        for index, entry in _member_entries(archive, set(members)).items():
            entries[members[index]] = entry
    return entries


def make_thumbnails(
    records: list[dict[str, Any]], folder: Path, workers: int, limits: DecodeLimits = DecodeLimits(), deadline: float = DEADLINE
) -> list[str | None]:
    """Each record's thumbnail state; thumbnails go to folder/<sha256>.jpg, one per content hash.

    A hash whose thumbnail exists is not remade (re-running a report is cheap).
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = _wanted(records)
    states: list[str | None] = [None] * len(records)
    fresh = {sha: idx for sha, idx in wanted.items() if not (folder / f"{sha}.jpg").is_file()}
    for sha in wanted.keys() - fresh.keys():
        for i in wanted[sha]:
            states[i] = "ok"
    entries = _entries(records, (idx[0] for idx in fresh.values()))
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
    return states
