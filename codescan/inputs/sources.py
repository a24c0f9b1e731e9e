"""Every input of a scan, in order, as entries: the local walk, URIs listed through pyarrow
filesystems (s3://, gs://, file://, …), and archives and Parquet files opened where they stand
(each listed by a confined reader, isolated.py).

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
from dataclasses import replace

from codescan.inputs.ahead import walk_ahead
from codescan.inputs.walk import Entry, WalkOptions, walk

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(argument: str | bytes) -> bool:
    return bool(_URI.match(os.fsdecode(argument)))


def entries(arguments: Iterable[str | bytes], opts: WalkOptions = WalkOptions(), counting: bool = False) -> Iterator[Entry]:
    """Every input under the arguments in the documented order: local paths walked, URIs listed,
    archives and Parquet files opened where they stand (named ones always, met ones with
    `opts.archives`). `counting`: only the progress line's total is wanted (see `expand`)."""
    for entry, archive in units(arguments, opts):
        if archive:
            yield from expand(entry, opts, counting)
        else:
            yield entry


def units(arguments: Iterable[str | bytes], opts: WalkOptions = WalkOptions()) -> Iterator[tuple[Entry, bool]]:
    """The inputs as listed, archives unopened: (entry, whether it is an archive to open)."""
    for argument in arguments:
        uri = is_uri(argument)
        local = local_path(os.fsdecode(argument)) if uri else None
        if local is not None:  # file://: walked and opened like any local path (links not followed, files pinned)
            listed = (replace(e, display="file://" + e.display) for e in _walk_local(local, opts))
            named = local
        elif uri:
            listed, named = _list_uri(os.fsdecode(argument), opts), os.fsencode(argument)
        else:
            listed, named = _walk_local(argument, opts), os.fsencode(argument)
        for entry in listed:
            yield entry, is_archive_argument(entry, opts, named=entry.path == named)


def _walk_local(path: str | bytes, opts: WalkOptions) -> Iterator[Entry]:
    """A directory is walked by a process of its own, while this one scans what it has listed."""
    return walk_ahead([path], opts) if os.path.isdir(path) else walk([path], opts)


def local_path(uri: str) -> bytes | None:
    """A file:// URI as the local path pyarrow would open (percent-decoded its way); None for any
    other scheme. Local files are then read by codescan's own confined opens, never by name
    through pyarrow, which follows every link."""
    if not uri[:5].lower() == "file:":
        return None
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError):
        return None  # listed through pyarrow, which reports why it cannot
    return os.fsencode(path) if isinstance(fs, pafs.LocalFileSystem) else None


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


class Uncountable(Exception):
    """Counting these inputs would cost as much as reading them."""


def is_archive_argument(entry: Entry, opts: WalkOptions, named: bool) -> bool:
    """Named on the command line, an archive is always opened; met in a walk, only with --archives."""
    if entry.error is not None or not (named or opts.archives):
        return False
    from codescan.inputs.archives import archive_kind

    return archive_kind(entry.path) is not None


def expand(entry: Entry, opts: WalkOptions, counting: bool = False) -> Iterator[Entry]:
    """The entries inside the archive or Parquet file `entry`, or its one error record.

    What was listed before a failure stays listed: a tar cut at member 500 gives 500 members and
    then the archive's own error record.
    """
    from codescan.inputs.archives import archive_kind
    from codescan.inputs.isolated import ReaderError, isolated

    kind = archive_kind(entry.path)
    assert kind is not None
    if counting and kind == "tgz":
        raise Uncountable("counting a tar.gz means inflating it: the progress line goes without a total")
    if kind == "parquet":
        from codescan.inputs.parquet import list_rows as produce
    else:
        from codescan.inputs.archives import list_members as produce
    try:
        yield from isolated(produce, entry, kind, opts, counting)
    except ReaderError as exc:
        yield Entry(display=entry.display, path=entry.path, error=(exc.code, exc.message), uri=entry.uri)
