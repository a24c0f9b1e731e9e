"""The content-addressed scan cache: rescans skip decode and model, copies are embedded once,
the key changes with anything that changes a score, and a broken cache never breaks a scan."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import numpy as np
import pytest
from conftest import run_cli, textured_image
from provenance_files import COMFY_PROMPT, png

from codescan.decoding import examine
from codescan.decoding.cache import CachedVerdict, CacheReader, CacheSpec, CacheWriter
from codescan.decoding.examine import ExamineConfig, Examined, Examiner
from codescan.inputs.walk import Entry
from codescan.scan.pipeline import Scanner
from codescan.scan.plan import ScanConfig


class Counting:
    """Wraps an engine and counts the crops it is asked to embed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.crops = 0

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.crops += len(crops)
        return self.inner.embed(crops)


@pytest.fixture()
def tree(tmp_path):
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(6):
        textured_image(rng, 200 + 13 * i, 240).save(folder / f"img{i}.png")
    (folder / "sub" / "copy_of_img2.png").write_bytes((folder / "img2.png").read_bytes())
    (folder / "sub" / "copy2_of_img2.png").write_bytes((folder / "img2.png").read_bytes())
    (folder / "comfy.png").write_bytes(png({"prompt": COMFY_PROMPT}))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (folder / "notes.txt").write_text("not an image")
    return folder


def scan(config: ScanConfig, *folders, **kw) -> tuple[list, Counting]:
    scanner = Scanner(config=config, **kw)
    counting = Counting(scanner.engine)
    scanner.engine = counting
    return list(scanner.scan([str(f) for f in folders])), counting


def test_rescan_skips_model_and_copies_are_embedded_once(home, tree, tmp_path):
    config = ScanConfig(cache=str(tmp_path / "cache.sqlite3"), decode_workers=2, batch_size=4)
    first, engine1 = scan(config, tree)
    assert engine1.crops == 7  # img0..img5 and comfy.png; the two copies of img2 are not embedded again
    second, engine2 = scan(config, tree)
    assert engine2.crops == 0
    assert second == first  # every field, evidence and sha256 included
    uncached, engine3 = scan(ScanConfig(cache=False, decode_workers=2, batch_size=4), tree)
    assert uncached == first and engine3.crops == 7  # copies are found within a scan without any cache

    by_name = {r.path.rsplit("/", 1)[-1]: r for r in first}
    original, copy = by_name["img2.png"], by_name["copy_of_img2.png"]
    assert copy.sha256 == original.sha256 == hashlib.sha256((tree / "img2.png").read_bytes()).hexdigest()
    assert (copy.score, copy.status, copy.crop) == (original.score, original.status, original.crop)
    assert by_name["broken.jpg"].status == "error" and by_name["notes.txt"].status == "skipped"


def test_a_file_reached_twice_is_two_records_and_one_embedding(home, tree):
    """As docs/output.md says: named twice, or under overlapping arguments, like `find`."""
    records, engine = scan(ScanConfig(cache=False, batch_size=4), tree / "img0.png", tree / "sub", tree, tree / "img0.png")
    paths = [r.path for r in records]
    assert paths.count(str(tree / "img0.png")) == 3 and paths.count(str(tree / "sub" / "copy_of_img2.png")) == 2
    assert len(records) == 1 + 2 + 11 + 1 and engine.crops == 7
    assert len({(r.score, r.status) for r in records if r.path == str(tree / "img0.png")}) == 1


def test_thresholds_and_head_change_still_hit(home, tree, tmp_path):
    path = str(tmp_path / "cache.sqlite3")
    first, _ = scan(ScanConfig(cache=path), tree)
    again, engine = scan(ScanConfig(cache=path, head="all", thresholds={"linear": -1e9}), tree)
    assert engine.crops == 0
    verdicts = [r for r in again if r.status in ("real", "fake")]
    assert verdicts and all(r.status == "fake" for r in verdicts)  # the new threshold, applied to cached scores
    assert [r.score for r in again] == [r.score for r in first]
    assert all(set(r.heads) == {"linear", "knn", "ocsvm"} for r in verdicts)


def test_examiner_reads_cache_instead_of_decoding(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    image.write_bytes(png({"prompt": COMFY_PROMPT}))
    entry = Entry(display=str(image), path=os.fsencode(image))
    spec = CacheSpec(
        path=str(tmp_path / "c.sqlite3"), model="digest/p1/onnxruntime/fp32", evidence="metadata/v1", heads=("linear",)
    )
    writer = CacheWriter(spec)
    fresh = Examiner(ExamineConfig(cache=spec))(entry)
    assert isinstance(fresh, Examined) and fresh.decoded is not None and fresh.new_evidence
    d = fresh.decoded
    verdict = CachedVerdict(d.width, d.height, d.format, (d.box,), ({"linear": 0.25},))
    writer.put([(fresh.sha256, verdict)], [(fresh.sha256, fresh.evidence)])

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache has the answer")

    monkeypatch.setattr(examine, "decode_bytes", no_decoding)
    monkeypatch.setattr(examine, "metadata_evidence", no_decoding)
    hit = Examiner(ExamineConfig(cache=spec))(entry)
    assert isinstance(hit, Examined) and hit.decoded is None and not hit.new_evidence
    assert hit.cached == verdict and hit.evidence == fresh.evidence and hit.sha256 == fresh.sha256

    # Another model key or evidence level is a miss: nothing scored elsewhere is reused.
    for other in (
        CacheSpec(spec.path, "digest/p1/onnxruntime/int8", spec.evidence, spec.heads),
        CacheSpec(spec.path, "other-digest/p1/onnxruntime/fp32", spec.evidence, spec.heads),
        CacheSpec(spec.path, "digest/p2/onnxruntime/fp32", spec.evidence, spec.heads),
    ):
        assert CacheReader(other).verdict(fresh.sha256) is None
    assert CacheReader(CacheSpec(spec.path, spec.model, "all/v1", spec.heads)).evidence(fresh.sha256) is None
    writer.close()


def test_model_key_names_weights_preprocessing_scoring_engine_and_precision(home, tmp_path):
    scanner = Scanner(config=ScanConfig(cache=str(tmp_path / "c.sqlite3"), evidence="none"))
    spec = scanner.cache_spec()
    assert spec is not None and spec.evidence is None
    assert spec.model == f"{scanner.bundle.digest}/p1/s2/{scanner.engine.name}/{scanner.engine.precision}"
    assert Scanner(config=ScanConfig(cache=False)).cache_spec() is None


def test_cli_rescan_identical_and_broken_cache_is_a_warning(home, tree, tmp_path):
    cache = tmp_path / "cache.sqlite3"

    def records(*extra: str) -> tuple[int, list[dict], bytes]:
        p = run_cli("scan", str(tree), "-q", *extra)
        lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
        assert lines[-1].pop("seconds") >= 0
        return p.returncode, lines, p.stderr

    rc1, first, err1 = records("--cache", str(cache))
    rc2, second, err2 = records("--cache", str(cache))
    assert (rc1, first, err1) == (rc2, second, err2) == (2, first, b"")  # broken.jpg: exit 2
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 7

    cache.write_bytes(b"this is not a database" * 100)
    rc3, third, err3 = records("--cache", str(cache))
    assert rc3 == 2 and third == first and b"warning: scan cache" in err3 and b"scanning without it" in err3

    elsewhere = tmp_path / "never.sqlite3"
    rc4, fourth, _ = records("--cache", str(elsewhere), "--no-cache")
    assert fourth == first and not elsewhere.exists()


def test_decode_pool_serves_several_calls(tmp_path):
    """Ray's decode actors keep one pool and call it once per batch."""
    from codescan.decoding.feed import DecodePool

    rng = np.random.default_rng(2)
    paths = []
    for i in range(3):
        textured_image(rng, 120, 90).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    pool = DecodePool(workers=1, config=ExamineConfig(evidence="none"), timeout=20, window=4)
    for _ in range(3):
        entries = [Entry(display=str(p), path=os.fsencode(p)) for p in paths]
        outcomes = [o for _, o in pool.outcomes(iter(entries))]
        assert len(outcomes) == 3 and all(isinstance(o, Examined) for o in outcomes)
