"""The shared robustness corpus (Pillow's hostile test images + synthetic cases) end to end.

One `codescan scan` over the whole corpus must give one record per regular file, never a
traceback or decoder noise, bombs as `too_large`, and no verdict on a file that Pillow itself
cannot decode.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROBUSTNESS, quiet_fd2, require_corpus, run_cli
from PIL import Image, ImageFile
from torchvision.transforms import CenterCrop

from codescan.core import records as codes
from codescan.decoding.decode import DecodeLimits, decode_file


@pytest.fixture(autouse=True, scope="module")
def _corpus() -> None:
    require_corpus(ROBUSTNESS)


ERROR_CODES = set(codes.ERROR_CODES)
BOMBS = ["bombs_dos/decompression_bomb.gif", "bombs_dos/decompression_bomb.ico"]
# Bombs in metadata only (three zTXt chunks inflating past Pillow's MAX_TEXT_CHUNK, then a valid
# IDAT): Pillow refuses the whole file, codescan judges its pixels, since metadata never decides
# whether pixels are judged (security kit F3). The reference for them is Pillow on the same PNG
# without its text chunks.
METADATA_BOMBS = {"bombs_dos/png_decompression_dos.png"}


def regular_files(root: str) -> list[str]:
    """Every regular file under root, symlinks not followed, hidden files included."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + dirnames:  # a symlink to a directory shows up in dirnames
            p = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p)
    return out


def walk_order_key(path: str, root: str) -> tuple[bytes, ...]:
    """Depth-first, entries sorted by raw name bytes == sort by the tuple of path components."""
    return tuple(os.fsencode(part) for part in os.path.relpath(path, root).split(os.sep))


def _without_text_chunks(data: bytes) -> bytes:
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(data[pos : pos + 12 + length])
        pos += 12 + length
    return b"".join(out)


def reference_decode(path: str) -> Image.Image | None:
    """Pillow's own full decode with its defaults (all plugins, default bomb limit, no truncated loads)."""
    assert Image.MAX_IMAGE_PIXELS == 89_478_485 and not ImageFile.LOAD_TRUNCATED_IMAGES
    source: str | io.BytesIO = path
    if os.path.relpath(path, ROBUSTNESS) in METADATA_BOMBS:
        source = io.BytesIO(_without_text_chunks(Path(path).read_bytes()))
    try:
        with warnings.catch_warnings(), quiet_fd2():
            warnings.simplefilter("ignore")
            with Image.open(source) as im:
                im.load()
                return im.convert("RGB")
    except Exception:  # noqa: BLE001 - any failure means "not decodable"
        return None


def header_only_png_name() -> str:
    with open(ROBUSTNESS / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    hits = [r["path"] for r in rows if "20000x20000" in r["note"] and "no IDAT" in r["note"]]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.fixture(scope="module")
def scan(session_home):
    p = run_cli("scan", str(ROBUSTNESS), "-q", env={"CODESCAN_HOME": str(session_home)})
    lines = p.stdout.decode("utf-8").splitlines()
    return p, [json.loads(line) for line in lines]


def test_one_record_per_file_no_noise(scan):
    p, recs = scan
    assert p.stderr == b"", p.stderr.decode(errors="replace")[-2000:]
    assert recs[0]["type"] == "header" and recs[-1]["type"] == "summary"
    results = recs[1:-1]
    assert all(r["type"] == "result" for r in results)
    expected = regular_files(str(ROBUSTNESS))
    got = [r["path"] for r in results]
    assert collections.Counter(got) == collections.Counter(expected)
    assert got == sorted(expected, key=lambda q: walk_order_key(q, str(ROBUSTNESS)))
    s = recs[-1]
    assert s["files"] == len(expected) and "interrupted" not in s
    by_status = collections.Counter(r["status"] for r in results)
    assert (s["real"], s["fake"], s["errors"], s["skipped"]) == tuple(by_status[k] for k in ("real", "fake", "error", "skipped"))
    assert s["errors"] > 0 and p.returncode == 2


def test_bombs_are_too_large(scan):
    _, recs = scan
    by_path = {os.path.relpath(r["path"], ROBUSTNESS): r for r in recs[1:-1]}
    for rel in [*BOMBS, header_only_png_name()]:
        r = by_path[rel]
        assert (r["status"], r.get("error_code")) == ("error", "too_large"), r
    for rel in METADATA_BOMBS:
        assert by_path[rel]["status"] in ("real", "fake"), by_path[rel]


def test_errors_are_typed_and_verdicts_are_decodable(scan):
    _, recs = scan
    results = recs[1:-1]
    errors_by_code: collections.Counter[str] = collections.Counter()
    undecodable_verdicts = []
    size_mismatch = []
    crop_mismatch = []
    for r in results:
        assert r["status"] in ("real", "fake", "error", "skipped"), r
        if r["status"] in ("error", "skipped"):
            assert r.get("error_code") in ERROR_CODES, r
            assert "score" not in r and "heads" not in r, r
            if r["status"] == "skipped":
                assert r["error_code"] == "not_an_image", r
            else:
                assert isinstance(r.get("error"), str) and r["error"], r
                errors_by_code[r["error_code"]] += 1
            continue
        assert isinstance(r["score"], float) and "error_code" not in r, r
        rgb = reference_decode(r["path"])
        if rgb is None:
            undecodable_verdicts.append(r["path"])
            continue
        if rgb.size != (r["width"], r["height"]):
            size_mismatch.append((r["path"], rgb.size, (r["width"], r["height"])))
        # The judged pixels are the reference's: torchvision CenterCrop(224) of the full RGB image.
        with quiet_fd2(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = decode_file(r["path"], DecodeLimits())
        if tuple(r["crop"]) != mine.box or not np.array_equal(np.asarray(CenterCrop(224)(rgb)), mine.crop):
            crop_mismatch.append(r["path"])
    verdicts = sum(r["status"] in ("real", "fake") for r in results)
    skipped = sum(r["status"] == "skipped" for r in results)
    print(
        f"\nrobustness corpus: {len(results)} files, {verdicts} verdicts, {skipped} skipped, "
        f"{sum(errors_by_code.values())} errors by code {dict(sorted(errors_by_code.items()))}, "
        f"verdicts on undecodable files: {len(undecodable_verdicts)}, size mismatches: {len(size_mismatch)}, "
        f"crop mismatches: {len(crop_mismatch)}"
    )
    assert undecodable_verdicts == []
    assert size_mismatch == []
    assert crop_mismatch == []
