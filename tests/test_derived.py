"""Files derived from a bundle and cached in it are verified like the weights (#13 item 5, F8).

The ONNX graphs, TensorRT plans (see test_gpu_paths.py) and gates.json are each written with a
record; a file that no longer matches it is rebuilt where codescan can rebuild it (the verdicts
equal the untampered ones) and refused with one line where it cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import image_folder, run_cli

from codescan.weights.bundle import load_bundle


@pytest.fixture()
def own_home(tmp_path, small_checkpoint, monkeypatch) -> Path:
    """A store of its own with the small checkpoint imported as 'code': tampering here touches no other test."""
    home = tmp_path / "home"
    monkeypatch.setenv("CODESCAN_HOME", str(home))
    p = run_cli("weights", "import", str(small_checkpoint))
    assert p.returncode == 0, p.stderr.decode()
    return home


@pytest.fixture()
def images(tmp_path) -> Path:
    return image_folder(tmp_path / "images", 3, seed=8, size=(250, 240), suffix=".png")


def final_norm_bias(bundle_dir: Path) -> bytes:
    from safetensors.numpy import load_file

    return load_file(str(bundle_dir / "encoder.safetensors"))["norm.bias"].astype("<f4").tobytes()


def tamper_final_norm_bias(bundle_dir: Path) -> list[Path]:
    """The security kit's tamper_onnx.py: every cached file holding the encoder's final
    LayerNorm bias gets 5.0 in its place. Returns the files changed."""
    bias = final_norm_bias(bundle_dir)
    evil = np.full(len(bias) // 4, 5.0, "<f4").tobytes()
    changed = []
    for f in sorted((bundle_dir / "engines").rglob("*")):
        data = f.read_bytes()
        if bias in data:
            f.write_bytes(data.replace(bias, evil))
            changed.append(f)
    return changed


def scan_records(images: Path, precision: str) -> list[dict]:
    args = ("--no-cache", "--head", "all", "--engine", "onnxruntime", "--precision", precision)
    p = run_cli("scan", str(images), "-q", *args)
    assert p.returncode in (0, 1), p.stderr.decode()
    records = [json.loads(line) for line in p.stdout.decode().splitlines()]
    records[-1].pop("seconds")
    return records


def test_a_tampered_onnx_graph_is_rebuilt_and_verdicts_do_not_change(own_home, images):
    bundle_dir = own_home / "weights" / "code"
    before = {prec: scan_records(images, prec) for prec in ("fp32", "int8")}  # builds and caches both graphs
    changed = tamper_final_norm_bias(bundle_dir)
    assert len(changed) == 2 and all(f.suffix == ".onnx" for f in changed)

    after = {prec: scan_records(images, prec) for prec in ("fp32", "int8")}
    assert after == before  # same scores, same verdicts: the tampered graphs were not used
    bias = final_norm_bias(bundle_dir)
    assert all(bias in f.read_bytes() for f in changed)  # ... and were rebuilt in place


def test_a_record_vouches_for_one_file_of_one_bundle(own_home, tmp_path):
    from dataclasses import replace

    from codescan.engines import derived

    bundle = load_bundle("code")
    path = bundle.path / "engines" / "example.bin"
    derived.write(bundle, path, b"built from the weights", {"what": "example"})
    assert derived.read(bundle, path, {"what": "example"}) == b"built from the weights"
    assert derived.read(bundle, path, {"what": "other"}) is None  # another key
    other = replace(bundle, meta={**bundle.meta, "files": {**bundle.meta["files"], "heads.safetensors": "0" * 64}})
    assert derived.read(other, path, {"what": "example"}) is None  # another bundle's record

    # A file and its record moved to another name in the same bundle are not vouched for there.
    moved = path.with_name("moved.bin")
    path.rename(moved)
    derived.record_path(path).rename(derived.record_path(moved))
    assert derived.read(bundle, moved, {"what": "example"}) is None

    derived.write(bundle, path, b"built from the weights", {"what": "example"})
    path.write_bytes(b"built from the weights!")
    assert derived.read(bundle, path, {"what": "example"}) is None  # changed bytes
    derived.record_path(path).unlink()
    path.write_bytes(b"built from the weights")
    assert derived.read(bundle, path, {"what": "example"}) is None  # no record


def test_a_changed_gates_file_is_refused_with_one_line(own_home, images):
    from codescan.engines.gates_file import gates_path, store_gates

    bundle = load_bundle("code")
    passed = {"engine": "onnxruntime", "precision": "int8", "digest": bundle.digest, "passed": True}
    store_gates(bundle, {"results": [{**passed, "passed": False}]})
    p = run_cli("scan", str(images), "-q", "--no-cache")
    assert p.returncode in (0, 1), p.stderr.decode()
    assert json.loads(p.stdout.decode().splitlines()[0])["precision"] == "fp32"  # the gate failed: fp32

    gates_path(bundle).write_text(json.dumps({"results": [passed]}))  # not written by `codescan gate`
    p = run_cli("scan", str(images), "-q", "--no-cache")
    lines = p.stderr.decode().strip().splitlines()
    assert p.returncode == 2 and p.stdout == b"" and len(lines) == 1, p.stderr.decode()
    assert lines[0].startswith("codescan: error:") and "gates.json" in lines[0] and "codescan gate" in lines[0]
    p = run_cli("scan", str(images), "-q", "--no-cache", "--precision", "fp32")  # gates not consulted
    assert p.returncode in (0, 1), p.stderr.decode()
