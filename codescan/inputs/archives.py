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
from collections.abc import Iterator
from typing import Literal

from codescan.inputs.tar import _list_tar, _stream_tgz
from codescan.inputs.walk import Entry, WalkOptions
from codescan.inputs.zip import _list_zip

ArchiveKind = Literal["tar", "tgz", "zip", "parquet"]
_SUFFIXES: tuple[tuple[str, ArchiveKind], ...] = (
    (".tar.gz", "tgz"), (".tgz", "tgz"), (".tar", "tar"), (".zip", "zip"), (".parquet", "parquet"),
)


def archive_kind(name: str | bytes) -> ArchiveKind | None:
    low = os.fsdecode(name).lower()
    return next((kind for suffix, kind in _SUFFIXES if low.endswith(suffix)), None)


def list_members(archive: Entry, kind: ArchiveKind, opts: WalkOptions, counting: bool) -> Iterator[Entry]:
    if kind == "zip":
        yield from _list_zip(archive, opts.max_filesize)
    elif kind == "tar":
        yield from _list_tar(archive, opts.max_filesize)
    else:
        yield from _stream_tgz(archive, opts.max_filesize)


# --- zip: the central directory and every member's local header, read by our own bounded parser ---
#
# Python's zipfile trusts each member's local header only when the member is opened, and the
# overlap of members can only be judged from where their data really lies. So a zip is listed
# here: the end record (zip64 aware) says where the central directory is, the entries are parsed
# from the bytes actually there (never looping over a claimed count), and every member's local
# header is read and checked against its central entry before any member is read.



