"""Open a file as the listing saw it, or a path kept inside a folder, without following links.

Checked at listing, opened by name later: whoever can write a scanned folder during a scan
could swap a listed name (or a folder above it) for a symlink in between, and a plain
``open()`` would read whatever the link points at. So the listing keeps each file's identity
(``st_dev``, ``st_ino``) and how it was reached, and the worker opens the trailing components
one by one with ``O_NOFOLLOW`` from the folder above them (``openat``: ``os.open(dir_fd=)``),
then compares ``fstat`` with the listing. The identity check alone catches a swapped parent;
the per-component open keeps a link from being opened at all (a FIFO or a device behind it
included: those opens are non-blocking, and only a regular file is accepted).

Where nothing was listed (a Parquet row naming a file beside the Parquet file), the same
per-component open keeps the path inside the folder: no link is followed below it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple


class Pin(NamedTuple):
    """How a worker must open a local path. A tuple: it travels with every entry to a worker."""

    beneath: int  # trailing path components opened one by one without following links (0: follow all)
    dev: int = -1  # st_dev / st_ino the listing saw; -1: nothing was listed (a Parquet row's path)
    ino: int = -1

    @property
    def listed(self) -> bool:
        return self.dev >= 0


class LinkRefused(OSError):
    """A component opened without following links was a link, or not a folder where one was needed."""


class Replaced(OSError):
    """The file opened is not the one the listing saw: it was swapped after listing."""


class NotRegular(OSError):
    """What stands at the path is a FIFO, a socket, a device or a folder, not a file to read."""


_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def split_beneath(path: bytes, beneath: int) -> tuple[bytes, list[bytes]]:
    """(the folder the listing started from, the `beneath` components below it)."""
    parts = path.rsplit(b"/", beneath)
    if len(parts) <= beneath:  # a relative path of exactly `beneath` components
        return b".", parts
    head, tail = parts[0], parts[1:]
    if head == b"":
        head = b"/" if path.startswith(b"/") else b"."
    return head, tail


def open_pinned(path: bytes, pin: Pin | None) -> int:
    """A read-only descriptor for `path` as `pin` says; the caller closes it.

    Raises LinkRefused, Replaced, NotRegular, or the OSError of the open itself.
    """
    if pin is None or pin.beneath <= 0:
        # Named on the command line (or reached with --follow-symlinks): links are followed as
        # documented, and a FIFO the user named is read like a file, so the open may block.
        fd = os.open(path, _READ)
    else:
        fd = _open_beneath(path, pin.beneath)
    try:
        st = os.fstat(fd)
        if pin is not None and pin.listed and (st.st_dev, st.st_ino) != (pin.dev, pin.ino):
            raise Replaced(errno.ESTALE, "the file was replaced after the scan listed it")
        if pin is not None and pin.beneath > 0 and not stat.S_ISREG(st.st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_beneath(path: bytes, beneath: int) -> int:
    head, tail = split_beneath(path, beneath)
    folder = os.open(head, _READ | _DIRECTORY)
    try:
        for name in tail[:-1]:
            if name in (b"", b".", b".."):
                raise LinkRefused(errno.EINVAL, "the path has an empty, '.' or '..' component")
            inner = _open_at(name, _READ | _DIRECTORY | _NOFOLLOW, folder)
            os.close(folder)
            folder = inner
        if tail[-1] in (b"", b".", b".."):
            raise LinkRefused(errno.EINVAL, "the path has an empty, '.' or '..' component")
        # Non-blocking: a FIFO swapped in must not hold the worker until its deadline.
        return _open_at(tail[-1], _READ | _NOFOLLOW | _NONBLOCK, folder)
    finally:
        os.close(folder)


def _open_at(name: bytes, flags: int, folder: int) -> int:
    try:
        return os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        # ELOOP: the component is a link (O_NOFOLLOW). ENOTDIR: a file or a link to one stands
        # where a folder was listed. Either way the path is not what the listing saw.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise LinkRefused(exc.errno, "a link (or a file) stands where the listing saw a folder or file") from None
        raise

