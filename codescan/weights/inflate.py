"""A file's bytes, decompressed by magic number (joblib's formats), with a hard cap on the output.

Decompression bombs are refused by arithmetic, not by memory pressure: every read is charged
against a byte budget *before* its bytes are produced, so a declared size larger than what
is left is refused without being allocated. The budget of a compressed file is the smaller of
an absolute cap and a multiple of the file's own size (a real head compresses about 1.1:1;
a bomb 6,500:1), with a floor so that small files of zeros still load.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Any, BinaryIO, Callable

_CHUNK = 1 << 16
_Decompressor = Any  # zlib/bz2/lzma decompressor objects share decompress(data, max_length), eof, unused_data
_CODECS: list[tuple[bytes, str, Callable[[], _Decompressor] | None]] = [
    (b"\x78", "zlib", lambda: zlib.decompressobj()),
    (b"\x1f\x8b", "gzip", lambda: zlib.decompressobj(31)),
    (b"BZ", "bz2", bz2.BZ2Decompressor),
    (b"\xfd7zXZ", "xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
    (b"\x5d\x00", "lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)),
    (b"\x04\x22\x4d\x18", "lz4", None),
    (b"ZF", "pre-0.10 joblib", None),
]


class LimitExceeded(ValueError):
    """More bytes were asked for than the budget allows; nothing was allocated for them."""


class UnsupportedCompression(ValueError):
    pass


class _Source:
    """Raw file bytes, or the decompressed stream (multi-stream/multi-member like xz and gzip)."""

    def __init__(self, raw: BinaryIO, make: Callable[[], _Decompressor] | None) -> None:
        self._raw, self._make = raw, make
        self._dec = make() if make else None
        self._pending = b""

    def produce(self, max_length: int) -> bytes:
        """At most `max_length` bytes (never more: the cap holds inside one call); b"" at the end."""
        if self._dec is None:
            return self._raw.read(max_length)
        while True:
            if self._dec.eof:
                rest = self._dec.unused_data + self._pending or self._raw.read(_CHUNK)
                if not rest:
                    return b""
                self._dec, self._pending = self._make(), rest  # type: ignore[misc]
            out = self._dec.decompress(self._pending, max_length)
            self._pending = getattr(self._dec, "unconsumed_tail", b"")  # zlib keeps unread input there
            if out:
                return out
            if not self._pending and not self._dec.eof:
                self._pending = self._raw.read(_CHUNK)
                if not self._pending:
                    raise EOFError("the compressed data is truncated")


class CappedStream:
    """``read``/``readinto``/``readline`` over the (decompressed) bytes, within a byte budget."""

    def __init__(self, raw: BinaryIO, make: Callable[[], _Decompressor] | None, budget: int) -> None:
        self._source = _Source(raw, make)
        self._left = budget
        self._buf = b""

    def _charge(self, n: int) -> None:
        if n > self._left:
            raise LimitExceeded(f"would inflate past its limit ({n:,} more bytes asked, {self._left:,} left)")
        self._left -= n

    def _next(self, n: int) -> bytes:
        if self._buf:
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        return self._source.produce(min(n, _CHUNK))

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise LimitExceeded("an unbounded read")
        self._charge(n)
        parts, have = [], 0
        while have < n:
            chunk = self._next(n - have)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def readinto(self, view: memoryview) -> int:
        """Fill `view` (an array's memory) in chunks: no second copy of a large array."""
        self._charge(len(view))
        have = 0
        while have < len(view):
            chunk = self._next(len(view) - have)
            if not chunk:
                break
            view[have : have + len(chunk)] = chunk
            have += len(chunk)
        return have

    def readline(self) -> bytes:
        parts: list[bytes] = []
        while True:
            chunk = self._buf or self._source.produce(_CHUNK)
            if not chunk:
                break
            end = chunk.find(b"\n") + 1 or len(chunk)
            self._charge(end)
            parts.append(chunk[:end])
            self._buf = chunk[end:]
            if parts[-1].endswith(b"\n"):
                break
        return b"".join(parts)


def open_capped(fh: BinaryIO, size: int, max_bytes: int, max_ratio: int, ratio_floor: int) -> CappedStream:
    """Detect the compression by its magic bytes, as joblib.load does, and cap the output.

    `size` is the file's size; an uncompressed file can yield no more than that anyway.
    """
    magic = fh.read(8)
    fh.seek(0)
    for prefix, name, make in _CODECS:
        if magic.startswith(prefix):
            if make is None:
                raise UnsupportedCompression(f"{name} compression is not supported; re-save with zlib, gzip, bz2 or xz")
            return CappedStream(fh, make, min(max_bytes, max(ratio_floor, max_ratio * size)))
    return CappedStream(fh, None, min(max_bytes, size))
