"""Bytes on disk → the uint8 224×224×3 crop the encoder judges, or a typed failure.

Decoding follows the reference: Pillow, first frame, ``convert("RGB")``, no EXIF
orientation, no colour management, no reduced (draft) decoding. Only the pixels inside the
crop box are converted: every ``convert("RGB")`` path in Pillow is per pixel, so
crop-then-convert equals convert-then-crop (tests check it on every mode we meet).

JPEGs (RGB or grayscale) go through ``_jpegregion`` when it was built and could bind to the
libjpeg Pillow decodes with: that library reconstructs only the rows and columns around the
crop box, bit-identical to Pillow's full decode, and hands anything unusual (warnings, CMYK,
12-bit) back to Pillow. ``jpeg_decoder()`` says which path this process takes.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError

from codescan.core import defaults
from codescan.inputs.read import (
    IMAGE_EXTENSIONS,
    MAGIC_BYTES,
    DecodeFailure,
    _extension,
    _is_cut_signature,
    read_limited,
    sniff,
)
from codescan.model.preprocess import (
    CROP,
    CropCount,
    place_crop,
    plan_crops,
)


def _bind_region_decoder() -> tuple[ModuleType | None, str]:
    """The region decoder bound to Pillow's own libjpeg, or None and why Pillow decodes in full.

    Any other libjpeg (the system's, say) would break parity: libjpeg-turbo releases reconstruct
    progressive files whose later scans are missing differently, so only the copy Pillow loaded
    reproduces the reference pixels.
    """
    try:
        from codescan.decoding import _jpegregion
    except ImportError as exc:  # no compiler or libjpeg-turbo headers at install time
        return None, f"codescan.decoding._jpegregion is not built ({exc})"
    from PIL import _imaging

    try:
        library = _jpegregion.locate(_imaging.__file__)
        _jpegregion.bind(library)
    # OSError: Pillow's libjpeg is hidden, lacks a function or has another ABI. RuntimeError:
    # something else in this process bound the decoder to another libjpeg first.
    except (OSError, RuntimeError) as exc:
        return None, str(exc)
    return _jpegregion, os.path.realpath(library)


_jpegregion, _JPEG_BINDING = _bind_region_decoder()


def jpeg_decoder() -> str:
    """One line for debug output and bug reports: how JPEGs are decoded in this process."""
    if _jpegregion is None:
        return f"Pillow full decode ({_JPEG_BINDING})"
    return f"crop-aware, with Pillow's libjpeg {_JPEG_BINDING}"


def jpeg_region_library() -> str | None:
    """The libjpeg the crop-aware decoder calls (Pillow's own), or None where Pillow decodes in full."""
    return _JPEG_BINDING if _jpegregion is not None else None

# Decoders we let Pillow use. EPS (Ghostscript), PSD, DDS, FITS and the long tail stay off:
# each extra plugin is attack surface the reference never needed.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "TIFF", "BMP", "DIB", "PPM", "ICO", "AVIF")


_DECODED_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".dib",
     ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".avifs", ".ico"}
)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_filesize: int = defaults.MAX_FILESIZE
    max_pixels: int = defaults.MAX_PIXELS


@dataclass(slots=True)  # not frozen: see codescan/core/records.py, `Result`
class Decoded:
    crops: np.ndarray  # (K, 224, 224, 3) uint8, K = 1 or 5 (preprocess.plan_crops)
    width: int
    height: int
    format: str
    boxes: tuple[tuple[int, int, int, int], ...]  # one per crop; the centre first
    slot: int = -1  # the decode pool's shared slot `crops` lies in (a borrowed view), -1: its own array

    @property
    def crop(self) -> np.ndarray:
        """(224, 224, 3) uint8: the centre crop, the reference's."""
        return self.crops[0]

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.boxes[0]

    def __reduce__(self):  # by position: half the cost of a slots dataclass's pickling, once per file
        return (Decoded, (self.crops, self.width, self.height, self.format, self.boxes))


def _unidentified(data: bytes, ext: str) -> DecodeFailure:
    if not data or _is_cut_signature(data):
        return DecodeFailure("truncated", "file is empty" if not data else "file ends inside its signature")
    is_image, fmt = sniff(data[:MAGIC_BYTES])
    if fmt is not None:
        return DecodeFailure("corrupt", f"{fmt} header is unreadable")
    if is_image:
        return DecodeFailure("unsupported_format", "image format not supported (see docs/output.md: decoders)")
    if ext in IMAGE_EXTENSIONS and ext not in _DECODED_EXTENSIONS:
        return DecodeFailure("unsupported_format", f"{ext} images are not supported (see docs/output.md: decoders)")
    return DecodeFailure("not_an_image", "no supported image format recognised")


def _classify(exc: BaseException, data: bytes, ext: str = "") -> DecodeFailure:
    """Map whatever Pillow raised onto a stable error code."""
    msg = str(exc) or type(exc).__name__
    low = msg.lower()
    if isinstance(exc, DecodeFailure):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow quotes its own error limit (twice ours); say codescan's, and the option that moves it.
        found = re.search(r"\((\d+) pixels\)", msg)
        size = f"{int(found.group(1)):,} pixels" if found else "the image's pixel count"
        return DecodeFailure("too_large", f"{size} exceed the limit of {Image.MAX_IMAGE_PIXELS:,} (--max-pixels)")
    if isinstance(exc, UnidentifiedImageError):
        return _unidentified(data, ext)
    if isinstance(exc, MemoryError) or "too large" in low or "exceeds limit" in low:
        return DecodeFailure("too_large", msg)
    if isinstance(exc, EOFError) or "truncated" in low or "premature end" in low or "not enough data" in low:
        return DecodeFailure("truncated", msg)
    if isinstance(exc, NotImplementedError) or "unsupported" in low or "not supported" in low or "unknown" in low:
        return DecodeFailure("unsupported_format", msg)
    if isinstance(exc, (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, zlib.error, struct.error)):
        return DecodeFailure("corrupt", msg)
    return DecodeFailure("corrupt", f"{type(exc).__name__}: {msg}")


@dataclass(frozen=True, slots=True)
class Regions:
    regions: list[np.ndarray]  # per box, (h, w, 3) uint8: the pixels inside it, not yet padded
    width: int
    height: int
    format: str


Box = tuple[int, int, int, int]  # (left, top, right, bottom)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def _png_without_text(data: bytes) -> bytes:
    """The PNG minus its text chunks (unchanged when it has none).

    Pillow refuses the whole image when text passes its own MAX_TEXT_CHUNK / MAX_TEXT_MEMORY, but
    text never changes a pixel, and evidence reads metadata itself (containers.py) within its own
    budget: metadata must not decide whether the pixels are judged. A truncated tail is kept, so
    Pillow still reports a truncated file as truncated.
    """
    kept, pos, end, dropped = [data[:8]], 8, len(data), False
    while pos + 8 <= end:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        following = pos + 12 + length
        if following > end:
            break
        if kind in _PNG_TEXT_CHUNKS:
            dropped = True
        else:
            kept.append(data[pos:following])
        pos = following
    if not dropped:
        return data
    kept.append(data[pos:])
    return b"".join(kept)


def decode_boxes(
    data: bytes, limits: DecodeLimits, boxes_for: Callable[[int, int], Sequence[Box]], name: str | bytes = ""
) -> Regions:
    """Decode the first frame and return the pixels inside the boxes `boxes_for(width, height)` asks for.

    The one place where bytes become pixels, so every caller (scan, eval's five crops, training)
    gets the allow-list, the limits checked before any pixel is decoded, the typed errors and
    the crop-aware JPEG path. Raises DecodeFailure on any problem.
    """
    try:
        source = _png_without_text(data) if data.startswith(_PNG_SIGNATURE) else data
        with Image.open(io.BytesIO(source), formats=_enabled_formats()) as im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise DecodeFailure("corrupt", f"invalid size {width}x{height}")
            if width * height > limits.max_pixels:
                raise DecodeFailure(
                    "too_large", f"{width}x{height} pixels exceed the limit of {limits.max_pixels} (--max-pixels)"
                )
            boxes = boxes_for(width, height)
            # One box: the region decoder's rows and columns. Several: one full decode serves them all.
            fast = _jpeg_region(data, im, boxes[0]) if len(boxes) == 1 else None
            if fast is not None:
                regions = [fast]
            else:
                im.load()
                regions = [np.asarray(im.crop(box).convert("RGB")) for box in boxes]
            return Regions(regions=regions, width=width, height=height, format=im.format or "unknown")
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a typed record
        raise _classify(exc, data, _extension(name)) from None


def decode_bytes(data: bytes, limits: DecodeLimits, name: str | bytes = "", crops: CropCount = defaults.CROPS) -> Decoded:
    """Decode the first frame and cut the reference crop (with 5, the corners too); raise
    DecodeFailure on any problem."""
    decoded = decode_boxes(data, limits, lambda w, h: [p.box for p in plan_crops(w, h, crops)], name)
    plans = plan_crops(decoded.width, decoded.height, crops)
    cut = np.stack([place_crop(region, plan, CROP) for region, plan in zip(decoded.regions, plans)])
    return Decoded(crops=cut, width=decoded.width, height=decoded.height, format=decoded.format, boxes=tuple(p.box for p in plans))


def _jpeg_region(data: bytes, im: Image.Image, box: Box) -> np.ndarray | None:
    """The box of a JPEG as (h, w, 3) uint8 without a full decode, or None: use Pillow."""
    if _jpegregion is None or im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):
        return None
    decoded = _jpegregion.decode_region(data, box)
    if decoded is None:
        return None
    pixels, channels = decoded
    left, top, right, bottom = box
    region = np.frombuffer(pixels, np.uint8).reshape(bottom - top, right - left, channels)
    return region if channels == 3 else np.repeat(region, 3, axis=2)  # L -> RGB replicates, as Pillow does


@functools.cache
def _enabled_formats() -> tuple[str, ...]:
    """The allow-list minus plugins this Pillow build lacks (e.g. AVIF before Pillow 11.2)."""
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def configure_pillow(limits: DecodeLimits) -> None:
    """Make Pillow's own bomb check agree with ours (process-wide; call once per decode process).

    Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; with the two equal, the
    explicit check in decode_bytes refuses first and the warning never fires.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_pixels


def decode_file(path: str | bytes, limits: DecodeLimits) -> Decoded:
    return decode_bytes(read_limited(path, limits.max_filesize), limits, path)


def decode_full(data: bytes, limits: DecodeLimits) -> np.ndarray:
    """The whole first frame as (H, W, 3) uint8 RGB, under the same limits and allow-list."""
    return decode_boxes(data, limits, lambda w, h: [(0, 0, w, h)]).regions[0]
