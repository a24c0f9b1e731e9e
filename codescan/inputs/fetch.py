"""An entry's bytes, read inside a decode worker: a file, a URI, or an archive member.

A member is read where it lies (``Span``: plain tar and zip), or arrives with its entry (tar.gz,
Parquet pages). Every read is bounded before it happens: ``--max-filesize`` on the declared size,
and a zip member may inflate to at most ``MAX_RATIO`` times its stored bytes, so a bomb costs a
header read, not its inflation.
"""

from __future__ import annotations

import os
import zlib
from typing import IO

from codescan.inputs.pinned import LinkRefused, NotRegular, Pin, Replaced, open_pinned
from codescan.inputs.read import DecodeFailure, refused_open
from codescan.inputs.walk import Entry, Span

MAX_RATIO = 200  # inflated / stored bytes; images barely compress, bombs inflate ~1000x
RATIO_FLOOR = 1 << 20  # below this many inflated bytes the ratio is not checked (tiny flat PNGs)


def open_input(path: bytes, uri: bool, pin: Pin | None = None) -> IO[bytes]:
    """A seekable binary file for a local path (opened as `pin` says) or a URI (pyarrow's random-access file)."""
    if not uri:
        return os.fdopen(open_pinned(path, pin), "rb")
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(os.fsdecode(path))
    return fs.open_input_file(inner)  # type: ignore[return-value]


def read_uri(uri: str, max_filesize: int) -> bytes:
    """The whole object, refusing oversized ones before reading them (DecodeFailure on any problem)."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        size = fs.get_file_info(path).size
        if size is not None and size > max_filesize:
            raise DecodeFailure("too_large", f"file is {size} bytes, limit is {max_filesize} (--max-filesize)")
        with fs.open_input_stream(path) as fh:
            data = fh.read(max_filesize + 1)
    except PermissionError as exc:
        raise DecodeFailure("permission_denied", str(exc).splitlines()[0][:300] or "permission denied") from None
    except (OSError, ValueError) as exc:
        raise DecodeFailure("io_error", str(exc).splitlines()[0][:300] or "read failed") from None
    if len(data) > max_filesize:
        raise DecodeFailure("too_large", f"file grew past the limit of {max_filesize} bytes while reading")
    return data


def read_member(entry: Entry, max_filesize: int) -> bytes:
    """A member's bytes, inside a decode worker: sent along, or read at its offset (DecodeFailure on any problem)."""
    if entry.data is not None:
        return entry.data
    span = entry.span
    assert span is not None
    declared = span.size if span.method is None else span.inflated
    if declared > max_filesize:
        raise DecodeFailure("too_large", f"member is {declared} bytes, limit is {max_filesize} (--max-filesize)")
    if span.method is not None and span.method != 0 and span.inflated > max(RATIO_FLOOR, MAX_RATIO * span.size):
        raise DecodeFailure("too_large", f"member inflates {span.inflated // max(1, span.size)}x (a zip bomb?); not read")
    try:
        with open_input(entry.path, entry.uri, entry.pin) as fh:
            if span.method is None:
                fh.seek(span.offset)
                data = fh.read(span.size)
            else:
                data = _zip_member(fh, span)
    except DecodeFailure:
        raise
    except (LinkRefused, Replaced, NotRegular) as exc:
        raise refused_open(exc, entry.pin) from None
    except PermissionError as exc:
        raise DecodeFailure("permission_denied", str(exc)[:300] or "permission denied") from None
    except OSError as exc:
        raise DecodeFailure("io_error", (exc.strerror or str(exc))[:300]) from None
    if len(data) < declared:
        raise DecodeFailure("truncated", "the archive ends inside this member")
    return data


def _zip_member(fh: IO[bytes], span: Span) -> bytes:
    """A zip member's bytes, inflated at most to their declared size and checked against the CRC.

    `span.offset` is the member's data itself: the listing read its local header (name and extra
    lengths), checked it against the central directory and against every other member's range, so
    nothing here re-derives where the data starts from bytes that could say otherwise.
    """
    fh.seek(span.offset)
    stored = fh.read(span.size)
    if len(stored) < span.size:
        raise DecodeFailure("truncated", "the archive ends inside this member")
    if span.method == 0:
        data = stored
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(stored, span.inflated + 1)  # never more than declared + 1
        except zlib.error as exc:
            raise DecodeFailure("corrupt", f"deflate data is corrupt ({exc})") from None
        if len(data) > span.inflated:
            raise DecodeFailure("corrupt", "the member inflates past the size the archive declares")
    if zlib.crc32(data) != span.crc:
        raise DecodeFailure("corrupt", "CRC-32 mismatch: the member's bytes are damaged")
    return data
