"""The metadata blocks of PNG, JPEG and WebP files, found by walking their container.

Read from the bytes the decoder already holds, so evidence costs no second read and does
not depend on decoding: a PNG's text chunks after IDAT, which Pillow only sees after a full
load, are found here too. Every limit is explicit because the input is hostile: a chunk
count cap (a file of millions of empty chunks), a cap on inflated text per value (a zTXt bomb)
and per file (thousands of packets that each stay under the first cap), and no length ever
trusted past the end of the data. Nothing here raises on malformed input; a walk simply stops
where the structure breaks, and text past the file's budget is not kept.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

MAX_BLOCKS = 65_536  # chunks/segments visited per file
MAX_TEXT = 1 << 20  # bytes kept per text value, after inflating
MAX_TOTAL_TEXT = 8 << 20  # bytes of text and XMP kept per file, all values together
MAX_EXIF = 64 << 10  # bytes of an EXIF block parsed: what a JPEG segment holds, and Pillow's time grows with it
XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_KEY = "XML:com.adobe.xmp"  # the PNG text keyword that carries an XMP packet
_FILL = re.compile(rb"\xff+")  # a JPEG marker's fill bytes, skipped in one C-level pass


@dataclass
class Metadata:
    text: dict[str, str] = field(default_factory=dict)  # PNG tEXt/zTXt/iTXt, JPEG COM as "comment"
    exif: bytes | None = None  # a TIFF structure ("II*\0…"/"MM\0*…"), without the "Exif\0\0" prefix
    xmp: list[str] = field(default_factory=list)
    c2pa: bool = False  # a JUMBF box labelled c2pa is present
    kept: int = 0  # bytes of text and XMP kept so far, against MAX_TOTAL_TEXT

    def room(self) -> int:
        """How many more bytes of text this file may keep: the cap on one value, or what is left."""
        return max(0, min(MAX_TEXT, MAX_TOTAL_TEXT - self.kept))

    def wants(self, key: str) -> bool:
        """Whether a value under `key` would be kept, checked before paying to inflate it."""
        return self.room() > 0 and (key == XMP_KEY or key not in self.text)


def read_metadata(data: bytes) -> Metadata:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    return Metadata()


def _inflate(blob: bytes, limit: int) -> bytes | None:
    """At most `limit` (> 0; zlib reads 0 as "no limit") bytes out: no bomb."""
    try:
        return zlib.decompressobj().decompress(blob, limit)
    except zlib.error:
        return None


def _set_text(meta: Metadata, key: str, value: bytes, encoding: str) -> None:
    if not meta.wants(key):
        return
    kept = value[: meta.room()]
    meta.kept += len(kept)
    text = kept.decode(encoding, "replace")
    if key == XMP_KEY:
        meta.xmp.append(text)
    else:
        meta.text[key] = text


def _png_text(meta: Metadata, ctype: bytes, body: bytes) -> None:
    key, sep, rest = body.partition(b"\x00")
    if not sep or not key:
        return
    name = key[:79].decode("latin-1")
    if not meta.wants(name):
        return
    if ctype == b"tEXt":
        _set_text(meta, name, rest, "latin-1")
    elif ctype == b"zTXt":
        inflated = _inflate(rest[1:], meta.room()) if rest[:1] == b"\x00" else None
        if inflated is not None:
            _set_text(meta, name, inflated, "latin-1")
    else:  # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
        if len(rest) < 2:
            return
        compressed, tail = rest[0], rest[2:]
        parts = tail.split(b"\x00", 2)
        if len(parts) != 3:
            return
        value = _inflate(parts[2], meta.room()) if compressed else parts[2]
        if value is not None:
            _set_text(meta, name, value, "utf-8")


def _png(data: bytes) -> Metadata:
    meta = Metadata()
    pos, end = 8, len(data)
    for _ in range(MAX_BLOCKS):
        if pos + 8 > end:
            break
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body_start, body_end = pos + 8, pos + 8 + length
        if body_end > end:
            break
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            _png_text(meta, ctype, data[body_start:body_end])
        elif ctype == b"eXIf":
            meta.exif = _strip_exif_prefix(data[body_start:body_end])
        elif ctype == b"caBX":
            meta.c2pa = meta.c2pa or b"c2pa" in data[body_start:body_end]
        elif ctype == b"IEND":
            break
        pos = body_end + 4  # CRC
    return meta


def _strip_exif_prefix(blob: bytes) -> bytes:
    """The TIFF structure, cut to MAX_EXIF: a JPEG's is under 64 KiB, PNG and WebP set no bound."""
    return (blob[6:] if blob.startswith(b"Exif\x00\x00") else blob)[:MAX_EXIF]


def _jpeg(data: bytes) -> Metadata:
    meta = Metadata()
    pos, end = 2, len(data)
    for _ in range(MAX_BLOCKS):
        fill = _FILL.match(data, pos)
        if fill is not None:
            pos = fill.end() - 1  # the last 0xFF of the run starts the marker
        if pos + 4 > end or data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: no more metadata segments
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or pos + 2 + length > end:
            break
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and meta.exif is None:
            meta.exif = body[6:]
        elif marker == 0xE1 and body.startswith(XMP_JPEG):
            _set_text(meta, XMP_KEY, body[len(XMP_JPEG) :], "utf-8")
        elif marker == 0xEB and body.startswith(b"JP"):  # APP11: JUMBF (C2PA's carrier in JPEG)
            meta.c2pa = meta.c2pa or b"c2pa" in body
        elif marker == 0xFE:
            _set_text(meta, "comment", body, "utf-8")
        pos += 2 + length
    return meta


def _webp(data: bytes) -> Metadata:
    meta = Metadata()
    pos, end = 12, len(data)
    for _ in range(MAX_BLOCKS):
        if pos + 8 > end:
            break
        fourcc, size = struct.unpack("<4sI", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if pos + 8 + size > end:
            break
        if fourcc == b"EXIF":
            meta.exif = _strip_exif_prefix(body)
        elif fourcc == b"XMP ":
            _set_text(meta, XMP_KEY, body, "utf-8")
        elif fourcc == b"C2PA":
            meta.c2pa = True
        pos += 8 + size + (size & 1)
    return meta
