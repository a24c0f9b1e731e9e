"""Records kept on file: every scan mode must write them again, byte for byte but for the scores'
last bits (#25 moved the code that makes them; #26 scores a batch at once).

The scans run on files this test writes (PNG, TIFF, GIF, BMP in several modes and sizes, a copy, text,
a truncated and an empty image, a PNG carrying generator parameters, a zip and a tar), with the
exact engine (tests/exact_engine.py: the same embeddings on every machine) and heads whose
numbers come from a seeded generator, so the records in tests/fixtures/records/ hold anywhere.
Scores may differ by 1e-12 (the BLAS of another machine, a batch formulation); every other
byte of every line must be the same, `seconds` and the codescan version aside. Ray's records
equal the local scan's (tests/test_ray.py), so they equal these too.

After a change that is meant to change records, rewrite them with
``CODESCAN_WRITE_RECORDS=1 pytest tests/test_records_stable.py`` and say why in CHANGELOG.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import textured_image
from PIL import Image

STORED = Path(__file__).parent / "fixtures" / "records"
WRITE = os.environ.get("CODESCAN_WRITE_RECORDS") == "1"
TOLERANCE = 1e-12
MODES: dict[str, dict] = {
    "all-heads-archives": {"head": "all", "archives": True},
    "crops5": {"head": "all", "crops": 5},
    "linear": {"head": "linear"},
}
NUMBER = r"-?[0-9][0-9.eE+-]*"
SCORE = re.compile(rf'("score": )({NUMBER})')
BOX_SCORES = re.compile(r'"scores": \{[^}]*\}')
# The bundle's digest covers bundle.json (codescan's version, transformers' config fields), not the scan.
VOLATILE = re.compile(rf'"seconds": {NUMBER}|"codescan": "[^"]*"|"weights": \{{[^}}]*\}}')


def _png(image: Image.Image, **text: str) -> bytes:
    """PNG bytes that are the same on every machine: stored (uncompressed) deflate blocks, so no
    zlib version can change them, and with them the sha256 in the records."""
    rgb = np.asarray(image.convert("RGB"))
    raw = b"".join(b"\0" + row.tobytes() for row in rgb)
    blocks = [raw[i : i + 65535] for i in range(0, len(raw), 65535)]
    deflate = b"".join(
        bytes([i == len(blocks) - 1]) + struct.pack("<HH", len(b), 0xFFFF ^ len(b)) + b for i, b in enumerate(blocks)
    )
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", rgb.shape[1], rgb.shape[0], 8, 2, 0, 0, 0))]
    chunks += [(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")) for key, value in text.items()]
    chunks += [(b"IDAT", b"\x78\x01" + deflate + struct.pack(">I", zlib.adler32(raw))), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(25)
    tree = root / "tree"
    (tree / "nested").mkdir(parents=True)
    sizes = [(100, 80), (224, 224), (300, 260), (500, 90), (231, 229), (64, 400), (260, 300), (225, 223)]
    for i, (w, h) in enumerate(sizes):
        (tree / f"rgb{i}.png").write_bytes(_png(textured_image(rng, w, h)))
    textured_image(rng, 240, 240).convert("L").save(tree / "nested" / "gray.tif")
    textured_image(rng, 260, 230).convert("RGBA").save(tree / "nested" / "rgba.tif")
    textured_image(rng, 250, 250).convert("P").save(tree / "nested" / "palette.gif")
    textured_image(rng, 230, 260).save(tree / "nested" / "plain.bmp")
    sd = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15"
    (tree / "generated.png").write_bytes(_png(textured_image(rng, 256, 256), parameters=sd))
    (tree / "copy.png").write_bytes((tree / "rgb2.png").read_bytes())
    (tree / "notes.txt").write_text("not an image\n")
    (tree / "empty.png").write_bytes(b"")
    (tree / "truncated.png").write_bytes((tree / "rgb3.png").read_bytes()[:300])
    members = {f"m{i}.png": _png(textured_image(rng, 240 + 9 * i, 236)) for i in range(3)}
    with zipfile.ZipFile(tree / "set.zip", "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    with tarfile.open(tree / "set.tar", "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
    return tree


def _bundle(home: Path) -> None:
    """The small checkpoint's encoder (unused by the exact engine) with heads of fixed numbers."""
    from codescan.model.heads import KnnHead, LinearHead, OcsvmHead
    from codescan.weights.bundle import bundle_meta, load_bundle, write_bundle

    base = load_bundle("code")
    rng = np.random.default_rng(26)
    heads = {
        "linear": LinearHead(coef=rng.standard_normal(192) * 0.3, intercept=0.05),
        "knn": KnnHead(bank=rng.standard_normal((20, 192)) * 0.1, labels=np.arange(20) % 2),
        "ocsvm": OcsvmHead(
            support_vectors=rng.standard_normal((8, 192)) * 0.1, dual_coef=rng.random(8), intercept=-1.5,
            gamma=1 / 192, coef0=1.0, degree=3,
        ),
    }
    meta = bundle_meta("golden", base.encoder_config, {"linear": 0.0, "knn": 0.0, "ocsvm": 0.0}, {"kind": "test"}, "test")
    write_bundle("golden", base.encoder_state(), heads, meta)


def _scan(out: Path, mode: dict, resume: bool = False) -> None:
    import exact_engine

    from codescan.core.records import Summary
    from codescan.inputs.walk import WalkOptions
    from codescan.scan import job
    from codescan.scan.executors import make_executor
    from codescan.scan.plan import OutputConfig, ScanConfig, ScanPlan

    exact_engine.register()
    config = ScanConfig(
        head=mode["head"], crops=mode.get("crops", 1), cache=False, decode_workers=2, batch_size=4,
        walk=WalkOptions(archives=mode.get("archives", False)),
    )
    output = OutputConfig(target=str(out), resume=str(out) if resume else None)
    plan = ScanPlan.resolve("golden", "exact", "fp32", config, output)
    executor = make_executor(plan, warn=lambda message: None)
    arguments: list[str | bytes] = ["tree"]
    header = executor.header().with_inputs(arguments)
    target = str(out) if resume else ""
    job.run(executor, plan.reporter(), header, arguments, Summary.for_evidence(config.evidence), target=target)


def _split(line: str) -> tuple[str, list[float]]:
    """The line with its scores masked (compared byte for byte), and the scores (compared within TOLERANCE)."""
    scores = [float(m.group(2)) for m in SCORE.finditer(line)]
    for block in BOX_SCORES.findall(line):
        scores += [float(x) for x in re.findall(rf": ({NUMBER})", block)]
    masked = BOX_SCORES.sub('"scores": #', SCORE.sub(r"\1#", line))
    return VOLATILE.sub("#", masked), scores


def _same(name: str, got: Path) -> None:
    stored = (STORED / f"{name}.jsonl").read_text().splitlines()
    lines = got.read_text().splitlines()
    assert len(lines) == len(stored), f"{name}: {len(lines)} lines, {len(stored)} stored"
    for n, (new, old) in enumerate(zip(lines, stored)):
        (new_text, new_scores), (old_text, old_scores) = _split(new), _split(old)
        assert new_text == old_text, f"{name} line {n + 1} differs:\n  now    {new}\n  stored {old}"
        assert len(new_scores) == len(old_scores)
        assert np.allclose(new_scores, old_scores, rtol=0, atol=TOLERANCE), f"{name} line {n + 1}: {new_scores} vs {old_scores}"


@pytest.fixture(scope="module")
def scans(tmp_path_factory, session_home) -> Path:
    root = tmp_path_factory.mktemp("records")
    old = os.environ.get("CODESCAN_HOME"), os.getcwd()
    os.environ["CODESCAN_HOME"] = str(session_home)
    os.chdir(root)  # relative arguments: paths and the inputs fingerprint do not name the temp folder
    try:
        _tree(root)
        _bundle(session_home)
        for name, mode in MODES.items():
            _scan(root / f"{name}.jsonl", mode)
        lines = (root / "all-heads-archives.jsonl").read_text().splitlines(keepends=True)
        (root / "resumed.jsonl").write_text("".join(lines[:9]))  # header and 8 records, no summary: a killed scan
        _scan(root / "resumed.jsonl", MODES["all-heads-archives"], resume=True)
    finally:
        os.chdir(old[1])
        if old[0] is None:
            os.environ.pop("CODESCAN_HOME")
        else:
            os.environ["CODESCAN_HOME"] = old[0]
    if WRITE:
        STORED.mkdir(parents=True, exist_ok=True)
        for name in MODES:
            (STORED / f"{name}.jsonl").write_bytes((root / f"{name}.jsonl").read_bytes())
    return root


@pytest.mark.parametrize("name", list(MODES))
def test_records_as_stored(scans, name):
    _same(name, scans / f"{name}.jsonl")


def test_a_resumed_scan_writes_the_stored_records(scans):
    _same("all-heads-archives", scans / "resumed.jsonl")


def test_the_stored_records_cover_what_they_claim():
    """Every kind of record is on file, so a test above that passes has compared something."""
    text = (STORED / "all-heads-archives.jsonl").read_text()
    for needle in ('"status": "real"', '"status": "fake"', '"status": "error"', '"status": "skipped"', "set.zip", "set.tar",
                   '"evidence": [', '"heads": {', '"type": "summary"'):
        assert needle in text, needle
    assert '"boxes": [' in (STORED / "crops5.jsonl").read_text()


@pytest.mark.parametrize("bank", [24, 1000])
def test_a_rows_scores_are_the_same_bits_in_any_batch(bank):
    """Heads score a batch at once (#26), and a row's score does not move with the batch's size
    or with its batch mates: 1, 7 and 64 rows, first or last, alone or among others."""
    from codescan.model.heads import HeadSet, KnnHead, LinearHead, OcsvmHead

    rng = np.random.default_rng(bank)
    heads = HeadSet(heads={
        "linear": LinearHead(coef=rng.standard_normal(192), intercept=0.1),
        "knn": KnnHead(bank=rng.standard_normal((bank, 192)), labels=np.arange(bank) % 2),
        "ocsvm": OcsvmHead(rng.standard_normal((bank // 2, 192)) * 0.1, rng.random(bank // 2), -1.0, 1 / 192, 1.0, 3),
    })
    emb = rng.standard_normal((64, 192)).astype(np.float32)
    full = heads.score_rows(emb)  # (64, 3)
    assert full.shape == (64, 3) and np.all(np.isfinite(full))
    assert np.array_equal(heads.score_rows(emb[:7]), full[:7])
    for i in (0, 6, 31, 63):
        assert np.array_equal(heads.score_rows(emb[i : i + 1]), full[i : i + 1])
    others = rng.standard_normal((64, 192)).astype(np.float32)
    mixed = np.concatenate([others[:40], emb[5:6], others[40:]])
    assert np.array_equal(heads.score_rows(mixed)[40], full[5])
    buffer = np.empty(192 + 8, np.float32)
    for shift in range(0, 8, 3):  # the row at another memory alignment
        moved = buffer[shift : shift + 192].reshape(1, 192)
        moved[:] = emb[9]
        assert np.array_equal(heads.score_rows(moved), full[9:10])


def test_a_file_scored_alone_or_among_others_in_a_scan(tmp_path, home, monkeypatch):
    """Through the scan itself: the same file's record alone (batch of 1) and among 30 others (batches of 7)."""
    import exact_engine

    from codescan.scan.pipeline import Scanner
    from codescan.scan.plan import ScanConfig

    exact_engine.register()
    rng = np.random.default_rng(5)
    crowd = tmp_path / "crowd"
    crowd.mkdir()
    for i in range(30):
        (crowd / f"{i:02d}.png").write_bytes(_png(textured_image(rng, 240, 250)))
    (crowd / "15.png").replace(tmp_path / "alone.png")
    (crowd / "15.png").write_bytes((tmp_path / "alone.png").read_bytes())

    def score(target: Path, batch: int) -> dict:
        config = ScanConfig(head="all", batch_size=batch, decode_workers=1)
        results = Scanner(engine="exact", precision="fp32", config=config).scan([str(target)])
        return next(r for r in results if r.path.endswith("15.png") or r.path.endswith("alone.png")).heads

    alone, among = score(tmp_path / "alone.png", 1), score(crowd, 7)
    assert alone == among and len(alone) == 3  # dataclass equality: every head's float, bit for bit


def test_the_scan_cache_key_names_the_scoring(home):
    """Scores changed in their last bits with batched scoring: verdicts cached before are not reused."""
    from codescan.model.heads import SCORING_VERSION
    from codescan.scan.plan import ScanConfig, ScanPlan

    plan = ScanPlan.resolve("code", "auto", "auto", ScanConfig(cache="c.sqlite3"))
    assert f"/s{SCORING_VERSION}/" in plan.cache_spec("onnxruntime", "fp32").model and SCORING_VERSION >= 2


def test_the_usual_records_line_is_the_encoders():
    """The JSONL writer builds a judged file's line as text (reporters._judged_line); every other
    record goes through the dict and the encoder. Both must write the same bytes for any record."""
    import math
    from dataclasses import replace

    from codescan.core.records import BoxScore, Evidence, HeadVerdict, Origin, Result
    from codescan.output.reporters import dumps, result_lines

    base = Result(path="a/b.jpg", status="real", score=-0.25, threshold=0.0, head="linear", width=512, height=384,
                  format="JPEG", crop=(144, 80, 368, 304), sha256="ab" * 32, evidence=())
    paths = ['q"uote\\back', "tab\tnl\ncr\r\x00\x1f\x7f", "é日本\u2028\u2029", "bad\udcff\udc80name", "-=cmd|' /C calc'!A0", ""]
    scores = [0.0, -0.0, 1e-300, -1.7976931348623157e308, 5e-324, 0.1 + 0.2, 1.0, 123456789.0, math.pi]
    records = [replace(base, path=p) for p in paths] + [replace(base, score=v, status="fake") for v in scores]
    records += [
        replace(base, evidence=None), replace(base, threshold=-1e-9), replace(base, head='li"near', format="WE\\BP"),
        replace(base, evidence=(Evidence("software", "Software: x", "x", True),)),  # evidence found: the dict's way
        replace(base, origin=Origin("z.zip", "m.png", 3, "k")),
        replace(base, heads={"linear": HeadVerdict(-0.25, "real")}),
        replace(base, boxes=(BoxScore((0, 0, 224, 224), {"linear": -0.25}),)),
        replace(base, width=True), replace(base, score=np.float64(0.5)), replace(base, crop=(1, 2, 3)),
        Result(path="e.png", status="error", error_code="truncated", error="cut short", sha256="cd" * 32),
        Result(path="s.txt", status="skipped", error_code="not_an_image"),
    ]
    for record in records:
        assert result_lines([record]) == dumps(record.to_dict()), record
    assert result_lines(records) == "\n".join(dumps(r.to_dict()) for r in records)


def test_a_summary_counts_a_list_as_it_counts_each_record():
    """The job counts a batch's records at once (`Summary.count_all`): the same totals as one by one."""
    import random

    from codescan.core.records import Evidence, Result, Summary

    rng = random.Random(7)
    conclusive, claim = Evidence("c2pa", "signed", "X", True), Evidence("software", "Software: Y")
    records = [
        Result(path=str(i), status=rng.choice(["real", "fake", "error", "skipped"]),
               evidence=rng.choice([None, (), (claim,), (claim, conclusive)]))
        for i in range(500)
    ]
    for level in ("none", "metadata"):
        one_by_one, at_once = Summary.for_evidence(level), Summary.for_evidence(level)
        for r in records:
            one_by_one.count(r.status, r.combined)
        for start in range(0, len(records), 64):
            at_once.count_all(records[start : start + 64])
        assert at_once == one_by_one and at_once.combined_fake != 0


def test_records_hash_by_their_fields_as_when_they_were_frozen():
    """Result (the API's record) and Entry are no longer frozen, for speed; sets of them still work."""
    from codescan.core.records import Result
    from codescan.inputs.walk import Entry

    same = [Result(path="a.png", status="real", score=0.5, threshold=0.0, crop=(0, 0, 1, 1), evidence=()) for _ in range(2)]
    assert len({*same, Result(path="b.png", status="skipped")}) == 2
    assert len({Entry("a", b"a"), Entry("a", b"a"), Entry("b", b"b")}) == 2
