"""Crop-aware JPEG decoding: bit-identical to Pillow's full decode + crop, never kinder to damage.

`codescan._jpegregion` reconstructs only the rows and columns around the crop box. These tests
compare it with Pillow on every JPEG of the labelled corpus and on generated JPEGs covering the
sampling factors, progressive scans, grayscale and sizes around iMCU boundaries, and check that a
file damaged outside the box is still refused whenever Pillow refuses it.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import LABELED, textured_image
from PIL import Image

from codescan import decode
from codescan.decode import DecodeFailure, DecodeLimits, decode_bytes
from codescan.preprocess import plan_crop


@pytest.fixture(scope="module")
def region():
    """The compiled decoder; CI must have built it (a missing build there is a failure, not a skip)."""
    if decode._jpegregion is None:
        if os.environ.get("CI"):
            pytest.fail("codescan._jpegregion was not built (needs libjpeg-turbo headers: libjpeg62-turbo-dev)")
        pytest.skip("codescan._jpegregion not built here; Pillow decodes every JPEG")
    return decode._jpegregion


def pillow_box(data: bytes) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Full decode, then the crop box: what the region decoder must reproduce (None: Pillow refuses)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            box = plan_crop(*im.size).box
            im.load()
            return np.asarray(im.crop(box)), box
    except Exception:  # noqa: BLE001 - any refusal counts
        return None


def region_box(region, data: bytes, box: tuple[int, int, int, int]) -> np.ndarray | None:
    out = region.decode_region(data, box)
    if out is None:
        return None
    pixels, channels = out
    shape = (box[3] - box[1], box[2] - box[0]) + ((3,) if channels == 3 else ())
    return np.frombuffer(pixels, np.uint8).reshape(shape)


def encode(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def generated_jpegs() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    sizes = [(1024, 1024), (400, 291), (225, 227), (239, 240), (241, 257), (1000, 50), (17, 300), (224, 224), (640, 480)]
    out = []
    for w, h in sizes:
        tex = textured_image(rng, w, h)
        for sub in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
            out.append((f"{w}x{h}-s{sub}", encode(tex, quality=90, subsampling=sub)))
        out.append((f"{w}x{h}-progressive", encode(tex, quality=75, progressive=True, subsampling=2)))
        out.append((f"{w}x{h}-optimized-q40", encode(tex, quality=40, optimize=True)))
        out.append((f"{w}x{h}-gray", encode(tex.convert("L"), quality=85)))
    return out


def test_generated_jpegs_match_pillow(region):
    for name, data in generated_jpegs():
        expected, box = pillow_box(data)
        got = region_box(region, data, box)
        assert got is not None, name  # every plain JPEG takes the fast path
        assert np.array_equal(got, expected), name


def test_labeled_corpus_matches_pillow(region):
    """Every JPEG of the labelled corpus: identical where decoded; fallbacks are rare."""
    if not LABELED.is_dir():
        pytest.fail(f"labelled corpus missing at {LABELED}")
    fast = fallback = 0
    for path in sorted(LABELED.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        if not data.startswith(b"\xff\xd8\xff"):
            continue
        reference = pillow_box(data)
        assert reference is not None, path
        expected, box = reference
        got = region_box(region, data, box)
        if got is None:
            fallback += 1
            continue
        fast += 1
        assert np.array_equal(got, expected.reshape(got.shape)), path
    print(f"labelled JPEGs: {fast} decoded by region, {fallback} handed to Pillow")
    assert fast >= 250 and fallback <= fast // 20


def test_decode_bytes_same_with_and_without_region(region, monkeypatch):
    limits = DecodeLimits()
    samples = generated_jpegs()
    fast = [decode_bytes(data, limits).crop for _, data in samples]
    monkeypatch.setattr(decode, "_jpegregion", None)
    slow = [decode_bytes(data, limits).crop for _, data in samples]
    for (name, _), a, b in zip(samples, fast, slow):
        assert np.array_equal(a, b), name


def keep_scans(data: bytes, scans: int) -> bytes:
    """A progressive JPEG cut after its first `scans` scans and closed with EOI: valid, but coarse,
    so libjpeg's block smoothing (which reads neighbouring blocks) is active."""
    pos, seen = 2, 0
    while pos < len(data) - 1:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # SOS: header, then entropy data up to the next real marker
            if seen == scans:
                return data[:pos] + b"\xff\xd9"
            seen += 1
            pos += 2 + length
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
        else:
            pos += 2 + length
    raise ValueError("fewer scans than asked for")


@pytest.mark.parametrize("scans", [1, 2, 4, 6])
def test_incomplete_progressive_matches_pillow(region, scans):
    rng = np.random.default_rng(scans)
    for w, h, sub in ((480, 300, 2), (1024, 640, 1), (300, 480, 0)):
        data = keep_scans(encode(textured_image(rng, w, h), quality=85, progressive=True, subsampling=sub), scans)
        expected, box = pillow_box(data)
        got = region_box(region, data, box)
        assert got is not None and np.array_equal(got, expected), (w, h, sub)


def _damaged(data: bytes) -> list[tuple[str, bytes]]:
    """Damage far from the centre box: truncations and byte flips in the last rows' entropy data."""
    out = [(f"truncate-{f}", data[: int(len(data) * f)]) for f in (0.8, 0.9, 0.97, 0.995)]
    out += [(f"cut-{n}", data[:-n]) for n in (2, 5, 19)]
    rng = np.random.default_rng(3)
    for i in range(12):
        b = bytearray(data)
        pos = int(rng.integers(int(len(b) * 0.9), len(b) - 2))
        b[pos] = 0xFF if i % 2 else b[pos] ^ 0x5A
        out.append((f"flip-{pos}", bytes(b)))
    return out


@pytest.mark.parametrize("size", [(256, 1024), (1024, 256), (64, 300)])
def test_damage_outside_the_box_is_never_judged(region, size):
    """Where Pillow refuses a damaged file the scan must refuse it too, although the box is intact."""
    rng = np.random.default_rng(size[0])
    tex = textured_image(rng, *size)
    refused = 0
    for kw in ({"quality": 90, "subsampling": 2}, {"quality": 95, "subsampling": 0, "optimize": True}):
        for name, data in _damaged(encode(tex, **kw)):
            reference = pillow_box(data)
            try:
                crop = decode_bytes(data, DecodeLimits()).crop
            except DecodeFailure:
                crop = None
            if reference is None:
                refused += 1
                assert crop is None, (size, kw, name)
            else:
                assert crop is not None, (size, kw, name)
    assert refused >= 10  # the damage did reach Pillow's decoder, or the test proves nothing
