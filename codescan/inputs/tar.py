"""Tar and tar.gz listings, bounded: extended headers capped before tarfile reads them, GNU
sparse members refused."""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO

from codescan.inputs.fetch import MAX_RATIO, RATIO_FLOOR, open_input
from codescan.inputs.isolated import ReaderError
from codescan.inputs.members import (
    _cut,
    _nested,
    _nested_member,
    _too_large,
    member_entry,
    webdataset_key,
)
from codescan.inputs.read import has_image_extension
from codescan.inputs.walk import Entry, Span


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
        elif info.issparse():  # its stored bytes are not its content: holes are left out
            message = "a sparse tar member (GNU sparse format) is not supported; not read"
            yield member_entry(archive, index, info.name, key, error=("unsupported_format", message))
        elif info.size > max_filesize:
            yield _too_large(archive, index, info.name, key, info.size, max_filesize)
        else:
            yield index, info, key


def _list_tar(archive: Entry, max_filesize: int) -> Iterator[Entry]:
    with open_input(archive.path, archive.uri, archive.pin) as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        try:
            tf = tarfile.open(fileobj=fh, mode="r:", tarinfo=_TarInfo)  # random access: headers are read, data is seeked over
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


MAX_TAR_HEADER = 1 << 20  # bytes of one extended header (GNU long name or link, PAX record) read


_EXTENDED = {
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link name",
    tarfile.XHDTYPE: "PAX",
    tarfile.XGLTYPE: "PAX global",
    tarfile.SOLARIS_XHDTYPE: "Solaris extended",
}


class _TarInfo(tarfile.TarInfo):
    """tarfile's header parsing, with the two reads that a header's own claims size bounded first.

    tarfile reads an extended header's whole declared size at once (a long name claiming 2**40
    bytes is a 2**40-byte read), and a GNU sparse 1.0 member's map from its data, for as long as
    the map's own count says. Sparse members are refused (``_tar_images``), so their map is never
    needed; everything else is tarfile's own parsing.
    """

    def _proc_member(self, tarfile):  # tarfile's hook for every header, before it reads anything past it
        kind = _EXTENDED.get(self.type)
        if kind is not None and self.size > MAX_TAR_HEADER:
            message = f"a {kind} header claims {self.size} bytes; more than {MAX_TAR_HEADER} is not read"
            raise ReaderError("too_large", message)
        return super()._proc_member(tarfile)

    def _proc_gnusparse_10(self, next, pax_headers, tarfile):  # noqa: A002 - tarfile's names
        next.sparse = []  # sparse all the same (issparse), the map unread: the member is refused, never read


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

    with open_input(archive.path, archive.uri, archive.pin) as raw:
        compressed = raw.seek(0, os.SEEK_END)
        raw.seek(0)
        bounded = _Bounded(raw, compressed)
        try:
            tf = tarfile.open(fileobj=bounded, mode="r|", tarinfo=_TarInfo)  # type: ignore[call-overload]
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
