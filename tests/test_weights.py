"""Bundles: import, strict key mapping, sha256 verification, hub pull pinning, offline errors."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli
from safetensors.numpy import load_file

from codescan.model.encoder import EncoderConfig, hf_to_timm
from codescan.weights import bundle as W
from codescan.weights import install as I

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("CODESCAN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_import_records_provenance(store, small_checkpoint):
    b = I.import_official(small_checkpoint, name="mine")
    meta = json.loads((b.path / "bundle.json").read_text())
    assert meta["license"] == "MIT" and meta["source"]["repo"] == "aimagelab/CoDE"
    assert set(meta["source"]["files"]) == {
        "config.json", "model.safetensors", "preprocessor_config.json",
        "sklearn/knn_tot_classifier_epoch-32.sav", "sklearn/linear_tot_classifier_epoch-32.sav",
        "sklearn/ocsvm_kernel_poly_gamma_auto_nu_0_1_crop.joblib",
    }
    assert meta["source"]["files"]["model.safetensors"] == W.sha256_file(small_checkpoint / "model.safetensors")
    assert meta["encoder"]["layer_norm_eps"] == 1e-6 and meta["preprocess"]["resize"] is False
    assert set(meta["heads"]) == {"linear", "knn", "ocsvm"}
    assert [x.name for x in W.list_bundles()] == ["mine"]
    assert sorted(p.name for p in b.path.iterdir()) == ["bundle.json", "encoder.safetensors", "heads.safetensors"]


def _flip_last_bytes(path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_bundle_is_refused(store, small_checkpoint):
    b = I.import_official(small_checkpoint)
    _flip_last_bytes(b.path / "encoder.safetensors")
    bundle = W.load_bundle("code")  # the record reads; each file is checked when it is read
    with pytest.raises(W.WeightsError, match="encoder.safetensors has sha256"):
        bundle.encoder_state()
    bundle.head_set()  # the heads are intact
    with pytest.raises(W.WeightsError, match="sha256"):
        W.load_bundle("code", verify=True)
    p = run_cli("weights", "info", "code")
    assert p.returncode == 2 and b"sha256" in p.stderr and b"Traceback" not in p.stderr
    # A scan that must build its graph reads the weights: refused in one line.
    p = run_cli("scan", str(small_checkpoint), "-q", "--engine", "onnxruntime", "--no-cache")
    assert p.returncode == 2 and b"encoder.safetensors has sha256" in p.stderr and b"Traceback" not in p.stderr
    assert p.stdout == b""

    _flip_last_bytes(b.path / "encoder.safetensors")  # restored
    _flip_last_bytes(b.path / "heads.safetensors")
    with pytest.raises(W.WeightsError, match="heads.safetensors has sha256"):
        W.load_bundle("code").head_set()
    p = run_cli("scan", str(small_checkpoint), "-q", "--no-cache")
    assert p.returncode == 2 and b"heads.safetensors has sha256" in p.stderr and b"Traceback" not in p.stderr


def test_a_file_is_hashed_as_it_is_read_and_the_bytes_hashed_are_parsed(store, small_checkpoint, monkeypatch):
    """Read once: a file swapped between a check and a second read cannot be the one used."""
    b = I.import_official(small_checkpoint)
    reads: list[str] = []
    real = type(b.path).read_bytes

    def counting(path):
        reads.append(path.name)
        return real(path)

    monkeypatch.setattr(type(b.path), "read_bytes", counting)
    bundle = W.load_bundle("code")
    assert reads == []  # loading the record hashes nothing
    state = bundle.encoder_state()
    heads = bundle.head_set()
    assert reads == ["encoder.safetensors", "heads.safetensors"]
    expected = load_file(str(b.path / "encoder.safetensors"))
    assert state.keys() == expected.keys() and all(np.array_equal(state[k], expected[k]) for k in state)
    assert set(heads.names()) == {"linear", "knn", "ocsvm"}
    with pytest.raises(W.WeightsError, match="is missing encoder.safetensors"):
        (b.path / "encoder.safetensors").unlink()
        bundle.encoder_state()


def test_corrupt_safetensors_in_source_is_a_clear_error(store, small_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(small_checkpoint, src)
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    p = run_cli("weights", "import", str(src))
    assert p.returncode == 2 and b"cannot convert the encoder" in p.stderr and b"Traceback" not in p.stderr
    assert W.list_bundles() == []


def test_key_mapping_is_strict(small_checkpoint):
    cfg = EncoderConfig.from_hf_config(json.loads((small_checkpoint / "config.json").read_text()))
    sd = load_file(str(small_checkpoint / "model.safetensors"))
    base = hf_to_timm(sd, cfg)
    prefixed = hf_to_timm({f"vit.{k}": v for k, v in sd.items()}, cfg)
    assert base.keys() == prefixed.keys() and all(np.array_equal(base[k], prefixed[k]) for k in base)
    q = sd["encoder.layer.3.attention.attention.query.weight"]
    assert np.array_equal(base["blocks.3.attn.qkv.weight"][: q.shape[0]], q)
    with_pooler = {**sd, "pooler.dense.weight": np.zeros((192, 192), np.float32), "pooler.dense.bias": np.zeros(192, np.float32)}
    assert hf_to_timm(with_pooler, cfg).keys() == base.keys()
    missing = dict(sd)
    del missing["encoder.layer.11.output.dense.bias"]
    with pytest.raises(KeyError, match="lacks encoder.layer.11.output.dense.bias"):
        hf_to_timm(missing, cfg)
    with pytest.raises(KeyError, match="unexpected keys: classifier.weight"):
        hf_to_timm({**sd, "classifier.weight": np.zeros((2, 192), np.float32)}, cfg)


def fake_hub(src, served: dict):
    """A downloader laid out like huggingface_hub's cache: .../snapshots/<commit>/."""

    def download(repo, revision):
        served["calls"].append((repo, revision))
        commit = served["commits"].get(revision, revision)
        dest = served["root"] / "snapshots" / commit
        if not dest.exists():
            shutil.copytree(src, dest)
            for f, data in served.get("tamper", {}).items():
                (dest / f).write_bytes(data)
        return str(dest)

    return download


def test_pull_pins_commit_and_hashes(store, small_checkpoint, tmp_path):
    served = {"calls": [], "commits": {"main": COMMIT_A}, "root": tmp_path / "hub"}
    b = I.pull(download=fake_hub(small_checkpoint, served))
    assert b.revision == COMMIT_A and served["calls"] == [("aimagelab/CoDE", "main")]
    pinned = b.meta["source"]["files"]
    # a later pull asks for the pinned commit, not the moving branch
    I.pull(download=fake_hub(small_checkpoint, served))
    assert served["calls"][-1] == ("aimagelab/CoDE", COMMIT_A)
    assert W.load_bundle("code").meta["source"]["files"] == pinned


def test_pull_refuses_changed_files(store, small_checkpoint, tmp_path):
    served = {"calls": [], "commits": {"main": COMMIT_A}, "root": tmp_path / "hub"}
    I.pull(download=fake_hub(small_checkpoint, served))
    before = W.load_bundle("code").digest
    shutil.rmtree(tmp_path / "hub")
    served["tamper"] = {"config.json": (small_checkpoint / "config.json").read_bytes() + b" "}
    with pytest.raises(W.WeightsError, match="differ from the pinned commit"):
        I.pull(download=fake_hub(small_checkpoint, served))
    assert W.load_bundle("code").digest == before
    # an explicit revision re-pins on purpose
    served["commits"]["v2"] = COMMIT_B
    b = I.pull(revision="v2", download=fake_hub(small_checkpoint, served))
    assert b.revision == COMMIT_B


def test_pull_offline_says_what_to_do(store, tmp_path):
    p = run_cli("weights", "pull", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert p.returncode == 2
    err = p.stderr.decode()
    assert "hub unreachable" in err and "Traceback" not in err
    assert "`hf download aimagelab/CoDE --local-dir CoDE`" in err and "`codescan weights import CoDE`" in err


def test_pull_unreachable_hub(store, tmp_path, monkeypatch):
    # A closed local port stands for a network without the hub.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(W.WeightsError, match="hub unreachable"):
        I.pull()


def test_cli_list_and_info(store, small_checkpoint):
    assert run_cli("weights", "import", str(small_checkpoint), "--name", "mine").returncode == 0
    p = run_cli("weights", "list")
    heading, line = p.stdout.decode().strip().splitlines()
    assert heading.split("\t") == ["name", "digest", "revision", "license", "parent", "thresholds"]
    name, digest, revision, licence, parent, thresholds = line.split("\t")
    assert (name, revision, licence, parent) == ("mine", "-", "MIT", "-")
    assert thresholds == "linear=0 imported; knn=0 imported; ocsvm=0 imported"
    info = json.loads(run_cli("weights", "info", "mine").stdout)
    assert info["digest"].startswith(digest) and info["encoder"]["embed_dim"] == 192
    assert info["thresholds"]["linear"] == {"threshold": 0.0, "origin": {
        "kind": "imported", "rule": W.NATURAL_RULE, "repo": "aimagelab/CoDE", "revision": None}}


def test_bad_bundle_name(store, small_checkpoint):
    with pytest.raises(W.WeightsError, match="invalid bundle name"):
        I.import_official(small_checkpoint, name="../escape")


def test_import_replaces_atomically(store, small_checkpoint):
    first = I.import_official(small_checkpoint)
    second = I.import_official(small_checkpoint)
    assert first.digest == second.digest
    assert [p.name for p in (store / "weights").iterdir()] == ["code"]
