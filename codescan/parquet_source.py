"""Parquet files as inputs: one entry per row of the image column, one row group in memory at a time.

Runs inside the confined reader (isolated.py), so pyarrow's C++ meets the file in a child that
may crash or run out of memory without costing the scan. The image column is a Hugging Face
``Image`` struct ``{bytes, path}`` or a binary column named like an image (``jpg``, ``png``,
``image``…), found by type and name unless ``--column`` names it. A struct row whose ``bytes``
is null is read from its ``path``, relative to the Parquet file and never outside its folder.
A row group larger than ``max_row_group_bytes()`` (uncompressed, as its metadata declares) is
not read: each of its rows is a ``too_large`` record; a row group that fails to read (a corrupt
page) makes each of its rows a ``corrupt`` record, and the next group is read.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .archives import member_entry
from .isolated import ReaderError
from .fetch import open_input
from .walk import Entry, WalkOptions

if TYPE_CHECKING:
    import pyarrow as pa

MAX_ROW_GROUP_BYTES = 1 << 30  # uncompressed; CODESCAN_MAX_ROW_GROUP_BYTES overrides
_IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")


def max_row_group_bytes() -> int:
    return int(os.environ.get("CODESCAN_MAX_ROW_GROUP_BYTES", MAX_ROW_GROUP_BYTES))


def image_column(schema: pa.Schema, named: str | None) -> tuple[str, bool]:
    """(column, is a {bytes, path} struct); ReaderError when there is none."""
    import pyarrow as pa

    def kind(field: pa.Field) -> str | None:
        t = field.type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and pa.types.is_binary(t.field("bytes").type):
            return "struct"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "binary"
        return None

    if named is not None:
        if named not in schema.names:
            raise ReaderError("unsupported_format", f"no column {named!r} (--column); columns: {', '.join(schema.names)[:200]}")
        found = kind(schema.field(named))
        if found is None:
            raise ReaderError("unsupported_format", f"column {named!r} holds {schema.field(named).type}, not image bytes")
        return named, found == "struct"
    structs = [f.name for f in schema if kind(f) == "struct"]
    if structs:
        return structs[0], True
    binaries = [f.name for f in schema if kind(f) == "binary"]
    by_name = [n for n in binaries if n.lower() in _IMAGE_NAMES]
    if by_name or len(binaries) == 1:
        return (by_name or binaries)[0], False
    # Skipped, like any file without images (img2dataset writes metadata Parquet files beside its shards).
    raise ReaderError("not_an_image", "no image column found (a {bytes, path} struct or a binary column); name it with --column")


def list_rows(archive: Entry, kind: str, opts: WalkOptions, counting: bool) -> Iterator[Entry]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ReaderError("unsupported_format", "reading Parquet needs pyarrow: pip install 'codescan[parquet]'") from None

    with open_input(archive.path, archive.uri) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer
            raise ReaderError("corrupt", f"not a readable Parquet file ({str(exc)[:200]})") from None
        meta = pf.metadata
        if counting:
            for _ in range(meta.num_rows):
                yield archive
            return
        column, is_struct = image_column(pf.schema_arrow, opts.column)
        if opts.id_column is not None and opts.id_column not in pf.schema_arrow.names:
            raise ReaderError("unsupported_format", f"no column {opts.id_column!r} (--id-column)")
        columns = [column] + ([opts.id_column] if opts.id_column and opts.id_column != column else [])
        first = 0
        limit = max_row_group_bytes()
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            size = meta.row_group(group).total_byte_size
            if size > limit:
                message = f"row group {group} holds {size} bytes, limit is {limit} (CODESCAN_MAX_ROW_GROUP_BYTES)"
                yield from _failed(archive, first, rows, "too_large", message)
            else:
                try:
                    table = pf.read_row_group(group, columns=columns)
                except Exception as exc:  # noqa: BLE001 - a corrupt page: this group's rows, not the file
                    yield from _failed(archive, first, rows, "corrupt", f"row group {group} is unreadable ({str(exc)[:200]})")
                else:
                    yield from _row_entries(archive, table, first, column, is_struct, opts)
            first += rows


def _failed(archive: Entry, first: int, rows: int, code: str, message: str) -> Iterator[Entry]:
    for index in range(first, first + rows):
        yield member_entry(archive, index, str(index), str(index), error=(code, message))


def _row_entries(
    archive: Entry, table: pa.Table, first: int, column: str, is_struct: bool, opts: WalkOptions
) -> Iterator[Entry]:
    images = table.column(column).to_pylist()
    ids = table.column(opts.id_column).to_pylist() if opts.id_column else [None] * len(images)
    for offset, (cell, ident) in enumerate(zip(images, ids)):
        index = first + offset
        data, where = (cell.get("bytes"), cell.get("path")) if is_struct and cell is not None else (cell, None)
        key = str(ident) if ident is not None else (where if where else str(index))
        member = where if where else key
        if data is not None:
            if len(data) > opts.max_filesize:
                message = f"image is {len(data)} bytes, limit is {opts.max_filesize} (--max-filesize)"
                yield member_entry(archive, index, member, key, error=("too_large", message))
            else:
                yield member_entry(archive, index, member, key, data=data)
        elif where:
            yield _referenced(archive, index, member, key, where)
        else:
            yield member_entry(archive, index, member, key, error=("corrupt", "the row holds no image bytes and no path"))


def _referenced(archive: Entry, index: int, member: str, key: str, where: str) -> Entry:
    """A struct row whose bytes live in a file beside the Parquet file: that file, if it stays inside the folder."""
    parts = where.replace("\\", "/").split("/")
    if where.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        return member_entry(archive, index, member, key, error=("unsafe_path", "the row's image path leaves the Parquet file's folder; not read"))
    if archive.uri:
        base = os.fsdecode(archive.path).rsplit("/", 1)[0]
        target = os.fsencode(posixpath.join(base, *parts))
    else:
        folder = os.path.dirname(os.path.abspath(archive.path))
        target = os.path.join(folder, os.fsencode(os.path.join(*parts)))
        real_folder = os.path.realpath(folder)
        if os.path.commonpath([os.path.realpath(target), real_folder]) != real_folder:
            return member_entry(archive, index, member, key, error=("unsafe_path", "the row's image path leads outside the Parquet file's folder (a link?); not read"))
    entry = member_entry(archive, index, member, key)
    return Entry(display=entry.display, path=target, uri=archive.uri, origin=entry.origin)

