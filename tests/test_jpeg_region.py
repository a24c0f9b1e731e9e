"""Crop-aware JPEG decoding: bit-identical to Pillow's full decode + crop, never kinder to damage.

`codescan.decoding._jpegregion` reconstructs only the rows and columns around the crop box, calling the
libjpeg Pillow itself loaded. These tests compare it with Pillow on every JPEG of the labelled
corpus and on generated JPEGs covering the sampling factors, progressive scans (complete, cut
after any scan, cut inside a scan), grayscale and sizes around iMCU boundaries; check that a file
damaged outside the box is still refused whenever Pillow refuses it; and check which library it
binds to, and that it falls back to Pillow where it cannot bind to Pillow's.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELED, require, require_corpus, textured_image
from PIL import Image

from codescan.decoding import decode
from codescan.decoding.decode import DecodeLimits, decode_bytes
from codescan.inputs.read import DecodeFailure
from codescan.model.preprocess import plan_crop


@pytest.fixture(scope="module")
def region():
    """The compiled decoder bound to Pillow's libjpeg (a failure under CODESCAN_STRICT_TESTS=1)."""
    require(
        decode._jpegregion is not None,
        "the crop-aware JPEG decoder",
        f"build it with a C compiler and libjpeg62-turbo-dev ({decode.jpeg_decoder()})",
    )
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
    require_corpus(LABELED)
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


def scans(data: bytes) -> list[tuple[int, int]]:
    """(offset of the SOS marker, end of its entropy data) for every scan of a JPEG."""
    pos, out = 2, []
    while pos < len(data) - 3 and data[pos + 1] != 0xD9:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        start, pos = pos, pos + 2 + length
        if marker == 0xDA:  # entropy data runs up to the next marker that is not a stuffed FF or RST
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
            out.append((start, pos))
    return out


def keep_scans(data: bytes, count: int) -> bytes:
    """A progressive JPEG cut after its first `count` scans and closed with EOI: valid, but coarse,
    so libjpeg's block smoothing (which reads neighbouring blocks) is active."""
    spans = scans(data)
    if not 0 < count < len(spans):
        raise ValueError(f"{len(spans)} scans: cannot keep {count}")
    return data[: spans[count][0]] + b"\xff\xd9"


def incomplete_progressive() -> list[tuple[str, bytes]]:
    """Progressive JPEGs cut after each of their scans but the last.

    Heights below 256 put the crop box in the first iMCU row, where libjpeg-turbo 2.1 and 3.x
    smooth 4:2:0 blocks differently (Debian's 2.1.5 differs from Pillow's 3.x on every 4:2:0 file
    here); the taller ones cover a box reached with jpeg_skip_scanlines.
    """
    rng = np.random.default_rng(11)
    out = []
    for w, h in ((320, 240), (256, 224), (100, 60), (480, 250), (300, 480)):
        for sub in (2, 1, 0):
            full = encode(textured_image(rng, w, h), quality=85, progressive=True, subsampling=sub)
            for count in range(1, len(scans(full))):
                out.append((f"{w}x{h}-s{sub}-{count}scans", keep_scans(full, count)))
    return out


def test_incomplete_progressive_matches_pillow(region):
    for name, data in incomplete_progressive():
        expected, box = pillow_box(data)
        got = region_box(region, data, box)
        assert got is not None and np.array_equal(got, expected), name


def test_labeled_corpus_incomplete_progressive_matches_pillow(region):
    """Photographs, where libjpeg-turbo releases disagree most: each labelled JPEG re-encoded
    progressive 4:2:0 and cut after its DC scan (smoothing at its strongest)."""
    require_corpus(LABELED)
    checked = 0
    for path in sorted(LABELED.rglob("*")):
        if not path.is_file() or not path.read_bytes().startswith(b"\xff\xd8\xff"):
            continue
        with Image.open(path) as im:
            full = encode(im.convert("RGB"), quality=85, progressive=True, subsampling=2)
        data = keep_scans(full, 1)
        expected, box = pillow_box(data)
        got = region_box(region, data, box)
        assert got is not None and np.array_equal(got, expected), path
        checked += 1
    assert checked >= 250


def truncated_progressive() -> list[tuple[str, bytes]]:
    """Progressive JPEGs cut inside a scan, with no EOI: libjpeg warns, Pillow refuses."""
    rng = np.random.default_rng(12)
    out = []
    for w, h, sub in ((320, 240, 2), (480, 300, 0)):
        full = encode(textured_image(rng, w, h), quality=85, progressive=True, subsampling=sub)
        for i, (start, end) in enumerate(scans(full)):
            out.append((f"{w}x{h}-s{sub}-inside-scan-{i}", full[: (start + end) // 2]))
    return out


def outcome(data: bytes) -> np.ndarray | str:
    """What a scan makes of the file: the crop, or the error code."""
    try:
        return decode_bytes(data, DecodeLimits()).crop
    except DecodeFailure as exc:
        return exc.code


def test_truncated_progressive_same_verdict_with_and_without_region(region, monkeypatch):
    samples = truncated_progressive() + incomplete_progressive()[:9]
    fast = [outcome(data) for _, data in samples]
    monkeypatch.setattr(decode, "_jpegregion", None)
    slow = [outcome(data) for _, data in samples]
    for (name, _), a, b in zip(samples, fast, slow):
        assert type(a) is type(b) and np.array_equal(a, b), name
    assert sum(isinstance(a, str) for a in fast) >= len(samples) // 3  # the cuts did reach the decoder


def test_bound_to_the_libjpeg_pillow_loaded(region):
    """The decoder calls the very file Pillow decodes with, found among the libraries already mapped."""
    import PIL

    library = decode.jpeg_region_library()
    assert library is not None and os.path.realpath(region.library()) == library
    assert library in decode.jpeg_decoder()
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file was mapped before codescan bound it (RTLD_NOLOAD)
        fields = (line.split(maxsplit=5) for line in maps.read_text().splitlines())
        assert library in {os.path.realpath(f[5]) for f in fields if len(f) == 6 and f[5].startswith("/")}
    bundled = sorted((Path(PIL.__file__).parent.parent / "pillow.libs").glob("libjpeg*.so*"))
    if bundled:  # a Pillow wheel: its own libjpeg-turbo, whatever the system has
        assert [library] == [os.path.realpath(p) for p in bundled]


def test_binding_is_once_per_process(region):
    """Decodes run without the GIL, so the functions never change once bound."""
    library = region.library()
    region.bind(library)  # the same library again: accepted, nothing changes
    with pytest.raises(RuntimeError, match="already bound"):
        region.bind(region.__file__)
    assert region.library() == library
    with pytest.raises(OSError, match="not loaded"):
        region.locate(str(Path(region.__file__).with_name("no-such-module.so")))


def test_refuses_a_libjpeg_of_another_abi(region, tmp_path):
    """Struct layouts differ between libjpeg ABIs: a module built for another one must refuse to
    bind (before any decode could corrupt memory), here one built with the other JPEG_LIB_VERSION."""
    source = Path(__file__).resolve().parents[1] / "codescan" / "decoding" / "_jpegregion.c"
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None or not source.exists():
        pytest.skip("needs a C compiler and the source checkout")
    found = subprocess.run([cc, "-E", "-x", "c", "-"], input="#include <jconfig.h>\n", capture_output=True, text=True)
    header = re.search(r'^# 1 "(/[^"]*jconfig\.h)"', found.stdout, re.M)
    if header is None:
        pytest.skip("no libjpeg headers to build with")
    config = Path(header[1]).read_text()
    built_for = int(re.search(r"#define JPEG_LIB_VERSION\s+(\d+)", config)[1])
    other = 80 if built_for == 62 else 62
    (tmp_path / "jconfig.h").write_text(re.sub(r"(#define JPEG_LIB_VERSION\s+)\d+", rf"\g<1>{other}", config))
    module = tmp_path / f"_jpegregion{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(
        [cc, "-shared", "-fPIC", f"-I{tmp_path}", f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(module)],
        check=True,
    )
    spec = importlib.util.spec_from_file_location("_jpegregion", module)
    mismatched = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mismatched)
    with pytest.raises(OSError, match=f"Wrong JPEG library version: library is {built_for}, caller expects {other}"):
        mismatched.bind(region.library())
    assert mismatched.library() is None
    with pytest.raises(RuntimeError, match="bind"):
        mismatched.decode_region(b"", (0, 0, 1, 1))


CHILD = """
import io, json, sys
import numpy as np
from PIL import Image
import codescan.decoding._jpegregion as region
{setup}
from codescan.decoding import decode
from codescan.model.preprocess import place_crop, plan_crop
differ = 0
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        plan = plan_crop(*im.size)
        expected = place_crop(np.asarray(im.crop(plan.box).convert("RGB")), plan)
    differ += not np.array_equal(decode.decode_bytes(data, decode.DecodeLimits()).crop, expected)
from PIL import _imaging
print(json.dumps({{
    "library": decode.jpeg_region_library(), "decoder": decode.jpeg_decoder(), "differ": differ,
    "bound": region.library(), "pillows": region.locate(_imaging.__file__),
}}))
"""


def run_child(setup: str, tmp_path: Path) -> dict:
    """A fresh interpreter (binding is once per process) runs `setup`, then scans the 4:2:0 files
    of incomplete_progressive(), which libjpeg-turbo releases reconstruct differently."""
    paths = []
    for name, data in incomplete_progressive():
        if "-s2-" in name:
            paths.append(tmp_path / f"{name}.jpg")
            paths[-1].write_bytes(data)
    code = CHILD.format(setup=setup)
    # -P: the installed codescan, as in the parent, never a checkout in the working directory
    r = subprocess.run([sys.executable, "-P", "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_falls_back_to_pillow_when_its_libjpeg_lacks_a_function(region, tmp_path):
    # Pillow's libjpeg "found" in a library exporting no jpeg_* function at all
    child = run_child("region.locate = lambda module: region.__file__", tmp_path)
    assert child["library"] is None
    assert "does not export jpeg_std_error" in child["decoder"] and "Pillow full decode" in child["decoder"]
    assert child["differ"] == 0


def test_falls_back_to_pillow_when_another_libjpeg_was_bound_first(region, tmp_path):
    """Never decode with a libjpeg other than Pillow's: the result would differ on these files."""
    system = ctypes.util.find_library("jpeg")
    if system is None:
        pytest.skip("no system libjpeg to bind first")
    child = run_child(f"region.bind({system!r})", tmp_path)
    if os.path.realpath(child["bound"]) == os.path.realpath(child["pillows"]):
        pytest.skip(f"the system libjpeg ({system}) is the one Pillow uses")
    assert child["library"] is None and "already bound" in child["decoder"]
    assert child["differ"] == 0


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
