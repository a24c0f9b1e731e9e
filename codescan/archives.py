"""Archives as inputs: tar (WebDataset shards), tar.gz and zip members become entries, never files.

Nothing is extracted: member names are labels, never paths on this machine, so absolute and
``../`` names are harmless. A listing runs in a confined child (isolated.py) and yields one
entry per image member, in archive order:

- plain tar and zip are listed from their headers (the central directory for zip), and each
  member's bytes are read by the decode worker at their offset (``Span``), as fast as a file;
- tar.gz can only be inflated front to back: the listing reads each image member and sends its
  bytes along (``Entry.data``), at the rate one core inflates.

Members are picked by name: an image extension makes a candidate (as for files); an archive
inside the archive is a ``skipped`` record (``nested_archive``), not opened; anything else (a
WebDataset sample's ``.json``, ``.txt``, ``.cls``) is the sample's metadata, not a record.
Directories and links inside an archive are not records either.

Bombs are bounded before bytes are produced: a member may inflate to at most ``MAX_RATIO``
times its stored size (and ``--max-filesize``), a tar.gz as a whole to ``MAX_RATIO`` times the
file, and zip members whose stored bytes overlap another's (the trick of non-recursive zip
bombs) are refused.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Literal

from .decode import has_image_extension
from .fetch import MAX_RATIO, RATIO_FLOOR, ZIP_LOCAL, open_input
from .isolated import ReaderError
from .records import Origin
from .walk import Entry, Span, WalkOptions

ArchiveKind = Literal["tar", "tgz", "zip", "parquet"]
_SUFFIXES: tuple[tuple[str, ArchiveKind], ...] = (
    (".tar.gz", "tgz"), (".tgz", "tgz"), (".tar", "tar"), (".zip", "zip"), (".parquet", "parquet"),
)
# Names that make a member an archive in an archive (skipped, not opened): ours and the usual others.
_NESTED = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip", ".7z", ".rar", ".gz", ".parquet")
_ZIP_METHODS = (0, 8)  # stored, deflate


def archive_kind(name: str | bytes) -> ArchiveKind | None:
    low = os.fsdecode(name).lower()
    return next((kind for suffix, kind in _SUFFIXES if low.endswith(suffix)), None)


def _nested(name: str) -> bool:
    return name.lower().endswith(_NESTED)


def member_entry(archive: Entry, index: int, name: str, key: str | None = None, **where: object) -> Entry:
    """A member as the scan sees it, shown as ARCHIVE::MEMBER; `where` says how to read it
    (`span` or `data`) or why it is not read (`error`)."""
    origin = Origin(archive=archive.display, member=name, member_index=index, key=key)
    return Entry(display=f"{archive.display}::{name}", path=archive.path, uri=archive.uri, origin=origin, **where)  # type: ignore[arg-type]


def webdataset_key(name: str) -> str:
    """WebDataset's sample key: the member name up to the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def list_members(archive: Entry, kind: ArchiveKind, opts: WalkOptions, counting: bool) -> Iterator[Entry]:
    if kind == "zip":
        yield from _list_zip(archive)
    elif kind == "tar":
        yield from _list_tar(archive, opts.max_filesize)
    else:
        yield from _stream_tgz(archive, opts.max_filesize)


def _nested_member(archive: Entry, index: int, name: str, key: str | None = None) -> Entry:
    return member_entry(archive, index, name, key, error=("nested_archive", "an archive inside an archive is not opened"))


def _too_large(archive: Entry, index: int, name: str, key: str | None, size: int, limit: int) -> Entry:
    return member_entry(archive, index, name, key, error=("too_large", f"member is {size} bytes, limit is {limit} (--max-filesize)"))


def _cut(archive: Entry, index: int, name: str, key: str | None) -> Entry:
    return member_entry(archive, index, name, key, error=("truncated", "the archive ends inside this member"))


def _tar_images(archive: Entry, tf: tarfile.TarFile, max_filesize: int) -> Iterator[Entry | tuple[int, tarfile.TarInfo, str]]:
    """The members of a tar that make records: finished entries (a nested archive, a member too
    large to read), or (index, info, key) of an image the caller reads its own way."""
    for index, info in _tar_members(tf):
        if not info.isfile():
            continue
        key = webdataset_key(info.name)
        if _nested(info.name):
            yield _nested_member(archive, index, info.name, key)
        elif not has_image_extension(info.name):
            continue
        elif info.size > max_filesize:
            yield _too_large(archive, index, info.name, key, info.size, max_filesize)
        else:
            yield index, info, key


def _list_tar(archive: Entry, max_filesize: int) -> Iterator[Entry]:
    with open_input(archive.path, archive.uri) as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        try:
            tf = tarfile.open(fileobj=fh, mode="r:")  # random access: headers are read, data is seeked over
            for item in _tar_images(archive, tf, max_filesize):
                if isinstance(item, Entry):
                    yield item
                    continue
                index, info, key = item
                if info.offset_data + info.size > size:
                    yield _cut(archive, index, info.name, key)
                    return
                yield member_entry(archive, index, info.name, key, span=Span(info.offset_data, info.size))
        except tarfile.TarError as exc:
            raise ReaderError(*_tar_failure(exc)) from None


def _tar_members(tf: tarfile.TarFile) -> Iterator[tuple[int, tarfile.TarInfo]]:
    """Members one by one without keeping them: tarfile's own list grows with the archive."""
    index = 0
    while (info := tf.next()) is not None:
        tf.members.clear()
        yield index, info
        index += 1


def _tar_failure(exc: Exception) -> tuple[str, str]:
    text = str(exc) or type(exc).__name__
    if "unexpected end" in text or isinstance(exc, (EOFError, tarfile.ReadError)) and "end" in text:
        return ("truncated", f"the archive is truncated ({text})")
    return ("corrupt", f"not a readable tar archive ({text})")


class _Bounded:
    """A gzip stream that refuses to inflate past MAX_RATIO times the compressed file."""

    def __init__(self, raw: IO[bytes], compressed: int) -> None:
        import gzip

        self.stream = gzip.GzipFile(fileobj=raw, mode="rb")
        self.budget = max(RATIO_FLOOR, MAX_RATIO * compressed)
        self.inflated = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.inflated += len(data)
        if self.inflated > self.budget:
            raise ReaderError("too_large", f"inflates to more than {MAX_RATIO}x its size (a gzip bomb?); stopped")
        return data


def _stream_tgz(archive: Entry, max_filesize: int) -> Iterator[Entry]:
    import gzip

    with open_input(archive.path, archive.uri) as raw:
        compressed = raw.seek(0, os.SEEK_END)
        raw.seek(0)
        bounded = _Bounded(raw, compressed)
        try:
            tf = tarfile.open(fileobj=bounded, mode="r|")  # type: ignore[call-overload]
            for item in _tar_images(archive, tf, max_filesize):
                if isinstance(item, Entry):
                    yield item
                    continue
                index, info, key = item
                data = tf.extractfile(info).read()  # type: ignore[union-attr]
                if len(data) < info.size:
                    yield _cut(archive, index, info.name, key)
                    return
                yield member_entry(archive, index, info.name, key, data=data)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ReaderError(*_tar_failure(exc)) from None


def _list_zip(archive: Entry) -> Iterator[Entry]:
    import zipfile

    with open_input(archive.path, archive.uri) as fh:
        try:
            infos = zipfile.ZipFile(fh).infolist()  # the central directory only
        except (zipfile.BadZipFile, EOFError, ValueError) as exc:
            code = "truncated" if "not a zip file" in str(exc).lower() else "corrupt"
            raise ReaderError(code, f"not a readable zip archive ({exc})") from None
    overlapping = _overlaps(infos)
    for index, info in enumerate(infos):
        name = info.filename
        if info.is_dir():
            continue
        if _nested(name):
            yield _nested_member(archive, index, name)
        elif not has_image_extension(name):
            continue
        elif info.flag_bits & 0x1:
            yield member_entry(archive, index, name, error=("encrypted", "the member is encrypted; not read"))
        elif info.compress_type not in _ZIP_METHODS:
            message = f"zip compression method {info.compress_type} is not supported (stored and deflate are)"
            yield member_entry(archive, index, name, error=("unsupported_format", message))
        elif index in overlapping:
            message = "the member's bytes overlap another member's (a zip bomb's trick); not read"
            yield member_entry(archive, index, name, error=("corrupt", message))
        else:
            span = Span(info.header_offset, info.compress_size, info.compress_type, info.file_size, info.CRC)
            yield member_entry(archive, index, name, span=span)


def _overlaps(infos: list) -> set[int]:
    """Members whose stored bytes start before the previous member's can have ended."""
    order = sorted(range(len(infos)), key=lambda i: infos[i].header_offset)
    bad: set[int] = set()
    end, last = -1, None
    for i in order:
        info = infos[i]
        if info.header_offset < end:
            bad.update((i, last))  # type: ignore[arg-type]
        least = info.header_offset + ZIP_LOCAL.size + info.compress_size
        if least > end:
            end, last = least, i
    return bad
