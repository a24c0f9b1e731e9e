"""Archive members as entries: names, WebDataset keys, and what makes a member not worth reading."""

from __future__ import annotations

from codescan.core.records import Origin
from codescan.inputs.walk import Entry

# Names that make a member an archive in an archive (skipped, not opened): ours and the usual others.
_NESTED = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip", ".7z", ".rar", ".gz", ".parquet")


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


def _nested_member(archive: Entry, index: int, name: str, key: str | None = None) -> Entry:
    return member_entry(archive, index, name, key, error=("nested_archive", "an archive inside an archive is not opened"))


def _too_large(archive: Entry, index: int, name: str, key: str | None, size: int, limit: int) -> Entry:
    return member_entry(archive, index, name, key, error=("too_large", f"member is {size} bytes, limit is {limit} (--max-filesize)"))


def _cut(archive: Entry, index: int, name: str, key: str | None) -> Entry:
    return member_entry(archive, index, name, key, error=("truncated", "the archive ends inside this member"))
