"""Finite numbers only (security round 2, R7): thresholds, head parameters and scores.

A NaN threshold judges every file "real" (``score > NaN`` is never true), ±inf judges every file
one class, and a bare ``NaN``/``Infinity`` in the output is not JSON. So every threshold is
refused unless finite wherever it comes from (`--threshold`, a bundle or variant's bundle.json,
heads.safetensors, a head pickle at import, calibrate and training), a score that is not finite
is the error record `non_finite_score`, never a verdict (nor a cache row), and every JSON writer
refuses NaN and infinity.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, textured_image

from codescan.model.heads import OcsvmHead
from codescan.weights import bundle as W

NON_FINITE = ["nan", "inf", "-inf", "1e999"]


def _no_constant(token: str):
    raise ValueError(f"bare {token} is not JSON")


def strict_lines(text: str) -> list[dict]:
    """Every line parsed as strict JSON: a bare NaN, Infinity or -Infinity raises."""
    return [json.loads(line, parse_constant=_no_constant) for line in text.splitlines() if line.strip()]


def results_in(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in strict_lines(path.read_text()) if r.get("type") == "result"]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("finite") / "img.png"
    textured_image(np.random.default_rng(3), 160, 120).save(path)
    return path


def _refused(p, out: Path, *words: str) -> None:
    """Exit 2, no result record, one line on stderr naming the problem."""
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert results_in(out) == [], out.read_text()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err


# ---------------------------------------------------------------- --threshold


@pytest.mark.parametrize("value", [f"linear={v}" for v in NON_FINITE] + ["NaN", "-Infinity"])
def test_cli_threshold_must_be_finite(home, image, tmp_path, value):
    out = tmp_path / "out.jsonl"
    p = run_cli("scan", "-q", "--no-cache", "--threshold", value, str(image), "-o", str(out))
    _refused(p, out, "--threshold", "finite")


def test_api_thresholds_must_be_finite(home):
    """The Python API (ScanConfig → ScanPlan → Judge) and HeadSet refuse them too."""
    from codescan.model.heads import HeadSet
    from codescan.scan.judge import Judge
    from codescan.scan.plan import ScanConfig, ScanPlan

    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            ScanPlan.resolve("code", "auto", "auto", ScanConfig(thresholds={"linear": value}))
        with pytest.raises(ValueError, match="finite"):
            Judge(judged=("linear",), thresholds={"linear": value}, show_all=False)
        with pytest.raises(ValueError, match="finite"):
            HeadSet(heads={}, thresholds={"linear": value})  # type: ignore[dict-item]


# ---------------------------------------------------------------- bundle.json


@pytest.fixture()
def variant(home):
    """A calibrated variant of `code` (bundle.json only), removed afterwards."""
    name = "r7-variant"
    W.install_variant(name, W.load_bundle("code"), {"linear": {"threshold": 0.25, "origin": {"kind": "calibrated"}}})
    yield W.weights_dir() / name / "bundle.json"
    shutil.rmtree(W.weights_dir() / name, ignore_errors=True)


@pytest.mark.parametrize(
    "literal,cli", [('"nan"', True), ('"NaN"', False), ('"inf"', False), ("NaN", True), ("Infinity", False),
                    ("-Infinity", False), ("1e999", True), ("true", False)],
)
def test_bundle_json_threshold_must_be_finite(variant, image, tmp_path, literal, cli):
    """A variant's bundle.json (no file hash covers it) with a threshold that is not a finite number."""
    text = variant.read_text()
    assert '"threshold": 0.25' in text
    variant.write_text(text.replace('"threshold": 0.25', f'"threshold": {literal}'))
    with pytest.raises(W.WeightsError):
        W.load_bundle("r7-variant").head_set()
    assert "r7-variant" not in [b.name for b in W.list_bundles()]
    if cli:
        out = tmp_path / "out.jsonl"
        p = run_cli("scan", "-q", "--no-cache", "--weights", "r7-variant", str(image), "-o", str(out))
        _refused(p, out, "r7-variant")


def test_variant_with_a_non_finite_threshold_is_never_installed(home):
    base = W.load_bundle("code")
    for value in (math.nan, math.inf):
        with pytest.raises(W.WeightsError, match="finite"):
            W.install_variant("r7-never", base, {"linear": {"threshold": value, "origin": {"kind": "calibrated"}}})
    assert not (W.weights_dir() / "r7-never").exists()


# ---------------------------------------------------------------- head arrays


def _copy_bundle(name: str, tensors: dict[str, np.ndarray], heads_meta: str) -> None:
    """`code`'s files under `name`, with these heads written straight into heads.safetensors."""
    from safetensors.numpy import save_file

    base = W.load_bundle("code")
    folder = W.weights_dir() / name
    shutil.copytree(base.path, folder)
    save_file(tensors, str(folder / "heads.safetensors"), metadata={"heads": heads_meta})
    meta = json.loads((folder / "bundle.json").read_text())
    meta["name"] = name
    meta["files"]["heads.safetensors"] = W.sha256_file(folder / "heads.safetensors")
    (folder / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_heads_safetensors_with_a_non_finite_value_is_refused(home, image, tmp_path, bad):
    dim = W.load_bundle("code").head_set().heads["linear"].coef.shape[0]  # type: ignore[union-attr]
    coef = np.full(dim, 0.01)
    coef[5] = bad
    name = "r7-nanarray"
    try:
        _copy_bundle(name, {"linear.coef": coef, "linear.intercept": np.array([0.0])}, "linear=LinearHead")
        out = tmp_path / "out.jsonl"
        p = run_cli("scan", "-q", "--no-cache", "--weights", name, str(image), "-o", str(out))
        _refused(p, out, "linear.coef", "non-finite")
    finally:
        shutil.rmtree(W.weights_dir() / name, ignore_errors=True)


def test_head_pickle_with_nan_is_refused_at_import(small_checkpoint, tmp_path):
    """`weights import` of an official folder whose LogisticRegression has a NaN coefficient: exit 2, one line."""
    import joblib

    from codescan.weights.headconvert import convert_files
    from codescan.weights.unpickle import HeadLimits

    folder = tmp_path / "CoDE"
    (folder / "sklearn").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(small_checkpoint / f, folder / f)
    linear = next((small_checkpoint / "sklearn").glob("linear_*.sav"))
    est = joblib.load(linear)
    est.coef_[0, 3] = np.nan
    joblib.dump(est, folder / "sklearn" / linear.name)
    with pytest.raises(ValueError, match="coef holds a non-finite value"):
        convert_files([folder / "sklearn" / linear.name], HeadLimits())

    ocsvm = next((small_checkpoint / "sklearn").glob("ocsvm_*.joblib"))
    svm = joblib.load(ocsvm)
    svm._intercept_[0] = np.inf
    joblib.dump(svm, tmp_path / ocsvm.name)
    with pytest.raises(ValueError, match="intercept holds a non-finite value"):
        convert_files([tmp_path / ocsvm.name], HeadLimits())

    home = tmp_path / "home"
    p = run_cli("weights", "import", str(folder), env={"CODESCAN_HOME": str(home)})
    err = p.stderr.decode()
    assert p.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "non-finite" in err and "linear" in err, err
    assert not (home / "weights" / "code").exists()


# ---------------------------------------------------------------- scores


@pytest.fixture(scope="module")
def overflowing(session_home):
    """Bundle `r7-overflow`: `code`'s encoder and heads, but an ocsvm head whose finite parameters
    overflow on every image: (1·⟨sv, x⟩ + 1e200)² = inf for both (identical) support vectors, and
    dual coefficients +1, −1 make the sum inf − inf = NaN."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODESCAN_HOME", str(session_home))
        base = W.load_bundle("code")
        heads = dict(base.head_set().heads)
        dim = heads["linear"].coef.shape[0]  # type: ignore[union-attr]
        heads["ocsvm"] = OcsvmHead(np.ones((2, dim)), np.array([1.0, -1.0]), 0.0, 1.0, 1e200, 2)
        meta = {k: v for k, v in base.meta.items() if k != "files"}
        W.write_bundle("r7-overflow", base.encoder_state(), heads, {**meta, "name": "r7-overflow"})
        yield "r7-overflow"
        shutil.rmtree(W.weights_dir() / "r7-overflow", ignore_errors=True)


def test_nan_score_is_an_error_record_never_a_verdict(home, overflowing, image, tmp_path):
    """--head all: the ocsvm head's NaN makes the record `non_finite_score` (exit 2); not cached: a rescan says the same."""
    cache = tmp_path / "cache.sqlite3"
    for fmt in ("jsonl", "json"):
        out = tmp_path / f"out.{fmt}"
        p = run_cli("scan", "-q", "--weights", overflowing, "--head", "all", "--cache", str(cache), str(image),
                    "-o", str(out))
        assert p.returncode == 2, p.stderr.decode()
        doc = json.loads(out.read_text(), parse_constant=_no_constant) if fmt == "json" else None
        records = doc["results"] if doc else results_in(out)
        assert len(records) == 1
        r = records[0]
        assert (r["status"], r["error_code"]) == ("error", "non_finite_score"), r
        assert "score" not in r and "heads" not in r and "ocsvm" in r["error"], r
        assert r["sha256"]


def test_judge_checks_every_box_and_every_judged_head():
    """max() passes over a NaN that is not first: the judge checks each box, for every judged head (Ray's rows too)."""
    from codescan.core.records import ImageFacts
    from codescan.scan.judge import Judge

    judge = Judge(judged=("linear", "knn"), thresholds={"linear": 0.0, "knn": 0.0}, show_all=True)
    box = (0, 0, 224, 224)
    facts = ImageFacts(width=224, height=224, format="PNG", boxes=(box,) * 3)
    for bad in (math.nan, math.inf, -math.inf, None):
        scores = ({"linear": 1.0, "knn": 0.5}, {"linear": 2.0, "knn": bad}, {"linear": 0.1, "knn": 0.2})
        r = judge.image("x.png", "00" * 32, None, facts, scores)  # type: ignore[arg-type]
        assert (r.status, r.error_code, r.score) == ("error", "non_finite_score", None)
    ok = judge.image("x.png", "00" * 32, None, facts, ({"linear": 1.0, "knn": 0.5},) * 3)
    assert ok.status == "fake"
    linear_only = Judge(judged=("linear",), thresholds={"linear": 0.0}, show_all=False)  # a head not judged decides nothing
    assert linear_only.image("x.png", "00" * 32, None, facts, ({"linear": -1.0, "knn": math.nan},) * 3).status == "real"


def test_cache_never_stores_nor_reads_a_non_finite_score(tmp_path):
    from codescan.decoding.cache import (
        CachedVerdict,
        CacheReader,
        CacheSpec,
        CacheWriter,
        _verdict,
    )

    heads = ("linear", "knn")
    row = lambda scores: (224, 224, "PNG", "[0, 0, 224, 224]", scores)  # noqa: E731
    for text in ('{"linear": NaN, "knn": 0.1}', '{"linear": 1e999, "knn": 0.1}', '{"linear": -Infinity, "knn": 0.1}'):
        assert _verdict(row(text), heads, 1) is None
    assert _verdict(row('{"linear": 0.5, "knn": 0.1}'), heads, 1) is not None
    spec = CacheSpec(path=str(tmp_path / "c.sqlite3"), model="m", evidence=None, heads=heads)
    writer = CacheWriter(spec)
    box = (0, 0, 224, 224)
    writer.put(
        [
            (b"a" * 32, CachedVerdict(224, 224, "PNG", (box,), ({"linear": math.nan, "knn": 0.1},))),
            (b"b" * 32, CachedVerdict(224, 224, "PNG", (box,), ({"linear": 0.3, "knn": 0.1},))),
        ],
        [],
    )
    writer.close()
    reader = CacheReader(spec)
    assert reader.verdict(b"a" * 32) is None and reader.verdict(b"b" * 32) is not None
    with sqlite3.connect(spec.path) as db:
        assert db.execute("SELECT sha256 FROM verdicts").fetchall() == [(b"b" * 32,)]  # the NaN row never written


# ---------------------------------------------------------------- JSON writers, calibration


def test_json_writers_refuse_nan(tmp_path):
    from codescan.core.records import Result
    from codescan.output.reporters import JsonReporter, Sink, dumps, result_lines

    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            dumps({"score": value})
        judged = Result(path="x", status="real", score=value, threshold=0.0, head="linear", width=1, height=1,
                        format="PNG", crop=(0, 0, 1, 1), sha256="ab", evidence=())
        with pytest.raises(ValueError):
            result_lines([replace(judged, score=0.5), judged])  # the usual record's own line too
        reporter = JsonReporter(Sink(str(tmp_path / "o.json"), atomic=True))
        reporter.results([Result(path="x", status="real", score=value, threshold=0.0)])
        with pytest.raises(ValueError):
            reporter.close()
        reporter.sink.close(commit=False)
    assert not (tmp_path / "o.json").exists()


def test_thresholds_chosen_by_calibrate_and_training_are_finite():
    from codescan.train.calibrate import CalibrationError, operating_point
    from codescan.train.threshold import choose_threshold

    with pytest.raises(CalibrationError, match="finite"):
        operating_point(np.array([0.1, math.nan, 0.3]), np.array([1.0]), 0.1)
    with pytest.raises(CalibrationError, match="finite"):
        operating_point(np.array([0.1, 0.2, 0.3]), np.array([math.inf]), 0.1)
    with pytest.raises(ValueError, match="finite"):
        choose_threshold(np.array([0.1, math.nan, 0.9]), np.array([False, False, True]))
    # scores near the float64 limit: the midpoint (a + b) / 2 overflowed to inf
    choice = choose_threshold(np.array([1.0e308, 1.7e308]), np.array([False, True]))
    assert math.isfinite(choice.threshold) and 1.0e308 < choice.threshold < 1.7e308
    choice = choose_threshold(np.array([-1.7e308, 1.7e308]), np.array([True, False]))
    assert math.isfinite(choice.threshold)
    assert json.loads(json.dumps(choice.to_dict(), allow_nan=False))["threshold"] == choice.threshold
