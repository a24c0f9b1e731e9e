"""Streaming, deterministic directory traversal.

Order: arguments as given; inside a directory, depth-first with entries sorted by their raw
name bytes (so the order never depends on locale or filesystem). Paths stay ``bytes``
internally; the display form is ``os.fsdecode`` (undecodable bytes become ``\\udcXX``
surrogates, which every reporter escapes losslessly).

Symlinks met during the walk are not followed unless ``follow_symlinks``; paths named on the
command line are always followed. With following on, a directory that is its own ancestor is
reported as ``symlink_loop`` instead of being entered again.

Depth is bounded: a directory more than ``WalkOptions.max_depth`` levels below its argument
(default ``MAX_DEPTH``), or a path longer than the OS accepts, is a ``too_deep`` record and the
walk goes on with its siblings.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from codescan.core.records import ErrorCode, Ident, Origin
from codescan.inputs.pinned import Pin


@dataclass(frozen=True, slots=True)
class Span:
    """Where an archive member's bytes lie, so a decode worker reads them in place (archives.py)."""

    offset: int  # where the stored bytes start: a zip member's data, past its local header (archives.py found it)
    size: int  # bytes stored there
    method: int | None = None  # zip compression method (0 stored, 8 deflate); None: tar, stored as is
    inflated: int = 0  # zip: the size the central directory declares once inflated
    crc: int = 0  # zip: CRC-32 of the inflated bytes


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see codescan/core/records.py, `Result`
class Entry:
    """One input, whatever holds it: a file, a URI, an archive member or a Parquet row.

    `path` is what a worker opens (the file, or the archive holding the member); a member's bytes
    are at `span` in it, or come along in `data` when the archive can only be read as a stream
    (tar.gz, Parquet pages).
    """

    display: str  # as reached from the argument, fsdecoded; members: ARCHIVE::MEMBER
    path: bytes  # lossless filesystem path (or URI)
    error: tuple[ErrorCode, str] | None = None  # unreadable dir, loop, missing argument, broken archive
    uri: bool = False  # `path` is a URI read through pyarrow (sources.py), not a local path
    origin: Origin | None = None
    span: Span | None = None
    data: bytes | None = None
    pin: Pin | None = None  # how a worker opens `path`: the listing's identity, links not followed (pinned.py)

    @property
    def ident(self) -> Ident:
        return self.display if self.origin is None else (self.origin.archive, self.origin.member_index)

    def __reduce__(self):  # by position: half the cost of a slots dataclass's pickling, once per file
        return (Entry, (self.display, self.path, self.error, self.uri, self.origin, self.span, self.data, self.pin))

    def to_wire(self) -> tuple:
        """Its fields as plain values, for the pipe to a decode worker: pickling a tuple runs no
        Python code, pickling an Entry and its Pin does: about a microsecond a file in the scanning process."""
        return (self.display, self.path, self.error, self.uri, self.origin, self.span, self.data, self.pin and tuple(self.pin))

    @staticmethod
    def from_wire(fields: tuple) -> Entry:
        *head, pin = fields
        return Entry(*head, pin=pin and Pin(*pin))


MAX_DEPTH = 1024  # directory levels below an argument: far beyond real trees, and it bounds the walk's stack

DirIdent = tuple[int, int]  # (st_dev, st_ino): a directory's identity, whatever path reached it


@dataclass(frozen=True, slots=True)
class WalkOptions:
    excludes: tuple[str, ...] = ()
    follow_symlinks: bool = False
    max_depth: int = MAX_DEPTH  # a directory deeper than this below its argument is a `too_deep` record
    archives: bool = False  # open archives and Parquet files met in a walk (named ones always are)
    column: str | None = None  # Parquet: the image column (default: found by its type and name)
    id_column: str | None = None  # Parquet: the row identifier (default: the image's path, else the row number)
    max_filesize: int = 256 * 1024 * 1024  # a streamed member larger than this is not read into memory


def _excluded(name: bytes, path: bytes, excludes: Sequence[str]) -> bool:
    n, p = os.fsdecode(name), os.fsdecode(path)
    return any(fnmatch.fnmatchcase(n, g) or fnmatch.fnmatchcase(p, g) for g in excludes)


def _os_error(exc: OSError) -> tuple[ErrorCode, str]:
    if isinstance(exc, PermissionError):
        return ("permission_denied", exc.strerror or "permission denied")
    if exc.errno == errno.ELOOP:
        return ("symlink_loop", exc.strerror or "too many levels of symbolic links")
    if exc.errno == errno.ENAMETOOLONG:  # nesting the OS cannot name: same remedy as a too-deep tree
        return ("too_deep", f"path longer than the system allows ({exc.strerror or 'file name too long'})")
    return ("io_error", exc.strerror or str(exc))


# os.fsdecode's own arguments: the display form of a path, without its Python-level checks (once per file).
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _entry(path: bytes, error: tuple[ErrorCode, str] | None = None, pin: Pin | None = None) -> Entry:
    return Entry(path.decode(_FS_ENCODING, _FS_ERRORS), path, error, pin=pin)


def _sorted_listing(path: bytes) -> list[os.DirEntry[bytes]]:
    """A directory's entries in name-byte order, read whole so the descriptor closes before descending."""
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _stat(child: os.DirEntry[bytes], follow_symlinks: bool) -> os.stat_result | None:
    """None for a symlink the walk does not follow; raises OSError for one it cannot resolve."""
    if child.is_symlink():
        return os.stat(child.path) if follow_symlinks else None
    return child.stat(follow_symlinks=False)


def _walk_dir(root: bytes, root_ident: DirIdent, opts: WalkOptions) -> Iterator[Entry]:
    """Depth-first on an explicit stack, so depth costs list items, never Python frames.

    A generator per level (``yield from``) hit RecursionError near 1000 levels and aborted the
    whole scan; here a tree deeper than ``opts.max_depth`` or longer than the OS can name
    becomes one error record at the point where it stops, and the walk goes on beside it.
    """
    try:
        listing = _sorted_listing(root)
    except OSError as exc:
        yield _entry(root, _os_error(exc))
        return
    stack: list[tuple[Iterator[os.DirEntry[bytes]], DirIdent]] = [(iter(listing), root_ident)]
    ancestors = {root_ident}
    excludes = opts.excludes
    while stack:
        children, ident = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            ancestors.discard(ident)
            continue
        if excludes and _excluded(child.name, child.path, excludes):
            continue
        try:
            st = _stat(child, opts.follow_symlinks)
        except OSError as exc:
            yield _entry(child.path, _os_error(exc))
            continue
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            sub = (st.st_dev, st.st_ino)
            if sub in ancestors:
                yield _entry(child.path, ("symlink_loop", "directory is its own ancestor"))
                continue
            if len(stack) > opts.max_depth:  # len(stack) is this directory's depth below the argument
                yield _entry(child.path, ("too_deep", f"more than {opts.max_depth} directory levels below the argument; not entered"))
                continue
            try:
                listing = _sorted_listing(child.path)
            except OSError as exc:
                yield _entry(child.path, _os_error(exc))
                continue
            stack.append((iter(listing), sub))
            ancestors.add(sub)
        elif stat.S_ISREG(st.st_mode):
            # Opened later by a worker: pinned to what was listed here. Without following, every
            # component below the argument is opened without following links (len(stack) of them).
            yield _entry(child.path, pin=Pin(0 if opts.follow_symlinks else len(stack), st.st_dev, st.st_ino))
        # FIFOs, sockets and devices met during a walk are never opened (a FIFO would block).


def walk(arguments: Iterable[str | bytes], opts: WalkOptions = WalkOptions()) -> Iterator[Entry]:
    """Yield every file under the arguments, lazily, in the documented order."""
    for arg in arguments:
        path = os.fsencode(arg)
        try:
            st = os.stat(path)
        except OSError as exc:
            yield _entry(path, _os_error(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(path, (st.st_dev, st.st_ino), opts)
        else:
            yield _entry(path, pin=Pin(0, st.st_dev, st.st_ino))  # named: links followed, the target pinned


def read_path_list(data: bytes, nul: bool) -> list[bytes]:
    """Paths from --files-from: one per line, or NUL-separated with -0 (for names with newlines)."""
    sep = b"\0" if nul else b"\n"
    items = data.split(sep)
    if not nul:
        items = [i[:-1] if i.endswith(b"\r") else i for i in items]
    return [i for i in items if i]
