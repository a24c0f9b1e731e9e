"""`codescan calibrate`: the statistics on scores of known distributions, the command end to end, the variant bundle."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from codescan.train.calibrate import (
    CalibrationError,
    allowed_false_positives,
    calibration_warnings,
    clopper_pearson,
    operating_point,
    threshold_at_fpr,
)
from conftest import run_cli, textured_image

from codescan.weights import bundle as W

# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("n_real,target", [(500, 0.05), (1000, 0.01)])
def test_interval_covers_the_true_rates_of_the_chosen_threshold(n_real, target):
    """2,000 fresh samples, reals ~ N(0, 1), fakes ~ N(2, 1): the true FPR of a threshold t is 1 − Φ(t), its TPR 1 − Φ(t − 2)."""
    from scipy.stats import norm

    rng = np.random.default_rng(17)
    draws, n_fake = 2000, 200  # 2,000: the Monte-Carlo error of a coverage near 0.96 is then ±0.005
    reals = rng.normal(0.0, 1.0, (draws, n_real))
    fakes = rng.normal(2.0, 1.0, (draws, n_fake))
    t = threshold_at_fpr(reals, target)  # (draws,)
    fp = np.count_nonzero(reals > t[:, None], axis=1)
    tp = np.count_nonzero(fakes > t[:, None], axis=1)
    assert np.all(fp / n_real <= target)  # never above the target on the data that chose it
    assert np.all(fp == allowed_false_positives(n_real, target))  # and, without ties, exactly at its allowance

    true_fpr, true_tpr = norm.sf(t), norm.sf(t - 2.0)
    low, high = clopper_pearson(fp, n_real)
    fpr_coverage = float(np.mean((low <= true_fpr) & (true_fpr <= high)))
    low, high = clopper_pearson(tp, n_fake)
    tpr_coverage = float(np.mean((low <= true_tpr) & (true_tpr <= high)))
    print(f"n_real={n_real} target={target}: FPR interval coverage {fpr_coverage:.4f}, TPR {tpr_coverage:.4f}")
    assert fpr_coverage >= 0.94 and tpr_coverage >= 0.94
    assert true_fpr.mean() > (fp / n_real).mean()  # the measured FPR is optimistic, as the command says


def test_threshold_is_the_smallest_with_fpr_at_most_target_even_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        reals = rng.choice(rng.normal(size=int(rng.integers(1, 8))), n)  # few distinct values: many ties
        target = float(rng.uniform(0.001, 0.999))
        t = float(threshold_at_fpr(reals, target))
        assert t in reals and np.mean(reals > t) <= target
        below = reals[reals < t]
        if below.size:  # any lower threshold flags too many reals
            assert np.mean(reals > below.max()) > target
    assert allowed_false_positives(100, 0.29) == 29  # 0.29 · 100 is 28.999… in binary
    assert float(threshold_at_fpr(np.array([3.0, 1.0, 2.0]), 0.2)) == 3.0  # k = 0: the highest real, judged real


def test_clopper_pearson_known_values():
    low, high = clopper_pearson(np.array([0, 5, 10]), 10)
    np.testing.assert_allclose(low, [0.0, 0.187086, 0.691503], atol=1e-6)
    np.testing.assert_allclose(high, [0.308497, 0.812914, 1.0], atol=1e-6)
    with pytest.raises(CalibrationError):
        clopper_pearson(3, 2)


def test_warnings_for_too_few_reals_and_no_fakes():
    few = calibration_warnings(n_real=50, n_fake=10, target=0.01, false_positives=0, ties=1)
    assert len(few) == 1 and "only 50 real images" in few[0] and "at least 1000" in few[0]
    assert calibration_warnings(n_real=1000, n_fake=10, target=0.01, false_positives=10, ties=1) == []
    assert calibration_warnings(n_real=100, n_fake=5, target=0.1, false_positives=10, ties=1) == []  # exactly 10/FPR


def test_edge_cases_all_reals_tied_and_no_fakes():
    point = operating_point(np.full(40, 0.3), np.array([]), 0.25)
    assert point.threshold == 0.3 and point.fpr.count == 0 and point.ties_at_threshold == 40
    assert point.tpr is None and point.to_dict()["tpr"] is None and point.to_dict()["n_fake"] == 0
    assert point.fpr.ci95[0] == 0.0 and 0.0 < point.fpr.ci95[1] < 0.1
    assert any("no fake images" in w for w in point.warnings)
    assert any("40 real images share the threshold score" in w for w in point.warnings)
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(CalibrationError, match="--fpr"):
            operating_point(np.zeros(5), np.zeros(2), bad)
    with pytest.raises(CalibrationError, match="no real images"):
        operating_point(np.array([]), np.zeros(2), 0.1)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """real/ 12 PNGs (+ one truncated), fake/genA/ 6 PNGs."""
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(23)
    for sub, n in (("real", 12), ("fake/genA", 6)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            textured_image(rng, int(rng.integers(100, 400)), int(rng.integers(100, 400))).save(root / sub / f"{i}.png")
    (root / "real" / "broken.png").write_bytes((root / "real" / "0.png").read_bytes()[:200])
    return root


@pytest.fixture(scope="module")
def calibrated(folder, session_home):
    p = run_cli("calibrate", "--data", str(folder), "--fpr", "0.25", env={"CODESCAN_HOME": str(session_home)})
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout), p.stderr.decode()


@pytest.fixture(scope="module")
def variant_scan(calibrated, folder, session_home) -> tuple[dict, list[dict]]:
    """`scan --weights code-fpr0.25`: the header and the records (the parent's scores, the variant's statuses)."""
    p = run_cli("scan", str(folder), "--head", "all", "--weights", "code-fpr0.25", "--no-cache", "-q",
                env={"CODESCAN_HOME": str(session_home)})
    assert p.returncode == 2 and p.stderr == b""  # 2: real/broken.png is an error record
    lines = [json.loads(line) for line in p.stdout.decode().splitlines()]
    header = next(r for r in lines if r.get("type") == "header")
    return header, [r for r in lines if r.get("type") == "result" and "heads" in r]


def test_json_shape_counts_and_thresholds_from_the_reals(calibrated, variant_scan):
    doc, err = calibrated
    assert doc["schema_version"] == 1 and doc["target_fpr"] == 0.25 and doc["weights"]["name"] == "code"
    assert doc["counts"] == {"files": 19, "scored": 18, "real": 12, "fake": 6, "undecodable": 1}
    assert doc["variant"] == {"name": "code-fpr0.25", "parent": "code", "parent_digest": doc["weights"]["sha256"]}
    assert len(doc["data_sha256"]) == 64 and "optimistic" in doc["bias"]
    _, records = variant_scan
    reals = [r for r in records if "/real/" in r["path"]]
    assert set(doc["heads"]) == {"linear", "knn", "ocsvm"}
    for name, h in doc["heads"].items():
        assert set(h) == {"threshold", "previous_threshold", "target_fpr", "fpr", "tpr", "n_real", "n_fake",
                          "ties_at_threshold", "warnings"}
        assert h["previous_threshold"] == 0.0 and (h["n_real"], h["n_fake"]) == (12, 6)
        assert h["fpr"]["n"] == 12 and h["fpr"]["count"] <= 3 and h["tpr"]["n"] == 6
        for r in (h["fpr"], h["tpr"]):
            assert r["ci95"][0] <= r["rate"] <= r["ci95"][1] and r["rate"] == r["count"] / r["n"]
        scores = np.array([r["heads"][name]["score"] for r in reals])
        assert h["threshold"] == pytest.approx(float(threshold_at_fpr(scores, 0.25)), abs=1e-6)
        assert any("only 12 real images" in w for w in h["warnings"])  # 10 / 0.25 = 40 needed
    for needle in ("Clopper-Pearson", "FPR 95% CI", "optimistic", "warning: linear, knn, ocsvm: only 12 real images", "installed code-fpr0.25"):
        assert needle in err, err


def test_scan_uses_the_variant_without_copying_the_parent(calibrated, variant_scan, session_home):
    doc, _ = calibrated
    variant = session_home / "weights" / "code-fpr0.25"
    header, records = variant_scan
    thresholds = {n: h["threshold"] for n, h in doc["heads"].items()}
    assert header["weights"]["name"] == "code-fpr0.25" and header["weights"]["sha256"] == doc["weights"]["sha256"]
    assert header["thresholds"] == thresholds
    assert len(records) == 18
    for r in records:
        for name, t in thresholds.items():
            assert r["heads"][name]["status"] == ("fake" if r["heads"][name]["score"] > t else "real")
    assert any(r["heads"]["linear"]["status"] == "fake" for r in records)
    assert [p.name for p in variant.iterdir()] == ["bundle.json"]  # nor did the scan build anything into it


def test_weights_info_and_list_show_where_thresholds_came_from(calibrated, folder, session_home):
    doc, _ = calibrated
    env = {"CODESCAN_HOME": str(session_home)}
    p = run_cli("weights", "info", "code-fpr0.25", env=env)
    assert p.returncode == 0, p.stderr.decode()
    info = json.loads(p.stdout)
    assert info["path"] == str(session_home / "weights" / "code-fpr0.25")
    assert info["files_path"] == str(session_home / "weights" / "code") and info["digest"] == doc["weights"]["sha256"]
    origin = info["thresholds"]["linear"]["origin"]
    assert info["thresholds"]["linear"]["threshold"] == doc["heads"]["linear"]["threshold"]
    assert {k: origin[k] for k in ("kind", "target_fpr", "n_real", "n_fake", "data", "data_sha256")} == {
        "kind": "calibrated", "target_fpr": 0.25, "n_real": 12, "n_fake": 6, "data": str(folder), "data_sha256": doc["data_sha256"]}
    assert origin["date"].endswith("Z")
    assert "linear: threshold" in p.stderr.decode() and "calibrated fpr<=0.25 on 12 real + 6 fake" in p.stderr.decode()
    listing = run_cli("weights", "list", env=env).stdout.decode().splitlines()
    row = next(line.split("\t") for line in listing if line.startswith("code-fpr0.25\t"))
    assert row[4] == "code" and "linear=" in row[5] and "calibrated fpr<=0.25" in row[5]


def test_one_head_real_photos_only_and_named_out(calibrated, folder, session_home, tmp_path):
    """Only real/: an FPR-only operating point; the other heads keep the parent's thresholds and origins."""
    shutil.copytree(folder / "real", tmp_path / "real")
    env = {"CODESCAN_HOME": str(session_home)}
    p = run_cli("calibrate", "--data", str(tmp_path), "--fpr", "0.1", "--head", "knn", "--out", "knn-only", "-q", env=env)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
    doc = json.loads(p.stdout)
    assert list(doc["heads"]) == ["knn"] and doc["heads"]["knn"]["tpr"] is None and doc["counts"]["fake"] == 0
    assert any("no fake images" in w for w in doc["heads"]["knn"]["warnings"])
    info = json.loads(run_cli("weights", "info", "knn-only", env=env).stdout)["thresholds"]
    assert info["knn"]["origin"]["kind"] == "calibrated" and info["knn"]["origin"]["n_fake"] == 0
    assert info["linear"] == {"threshold": 0.0, "origin": info["linear"]["origin"]} and info["linear"]["origin"]["kind"] == "imported"


def test_bad_requests_fail_in_one_line_before_embedding(home, folder, tmp_path):
    (tmp_path / "fake" / "g").mkdir(parents=True)
    shutil.copy(folder / "fake" / "genA" / "0.png", tmp_path / "fake" / "g")
    for args, needle in [
        (["--data", str(folder), "--fpr", "0"], "--fpr must lie strictly between 0 and 1"),
        (["--data", str(folder), "--fpr", "0.1", "--out", "code"], "is the parent bundle itself"),
        (["--data", str(folder), "--fpr", "0.1", "--out", "../x"], "invalid bundle name"),
        (["--data", str(tmp_path), "--fpr", "0.1"], "no real images"),
    ]:
        p = run_cli("calibrate", *args)
        err = p.stderr.decode()
        assert p.returncode == 2 and p.stdout == b"" and needle in err and len(err.strip().splitlines()) == 1, err


def test_a_changed_parent_makes_the_variant_refuse(home, folder):
    """Re-installing the parent with other weights changes its digest: the variant's thresholds no longer apply."""
    shutil.copytree(home / "weights" / "code", home / "weights" / "parent2")
    parent = W.load_bundle("parent2")
    W.install_variant("parent2-cal", parent, {"linear": {"threshold": 0.5, "origin": {"kind": "calibrated"}}})
    assert W.load_bundle("parent2-cal").head_set().thresholds == {"linear": 0.5, "knn": 0.0, "ocsvm": 0.0}
    try:
        state = parent.encoder_state()
        key = sorted(state)[0]
        state[key] = state[key] + 1.0
        meta = {k: v for k, v in parent.meta.items() if k != "files"}
        W.write_bundle("parent2", state, parent.head_set().heads, meta)
        p = run_cli("scan", str(folder / "real" / "1.png"), "--weights", "parent2-cal")
        err = p.stderr.decode().strip()
        assert p.returncode == 2 and p.stdout == b"" and len(err.splitlines()) == 1, err
        assert "parent changed: re-run calibrate" in err and "'parent2'" in err
    finally:
        for name in ("parent2", "parent2-cal"):
            shutil.rmtree(home / "weights" / name)


# ---------------------------------------------------------------- the labelled corpus


def test_labelled_corpus_counts(session_home, labeled, tmp_path):
    """60 of the corpus's files (30 real, 30 fake spread over its generators) through a manifest: all 561 take ~45 s here."""
    from codescan.train.data import load_samples

    samples = load_samples(labeled)
    reals, fakes = [s for s in samples if not s.is_fake], [s for s in samples if s.is_fake]
    chosen = reals[:: len(reals) // 30][:30] + fakes[:: len(fakes) // 30][:30]
    manifest = tmp_path / "subset.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "generator"), *((s.path, s.label, s.generator) for s in chosen)])
    p = run_cli("calibrate", "--data", str(manifest), "--fpr", "0.1", "--out", "corpus-cal", "-q",
                env={"CODESCAN_HOME": str(session_home)})
    assert p.returncode == 0, p.stderr.decode()
    doc = json.loads(p.stdout)
    assert doc["counts"] == {"files": 60, "scored": 60, "real": 30, "fake": 30, "undecodable": 0}
    for h in doc["heads"].values():
        assert (h["n_real"], h["n_fake"]) == (30, 30) and h["fpr"]["count"] <= 3 and h["tpr"]["n"] == 30
