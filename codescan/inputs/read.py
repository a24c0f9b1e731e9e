"""A file's bytes, read as its listing saw them, and what its first bytes say it is.

The part of decoding that inputs need too (archive listings sniff members, workers read files),
kept below both so neither imports upward."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from codescan.core.records import ErrorCode, Evidence
from codescan.inputs.pinned import LinkRefused, NotRegular, Pin, Replaced, open_pinned

# Extensions that make a file a candidate even when its bytes say nothing (so a broken .jpg
# is an error, not silently skipped). Includes image formats we refuse, so that those are
# reported as `unsupported_format` instead of vanishing.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".webp", ".gif", ".tif", ".tiff",
        ".bmp", ".dib", ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".avifs", ".heic", ".heif", ".jxl",
        ".jp2", ".j2k", ".jpx", ".psd", ".tga", ".ico", ".icns", ".dds", ".eps", ".svg", ".qoi",
        ".sgi", ".rgb", ".pcx", ".xbm", ".xpm", ".im", ".fli", ".flc", ".ras", ".exr", ".hdr",
    }
)


# (offset, signature, Pillow format we would use or None when we refuse that format)
_MAGIC: tuple[tuple[int, bytes, str | None], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),  # BigTIFF
    (0, b"MM\x00+", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (0, b"8BPS", None),  # PSD
    (0, b"\x00\x00\x00\x0cjP  ", None),  # JPEG 2000
    (0, b"\xff\x4f\xff\x51", None),  # J2K codestream
    (0, b"\xff\x0a", None),  # JPEG XL codestream
    (0, b"qoif", None),
    (0, b"DDS ", None),
    (0, b"icns", None),
    (4, b"ftypheic", None),
    (4, b"ftypheix", None),
    (4, b"ftypmif1", None),
)


MAGIC_BYTES = 16


def has_image_extension(name: str | bytes) -> bool:
    return _extension(name) in IMAGE_EXTENSIONS


def _extension(name: str | bytes) -> str:
    return os.path.splitext(os.fsdecode(name))[1].lower()


def sniff(head: bytes) -> tuple[bool, str | None]:
    """(looks like an image, the allowed Pillow format it looks like or None)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True, "WEBP"
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6") and head[2:3] in (b"\n", b" ", b"\r", b"\t"):
        return True, "PPM"
    for off, magic, fmt in _MAGIC:
        if head[off : off + len(magic)] == magic:
            return True, fmt
    return False, None


def has_image_magic(head: bytes) -> bool:
    return sniff(head)[0]


def _is_cut_signature(data: bytes) -> bool:
    """A file shorter than its own signature (e.g. a JPEG holding only FF D8)."""
    return any(off == 0 and len(data) < len(m) and m.startswith(data) for off, m, _ in _MAGIC)


@dataclass(frozen=True, slots=True)
class DecodeFailure(Exception):
    code: ErrorCode
    message: str
    sha256: str | None = None  # set when the bytes were read
    evidence: tuple[Evidence, ...] | None = None  # what the metadata said, though the pixels failed

    def __reduce__(self):  # crosses process boundaries; Exception's default would drop the fields
        return (DecodeFailure, (self.code, self.message, self.sha256, self.evidence))


def read_limited(path: str | bytes, max_filesize: int, pin: Pin | None = None) -> bytes:
    """The whole file, opened as `pin` says (pinned.py), refusing oversized ones before reading them."""
    data = read_candidate(path, max_filesize, pin, None)
    assert data is not None
    return data


def read_candidate(path: str | bytes, max_filesize: int, pin: Pin | None, wanted: Callable[[bytes], bool] | None) -> bytes | None:
    """read_limited, with `wanted` judging the first MAGIC_BYTES before the rest is read: None when
    it says no (a file that is no image costs one short read through the same descriptor)."""
    try:
        with open(open_pinned(os.fsencode(path), pin), "rb", buffering=0) as fh:
            head = b""
            if wanted is not None:
                head = fh.read(MAGIC_BYTES)
                if head and not wanted(head):
                    return None
            size = os.fstat(fh.fileno()).st_size
            if size > max_filesize:
                raise DecodeFailure("too_large", f"file is {size} bytes, limit is {max_filesize} (--max-filesize)")
            # Sized by fstat, not by the limit: a read of limit + 1 allocates that much up front.
            data = head + _read_upto(fh, size + 1 - len(head))
            if len(data) > size:  # it grew since fstat: read on, up to the limit
                data += _read_upto(fh, max_filesize + 1 - len(data))
    except (LinkRefused, Replaced, NotRegular) as exc:
        raise refused_open(exc, pin) from None
    except PermissionError as exc:
        raise DecodeFailure("permission_denied", exc.strerror or "permission denied") from None
    except IsADirectoryError:
        raise DecodeFailure("io_error", "is a directory") from None
    except OSError as exc:
        raise DecodeFailure("io_error", exc.strerror or str(exc)) from None
    if len(data) > max_filesize:
        raise DecodeFailure("too_large", f"file grew past the limit of {max_filesize} bytes while reading")
    return data


def _read_upto(fh, n: int) -> bytes:
    """Up to n bytes: a raw read may return fewer than asked before the end of the file."""
    chunks = []
    while n > 0 and (chunk := fh.read(n)):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def refused_open(exc: LinkRefused | Replaced | NotRegular, pin: Pin | None) -> DecodeFailure:
    """What a refused open means: a listed file swapped since listing, or a path that is not kept inside its folder."""
    if pin is not None and pin.listed:
        return DecodeFailure("replaced", "the file was replaced after the scan listed it (by a link or another file); not read")
    if isinstance(exc, NotRegular):
        return DecodeFailure("io_error", "not a regular file; not read")
    return DecodeFailure("unsafe_path", "the path passes through a link; not read")
