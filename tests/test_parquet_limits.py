"""Parquet files whose footer lies (security finding R1, issue #23): only bytes actually read make
records. A count the footer declares (rows, values, sizes, its own length) is checked before
anything loops over it, the progress count included; a row group that is not read is one record at
its first row; a file whose footer contradicts itself or claims more rows than its size can hold is
one record for the file. The hostile files are built here, by rewriting a real footer."""

from __future__ import annotations

import io
import itertools
import json
import struct
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_kit import tiny_png
from conftest import run_cli

from codescan.inputs.isolated import ReaderError
from codescan.inputs.parquet import ROWS_PER_BYTE, list_rows
from codescan.inputs.sources import entries
from codescan.inputs.walk import Entry, WalkOptions

MOST = 50  # a listing is cut here: a lying footer must not get near it

# A minimal Thrift compact codec (the shape of shared/security/round2/thrift_compact.py) that can
# also lie: a list ["list", elem_type, items, claimed] or a Lie string encodes `claimed` as its length.


class Lie(bytes):
    claimed: int


def lie(data: bytes, claimed: int) -> Lie:
    out = Lie(data)
    out.claimed = claimed
    return out


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return out, i


def _enc_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        c, n = n & 0x7F, n >> 7
        if not n:
            out.append(c)
            return bytes(out)
        out.append(c | 0x80)


def _value(b: bytes, i: int, t: int):
    if t in (4, 5, 6):
        v, i = _uvarint(b, i)
        return (v >> 1) ^ -(v & 1), i
    if t == 3:
        return struct.unpack_from("b", b, i)[0], i + 1
    if t == 7:
        return struct.unpack_from("<d", b, i)[0], i + 8
    if t == 8:
        n, i = _uvarint(b, i)
        return bytes(b[i : i + n]), i + n
    if t in (9, 10):
        size, et = b[i] >> 4, b[i] & 0x0F
        i += 1
        if size == 15:
            size, i = _uvarint(b, i)
        items = []
        for _ in range(size):
            if et in (1, 2):
                items.append(b[i] == 1)
                i += 1
            else:
                v, i = _value(b, i, et)
                items.append(v)
        return ["list", et, items], i
    if t == 12:
        return _decode(b, i)
    raise ValueError(f"thrift type {t}")


def _decode(b: bytes, i: int = 0):
    fields, last = [], 0
    while True:
        h = b[i]
        i += 1
        if h == 0:
            return fields, i
        delta, t = h >> 4, h & 0x0F
        if delta:
            fid = last + delta
        else:
            v, i = _uvarint(b, i)
            fid = (v >> 1) ^ -(v & 1)
        val, i = (t == 1, i) if t in (1, 2) else _value(b, i, t)
        fields.append([fid, t, val])
        last = fid


def _enc(t: int, v) -> bytes:
    if t in (4, 5, 6):
        return _enc_uvarint((v << 1) ^ (v >> 63))
    if t == 3:
        return struct.pack("b", v)
    if t == 7:
        return struct.pack("<d", v)
    if t == 8:
        return _enc_uvarint(getattr(v, "claimed", len(v))) + v
    if t in (9, 10):
        _, et, items, *claimed = v
        n = claimed[0] if claimed else len(items)
        head = bytes([(n << 4) | et]) if n < 15 else bytes([0xF0 | et]) + _enc_uvarint(n)
        return head + b"".join((b"\x01" if x else b"\x02") if et in (1, 2) else _enc(et, x) for x in items)
    if t == 12:
        return _encode(v)
    raise ValueError(t)


def _encode(fields) -> bytes:
    out, last = bytearray(), 0
    for fid, t, val in fields:
        tt = (1 if val else 2) if t in (1, 2) else t
        d = fid - last
        out += bytes([(d << 4) | tt]) if 0 < d <= 15 else bytes([tt]) + _enc(4, fid)
        if t not in (1, 2):
            out += _enc(t, val)
        last = fid
    out.append(0)
    return bytes(out)


def field(fields, fid: int):
    return next(f for f in fields if f[0] == fid)


def rewrite(data: bytes, change) -> bytes:
    """The Parquet file `data` with its footer (FileMetaData) decoded, changed by `change(meta)`, re-encoded."""
    n = struct.unpack_from("<I", data, len(data) - 8)[0]
    start = len(data) - 8 - n
    meta, end = _decode(data, start)
    assert end == len(data) - 8
    change(meta)
    footer = _encode(meta)
    return data[:start] + footer + struct.pack("<I", len(footer)) + b"PAR1"


# FileMetaData: 2 schema, 3 num_rows, 4 row_groups, 5 key_value_metadata. RowGroup: 1 columns,
# 2 total_byte_size, 3 num_rows. ColumnChunk: 3 meta_data. ColumnMetaData: 5 num_values, 7 total_compressed_size.


def groups_of(meta) -> list:
    return field(meta, 4)[2][2]


def chunks_of(group) -> list:
    return [field(chunk, 3)[2] for chunk in field(group, 1)[2][2]]


def claim(rows: int, group_bytes: int | None = None, values: bool = True, file_rows: int | None = None, compressed: int | None = None):
    """A footer change: the file and its (one) row group claim `rows` rows, and optionally its
    column chunks as many values, the group `group_bytes` bytes, the chunks `compressed` bytes."""

    def change(meta) -> None:
        field(meta, 3)[2] = rows if file_rows is None else file_rows
        for group in groups_of(meta):
            field(group, 3)[2] = rows
            if group_bytes is not None:
                field(group, 2)[2] = group_bytes
            for chunk in chunks_of(group):
                if values:
                    field(chunk, 5)[2] = rows
                if compressed is not None:
                    field(chunk, 7)[2] = compressed

    return change


def parquet_bytes(images: list[bytes | None], row_group_size: int = 64) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(images, pa.binary())}), buf, row_group_size=row_group_size)
    return buf.getvalue()


@pytest.fixture(scope="module")
def one_row() -> bytes:
    """The R1 kit's base: a Parquet file of ONE small image row (about 1.7 KB)."""
    return parquet_bytes([tiny_png(1, (8, 8))])


def listed(path: Path, counting: bool = False, most: int = MOST) -> list[Entry]:
    """What the scan lists for `path` (in this process: what expand() does in its child), cut at `most`."""
    archive = Entry(display=str(path), path=bytes(path))
    try:
        return list(itertools.islice(list_rows(archive, "parquet", WalkOptions(), counting), most))
    except ReaderError as exc:
        return [Entry(display=archive.display, path=archive.path, error=(exc.code, exc.message))]


def scanned(path: Path, counting: bool = False, most: int = MOST) -> list[Entry]:
    """What the scan lists for `path`, through the confined reader child (isolated.py)."""
    listing = entries([str(path)], WalkOptions(), counting=counting)
    try:
        return list(itertools.islice(listing, most))
    finally:
        listing.close()  # kills the child of a listing cut short


# The R1 kit's file and variants of it built the same way: each must cost one record, listed or counted.
LIES = {
    # the kit: file and group claim 10**15 rows, the group 2**50 bytes; the column chunk says 1 value
    "kit": (claim(10**15, 1 << 50, values=False), "corrupt", "its column 'image' 1 values"),
    # every count agrees with the others: only the file's size gives the lie away
    "consistent": (claim(10**15, 1 << 50), "too_large", f"more than {ROWS_PER_BYTE} per byte"),
    # the file alone claims 10**15 rows; its row group is honest (counting looped over the file's number)
    "file-only": (claim(1, file_rows=10**15), "corrupt", "its row groups 1"),
    # 20,000 rows agree everywhere and fit the density cap, in a group declared too large to read
    "too-large-group": (claim(20_000, 1 << 50), "too_large", "(rows 0-19999, 20000 rows) holds 1125899906842624 bytes"),
    # the same group declared small: pyarrow decodes the one row there is, not the 20,000 declared
    "short-group": (claim(20_000), "corrupt", "decodes to 1 rows, not the 20000"),
    # a column chunk whose bytes run past the end of the file
    "chunk-outside": (claim(20_000, compressed=1 << 40), "corrupt", "outside the file's data"),
}


@pytest.mark.parametrize("name", list(LIES))
def test_a_lying_footer_costs_one_record(one_row, tmp_path, name):
    change, code, words = LIES[name]
    path = tmp_path / f"{name}.parquet"
    path.write_bytes(rewrite(one_row, change))
    records = listed(path)
    assert len(records) == 1, [r.error for r in records[:3]]
    assert records[0].error[0] == code and words in records[0].error[1], records[0].error
    assert records[0].origin is None or records[0].origin.member_index == 0
    counted = len(listed(path, counting=True, most=30_000))
    if name == "short-group":  # only reading tells that a group's pages lie: counted as declared, within the cap
        assert counted == 20_000 <= ROWS_PER_BYTE * path.stat().st_size
    else:
        assert counted == 1  # the progress total counts what is emitted


def test_the_kit_file_through_the_confined_reader(one_row, tmp_path):
    path = tmp_path / "lie.parquet"
    path.write_bytes(rewrite(one_row, LIES["kit"][0]))
    started = time.monotonic()
    records, counted = scanned(path), scanned(path, counting=True)
    assert [r.error[0] for r in records] == ["corrupt"] and len(counted) == 1
    assert time.monotonic() - started < 30


def test_density_cap_holds_for_real_rows_too(tmp_path):
    """100,000 null cells RLE-encode to a few hundred bytes: real rows, but not an image dataset."""
    dense = tmp_path / "dense.parquet"
    dense.write_bytes(parquet_bytes([None] * 100_000, row_group_size=100_000))
    assert 100_000 > ROWS_PER_BYTE * dense.stat().st_size
    assert [r.error[0] for r in listed(dense)] == ["too_large"]
    sparse = tmp_path / "sparse.parquet"  # 1,000 rows: below the floor, each row its own record
    sparse.write_bytes(parquet_bytes([None] * 1000))
    assert len(listed(sparse, most=2000)) == 1000


@pytest.fixture(scope="module")
def three_groups() -> bytes:
    """Nine image rows in three row groups of three; the middle group declared 2**50 bytes."""

    def change(meta) -> None:
        field(groups_of(meta)[1], 2)[2] = 1 << 50

    return rewrite(parquet_bytes([tiny_png(i, (8, 8)) for i in range(9)], row_group_size=3), change)


def test_a_group_not_read_is_one_record_at_its_first_row(three_groups, tmp_path):
    path = tmp_path / "groups.parquet"
    path.write_bytes(three_groups)
    records = listed(path)
    assert [r.origin.member_index for r in records] == [0, 1, 2, 3, 6, 7, 8]
    assert [r.error and r.error[0] for r in records] == [None] * 3 + ["too_large"] + [None] * 3
    refused = records[3]
    assert refused.origin.member == "rows 3-5" and refused.origin.key is None
    assert "row group 1 (rows 3-5, 3 rows) holds 1125899906842624 bytes" in refused.error[1]
    assert len(listed(path, counting=True)) == len(records)


def test_resume_after_a_group_not_read(home, three_groups, tmp_path):
    """A resumed scan neither repeats nor loses the group's record, wherever the first run stopped."""
    path = tmp_path / "groups.parquet"
    path.write_bytes(three_groups)
    args = ("scan", str(path), "-q", "--no-cache")
    full = run_cli(*args)
    lines = full.stdout.decode().splitlines()
    results = [json.loads(x) for x in lines if json.loads(x)["type"] == "result"]
    assert [(r["member_index"], r.get("error_code")) for r in results] == [
        (0, None), (1, None), (2, None), (3, "too_large"), (6, None), (7, None), (8, None)
    ]
    out = tmp_path / "out.jsonl"
    for kept in (3, 4):  # stopped before the group's record (plus a torn line), and just after it
        out.write_text("\n".join(lines[: 1 + kept]) + "\n" + lines[1 + kept][:20])
        again = run_cli(*args, "--resume", str(out))
        assert again.returncode == full.returncode, again.stderr.decode()[-2000:]
        assert out.read_text().splitlines()[:-1] == lines[:-1]  # all but the summary (its timings differ)


def test_footer_length_is_checked_before_pyarrow(one_row, tmp_path, monkeypatch):
    claims_gigabytes = tmp_path / "footer-3gb.parquet"
    claims_gigabytes.write_bytes(one_row[:-8] + struct.pack("<I", 3 << 30) + b"PAR1")
    assert [r.error[0] for r in listed(claims_gigabytes)] == ["corrupt"]
    assert "footer claims 3221225472 bytes" in listed(claims_gigabytes)[0].error[1]
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(one_row[: len(one_row) // 2])
    assert [r.error[0] for r in listed(cut)] == ["corrupt"]
    encrypted = tmp_path / "encrypted.parquet"
    encrypted.write_bytes(b"PARE" + one_row[4:-4] + b"PARE")
    assert [r.error[0] for r in listed(encrypted)] == ["encrypted"]
    # a footer over the cap (64 MiB by default) is not parsed: here a real 1 KB footer and a 100-byte cap
    path = tmp_path / "ok.parquet"
    path.write_bytes(one_row)
    assert [r.error for r in listed(path)] == [None]
    monkeypatch.setenv("CODESCAN_MAX_PARQUET_FOOTER_BYTES", "100")
    [record] = listed(path)
    assert record.error[0] == "too_large" and "(CODESCAN_MAX_PARQUET_FOOTER_BYTES)" in record.error[1]


def _huge_schema(meta) -> None:  # a schema list claiming 10**9 elements (or just under pyarrow's own limit)
    field(meta, 2)[2].append(10**9)


def _almost_huge_schema(meta) -> None:
    field(meta, 2)[2].append(999_999)


def _huge_string(meta) -> None:  # a key_value_metadata value claiming 90 MB (pyarrow's own limit is 100 MB)
    field(meta, 5)[2][2].append([[1, 8, b"k"], [2, 8, lie(b"v", 90_000_000)]])


def _huge_column_name(meta) -> None:  # the first schema element's name claiming 2**31 - 1 bytes
    first = field(meta, 2)[2][2][0]
    name = field(first, 4)
    name[2] = lie(name[2], (1 << 31) - 1)


@pytest.mark.parametrize("change", [_huge_schema, _almost_huge_schema, _huge_string, _huge_column_name])
def test_huge_footer_claims_end_as_one_record_quickly(one_row, tmp_path, change):
    path = tmp_path / "huge.parquet"
    path.write_bytes(rewrite(one_row, change))
    started = time.monotonic()
    records = scanned(path)
    assert [(r.error or ("", ""))[0] for r in records] == ["corrupt"], [r.error for r in records]
    assert time.monotonic() - started < 10
