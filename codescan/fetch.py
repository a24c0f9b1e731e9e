"""An entry's bytes, read inside a decode worker: a file, a URI, or an archive member.

A member is read where it lies (``Span``: plain tar and zip), or arrives with its entry (tar.gz,
Parquet pages). Every read is bounded before it happens: ``--max-filesize`` on the declared size,
and a zip member may inflate to at most ``MAX_RATIO`` times its stored bytes, so a bomb costs a
header read, not its inflation.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import IO

from .decode import DecodeFailure
from .walk import Entry, Span

MAX_RATIO = 200  # inflated / stored bytes; images barely compress, bombs inflate ~1000x
RATIO_FLOOR = 1 << 20  # below this many inflated bytes the ratio is not checked (tiny flat PNGs)
ZIP_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes


def open_input(path: bytes, uri: bool) -> IO[bytes]:
    """A seekable binary file for a local path or a URI (pyarrow's random-access file)."""
    if not uri:
        return open(path, "rb")
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
        with open_input(entry.path, entry.uri) as fh:
            if span.method is None:
                fh.seek(span.offset)
                data = fh.read(span.size)
            else:
                data = _zip_member(fh, span)
    except DecodeFailure:
        raise
    except PermissionError as exc:
        raise DecodeFailure("permission_denied", str(exc)[:300] or "permission denied") from None
    except OSError as exc:
        raise DecodeFailure("io_error", (exc.strerror or str(exc))[:300]) from None
    if len(data) < declared:
        raise DecodeFailure("truncated", "the archive ends inside this member")
    return data


def _zip_member(fh: IO[bytes], span: Span) -> bytes:
    fh.seek(span.offset)
    header = fh.read(ZIP_LOCAL.size)
    if len(header) < ZIP_LOCAL.size:
        raise DecodeFailure("truncated", "the archive ends inside this member's header")
    magic, _, flags, _, _, _, _, _, _, name_len, extra_len = ZIP_LOCAL.unpack(header)
    if magic != b"PK\x03\x04":
        raise DecodeFailure("corrupt", "no local header where the central directory points")
    if flags & 0x1:
        raise DecodeFailure("encrypted", "the member is encrypted; not read")
    fh.seek(span.offset + ZIP_LOCAL.size + name_len + extra_len)
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
