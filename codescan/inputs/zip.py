"""Zip listings by codescan's own bounded parser.

The central directory is parsed from the bytes present, never from the counts the end record
claims; every local header is read and checked against it; member data ranges must be disjoint."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import IO, NamedTuple

from codescan.core.records import ErrorCode
from codescan.inputs.fetch import MAX_RATIO, RATIO_FLOOR, open_input
from codescan.inputs.isolated import ReaderError
from codescan.inputs.members import (
    _nested,
    _nested_member,
    member_entry,
)
from codescan.inputs.read import has_image_extension
from codescan.inputs.walk import Entry, Span

_U16, _U32 = 0xFFFF, 0xFFFFFFFF  # "see the zip64 extra field"

_ZIP_METHODS = (0, 8)  # stored, deflate


_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header: 30 bytes, then its name and extra field, then the data


_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory header: 46 bytes, then name, extra, comment


_END = struct.Struct("<4sHHHHIIH")  # end of central directory record: 22 bytes, then the archive comment


_END64_LOCATOR = struct.Struct("<4sIQI")  # zip64 end locator: 20 bytes, just before the end record


_END64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record: 56 bytes


_EXTRA = struct.Struct("<HH")  # an extra field's (tag, length)


_Q = struct.Struct("<Q")


_DESCRIPTORS = (struct.Struct("<III"), struct.Struct("<IQQ"))  # crc, compressed, inflated: 32-bit, zip64


_DESCRIPTOR_SIG = b"PK\x07\x08"


_ZIP64_TAG = 0x0001


# Flag bits that change how a member's bytes are read; its local and central headers must agree on
# them: encrypted, data descriptor, strong encryption, masked local header. (The UTF-8 name bit only
# changes how a name is shown, and the names' bytes are compared.)
_FLAGS_CHECKED = 0x0001 | 0x0008 | 0x0040 | 0x2000


MAX_CENTRAL = 1 << 30  # bytes of central directory read (~10 million members): a bound on the listing's memory


_READ_AHEAD = 4096  # a local header read fetches this much more: consecutive small members cost one read


class _Central(NamedTuple):
    """One central directory entry, its offset made absolute (prepended bytes included)."""

    name: bytes
    flags: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int

    @property
    def filename(self) -> str:
        """The name as zipfile gives it: UTF-8 if flagged, else cp437, cut at a NUL."""
        text = self.name.decode("utf-8", "surrogateescape") if self.flags & 0x800 else self.name.decode("cp437")
        return text.split("\0", 1)[0]


class _Local(NamedTuple):
    """Where a member really lies: its local header, its data, and the end of its data descriptor."""

    header_offset: int
    compress_size: int
    data_offset: int
    end: int


class _At:
    """Reads at absolute offsets with a small read-ahead (each read of a URI is a request)."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh, self.size = fh, size
        self.base, self.buf = 0, b""

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n <= 0 or offset >= self.size:
            return b""
        if not (self.base <= offset and offset + n <= self.base + len(self.buf)):
            self.fh.seek(offset)
            self.base, self.buf = offset, self.fh.read(min(n + _READ_AHEAD, self.size - offset))
        return self.buf[offset - self.base : offset - self.base + n]


def _refuse(message: str, code: ErrorCode = "corrupt") -> ReaderError:
    return ReaderError(code, f"not a readable zip archive ({message})")


class _Directory(NamedTuple):
    data: bytes  # the central directory's bytes
    start: int  # where they start: every member lies wholly before
    concat: int  # bytes prepended to the archive (a self-extractor's stub): added to every offset
    claimed: int  # the entries the end record claims
    zip64: bool


def _zip_directory(at: _At) -> _Directory:
    """The central directory, as the end record (zip64 aware) places it; ReaderError when the end
    records disagree with what the file holds. Nothing here loops over a claimed count."""
    size = at.size
    tail_at = max(0, size - _END.size - _U16)
    tail = at.read(tail_at, size - tail_at)
    found = -1
    pos = tail.rfind(b"PK\x05\x06")
    while pos >= 0:  # the last record whose comment ends the file; else the last complete one (zipfile's leniency)
        if pos + _END.size <= len(tail):
            if found < 0:
                found = pos
            if pos + _END.size + _END.unpack_from(tail, pos)[7] == len(tail):
                found = pos
                break
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
    if found < 0:
        raise _refuse("no end of central directory record: cut short, or not a zip", "truncated")
    end_at = tail_at + found
    _, disk, cd_disk, _, claimed, cd_size, cd_offset, _ = _END.unpack_from(tail, found)
    cd_end, zip64 = end_at, False
    locator = at.read(end_at - _END64_LOCATOR.size, _END64_LOCATOR.size) if end_at >= _END64_LOCATOR.size else b""
    if locator[:4] == b"PK\x06\x07":
        _, loc_disk, _, disks = _END64_LOCATOR.unpack(locator)
        record_at = end_at - _END64_LOCATOR.size - _END64.size  # where zipfile looks for it, too
        record = at.read(record_at, _END64.size) if record_at >= 0 else b""
        if len(record) < _END64.size or record[:4] != b"PK\x06\x06":
            raise _refuse("a zip64 end locator without its zip64 end record")
        _, _, _, _, disk, cd_disk, _, claimed, cd_size, cd_offset = _END64.unpack(record)
        disk |= loc_disk | (disks > 1)
        cd_end, zip64 = record_at, True
    if disk or cd_disk:
        raise ReaderError("unsupported_format", "a zip archive that spans several disks is not supported")
    if cd_size > cd_end:
        raise _refuse(f"the end record says the central directory is {cd_size} bytes; {cd_end} bytes precede it")
    cd_start = cd_end - cd_size
    concat = cd_start - cd_offset  # bytes before the archive (a self-extractor's stub): zipfile allows them
    if concat < 0:
        raise _refuse(f"the end record puts the central directory at {cd_offset}, past where it ends ({cd_start})")
    if claimed > cd_size // _CENTRAL.size:
        most = cd_size // _CENTRAL.size
        raise _refuse(f"the end record claims {claimed} entries; a {cd_size}-byte central directory holds at most {most}")
    if cd_size > MAX_CENTRAL:
        raise _refuse(f"its central directory is {cd_size} bytes; more than {MAX_CENTRAL} is not read", "too_large")
    cd = at.read(cd_start, cd_size)
    if len(cd) < cd_size:
        raise _refuse("the file ends inside its central directory", "truncated")
    return _Directory(cd, cd_start, concat, claimed, zip64)


def _zip64_values(extra: bytes, wanted: tuple[bool, ...], widths: tuple[int, ...]) -> list[int] | None:
    """The values of a zip64 extra field (tag 1) that the header defers to it, in order; None if absent or short."""
    body = _extra_field(extra, _ZIP64_TAG)
    if body is None:
        return None
    values, pos = [], 0
    for want, width in zip(wanted, widths):
        if not want:
            continue
        if pos + width > len(body):
            return None
        values.append(int.from_bytes(body[pos : pos + width], "little"))
        pos += width
    return values


def _extra_field(extra: bytes, tag: int) -> bytes | None:
    pos = 0
    while pos + _EXTRA.size <= len(extra):
        kind, length = _EXTRA.unpack_from(extra, pos)
        body = extra[pos + _EXTRA.size : pos + _EXTRA.size + length]
        if kind == tag:
            return body
        pos += _EXTRA.size + length
    return None


def _central_entries(cd: bytes, concat: int) -> Iterator[_Central]:
    """The entries the central directory's bytes hold, in order; ReaderError where they break."""
    pos, end = 0, len(cd)
    while pos < end:
        if pos + _CENTRAL.size > end:
            raise _refuse("its central directory ends inside an entry")
        (sig, _, _, flags, method, _, _, crc, csize, usize, n_len, e_len, c_len, _, _, _, offset) = _CENTRAL.unpack_from(cd, pos)
        if sig != b"PK\x01\x02":
            raise _refuse(f"no central directory entry at byte {pos} of the central directory")
        name_end = pos + _CENTRAL.size + n_len
        extra_end = name_end + e_len
        if extra_end + c_len > end:
            raise _refuse("its central directory ends inside an entry")
        wanted = (usize == _U32, csize == _U32, offset == _U32)  # (an entry's disk number: the end record decides)
        if any(wanted):
            values = _zip64_values(cd[name_end:extra_end], wanted, (8, 8, 8))
            if values is None:
                raise _refuse("an entry defers a size or an offset to a zip64 extra field that does not hold it")
            it = iter(values)
            usize = next(it) if wanted[0] else usize
            csize = next(it) if wanted[1] else csize
            offset = next(it) if wanted[2] else offset
        yield _Central(cd[pos + _CENTRAL.size : name_end], flags, method, crc, csize, usize, offset + concat)
        pos = extra_end + c_len


def _local_member(at: _At, c: _Central, limit: int) -> tuple[_Local | None, str | None]:
    """Where member `c` really lies, from its own local header, and what is wrong with it (None: nothing).

    `limit` is where the central directory starts: every member lies wholly before it."""
    where = c.header_offset
    if where + _LOCAL.size > limit:
        return None, f"its local header would lie at byte {where}, past the members' end ({limit}); not read"
    head = at.read(where, _LOCAL.size)
    if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
        return None, "no local header where the central directory points; not read"
    _, _, flags, method, _, _, crc, csize, usize, n_len, e_len = _LOCAL.unpack(head)
    data = where + _LOCAL.size + n_len + e_len
    if data > limit:
        return None, "its local header runs into the central directory; not read"
    rest = at.read(where + _LOCAL.size, n_len + e_len)
    name, extra = rest[:n_len], rest[n_len:]
    end = data + c.compress_size
    local = _Local(where, c.compress_size, data, end)
    if end > limit:
        return local, f"its {c.compress_size} stored bytes at byte {data} run past the members' end ({limit}); not read"
    zip64 = False
    if csize == _U32 or usize == _U32:
        body = _extra_field(extra, _ZIP64_TAG) or b""
        if len(body) >= 16:  # the local zip64 field holds both sizes (APPNOTE 4.5.3)
            usize, csize = _Q.unpack_from(body, 0)[0], _Q.unpack_from(body, 8)[0]
        else:
            values = _zip64_values(extra, (usize == _U32, csize == _U32), (8, 8)) or []
            if len(values) < (usize == _U32) + (csize == _U32):
                return local, "its local header defers its sizes to a zip64 extra field that does not hold them; not read"
            it = iter(values)
            usize = next(it) if usize == _U32 else usize
            csize = next(it) if csize == _U32 else csize
        zip64 = True
    problem = None
    if name != c.name:
        problem = f"its local header names it {name[:80]!r}, the central directory {c.name[:80]!r}"
    elif method != c.method:
        problem = f"its local header says compression method {method}, the central directory {c.method}"
    elif (flags ^ c.flags) & _FLAGS_CHECKED:
        problem = f"its local header's flags ({flags:#06x}) disagree with the central directory's ({c.flags:#06x})"
    elif flags & 0x8:  # sizes and CRC follow the data (a data descriptor); the local header may hold zeros
        if any(v not in (0, want) for v, want in ((crc, c.crc), (csize, c.compress_size), (usize, c.file_size))):
            problem = "its local header's CRC or sizes disagree with the central directory's"
        else:
            length = _descriptor(at.read(end, 24), c, zip64)
            if length is None:
                problem = "its data descriptor disagrees with the central directory (or is missing)"
            elif end + length > limit:
                problem = "its data descriptor runs into the central directory"
            else:
                local = local._replace(end=end + length)
    elif (crc, csize, usize) != (c.crc, c.compress_size, c.file_size):
        problem = (f"its local header says {csize} bytes stored, {usize} inflated, CRC {crc:08x}; the central directory "
                   f"{c.compress_size}, {c.file_size}, {c.crc:08x}")
    return local, None if problem is None else problem + "; not read"


def _descriptor(raw: bytes, c: _Central, zip64: bool) -> int | None:
    """The length of the data descriptor at the start of `raw` that agrees with `c`; None if there is none."""
    forms = _DESCRIPTORS[::-1] if zip64 else _DESCRIPTORS
    for start in ((4, 0) if raw[:4] == _DESCRIPTOR_SIG else (0,)):
        for form in forms:
            if len(raw) >= start + form.size and form.unpack_from(raw, start) == (c.crc, c.compress_size, c.file_size):
                return start + form.size
    return None


def _list_zip(archive: Entry, max_filesize: int) -> Iterator[Entry]:
    """Two passes over the central directory's bytes: every member's local header first (its real
    data range, checked against its entry), then the records, once overlaps are known."""
    with open_input(archive.path, archive.uri, archive.pin) as fh:
        size = fh.seek(0, os.SEEK_END)
        at = _At(fh, size)
        directory = _zip_directory(at)
        locals_: list[_Local | None] = []
        problems: dict[int, str] = {}
        for index, c in enumerate(_central_entries(directory.data, directory.concat)):
            local, problem = _local_member(at, c, directory.start)
            locals_.append(local)
            if problem:
                problems[index] = problem
    held, claimed = len(locals_), directory.claimed
    if held != claimed and (directory.zip64 or held & _U16 != claimed):  # without zip64, a count past 65535 may wrap
        raise _refuse(f"the end record claims {claimed} entries; the central directory holds {held}")
    overlapping = _overlaps(locals_)
    budget, charged = max(RATIO_FLOOR, MAX_RATIO * size), 0
    for index, c in enumerate(_central_entries(directory.data, directory.concat)):
        name = c.filename
        if name.endswith("/"):
            continue
        if _nested(name):
            yield _nested_member(archive, index, name)
            continue
        if not has_image_extension(name):
            continue
        refused = _zip_refusal(c, problems.get(index), index in overlapping, max_filesize)
        if refused is None:
            charged += c.file_size
            if charged > budget:
                refused = ("too_large", f"the archive's members together inflate past {MAX_RATIO}x its size (a zip bomb?); not read")
        if refused is not None:
            yield member_entry(archive, index, name, error=refused)
            continue
        local = locals_[index]
        assert local is not None
        span = Span(local.data_offset, c.compress_size, c.method, c.file_size, c.crc)
        yield member_entry(archive, index, name, span=span)


def _zip_refusal(c: _Central, problem: str | None, overlaps: bool, max_filesize: int) -> tuple[ErrorCode, str] | None:
    """Why an image member is not read (the error record), or None: it is read at its data range."""
    if c.flags & 0x1:
        return ("encrypted", "the member is encrypted; not read")
    if c.method not in _ZIP_METHODS:
        return ("unsupported_format", f"zip compression method {c.method} is not supported (stored and deflate are)")
    if problem is not None:
        return ("corrupt", problem)
    if overlaps:
        return ("corrupt", "the member's bytes overlap another member's (a zip bomb's trick); not read")
    if c.method == 0 and c.file_size != c.compress_size:
        return ("corrupt", f"a stored member of {c.compress_size} bytes that claims {c.file_size} once read; not read")
    if c.file_size > max_filesize:
        return ("too_large", f"member is {c.file_size} bytes, limit is {max_filesize} (--max-filesize)")
    if c.method != 0 and c.file_size > max(RATIO_FLOOR, MAX_RATIO * c.compress_size):
        return ("too_large", f"member inflates {c.file_size // max(1, c.compress_size)}x (a zip bomb?); not read")
    return None


def _overlaps(members: list) -> set[int]:
    """Indexes of the members whose bytes overlap another's: all of them, none is read.

    A member spans from its local header to the end of its data and data descriptor (`end`, from
    the local header read); one whose local header could not be read (None) spans nothing, and is
    refused for that. Without `end`, a member spans at least its header's 30 bytes and its data.
    """
    spans = sorted(
        (m.header_offset, getattr(m, "end", m.header_offset + _LOCAL.size + m.compress_size), i)
        for i, m in enumerate(members)
        if m is not None
    )
    bad: set[int] = set()
    end, last = -1, -1
    for start, stop, i in spans:
        if start < end:
            bad.update((i, last))
        if stop > end:
            end, last = stop, i
    return bad
