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
