"""Inputs named by URI (s3://, gs://, file://, …): listed and read through pyarrow filesystems.

pyarrow resolves credentials the usual way (AWS_* / GOOGLE_* variables, config files,
instance roles); codescan never sees or logs them. Listing follows the local walk's order: a
depth-first walk with entries sorted by name bytes, which for a flat key listing means sorting
by the tuple of path components (``a/b`` comes before ``a.txt``, as in the local walk).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Iterator

from .decode import DecodeFailure
from .walk import Entry, WalkOptions, walk

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(argument: str | bytes) -> bool:
    return bool(_URI.match(os.fsdecode(argument)))


def entries(arguments: Iterable[str | bytes], opts: WalkOptions = WalkOptions()) -> Iterator[Entry]:
    """Every file under the arguments in the documented order: local paths walked, URIs listed."""
    for argument in arguments:
        if is_uri(argument):
            yield from _list_uri(os.fsdecode(argument), opts)
        else:
            yield from walk([argument], opts)


def _list_uri(uri: str, opts: WalkOptions) -> Iterator[Entry]:
    import pyarrow.fs as pafs

    scheme = uri.split("://", 1)[0]
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            yield _uri_entry(uri, ("io_error", "no such file or directory"))
            return
        if info.type != pafs.FileType.Directory:
            yield _uri_entry(uri)
            return
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        yield _uri_entry(uri, ("io_error", str(exc).splitlines()[0][:300]))
        return
    files = [i.path for i in infos if i.type == pafs.FileType.File]
    for path in sorted(files, key=lambda p: [c.encode() for c in p.split("/")]):
        parts = path[len(root.rstrip("/")) + 1 :].split("/")  # below the argument: dirs..., name
        if any(fnmatch.fnmatchcase(x, g) for g in opts.excludes for x in (*parts, path)):
            continue
        yield _uri_entry(f"{scheme}://{path}")


def _uri_entry(uri: str, error=None) -> Entry:
    return Entry(display=uri, path=uri.encode(), error=error, uri=True)


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
