"""Parquet files as inputs: one entry per row of the image column, one row group in memory at a time.

Runs inside the confined reader (isolated.py), so pyarrow's C++ meets the file in a child that
may crash or run out of memory without costing the scan. The image column is a Hugging Face
``Image`` struct ``{bytes, path}`` or a binary column named like an image (``jpg``, ``png``,
``image``…), found by type and name unless ``--column`` names it. A struct row whose ``bytes``
is null is read from its ``path``, relative to the Parquet file and never outside its folder.

Only bytes actually read make records; no count the file declares is believed on its own. The
8-byte trailer is read first: a footer longer than the file or than ``max_footer_bytes()`` is not
handed to pyarrow, which parses it with Thrift limits no larger than the footer itself. Before
anything loops over the footer's counts (the progress line's count included), they are checked
against each other and against the file (``_plan``): the file's rows are the sum of its row
groups' rows, every column chunk has as many values as its group has rows (at least, for
repeated columns) and its bytes lie between the leading magic and the footer, and the file
claims at most ``ROWS_PER_BYTE`` rows per byte of its size. A file that fails is one record
(``corrupt``; ``too_large`` past the density cap). A row group larger than
``max_row_group_bytes()`` (uncompressed, as its metadata declares) is not read, and one that
fails to read (a corrupt page) or decodes to another number of rows than declared is not used: either
is ONE record (``too_large`` or ``corrupt``, its row range in the message) at its first row's
``member_index``, so order and --resume stay deterministic, and the next group is read.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from codescan.inputs.fetch import open_input
from codescan.inputs.isolated import ReaderError
from codescan.inputs.members import member_entry
from codescan.inputs.pinned import Pin
from codescan.inputs.walk import Entry, WalkOptions

if TYPE_CHECKING:
    import pyarrow as pa

MAX_ROW_GROUP_BYTES = 1 << 30  # uncompressed; CODESCAN_MAX_ROW_GROUP_BYTES overrides
MAX_FOOTER_BYTES = 64 << 20  # the Thrift footer; CODESCAN_MAX_PARQUET_FOOTER_BYTES overrides
# Rows a file may claim per byte of its size. An image row costs its image (hundreds of bytes at
# least) or a distinct path (a few bytes); only runs of identical or null cells pack denser (RLE
# codes a run in a few bytes whatever its length), and no image dataset is made of those. 64 per
# byte is hundreds of times what real files hold, and still bounds a lying 1 KB file to 64 K rows.
ROWS_PER_BYTE = 64
ROWS_FLOOR = 1 << 10  # below this many rows the density is not checked
_THRIFT_CONTAINER_LIMIT = 1_000_000  # pyarrow's default; every element costs at least one footer byte
_IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")


def max_row_group_bytes() -> int:
    return int(os.environ.get("CODESCAN_MAX_ROW_GROUP_BYTES", MAX_ROW_GROUP_BYTES))


def max_footer_bytes() -> int:
    return int(os.environ.get("CODESCAN_MAX_PARQUET_FOOTER_BYTES", MAX_FOOTER_BYTES))


@dataclass(frozen=True)
class _Group:
    """A row group as the checked footer describes it; `refusal` (code, message) when it is not read."""

    index: int
    first: int  # its first row's number in the file
    rows: int
    refusal: tuple[str, str] | None = None

    def label(self) -> str:
        return f"row group {self.index} (rows {self.first}-{self.first + self.rows - 1}, {self.rows} rows)"


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
        size, footer = _trailer(fh)
        try:
            # The footer is parsed with Thrift limits it cannot need more than (an element or a
            # string's byte costs at least one footer byte); pages are read with pyarrow's defaults.
            meta = pq.ParquetFile(
                fh, thrift_string_size_limit=footer, thrift_container_size_limit=min(footer, _THRIFT_CONTAINER_LIMIT)
            ).metadata
            pf = pq.ParquetFile(fh, metadata=meta)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer
            raise ReaderError("corrupt", f"not a readable Parquet file ({str(exc)[:200]})") from None
        column, is_struct = image_column(pf.schema_arrow, opts.column)
        if opts.id_column is not None and opts.id_column not in pf.schema_arrow.names:
            raise ReaderError("unsupported_format", f"no column {opts.id_column!r} (--id-column)")
        columns = [column] + ([opts.id_column] if opts.id_column and opts.id_column != column else [])
        groups = _plan(pf, size, footer, columns)
        for group in groups:
            if counting:  # what the listing will emit: one record for a group that is not read
                for _ in range(1 if group.refusal else group.rows):
                    yield archive
                continue
            if group.refusal is not None:
                yield _failed(archive, group, *group.refusal)
                continue
            try:
                table = pf.read_row_group(group.index, columns=columns)
            except Exception as exc:  # noqa: BLE001 - a corrupt page: this group's record, not the file's
                yield _failed(archive, group, "corrupt", f"{group.label()} is unreadable ({str(exc)[:200]}); its rows are not read")
                continue
            if table.num_rows != group.rows:
                message = f"{group.label()} decodes to {table.num_rows} rows, not the {group.rows} its metadata declares; not used"
                yield _failed(archive, group, "corrupt", message)
                continue
            yield from _row_entries(archive, table, group.first, column, is_struct, opts)


def _trailer(fh: IO[bytes]) -> tuple[int, int]:
    """(file size, footer length) from the file's own last 8 bytes, refused before pyarrow parses them."""
    size = fh.seek(0, os.SEEK_END)
    if size < 12:
        raise ReaderError("corrupt", f"not a Parquet file: {size} bytes, too short for its magic and footer")
    fh.seek(size - 8)
    tail = fh.read(8)
    fh.seek(0)
    head = fh.read(4)
    fh.seek(0)
    if len(tail) == 8 and tail[4:] == b"PARE":
        raise ReaderError("encrypted", "the Parquet file's footer is encrypted; not read")
    if len(tail) != 8 or tail[4:] != b"PAR1" or head != b"PAR1":
        raise ReaderError("corrupt", "not a Parquet file: no PAR1 magic at its start and end (cut short?)")
    footer = int.from_bytes(tail[:4], "little")
    if footer == 0 or footer > size - 12:
        raise ReaderError("corrupt", f"not a readable Parquet file: its footer claims {footer} bytes, the file holds {size - 12} besides its magic")
    limit = max_footer_bytes()
    if footer > limit:
        raise ReaderError("too_large", f"its Parquet footer is {footer} bytes, limit is {limit} (CODESCAN_MAX_PARQUET_FOOTER_BYTES); not read")
    return size, footer


def _leaves(pf: object, columns: list[str]) -> set[int]:
    """The leaf column chunks (their numbers) of the top-level `columns`."""
    try:
        paths = [list(p) for p in pf.reader.column_paths]  # type: ignore[attr-defined]
    except AttributeError:  # a pyarrow without it: dotted paths
        paths = [pf.schema.column(i).path.split(".") for i in range(len(pf.schema))]  # type: ignore[attr-defined]
    return {i for i, path in enumerate(paths) if path and path[0] in columns}


def _plan(pf: object, size: int, footer: int, columns: list[str]) -> list[_Group]:
    """The row groups, once the footer's counts agree with each other and with the file; ReaderError
    (one record for the file) when they do not. Nothing here loops over a declared count: row
    groups and column chunks are lists the footer physically holds (at most its length)."""
    meta = pf.metadata  # type: ignore[attr-defined]
    data_end = size - 8 - footer  # column chunks lie in [4, data_end)
    limit = max_row_group_bytes()
    read = _leaves(pf, columns)
    schema = pf.schema  # type: ignore[attr-defined]

    def corrupt(why: str) -> ReaderError:
        return ReaderError("corrupt", f"inconsistent Parquet footer: {why}; not read")

    groups: list[_Group] = []
    first = 0
    try:
        if meta.num_rows < 0:
            raise corrupt(f"it claims {meta.num_rows} rows")
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            rows = rg.num_rows
            if rows < 0 or rg.total_byte_size < 0:
                raise corrupt(f"row group {g} claims {rows} rows of {rg.total_byte_size} bytes")
            if rg.num_columns != meta.num_columns:
                raise corrupt(f"row group {g} has {rg.num_columns} column chunks, the schema {meta.num_columns} columns")
            uncompressed = 0
            for j in range(rg.num_columns):
                col = rg.column(j)
                if col.num_values < 0 or col.total_compressed_size < 0 or col.total_uncompressed_size < 0:
                    raise corrupt(f"row group {g}, column {col.path_in_schema!r} claims negative counts or sizes")
                if j in read:
                    if col.file_path:
                        raise ReaderError("unsupported_format", f"column {col.path_in_schema!r} lives in another file ({col.file_path[:100]!r}); not read")
                    repeated = schema.column(j).max_repetition_level > 0  # a row is at least one value
                    if (col.num_values < rows) if repeated else (col.num_values != rows):
                        raise corrupt(f"row group {g} claims {rows} rows, its column {col.path_in_schema!r} {col.num_values} values")
                    uncompressed += col.total_uncompressed_size
                if not col.file_path:
                    start = col.data_page_offset
                    if col.has_dictionary_page and 0 < col.dictionary_page_offset < start:
                        start = col.dictionary_page_offset
                    if start < 4 or start + col.total_compressed_size > data_end:
                        raise corrupt(
                            f"row group {g}, column {col.path_in_schema!r} claims bytes {start}-{start + col.total_compressed_size}, "
                            f"outside the file's data (4-{data_end})"
                        )
            declared = max(rg.total_byte_size, uncompressed)
            group = _Group(g, first, rows)
            if declared > limit:
                message = f"{group.label()} holds {declared} bytes, limit is {limit} (CODESCAN_MAX_ROW_GROUP_BYTES); its rows are not read"
                group = _Group(g, first, rows, ("too_large", message))
            if rows:
                groups.append(group)
            first += rows
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow refuses some footers only when asked for a part
        raise ReaderError("corrupt", f"not a readable Parquet file ({str(exc)[:200]})") from None
    if first != meta.num_rows:
        raise corrupt(f"it claims {meta.num_rows} rows, its row groups {first}")
    cap = max(ROWS_FLOOR, ROWS_PER_BYTE * size)
    if first > cap:
        raise ReaderError("too_large", f"its footer claims {first} rows in {size} bytes, more than {ROWS_PER_BYTE} per byte (a Parquet bomb?); not read")
    return groups


def _failed(archive: Entry, group: _Group, code: str, message: str) -> Entry:
    """A row group not read: one record, at its first row (a record per declared row would let a
    footer's number decide how many records a scan writes)."""
    member = f"rows {group.first}-{group.first + group.rows - 1}"
    return member_entry(archive, group.first, member, None, error=(code, message))


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
    """A struct row whose bytes live in a file beside the Parquet file: that file, kept inside the folder.

    Local files (file:// URIs were made local paths when listed) are opened component by
    component below the folder without following links (pinned.py), so a link anywhere on the
    row's path is refused when the file is opened, not judged from the text now.
    """
    parts = where.replace("\\", "/").split("/")
    if where.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        return member_entry(archive, index, member, key, error=("unsafe_path", "the row's image path leaves the Parquet file's folder; not read"))
    parts = [p for p in parts if p not in ("", ".")]
    entry = member_entry(archive, index, member, key)
    if not parts:
        return member_entry(archive, index, member, key, error=("unsafe_path", "the row's image path names no file; not read"))
    if archive.uri:  # an object store: no links to follow
        base = os.fsdecode(archive.path).rsplit("/", 1)[0]
        return Entry(display=entry.display, path=os.fsencode(posixpath.join(base, *parts)), uri=True, origin=entry.origin)
    folder = os.path.dirname(os.path.abspath(archive.path))
    target = os.path.join(folder, *(os.fsencode(p) for p in parts))
    return Entry(display=entry.display, path=target, origin=entry.origin, pin=Pin(beneath=len(parts)))
