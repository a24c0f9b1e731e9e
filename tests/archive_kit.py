"""Hostile archives and Parquet files for tests, one builder each.

Every builder writes to the path it is given and returns it; large payloads are streamed in
1 MiB chunks, so none holds more than a few MB in memory.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PNG_SIG = b"\x89PNG\r\n\x1a\n"
_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK))
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest date a zip header can carry


def _pixels(seed: int, size: tuple[int, int]) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def tiny_jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A valid JPEG of random pixels (size is width, height): filler that a scanner must decode."""
    return _encode(_pixels(seed, size), "JPEG")


def tiny_png(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A valid PNG of random pixels (size is width, height): filler that a scanner must decode."""
    return _encode(_pixels(seed, size), "PNG")


def _png_zeros(total: int) -> Iterator[memoryview | bytes]:
    """PNG signature then zeros, `total` bytes in all, in chunks of at most 1 MiB."""
    yield PNG_SIG
    left = total - len(PNG_SIG)
    while left > 0:
        n = min(left, _CHUNK)
        yield _ZEROS[:n]
        left -= n


def _write_tar(fileobj: BinaryIO, members: list[tuple[str, bytes]], mode: str) -> None:
    with tarfile.open(fileobj=fileobj, mode=mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)  # addfile keeps the name as given; add() would strip "/"
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _write_zip(fileobj: BinaryIO, members: list[tuple[str, bytes]], compression: int) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        with zipfile.ZipFile(fileobj, "w") as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name)
                info.compress_type = compression
                zf.writestr(info, data)


def tar_of(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    """Tar ("w") or gzip tar ("w:gz") with names verbatim: duplicates, "/abs" and "../" escapes
    are how a tar overwrites files outside the extraction folder."""
    path = Path(path)
    with path.open("wb") as f:
        _write_tar(f, members, mode)
    return path


def zip_of(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """Zip with names verbatim (duplicates, absolute, "../"): the zip-slip and shadowing attacks."""
    path = Path(path)
    with path.open("wb") as f:
        _write_zip(f, members, compression)
    return path


def webdataset_shard(path: Path, samples: list[tuple[str, bytes, str]]) -> Path:
    """A WebDataset / img2dataset shard (key.jpg, key.json, key.txt per sample): the layout real
    training sets ship in, so scanners must group members by key."""
    members: list[tuple[str, bytes]] = []
    for key, jpeg, caption in samples:
        members += [
            (f"{key}.jpg", jpeg),
            (f"{key}.json", json.dumps({"key": key, "caption": caption}).encode()),
            (f"{key}.txt", caption.encode()),
        ]
    return tar_of(path, members)


def zip_bomb(path: Path, inflated: int = 64 << 20, name: str = "bomb.png") -> Path:
    """One deflated member that inflates to `inflated` bytes (PNG signature, then zeros), ~1000:1:
    a scanner that reads members whole runs out of memory."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(name, "w", force_zip64=inflated > zipfile.ZIP64_LIMIT) as member:
            for chunk in _png_zeros(inflated):
                member.write(chunk)
    return path


def _local_header(name: bytes, flags: int, method: int, crc: int, csize: int, usize: int) -> bytes:
    return struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, _DOS_DATE, crc, csize, usize, len(name), 0
    ) + name


def _central_entry(
    name: bytes, flags: int, method: int, crc: int, csize: int, usize: int, offset: int
) -> bytes:
    return struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50, 20, 20, flags, method, 0, _DOS_DATE, crc, csize, usize, len(name), 0, 0, 0, 0, 0,
        offset,
    ) + name


def _end_of_central_directory(entries: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, cd_size, cd_offset, 0)


def overlapping_zip(path: Path, copies: int = 50, inflated: int = 8 << 20) -> Path:
    """Fifield's non-recursive zip bomb, simplest form: `copies` central-directory entries
    (f000.png, ...) all pointing at one local header, so the file inflates to copies x inflated.
    Only f000.png matches that header's name."""
    path = Path(path)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc, parts = 0, []
    for chunk in _png_zeros(inflated):
        crc = zlib.crc32(chunk, crc)
        parts.append(comp.compress(chunk))
    parts.append(comp.flush())
    data = b"".join(parts)
    names = [f"f{i:03d}.png".encode() for i in range(copies)]
    local = _local_header(names[0], 0, zipfile.ZIP_DEFLATED, crc, len(data), inflated)
    cd = b"".join(
        _central_entry(n, 0, zipfile.ZIP_DEFLATED, crc, len(data), inflated, 0) for n in names
    )
    path.write_bytes(local + data + cd + _end_of_central_directory(copies, len(cd), len(local) + len(data)))
    return path


def encrypted_zip(path: Path, name: str = "secret.jpg", payload: bytes | None = None) -> Path:
    """A stored member flagged encrypted (bit 0) in both headers: its content cannot be inspected,
    and a scanner must report that rather than pass it as clean. payload defaults to tiny_jpeg()."""
    path = Path(path)
    data = tiny_jpeg() if payload is None else payload
    raw, crc = name.encode(), zlib.crc32(data)
    local = _local_header(raw, 1, zipfile.ZIP_STORED, crc, len(data), len(data))
    cd = _central_entry(raw, 1, zipfile.ZIP_STORED, crc, len(data), len(data), 0)
    path.write_bytes(local + data + cd + _end_of_central_directory(1, len(cd), len(local) + len(data)))
    return path


def tar_claiming(path: Path, claimed: int = 100 << 30, name: str = "huge.jpg") -> Path:
    """A GNU tar header declaring `claimed` bytes followed by one small JPEG and EOF: a scanner
    that trusts the size preallocates or waits for data that never comes."""
    path = Path(path)
    info = tarfile.TarInfo(name)
    info.size = claimed
    path.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + tiny_jpeg())
    return path


def truncated(src: Path, dst: Path, keep: float = 0.6) -> Path:
    """The first `keep` fraction of src: a download cut short, which must fail cleanly."""
    src, dst = Path(src), Path(dst)
    left = int(src.stat().st_size * keep)
    with src.open("rb") as fin, dst.open("wb") as fout:
        while left > 0:
            chunk = fin.read(min(left, _CHUNK))
            fout.write(chunk)
            left -= len(chunk)
    return dst


def nested(path: Path, inner_kind: str) -> Path:
    """A tar holding inner.zip ("zip") or a zip holding inner.tar ("tar"), each with inner.jpg,
    then outer.jpg: images hidden one archive deep, and a member after the nested one."""
    path = Path(path)
    inner = io.BytesIO()
    inner_members = [("inner.jpg", tiny_jpeg(1))]
    outer_jpg = ("outer.jpg", tiny_jpeg(2))
    if inner_kind == "zip":
        _write_zip(inner, inner_members, zipfile.ZIP_STORED)
        return tar_of(path, [("inner.zip", inner.getvalue()), outer_jpg])
    if inner_kind == "tar":
        _write_tar(inner, inner_members, "w")
        return zip_of(path, [("inner.tar", inner.getvalue()), outer_jpg])
    raise ValueError(f"inner_kind must be 'zip' or 'tar', not {inner_kind!r}")


def parquet_images(
    path: Path,
    images: list[bytes | None],
    ids: list[str] | None = None,
    style: str = "hf",
    row_group_size: int = 64,
    paths: list[str | None] | None = None,
) -> Path:
    """Images inside Parquet, as datasets on the Hub ship them.

    "hf": `image` struct<bytes, path> (the `datasets` Image feature, with its schema metadata),
    bytes may be None where a path is given; plus `id` if ids. "binary": `jpg` binary; plus `key`.
    """
    path = Path(path)
    if style == "hf":
        image = pa.array(
            [{"bytes": b, "path": p} for b, p in zip(images, paths or [None] * len(images))],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
        columns, features = {"image": image}, {"image": {"_type": "Image"}}
        if ids is not None:
            columns["id"] = pa.array(ids, pa.string())
            features["id"] = {"dtype": "string", "_type": "Value"}
        meta = {"huggingface": json.dumps({"info": {"features": features}})}
        table = pa.table(columns, metadata=meta)
    elif style == "binary":
        columns = {"jpg": pa.array(images, pa.binary())}
        if ids is not None:
            columns["key"] = pa.array(ids, pa.string())
        table = pa.table(columns)
    else:
        raise ValueError(f"style must be 'hf' or 'binary', not {style!r}")
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def corrupt_parquet_page(src: Path, dst: Path) -> Path:
    """A copy of a parquet_images file whose first image data page header in row group 0 is garbage:
    the footer parses and other row groups read, but that row group must fail cleanly, not crash."""
    src, dst = Path(src), Path(dst)
    rg = pq.ParquetFile(src).metadata.row_group(0)
    col = next(
        rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema in ("image.bytes", "jpg")
    )
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    n = min(64, start + col.total_compressed_size - col.data_page_offset)
    shutil.copyfile(src, dst)
    with dst.open("r+b") as f:
        f.seek(col.data_page_offset)
        f.write(b"\xff" * n)
    return dst


# --- Zips whose headers lie, and tars whose headers claim too much (security round 2, R6; #23) ---

_LOCAL_FIELDS = {"flags": (6, "H"), "method": (8, "H"), "crc": (14, "I"), "csize": (18, "I"), "usize": (22, "I")}
_ZIP64_EXTRA = struct.Struct("<HH")


def flat_png(limit: int = 1 << 20) -> bytes:
    """An uncompressed (compress_level=0) black PNG just under `limit` bytes: deflate shrinks it ~1000x,
    and at 1 MiB inflated it sits at the floor below which no ratio is checked."""
    side = 590
    while True:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (0, 0, 0)).save(buf, "PNG", compress_level=0)
        if len(buf.getvalue()) <= limit:
            return buf.getvalue()
        side -= 4


def shared_kernel_zip(path: Path, count: int = 40, names_agree: bool = True, plain: bytes | None = None) -> Path:
    """Security round 2, R6: `count` local headers spaced 30 + kernel bytes apart (what an overlap check that
    puts the data 30 bytes after each header wants), each jumping to ONE deflate kernel of `plain` (default
    flat_png()) through its local name/extra lengths. names_agree: each local header carries its member's own
    name and pads with its extra field, so only the real data ranges tell; else the pad is the name (the
    kit's form: zero bytes that disagree with the central directory)."""
    path, plain = Path(path), flat_png() if plain is None else plain
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = comp.compress(plain) + comp.flush()
    crc, step = zlib.crc32(plain), 30 + len(kernel)
    data_at = count * step
    names = [f"m{i:03d}.png".encode() for i in range(count)]
    body = bytearray()
    for i, name in enumerate(names):
        gap = data_at - (i * step + 30)
        if names_agree:
            local_name, extra = name, gap - len(name)
        else:
            local_name, extra = b"\0" * min(gap, 0xFFFF), gap - min(gap, 0xFFFF)
        if not 0 <= extra <= 0xFFFF:
            raise ValueError("too many members for one kernel: local extra fields hold at most 65535 bytes")
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, _DOS_DATE, crc, len(kernel), len(plain), len(local_name), extra)
        body += (head + local_name + b"\0" * extra)[:step]  # the next header starts inside this one's name/extra
    body += kernel
    cd = b"".join(_central_entry(n, 0, 8, crc, len(kernel), len(plain), i * step) for i, n in enumerate(names))
    path.write_bytes(bytes(body) + cd + _end_of_central_directory(count, len(cd), len(body)))
    return path


def spread_kernel_zip(path: Path, count: int = 40, plain: bytes | None = None) -> Path:
    """`count` members, each its own copy of one ~1 KB deflate kernel of a 1 MiB image: no bytes shared,
    every member under the per-member ratio floor, the archive as a whole ~1000:1."""
    plain = flat_png() if plain is None else plain
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = comp.compress(plain) + comp.flush()
    crc, body, cd = zlib.crc32(plain), bytearray(), bytearray()
    for i in range(count):
        name = f"s{i:03d}.png".encode()
        cd += _central_entry(name, 0, 8, crc, len(kernel), len(plain), len(body))
        body += _local_header(name, 0, 8, crc, len(kernel), len(plain)) + kernel
    Path(path).write_bytes(bytes(body + cd) + _end_of_central_directory(count, len(cd), len(body)))
    return Path(path)


def zip_offsets(path: Path) -> list[int]:
    """Where each member's local header is, as the central directory says (zipfile's reading)."""
    with zipfile.ZipFile(path) as zf:
        return [info.header_offset for info in zf.infolist()]


def patch_local(path: Path, index: int, name: bytes | None = None, **fields: int) -> Path:
    """Rewrite member `index`'s local header in place: `name` (same length), flags, method, crc, csize, usize;
    the central directory keeps its own values, so the two disagree."""
    at = zip_offsets(path)[index]
    raw = bytearray(Path(path).read_bytes())
    for field, value in fields.items():
        offset, code = _LOCAL_FIELDS[field]
        struct.pack_into("<" + code, raw, at + offset, value)
    if name is not None:
        n_len = struct.unpack_from("<H", raw, at + 26)[0]
        if len(name) != n_len:
            raise ValueError("the local name must keep its length")
        raw[at + 30 : at + 30 + n_len] = name
    Path(path).write_bytes(bytes(raw))
    return Path(path)


class _Unseekable(io.RawIOBase):
    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        return self.sink.write(b)


def streamed_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip written to a stream that cannot seek, as zipfile (and most streaming writers) do it: every
    member flagged with a data descriptor (bit 3), zero CRC and sizes in its local header, the real ones
    after its data."""
    path = Path(path)
    with path.open("wb") as f, zipfile.ZipFile(_Unseekable(f), "w", compression) as zf:  # type: ignore[arg-type]
        for name, data in members:
            zf.writestr(name, data)
    return path


def stored_zip64(
    path: Path,
    members: list[tuple[str, bytes]],
    central_lies: dict[int, dict[str, int]] | None = None,
    local_lies: dict[int, dict[str, int]] | None = None,
    end_lies: dict[str, int] | None = None,
) -> Path:
    """Stored members written the zip64 way throughout: sizes (and the central offset) 0xFFFFFFFF in the
    headers, the values in zip64 extra fields (tag 1), a zip64 end record and locator, the classic end
    record's counts 0xFFFF. Genuine without lies. central_lies[i] / local_lies[i] replace member i's zip64
    values (usize, csize; central: offset too); end_lies those of the zip64 end record (entries,
    cd_size, cd_offset)."""
    path = Path(path)
    central_lies, local_lies, end_lies = central_lies or {}, local_lies or {}, end_lies or {}
    body, cd = bytearray(), bytearray()
    u32 = 0xFFFFFFFF
    for i, (name, data) in enumerate(members):
        raw, crc = name.encode(), zlib.crc32(data)
        local = {"usize": len(data), "csize": len(data), **local_lies.get(i, {})}
        extra = _ZIP64_EXTRA.pack(1, 16) + struct.pack("<QQ", local["usize"], local["csize"])
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, _DOS_DATE, crc, u32, u32, len(raw), len(extra))
        central = {"usize": len(data), "csize": len(data), "offset": len(body), **central_lies.get(i, {})}
        c_extra = _ZIP64_EXTRA.pack(1, 24) + struct.pack("<QQQ", central["usize"], central["csize"], central["offset"])
        cd += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, _DOS_DATE, crc, u32, u32, len(raw), len(c_extra), 0, 0, 0, 0, u32
        ) + raw + c_extra
        body += head + raw + extra + data
    end = {"entries": len(members), "cd_size": len(cd), "cd_offset": len(body), **end_lies}
    record_at = len(body) + len(cd)
    record = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, end["entries"], end["entries"], end["cd_size"], end["cd_offset"])
    locator = struct.pack("<IIQI", 0x07064B50, 0, record_at, 1)
    classic = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, u32, u32, 0)
    path.write_bytes(bytes(body + cd) + record + locator + classic)
    return path


def patch_end(path: Path, entries: int | None = None, cd_size: int | None = None) -> Path:
    """Rewrite the classic end record (no comment) of a zip: the entries it claims, its central directory size."""
    raw = bytearray(Path(path).read_bytes())
    at = len(raw) - 22
    if raw[at : at + 4] != b"PK\x05\x06":
        raise ValueError("no end record at the end (a comment?)")
    if entries is not None:
        struct.pack_into("<HH", raw, at + 8, entries, entries)
    if cd_size is not None:
        struct.pack_into("<I", raw, at + 12, cd_size)
    Path(path).write_bytes(bytes(raw))
    return Path(path)


def _tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def tar_header_claiming(path: Path, kind: bytes, claimed: int, before: bytes, after: bytes, mode: str = "w") -> Path:
    """a.jpg (`before`), then an extended header of type `kind` (b"L" GNU long name, b"K" long link,
    b"x" PAX, b"g" PAX global) that claims `claimed` bytes but holds 1 KB, then b.jpg (`after`) and the
    end of the archive; gzip-compressed when mode is "w:gz". tarfile reads an extended header's whole
    claimed size at once."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = kind, claimed
    raw = _tar_member("a.jpg", before) + info.tobuf(tarfile.GNU_FORMAT) + b"x" * 1024 + _tar_member("b.jpg", after) + b"\0" * 1024
    if mode == "w:gz":
        import gzip

        raw = gzip.compress(raw)
    Path(path).write_bytes(raw)
    return Path(path)


def gnu_sparse_tar(path: Path, stored: bytes, realsize: int, after: bytes, style: str = "old") -> Path:
    """s.jpg as a GNU sparse member holding `stored` (one data region at 0) of a `realsize`-byte file, then
    b.jpg (`after`). style "old": the GNU header type 'S' with its map in the header; "0.1": PAX keywords
    GNU.sparse.map/size; "1.0": PAX GNU.sparse.major/minor with the map at the start of the data;
    "1.0-endless": the same, its map claiming 10**12 regions."""
    if style == "old":
        info = tarfile.TarInfo("s.jpg")
        info.type, info.size = tarfile.GNUTYPE_SPARSE, len(stored)
        buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
        buf[386:398], buf[398:410] = tarfile.itn(0, 12, tarfile.GNU_FORMAT), tarfile.itn(len(stored), 12, tarfile.GNU_FORMAT)
        buf[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
        buf[148:156] = b"        "
        buf[148:155] = b"%06o\0" % tarfile.calc_chksums(bytes(buf))[0]
        head = bytes(buf) + stored + b"\0" * (-len(stored) % 512)
    else:
        if style == "0.1":
            pax, data = {"GNU.sparse.size": str(realsize), "GNU.sparse.map": f"0,{len(stored)}"}, stored
            name = "s.jpg"
        else:
            count = 10**12 if style == "1.0-endless" else 1
            pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s.jpg", "GNU.sparse.realsize": str(realsize)}
            sparse_map = f"{count}\n0\n{len(stored)}\n".encode() + (b"1\n" * 4096 if count > 1 else b"")
            data, name = sparse_map + b"\0" * (-len(sparse_map) % 512) + stored, "GNUSparseFile.0/s.jpg"
        info = tarfile.TarInfo(name)
        info.size, info.pax_headers = len(data), pax
        head = info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)
    Path(path).write_bytes(head + _tar_member("b.jpg", after) + b"\0" * 1024)
    return Path(path)
