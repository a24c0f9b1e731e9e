"""Mutation fuzz of the decode path: broken JPEG/PNG/WebP/GIF/TIFF files never crash the scan.

Valid seeds are made here, then mutated with a seeded RNG (byte flips, truncation, inserted
bytes, splices of two seeds, and combinations). Every mutant goes through the real decode
pool (worker processes with deadlines); every outcome must be a typed failure or a crop that
is bit-identical to the reference (Pillow full decode + torchvision CenterCrop(224)). A
sample also goes through the real CLI.
"""

from __future__ import annotations

import collections
import io
import json
import os
import warnings

import numpy as np
import pytest
from conftest import quiet_fd2, run_cli, textured_image
from PIL import Image, ImageFile

from codescan.core import records as codes
from codescan.core.records import Evidence
from codescan.decoding.examine import ExamineConfig, Examined
from codescan.decoding.feed import DecodePool
from codescan.inputs.read import DecodeFailure
from codescan.inputs.walk import Entry

N_CASES = 2500
N_CLI = 300
BATCH = 250  # files per subfolder
ERROR_CODES = set(codes.ERROR_CODES)
CRASHED = "the decoder crashed"


# --------------------------------------------------------------------------- seeds and mutants


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_seeds(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """(extension, bytes) of small valid images in many modes and encodings."""
    tex = lambda w, h: textured_image(rng, w, h)  # noqa: E731
    seeds: list[tuple[str, bytes]] = [
        (".jpg", _encode(tex(160, 120), "JPEG", quality=90)),
        (".jpg", _encode(tex(250, 300).convert("L"), "JPEG", quality=80, progressive=True)),
        (".jpeg", _encode(tex(233, 231).convert("CMYK"), "JPEG", quality=85)),
        (".jpg", _encode(tex(64, 300), "JPEG", quality=95, subsampling=0, optimize=True)),
        (".jpg", _encode(tex(400, 360), "JPEG", quality=75)),  # cropped on both axes: the region decoder
        (".jpg", _encode(tex(480, 300), "JPEG", quality=85, progressive=True)),
        (".png", _encode(tex(300, 200), "PNG")),
        (".png", _encode(tex(64, 64).convert("RGBA"), "PNG")),
        (".png", _encode(tex(200, 200).convert("P", palette=Image.ADAPTIVE), "PNG", transparency=0)),
        (".png", _encode(tex(100, 250).convert("L"), "PNG", optimize=True)),
        (".png", _encode(Image.fromarray((np.asarray(tex(130, 90).convert("L"), np.uint16) * 257)), "PNG")),
        (".png", _encode(tex(240, 226), "PNG", interlace=1) if _supports_interlace() else _encode(tex(240, 226), "PNG")),
        (".webp", _encode(tex(200, 200), "WEBP", quality=80)),
        (".webp", _encode(tex(128, 96).convert("RGBA"), "WEBP", lossless=True)),
        (".gif", _encode(tex(180, 180).convert("P", palette=Image.ADAPTIVE), "GIF")),
        (".gif", _encode(tex(96, 250).convert("L"), "GIF", save_all=True, append_images=[tex(96, 250).convert("L")])),
        (".tif", _encode(tex(120, 160), "TIFF")),
        (".tiff", _encode(tex(224, 224), "TIFF", compression="tiff_lzw")),
        (".tif", _encode(tex(300, 150).convert("L"), "TIFF", compression="tiff_adobe_deflate")),
        (".tif", _encode(tex(90, 200), "TIFF", compression="packbits")),
        (".tif", _encode(tex(128, 128), "TIFF", compression="jpeg")),
    ]
    for ext, data in seeds:  # every seed must be valid, or the fuzz says nothing
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB")
    return seeds


def _supports_interlace() -> bool:
    try:
        _encode(Image.new("RGB", (8, 8)), "PNG", interlace=1)
        return True
    except Exception:  # noqa: BLE001
        return False


def _flip(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        # Half the flips land in the first 512 bytes, where headers and tables live.
        hi = min(len(b), 512) if rng.random() < 0.5 else len(b)
        i = int(rng.integers(0, hi))
        b[i] = int(rng.integers(0, 256)) if rng.random() < 0.5 else b[i] ^ (1 << int(rng.integers(0, 8)))
    return bytes(b)


def _truncate(rng: np.random.Generator, data: bytes) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _insert(rng: np.random.Generator, data: bytes) -> bytes:
    i = int(rng.integers(0, len(data) + 1))
    return data[:i] + rng.integers(0, 256, int(rng.integers(1, 257)), dtype=np.uint8).tobytes() + data[i:]


def mutate(rng: np.random.Generator, seeds: list[tuple[str, bytes]], k: int) -> tuple[str, str, bytes]:
    """(extension, strategy, mutant bytes) for seed k."""
    ext, data = seeds[k]
    r = rng.random()
    if r < 0.35:
        return ext, "flip", _flip(rng, data)
    if r < 0.55:
        return ext, "truncate", _truncate(rng, data)
    if r < 0.75:
        return ext, "insert", _insert(rng, data)
    if r < 0.90:
        _, other = seeds[int(rng.integers(0, len(seeds)))]
        return ext, "splice", data[: int(rng.integers(1, len(data)))] + other[int(rng.integers(0, len(other))) :]
    out = data
    for _ in range(int(rng.integers(2, 4))):
        out = [_flip, _truncate, _insert][int(rng.integers(0, 3))](rng, out) or out
    return ext, "combo", out


# --------------------------------------------------------------------------- reference


def reference_crop(path: str) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The reference pipeline: Pillow (default settings) full decode, convert('RGB'), CenterCrop(224)."""
    from torchvision.transforms import CenterCrop

    assert Image.MAX_IMAGE_PIXELS == 89_478_485 and not ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        return np.asarray(CenterCrop(224)(rgb)), rgb.size
    except Exception:  # noqa: BLE001 - any failure means "not decodable"
        return None


# --------------------------------------------------------------------------- the fuzz


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[tuple[str, str, str]]:
    """(path, seed extension, strategy) for every mutant, written in subfolders of BATCH."""
    rng = np.random.default_rng(20240611)
    seeds = make_seeds(rng)
    root = tmp_path_factory.mktemp("fuzz")
    cases = []
    for i in range(N_CASES):
        ext, strategy, data = mutate(rng, seeds, i % len(seeds))
        folder = root / f"b{i // BATCH:02d}"
        if i % BATCH == 0:
            folder.mkdir()
        path = folder / f"{i:05d}_{strategy}{ext}"
        path.write_bytes(data)
        cases.append((str(path), ext, strategy))
    return cases


@pytest.fixture(scope="module")
def pool_outcomes(corpus):
    entries = [Entry(display=p, path=os.fsencode(p)) for p, _, _ in corpus]
    pool = DecodePool(workers=2, config=ExamineConfig(evidence="metadata"), timeout=10, window=64)
    return entries, list(pool.outcomes(iter(entries)))


def test_decode_pool_fuzz(corpus, pool_outcomes):
    entries, outcomes = pool_outcomes
    assert len(outcomes) == len(entries)
    assert [e for e, _ in outcomes] == entries  # one outcome per input, in input order

    codes: collections.Counter[str] = collections.Counter()
    per_strategy: collections.Counter[tuple[str, str]] = collections.Counter()
    crashes, hangs, mismatches, undecodable, false_errors = [], [], [], [], collections.Counter()
    with quiet_fd2():
        for (path, ext, strategy), (_, outcome) in zip(corpus, outcomes):
            if isinstance(outcome, Examined):
                assert isinstance(outcome.evidence, tuple) and all(isinstance(e, Evidence) for e in outcome.evidence)
                outcome = outcome.decoded
                per_strategy[(strategy, "decoded")] += 1
                assert outcome.crop.dtype == np.uint8 and outcome.crop.shape == (224, 224, 3), path
                assert outcome.crop.flags.c_contiguous
                ref = reference_crop(path)
                if ref is None:
                    undecodable.append(path)
                    continue
                crop, size = ref
                if size != (outcome.width, outcome.height) or not np.array_equal(crop, outcome.crop):
                    mismatches.append(path)
                continue
            assert isinstance(outcome, DecodeFailure), (path, outcome)
            assert outcome.code in ERROR_CODES, (path, outcome)
            assert isinstance(outcome.message, str) and outcome.message, (path, outcome)
            assert outcome.code not in ("permission_denied", "io_error", "symlink_loop"), (path, outcome)
            codes[outcome.code] += 1
            per_strategy[(strategy, "error")] += 1
            if CRASHED in outcome.message:
                crashes.append(path)
            elif outcome.code == "decode_timeout":
                hangs.append(path)
            elif outcome.code != "too_large" and reference_crop(path) is not None:
                false_errors[outcome.code] += 1  # informational: Pillow decodes what we refused

    decoded = sum(isinstance(o, Examined) for _, o in outcomes)
    print(
        f"\nfuzz (decode pool): {len(outcomes)} mutants, {decoded} decoded, {sum(codes.values())} errors by code "
        f"{dict(sorted(codes.items()))}; crashes {len(crashes)}, hangs {len(hangs)}, "
        f"decoded-but-undecodable {len(undecodable)}, crop mismatches {len(mismatches)}, "
        f"errors on files Pillow decodes {dict(false_errors)}"
    )
    print(f"fuzz per strategy: {dict(sorted(per_strategy.items()))}")
    for label, paths in (("crash", crashes), ("hang", hangs)):
        for p in paths[:10]:
            print(f"  {label}: {p}")
    assert undecodable == [], undecodable[:10]
    assert mismatches == [], mismatches[:10]
    # Both branches must actually be exercised, or the fuzz proves nothing.
    assert decoded > 100 and sum(codes.values()) > 100


def test_cli_fuzz(corpus, pool_outcomes, session_home, tmp_path):
    _, outcomes = pool_outcomes
    picked = list(range(0, N_CASES, N_CASES // N_CLI))[:N_CLI]
    folder = tmp_path / "cli"
    folder.mkdir()
    expected = {}
    for i in picked:
        src = corpus[i][0]
        dst = folder / os.path.basename(src)
        dst.write_bytes(open(src, "rb").read())
        expected[str(dst)] = (src, outcomes[i][1])
    p = run_cli("scan", str(folder), "-q", env={"CODESCAN_HOME": str(session_home)})
    assert p.stderr == b"", p.stderr.decode(errors="replace")[-2000:]
    recs = [json.loads(line) for line in p.stdout.decode("utf-8").splitlines()]
    assert recs[0]["type"] == "header" and recs[-1]["type"] == "summary"
    results = recs[1:-1]
    assert sorted(r["path"] for r in results) == sorted(expected) and len(results) == len(expected)

    undecodable_verdicts = []
    with quiet_fd2():
        for r in results:
            src, outcome = expected[r["path"]]
            if r["status"] in ("real", "fake"):
                assert isinstance(r["score"], float), r
                if reference_crop(r["path"]) is None:
                    undecodable_verdicts.append(r["path"])
                # The CLI judged the same box the pool decoded.
                assert isinstance(outcome, Examined), (r, outcome)
                d = outcome.decoded
                assert (r["width"], r["height"], tuple(r["crop"])) == (d.width, d.height, d.box)
            else:
                assert r["status"] == "error" and r.get("error_code") in ERROR_CODES and "score" not in r, r
                assert isinstance(outcome, DecodeFailure), (r, outcome)
                if outcome.code != "decode_timeout" and r["error_code"] != "decode_timeout":
                    assert r["error_code"] == outcome.code, (r, outcome)
    s = recs[-1]
    errors = sum(r["status"] == "error" for r in results)
    fakes = sum(r["status"] == "fake" for r in results)
    verdicts = sum(r["status"] in ("real", "fake") for r in results)
    assert (s["files"], s["errors"], s["fake"], s["real"] + s["fake"]) == (len(results), errors, fakes, verdicts)
    assert p.returncode == (2 if errors else 1 if fakes else 0)
    print(
        f"\nfuzz (CLI): {len(results)} mutants, {verdicts} verdicts, {errors} errors, exit {p.returncode}, "
        f"tracebacks {p.stderr.count(b'Traceback')}, verdicts on undecodable files {len(undecodable_verdicts)}"
    )
    assert undecodable_verdicts == []
