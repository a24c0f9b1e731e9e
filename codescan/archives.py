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
times its stored size (and ``--max-filesize``), a tar.gz or a zip as a whole to ``MAX_RATIO``
times the file, and zip members whose bytes overlap another's (the trick of non-recursive zip
bombs) are refused. A zip member's bytes are where its own local header puts them (after its
name and extra field, before its data descriptor), and that header must agree with the central
directory (name, method, flags, sizes, CRC); the central directory is parsed from the bytes it
holds, and an end record whose counts or sizes disagree with them refuses the archive. A tar
header's claims are bounded before tarfile acts on them: an extended header (GNU long name,
PAX) past ``MAX_TAR_HEADER`` refuses the archive; a sparse member is ``unsupported_format``.
"""

from __future__ import annotations

import os
import struct
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Literal, NamedTuple

from .decode import has_image_extension
from .fetch import MAX_RATIO, RATIO_FLOOR, open_input
from .isolated import ReaderError
from .records import ErrorCode, Origin
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
    (`span` or `data`) or why it is not read (`error`). The worker opens the archive as the
    listing did: with the archive's pin (pinned.py)."""
    origin = Origin(archive=archive.display, member=name, member_index=index, key=key)
    display = f"{archive.display}::{name}"
    return Entry(display=display, path=archive.path, uri=archive.uri, origin=origin, pin=archive.pin, **where)  # type: ignore[arg-type]


def webdataset_key(name: str) -> str:
    """WebDataset's sample key: the member name up to the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def list_members(archive: Entry, kind: ArchiveKind, opts: WalkOptions, counting: bool) -> Iterator[Entry]:
    if kind == "zip":
        yield from _list_zip(archive, opts.max_filesize)
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


# --- zip: the central directory and every member's local header, read by our own bounded parser ---
#
# Python's zipfile trusts each member's local header only when the member is opened, and the
# overlap of members can only be judged from where their data really lies. So a zip is listed
# here: the end record (zip64 aware) says where the central directory is, the entries are parsed
# from the bytes actually there (never looping over a claimed count), and every member's local
# header is read and checked against its central entry before any member is read.

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header: 30 bytes, then its name and extra field, then the data
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory header: 46 bytes, then name, extra, comment
_END = struct.Struct("<4sHHHHIIH")  # end of central directory record: 22 bytes, then the archive comment
_END64_LOCATOR = struct.Struct("<4sIQI")  # zip64 end locator: 20 bytes, just before the end record
_END64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record: 56 bytes
_EXTRA = struct.Struct("<HH")  # an extra field's (tag, length)
_Q = struct.Struct("<Q")
_DESCRIPTORS = (struct.Struct("<III"), struct.Struct("<IQQ"))  # crc, compressed, inflated: 32-bit, zip64
_DESCRIPTOR_SIG = b"PK\x07\x08"
_U16, _U32 = 0xFFFF, 0xFFFFFFFF  # "see the zip64 extra field"
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
