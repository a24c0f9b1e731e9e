"""Engines: every fp32 engine agrees with torch fp32; auto-choice obeys the gate; caches are keyed."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from codescan.engines import protocol, registry
from codescan.engines.gate import compare
from codescan.engines.gates_file import gates_path
from codescan.engines.onnx_engine import graph_path
from conftest import LABELED, run_cli, write_gate

from codescan.weights.bundle import load_bundle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # null_engine, bench_feed


def verdicts(stdout: bytes) -> dict[str, dict[str, str]]:
    out = {}
    for line in stdout.decode().splitlines():
        r = json.loads(line)
        if r["type"] == "result" and "heads" in r:
            out[r["path"]] = {h: v["status"] for h, v in r["heads"].items()}
    return out


def test_fp32_engines_give_identical_verdicts_on_labeled_corpus(home, labeled):
    runs = {
        e: run_cli("scan", str(LABELED), "--engine", e, "--precision", "fp32", "--head", "all", "-q")
        for e in ("torch", "onnxruntime")
    }
    torch_v, ort_v = verdicts(runs["torch"].stdout), verdicts(runs["onnxruntime"].stdout)
    assert len(torch_v) >= 550 and torch_v.keys() == ort_v.keys()
    for head in ("linear", "knn", "ocsvm"):
        differ = [p for p in torch_v if torch_v[p][head] != ort_v[p][head]]
        assert differ == [], f"{head}: {len(differ)} verdicts differ"


def test_onnx_embeddings_match_torch(home):
    bundle = load_bundle("code")
    crops = np.random.default_rng(3).integers(0, 256, (6, 224, 224, 3), dtype=np.uint8)
    ref = registry.create_engine(bundle, "torch", "fp32").embed(crops)
    got = registry.create_engine(bundle, "onnxruntime", "fp32").embed(crops)
    assert got.shape == ref.shape == (6, 192) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=5e-5, rtol=1e-4)


def test_auto_uses_reduced_precision_only_after_a_passed_gate(home):
    bundle = load_bundle("code")
    path = gates_path(bundle)
    path.unlink(missing_ok=True)
    assert registry.choose(bundle, "auto", "auto") == ("onnxruntime", "fp32")
    try:
        write_gate(bundle, "onnxruntime", "int8")
        assert registry.choose(bundle, "auto", "auto") == ("onnxruntime", "int8")
        assert registry.choose(bundle, "auto", "fp32") == ("onnxruntime", "fp32")
        assert registry.choose(bundle, "torch", "auto") == ("torch", "fp32")
        write_gate(bundle, "onnxruntime", "int8", digest="0" * 64)  # other weights
        assert registry.choose(bundle, "auto", "auto") == ("onnxruntime", "fp32")
        write_gate(bundle, "onnxruntime", "int8", passed=False)
        assert registry.choose(bundle, "auto", "auto") == ("onnxruntime", "fp32")
        write_gate(bundle, "onnxruntime", "int8", rule=1)  # passed under the old rule (20 images could pass)
        assert registry.choose(bundle, "auto", "auto") == ("onnxruntime", "fp32")
    finally:
        path.unlink(missing_ok=True)
    assert registry.choose(bundle, "auto", "bf16") == ("torch", "bf16")  # explicit choice is honoured
    with pytest.raises(protocol.EngineError, match="unknown engine"):
        registry.choose(bundle, "tpu", "auto")  # type: ignore[arg-type]
    with pytest.raises(protocol.EngineError, match="no installed engine supports"):
        registry.choose(bundle, "onnxruntime", "bf16")


def test_gate_sample_rule_is_the_clopper_pearson_bound():
    from codescan.engines.gate import agreement_lower_bound, images_needed, judge_gate

    assert [images_needed(f) for f in (0, 1, 2)] == [299, 473, 628]  # the figures
    assert abs(agreement_lower_bound(20, 20) - 0.05 ** (1 / 20)) < 1e-9  # 20 of 20 agree: above ~86% only
    assert abs(agreement_lower_bound(20, 20) - 0.8609) < 1e-4
    scipy_beta = pytest.importorskip("scipy.stats").beta
    for agree, n in ((470, 473), (900, 1000), (1, 3)):
        assert abs(agreement_lower_bound(agree, n) - scipy_beta.ppf(0.05, agree, n - agree + 1)) < 1e-9
    passed, why = judge_gate(1.0, {"linear": 0}, 20)
    assert not passed and why == ["linear: 20 images with 0 flipped verdicts show agreement above 86.1% only (95% "
                                  "confidence); 99% needs at least 299 images with that many flips (299 if none flip)"]
    assert judge_gate(1.0, {"linear": 0, "knn": 1}, 473)[0] and not judge_gate(0.99, {"linear": 0}, 1000)[0]


def test_gate_compare_counts_agreement(home):
    bundle = load_bundle("code")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 192)).astype(np.float32)
    same = compare(bundle, "x", "y", ref, ref.copy())
    assert same.passed and same.cosine_min > 0.999999 and all(v == 1.0 for v in same.agreement.values())
    few = compare(bundle, "x", "y", ref[:298], ref[:298].copy())  # identical, but too few to show 99%
    assert not few.passed and all("at least 299 images" in r for r in few.reasons) and few.flips == {h: 0 for h in few.flips}
    noisy = compare(bundle, "x", "y", ref, ref + rng.normal(scale=0.5, size=ref.shape).astype(np.float32))
    assert not noisy.passed and noisy.cosine_min < 0.999


def test_a_scan_whose_precision_came_from_a_gate_says_so_once(home, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "a.png")
    bundle = load_bundle("code")
    try:
        write_gate(bundle, "onnxruntime", "int8")
        p = run_cli("scan", str(tmp_path), "--no-cache", "-q")
        assert p.returncode in (0, 1), p.stderr
        assert p.stderr.decode().count("precision int8: gate passed on 300 images, 2026-12-06") == 1
        explicit = run_cli("scan", str(tmp_path), "--no-cache", "-q", "--precision", "int8")
        assert "gate passed" not in explicit.stderr.decode()  # asked for by name: no gate involved
    finally:
        gates_path(bundle).unlink(missing_ok=True)


def test_gate_command_records_results(home, tmp_path):
    from PIL import Image

    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    p = run_cli("gate", str(tmp_path))
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    assert {(r["engine"], r["precision"]) for r in results} == {("onnxruntime", "int8"), ("torch", "bf16")}
    assert all(r["images"] == 4 for r in results)
    assert not any(r["passed"] for r in results) and "at least 299 are needed if none flip" in p.stderr.decode()
    bundle = load_bundle("code")
    recorded = json.loads(gates_path(bundle).read_text())["results"]
    assert [r["passed"] for r in recorded] == [r["passed"] for r in results]
    gates_path(bundle).unlink()


def test_onnx_cache_is_keyed_by_bundle_digest(home):
    bundle = load_bundle("code")
    registry.create_engine(bundle, "onnxruntime", "fp32")
    path = graph_path(bundle, "fp32")
    assert path.is_file() and bundle.digest[:16] in path.name
    assert graph_path(bundle, "int8") != path


def test_int8_graph_keeps_first_and_last_block_in_float(home):
    """Every linear layer is quantised per channel except those of the first and last blocks."""
    import onnx
    from codescan.engines.onnx_engine import load_model

    bundle = load_bundle("code")
    model = onnx.load_from_string(load_model(bundle, "int8"))
    last = bundle.encoder_config.depth - 1
    float_linear = sorted(n.name for n in model.graph.node if n.op_type == "MatMul" and "_matmul_" in n.name)
    assert {name.split("_")[0] for name in float_linear} == {"b0", f"b{last}"}
    assert len(float_linear) == 8  # qkv, proj, fc1, fc2 of the two kept blocks
    quantised = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantised) == 4 * (bundle.encoder_config.depth - 2)
    scales = {i.name: i for i in model.graph.initializer if i.name.endswith("_scale")}
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales.values())  # per-channel weight scales


@pytest.fixture()
def null_engine():
    """benchmarks/null_engine.py registered for this test only: the registry is as before afterwards."""
    import null_engine
    from codescan.engines import specs

    null_engine.register()
    yield null_engine
    specs.ENGINES.pop(null_engine.NAME)


def test_a_registered_engine_is_built_by_name_only(home, null_engine):
    from codescan.engines import specs
    from typer.testing import CliRunner

    from codescan.cli.entry import app

    bundle = load_bundle("code")
    assert registry.choose(bundle, "null", "auto") == ("null", "fp32")
    emb = registry.create_engine(bundle, "null").embed(np.zeros((3, 224, 224, 3), np.uint8))
    assert emb.shape == (3, 192) and emb.dtype == np.float32 and not emb.any()
    assert registry.choose(bundle, "auto", "auto")[0] != "null"  # auto never picks it
    assert "null" not in {name for name, _ in specs.AUTO_ORDER + specs.GATE_CANDIDATES}
    with pytest.raises(protocol.EngineError, match="no installed engine supports"):
        registry.choose(bundle, "null", "int8")
    refused = CliRunner().invoke(app, ["scan", str(LABELED), "--engine", "null"])  # users are not offered it
    assert refused.exit_code == 2 and "'null' is not one of" in refused.output
    assert all(f"'{name}'" in refused.output for name in specs.ENGINE_NAMES)
    registry.register(null_engine.SPEC)  # again: harmless
    with pytest.raises(ValueError, match="already registered"):
        registry.register(replace(null_engine.SPEC, precisions=("fp32", "fp16")))
    with pytest.raises(ValueError, match="by name only"):
        registry.register(replace(null_engine.SPEC, name="ranked", auto_rank={"fp32": 99}))


def test_bench_feed_measures_a_complete_scan(home, null_engine, tmp_path):
    """A tiny run of the benchmark's measurements: positive rates, and every record complete."""
    import bench_feed
    from conftest import image_folder

    folder = image_folder(tmp_path / "images", 20, seed=5, size=(300, 260))
    out = tmp_path / "out.jsonl"
    scan = bench_feed.measure_scan(folder, workers=1, evidence="metadata", out=str(out))  # lists of 8 (the CPU batch)
    assert scan.files == 20 and 0 < scan.timed < 20 and scan.rate > 0 and scan.start > 0
    assert bench_feed.measure_examine(folder, "metadata") > 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["engine"] == "null" and lines[-1]["type"] == "summary"
    records = lines[1:-1]
    assert len(records) == 20 and lines[-1]["files"] == 20
    for r in records:
        assert r["status"] in ("real", "fake") and isinstance(r["score"], float), r
        assert r["width"] == 300 and r["height"] == 260 and len(r["sha256"]) == 64 and r["evidence"] == [], r
