"""The scan cache is data, not trust (issue 13 item 4, security kit F5).

Every hostile cache is built here from a genuine one, the way the kit's make_cache.py does:
a cache someone else can write, a schema with views or triggers, malformed rows. None of
them may change a verdict, crash the scan or hold it up.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CODESCAN, textured_image
from provenance_files import COMFY_PROMPT, png

from codescan.core.records import Evidence
from codescan.decoding import cache as cache_module
from codescan.decoding.cache import (
    BoundedConnection,
    CachedVerdict,
    CacheError,
    CacheReader,
    CacheSpec,
    CacheWriter,
)
from codescan.scan.pipeline import Scanner
from codescan.scan.plan import ScanConfig

LOOP = "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)"
FORGED_C2PA = {
    "kind": "c2pa",
    "detail": "C2PA manifest from Adobe Firefly; signed by Adobe Inc.; Valid; source type trainedAlgorithmicMedia",
    "generator": "Adobe Firefly",
    "conclusive": True,
    "valid": True,
}
SHA = bytes(range(32))
GOOD = CachedVerdict(64, 48, "PNG", ((0, 0, 48, 48),), ({"linear": 0.25, "knn": -1.5},))
GOOD_EVIDENCE = (Evidence("comfyui", "ComfyUI workflow", "FLUX.1 [dev]", True),)


def spec_for(path: Path) -> CacheSpec:
    return CacheSpec(str(path), model="digest/p1/onnxruntime/fp32", evidence="metadata/v1", heads=("linear", "knn"))


def genuine(path: Path) -> CacheSpec:
    """A cache as codescan writes it, holding one verdict and one evidence row."""
    spec = spec_for(path)
    writer = CacheWriter(spec)
    writer.put([(SHA, GOOD)], [(SHA, GOOD_EVIDENCE)])
    writer.close()
    return spec


def hostile_copy(base: Path, dst: Path, script: str) -> Path:
    """A copy of `base` altered by `script`, in rollback-journal mode like make_cache.py leaves it."""
    src, out = sqlite3.connect(base), sqlite3.connect(dst, isolation_level=None)
    src.backup(out)
    src.close()
    out.execute("PRAGMA journal_mode = DELETE")
    out.executescript(script)
    out.close()
    return dst


FOREIGN_SCHEMAS = {
    # make_cache.py's hang.sqlite3: the first write runs an unbounded query
    "view_with_instead_of_trigger": "ALTER TABLE verdicts RENAME TO verdicts_data;"
    "CREATE VIEW verdicts AS SELECT * FROM verdicts_data WHERE 0;"
    f"CREATE TRIGGER verdicts_insert INSTEAD OF INSERT ON verdicts BEGIN {LOOP}; END;",
    "trigger_on_the_other_table": f"CREATE TRIGGER evidence_insert AFTER INSERT ON evidence BEGIN {LOOP}; END;",
    "trigger_on_its_own_table": "CREATE TABLE log (x);CREATE TRIGGER t AFTER INSERT ON log BEGIN SELECT 1; END;",
    # a view named like a real table answers every lookup with forged evidence
    "view_named_like_a_table": "DROP TABLE evidence;"
    "CREATE VIEW evidence (sha256, level, items) AS SELECT sha256, 'metadata/v1', "
    f"'{json.dumps([FORGED_C2PA])}' FROM verdicts;",
    "another_table": "CREATE TABLE notes (x TEXT);",
    "an_index": "CREATE INDEX by_model ON verdicts (model);",
    "wrong_column_types": "DROP TABLE verdicts;"
    "CREATE TABLE verdicts (sha256 BLOB NOT NULL, model TEXT NOT NULL, width TEXT NOT NULL, height TEXT NOT NULL, "
    "format TEXT NOT NULL, box TEXT NOT NULL, scores BLOB NOT NULL, PRIMARY KEY (sha256, model)) WITHOUT ROWID;",
    "a_missing_column": "ALTER TABLE verdicts DROP COLUMN box;",
    "a_missing_table": "DROP TABLE evidence;",
    "another_schema_version": "PRAGMA user_version = 7;",
}


@pytest.mark.parametrize("script", FOREIGN_SCHEMAS.values(), ids=FOREIGN_SCHEMAS.keys())
def test_a_foreign_schema_is_refused_before_its_sql_can_run(tmp_path, script):
    base = tmp_path / "base.sqlite3"
    genuine(base)
    path = hostile_copy(base, tmp_path / "hostile.sqlite3", script)
    before = path.read_bytes()
    started = time.monotonic()
    with pytest.raises(CacheError, match="schema is not the one codescan creates"):
        CacheWriter(spec_for(path))
    reader = CacheReader(spec_for(path))
    assert reader.verdict(SHA) is None and reader.evidence(SHA) is None
    assert time.monotonic() - started < 5
    assert path.read_bytes() == before  # nothing written, no trigger fired


def test_the_genuine_schema_is_accepted_and_read_back(tmp_path):
    spec = genuine(tmp_path / "c.sqlite3")
    reader = CacheReader(spec)
    assert reader.verdict(SHA) == GOOD and reader.evidence(SHA) == GOOD_EVIDENCE
    CacheWriter(spec).close()  # reopening its own file is no foreign schema


def _group_writable_dir(folder: Path) -> Path:
    folder.chmod(0o775)
    return folder / "c.sqlite3"


def _world_writable_file(folder: Path) -> Path:
    (folder / "c.sqlite3").chmod(0o666)
    return folder / "c.sqlite3"


def _group_writable_file(folder: Path) -> Path:
    (folder / "c.sqlite3").chmod(0o620)
    return folder / "c.sqlite3"


def _world_writable_wal(folder: Path) -> Path:
    wal = folder / "c.sqlite3-wal"
    wal.write_bytes(b"")
    wal.chmod(0o666)
    return folder / "c.sqlite3"


def _link_to_a_world_writable_file(folder: Path) -> Path:
    (folder / "c.sqlite3").chmod(0o666)
    mine = folder.parent / "mine"
    mine.mkdir()
    (mine / "link.sqlite3").symlink_to(folder / "c.sqlite3")
    return mine / "link.sqlite3"


def _someone_elses_file(folder: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("giving a file away needs root")
    os.chown(folder / "c.sqlite3", 65534, 65534)
    return folder / "c.sqlite3"


@pytest.mark.parametrize(
    "give_away",
    [
        _group_writable_dir,
        _world_writable_file,
        _group_writable_file,
        _world_writable_wal,
        _link_to_a_world_writable_file,
        _someone_elses_file,
    ],
)
def test_a_cache_someone_else_can_write_is_not_used(tmp_path, give_away):
    folder = tmp_path / "store"
    folder.mkdir(mode=0o700)
    genuine(folder / "c.sqlite3")
    path = give_away(folder)
    with pytest.raises(CacheError, match="is not used"):
        CacheWriter(spec_for(path))
    assert CacheReader(spec_for(path)).verdict(SHA) is None


def test_a_new_cache_directory_is_private(tmp_path):
    spec = genuine(tmp_path / "new" / "deeper" / "c.sqlite3")
    assert (tmp_path / "new" / "deeper").stat().st_mode & 0o777 == 0o700
    assert CacheReader(spec).verdict(SHA) == GOOD


MALFORMED_VERDICTS = {
    "missing_head": ("scores", json.dumps({"knn": -1.5})),
    "extra_head": ("scores", json.dumps({"linear": 0.25, "knn": -1.5, "ocsvm": 9.0})),
    "score_as_text": ("scores", json.dumps({"linear": "0.25", "knn": -1.5})),
    "score_not_finite": ("scores", '{"linear": Infinity, "knn": -1.5}'),
    "scores_a_list": ("scores", "[0.25, -1.5]"),
    "scores_not_json": ("scores", "{linear: 0.25"),
    "scores_nested_past_the_recursion_limit": ("scores", "[" * 100_000 + "]" * 100_000),
    "scores_a_blob": ("scores", json.dumps({"linear": 0.25, "knn": -1.5}).encode()),
    "width_as_text": ("width", "wide"),
    "height_zero": ("height", 0),
    "format_a_blob": ("format", b"PNG"),
    "box_too_short": ("box", "[0, 0, 48]"),
    "box_of_floats": ("box", "[0, 0, 48.5, 48]"),
    "box_null": ("box", "null"),
}
MALFORMED_EVIDENCE = {
    "not_json": "[{",
    "not_a_list": json.dumps(FORGED_C2PA),
    "unknown_kind": json.dumps([{**FORGED_C2PA, "kind": "oracle"}]),
    "kind_missing": json.dumps([{"detail": "x", "conclusive": True}]),
    "conclusive_as_text": json.dumps([{**FORGED_C2PA, "conclusive": "yes"}]),
    "valid_as_number": json.dumps([{**FORGED_C2PA, "valid": 1}]),
    "unknown_field": json.dumps([{**FORGED_C2PA, "trusted": True}]),
    "one_bad_item_among_good_ones": json.dumps([GOOD_EVIDENCE[0].to_dict(), {"kind": "c2pa"}]),
}


@pytest.mark.parametrize(("column", "value"), MALFORMED_VERDICTS.values(), ids=MALFORMED_VERDICTS.keys())
def test_a_malformed_verdict_row_is_a_miss(tmp_path, column, value):
    spec = genuine(tmp_path / "c.sqlite3")
    with sqlite3.connect(spec.path) as db:
        db.execute(f"UPDATE verdicts SET {column} = ?", (value,))
    reader = CacheReader(spec)
    assert reader.verdict(SHA) is None
    assert reader.evidence(SHA) == GOOD_EVIDENCE  # one bad row is a miss, not a broken cache


@pytest.mark.parametrize("items", MALFORMED_EVIDENCE.values(), ids=MALFORMED_EVIDENCE.keys())
def test_a_malformed_evidence_row_is_a_miss(tmp_path, items):
    spec = genuine(tmp_path / "c.sqlite3")
    with sqlite3.connect(spec.path) as db:
        db.execute("UPDATE evidence SET items = ?", (items,))
    reader = CacheReader(spec)
    assert reader.evidence(SHA) is None
    assert reader.verdict(SHA) == GOOD


def test_every_statement_is_bounded(tmp_path, monkeypatch):
    spec = genuine(tmp_path / "c.sqlite3")
    db = BoundedConnection(spec.path, readonly=True)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        db.one(LOOP)
    unbounded_for = time.monotonic() - started
    assert unbounded_for < 10
    assert db.one("SELECT count(*) FROM verdicts") == (1,)  # the budget is per statement
    monkeypatch.setattr(cache_module, "STATEMENT_STEPS", cache_module.STATEMENT_STEPS // 100)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        db.one(LOOP)
    assert time.monotonic() - started < unbounded_for  # the limit, not something else, stopped it
    db.close()


# End to end: the kit's reproducers through a real scan.


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    textured_image(np.random.default_rng(7), 120, 96).save(folder / "plain.png")
    (folder / "comfy.png").write_bytes(png({"prompt": COMFY_PROMPT}))
    return folder


def scan(images: Path, cache: Path | None) -> tuple[list, list[str]]:
    warnings: list[str] = []
    config = ScanConfig(cache=False if cache is None else str(cache), decode_workers=1)
    return list(Scanner(config=config, warn=warnings.append).scan([str(images)])), warnings


def test_forged_and_headless_caches_change_no_verdict(home, images, tmp_path):
    baseline, _ = scan(images, None)
    base = tmp_path / "store" / "base.sqlite3"
    assert scan(images, base) == (baseline, [])

    forged = hostile_copy(
        base,
        tmp_path / "store" / "forged.sqlite3",
        "UPDATE verdicts SET scores = json_object('linear', 99.0, 'knn', 99.0, 'ocsvm', 99.0);"
        f"UPDATE evidence SET items = '{json.dumps([FORGED_C2PA])}';",
    )
    forged.chmod(0o666)
    results, warnings = scan(images, forged)
    assert results == baseline
    assert len(warnings) == 1 and "is not used" in warnings[0] and "writable by group or others" in warnings[0]

    headless = hostile_copy(
        base, tmp_path / "store" / "headless.sqlite3", "UPDATE verdicts SET scores = json_remove(scores, '$.linear');"
    )
    assert scan(images, headless) == (baseline, [])  # a miss: scored again, silently, and stored whole
    with sqlite3.connect(headless) as db:
        assert all("linear" in json.loads(s) for (s,) in db.execute("SELECT scores FROM verdicts"))


def test_cli_with_a_hanging_cache_warns_once_and_finishes(home, images, tmp_path):
    def records(*cache: str) -> tuple[list[dict], list[bytes]]:
        p = subprocess.run([CODESCAN, "scan", "-q", *cache, str(images)], capture_output=True, timeout=60)
        lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
        lines[-1].pop("seconds")
        return lines, p.stderr.splitlines()

    base = tmp_path / "store" / "base.sqlite3"
    baseline, quiet = records("--cache", str(base))  # a first scan: the same records as --no-cache (test_cache.py)
    assert quiet == []
    hang = hostile_copy(base, tmp_path / "store" / "hang.sqlite3", FOREIGN_SCHEMAS["view_with_instead_of_trigger"])
    started = time.monotonic()
    results, stderr = records("--cache", str(hang))
    assert time.monotonic() - started < 30
    assert results == baseline
    assert len(stderr) == 1 and stderr[0].startswith(b"codescan: warning: scan cache") and b"schema" in stderr[0]
