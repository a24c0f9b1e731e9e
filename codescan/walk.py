"""Streaming, deterministic directory traversal.

Order: arguments as given; inside a directory, depth-first with entries sorted by their raw
name bytes (so the order never depends on locale or filesystem). Paths stay ``bytes``
internally; the display form is ``os.fsdecode`` (undecodable bytes become ``\\udcXX``
surrogates, which every reporter escapes losslessly).

Symlinks met during the walk are not followed unless ``follow_symlinks``; paths named on the
command line are always followed. With following on, a directory that is its own ancestor is
reported as ``symlink_loop`` instead of being entered again.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .records import ErrorCode


@dataclass(frozen=True, slots=True)
class Entry:
    display: str  # as reached from the argument, fsdecoded
    path: bytes  # lossless filesystem path
    error: tuple[ErrorCode, str] | None = None  # unreadable dir, loop, missing argument
    uri: bool = False  # `path` is a URI read through pyarrow (sources.py), not a local path


@dataclass(frozen=True, slots=True)
class WalkOptions:
    excludes: tuple[str, ...] = ()
    follow_symlinks: bool = False


def _excluded(name: bytes, path: bytes, excludes: Sequence[str]) -> bool:
    if not excludes:
        return False
    n, p = os.fsdecode(name), os.fsdecode(path)
    return any(fnmatch.fnmatchcase(n, g) or fnmatch.fnmatchcase(p, g) for g in excludes)


def _os_error(exc: OSError) -> tuple[ErrorCode, str]:
    if isinstance(exc, PermissionError):
        return ("permission_denied", exc.strerror or "permission denied")
    if exc.errno == errno.ELOOP:
        return ("symlink_loop", exc.strerror or "too many levels of symbolic links")
    return ("io_error", exc.strerror or str(exc))


def _entry(path: bytes, error: tuple[ErrorCode, str] | None = None) -> Entry:
    return Entry(display=os.fsdecode(path), path=path, error=error)


def _walk_dir(root: bytes, opts: WalkOptions, ancestors: frozenset[tuple[int, int]]) -> Iterator[Entry]:
    try:
        with os.scandir(root) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield _entry(root, _os_error(exc))
        return
    for child in children:
        path = os.path.join(root, child.name)
        if _excluded(child.name, path, opts.excludes):
            continue
        try:
            if child.is_symlink():
                if not opts.follow_symlinks:
                    continue
                st = os.stat(path)
            else:
                st = child.stat(follow_symlinks=False)
        except OSError as exc:
            yield _entry(path, _os_error(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if ident in ancestors:
                yield _entry(path, ("symlink_loop", "directory is its own ancestor"))
                continue
            yield from _walk_dir(path, opts, ancestors | {ident})
        elif stat.S_ISREG(st.st_mode):
            yield _entry(path)
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
            yield from _walk_dir(path, opts, frozenset({(st.st_dev, st.st_ino)}))
        else:
            yield _entry(path)


def read_path_list(data: bytes, nul: bool) -> list[bytes]:
    """Paths from --files-from: one per line, or NUL-separated with -0 (for names with newlines)."""
    sep = b"\0" if nul else b"\n"
    items = data.split(sep)
    if not nul:
        items = [i[:-1] if i.endswith(b"\r") else i for i in items]
    return [i for i in items if i]
