"""GPU paths, tested without a GPU.

What is measured for real here: the fp16 ONNX graph TensorRT builds from (onnx.checker, the
types of its ops, and ONNX Runtime CPU output against fp32 torch, on the labelled corpus when
present), the auto choice, `codescan compile` without TensorRT, and the torch CUDA engine's
code on the CPU device.

What is only checked against a fake: the TensorRT builder and runner run against
tests/fake_tensorrt (same API names and signatures as TensorRT 10.x/11.x, with the checks a real
build or run would make) and a lazy host "device" whose streams run queued work only when an
event forces them. That verifies the call sequence, the cache keying and the buffer/event logic
(a missing wait or a reused buffer gives wrong numbers here), not that anything runs on a GPU.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from codescan.engines import derived, protocol, registry
from codescan.engines.export import build_encoder_graph
from conftest import LABELED, run_cli, write_gate

from codescan.weights.bundle import load_bundle

FAKE_TRT = Path(__file__).parent / "fake_tensorrt"
IMG = 224


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


# ---------------------------------------------------------------------------- fp16 ONNX graph


@pytest.fixture(scope="module")
def graphs(session_home):
    import os

    old = os.environ.get("CODESCAN_HOME")
    os.environ["CODESCAN_HOME"] = str(session_home)
    try:
        bundle = load_bundle("code")
    finally:
        if old is None:
            del os.environ["CODESCAN_HOME"]
        else:
            os.environ["CODESCAN_HOME"] = old
    state, cfg = bundle.encoder_state(), bundle.encoder_config
    return bundle, state, cfg, build_encoder_graph(state, cfg, "fp16")


@pytest.fixture(scope="module")
def fp16_session(graphs):
    import onnxruntime as ort

    return ort.InferenceSession(graphs[3].SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def torch_fp32(graphs):
    from codescan.engines.torch_engine import TorchEngine

    return TorchEngine(graphs[2], graphs[1], precision="fp32")


def test_fp16_graph_is_valid_and_typed_as_documented(graphs):
    import onnx

    model = graphs[3]
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    T = onnx.TensorProto
    by_op: dict[str, set[int]] = {}
    for node in inferred.graph.node:
        by_op.setdefault(node.op_type, set()).update(types[o] for o in node.output)
    # matrix products and the patch convolution in half; normalisation, softmax, GELU (Erf) in float32
    assert by_op["MatMul"] == {T.FLOAT16} and by_op["Conv"] == {T.FLOAT16}
    assert by_op["LayerNormalization"] == {T.FLOAT} and by_op["Softmax"] == {T.FLOAT} and by_op["Erf"] == {T.FLOAT}
    io = {vi.name: vi.type.tensor_type.elem_type for vi in [*model.graph.input, *model.graph.output]}
    assert io == {"crops": T.UINT8, "embeddings": T.FLOAT}


def test_fp16_graph_runs_in_onnxruntime_cpu(graphs, fp16_session, torch_fp32):
    crops = np.random.default_rng(5).integers(0, 256, (8, IMG, IMG, 3), dtype=np.uint8)
    got = fp16_session.run(["embeddings"], {"crops": crops})[0]
    ref = torch_fp32.embed(crops)
    assert got.dtype == np.float32 and got.shape == ref.shape == (8, graphs[2].embed_dim)
    cos = cosine(ref, got)
    print(f"\nfp16 graph (ORT CPU) vs torch fp32, 8 random crops: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.999


def test_fp16_graph_meets_the_gate_on_labeled_corpus(graphs, fp16_session, torch_fp32, labeled):
    from codescan.engines.gate import MIN_AGREEMENT, MIN_COSINE, compare

    from codescan.decoding.decode import Decoded, DecodeLimits, decode_file
    from codescan.inputs.read import DecodeFailure

    crops = []
    for path in sorted(p for p in LABELED.rglob("*") if p.is_file()):
        try:
            d = decode_file(str(path), DecodeLimits())
        except DecodeFailure:
            continue
        if isinstance(d, Decoded):
            crops.append(d.crop)
    assert len(crops) >= 550
    crops = np.stack(crops)
    ref = np.concatenate([torch_fp32.embed(crops[i : i + 64]) for i in range(0, len(crops), 64)])
    got = np.concatenate([fp16_session.run(["embeddings"], {"crops": crops[i : i + 64]})[0] for i in range(0, len(crops), 64)])
    result = compare(graphs[0], "onnx-fp16-graph", "fp16", ref, got)
    agree = ", ".join(f"{h} {v:.2%}" for h, v in result.agreement.items())
    print(f"\nfp16 graph (ORT CPU) vs torch fp32 on {result.images} labeled images: min cosine {result.cosine_min:.7f}, "
          f"mean {result.cosine_mean:.7f}; identical verdicts: {agree}")
    assert result.cosine_min >= MIN_COSINE
    assert all(v >= MIN_AGREEMENT for v in result.agreement.values()), result.agreement
    assert set(result.agreement) == {"linear", "knn", "ocsvm"}


# ------------------------------------------------------------------------ fake TensorRT, device


@pytest.fixture()
def fake_trt(monkeypatch):
    """The fake `tensorrt` package, importable as `tensorrt` for this test only."""
    monkeypatch.syspath_prepend(str(FAKE_TRT))
    sys.modules.pop("tensorrt", None)
    import tensorrt

    assert Path(tensorrt.__file__).parent.parent == FAKE_TRT
    tensorrt.reset()
    yield tensorrt
    tensorrt.reset()
    sys.modules.pop("tensorrt", None)


class LazyStream:
    """Work queued on a stream runs only when something forces it (an event sync or wait)."""

    def __init__(self, handle: int) -> None:
        self.handle, self.ops, self.ran, self.running = handle, [], 0, False

    def run_until(self, index: int) -> None:
        if self.running:
            assert index <= self.ran, "a stream waits on its own future work (deadlock)"
            return
        self.running = True
        try:
            while self.ran < index:
                op = self.ops[self.ran]
                self.ran += 1
                op()
        finally:
            self.running = False


class LazyEvent:
    def __init__(self) -> None:
        self.target: tuple[LazyStream, int] | None = None


class LazyHostDevice:
    """The runner's Device interface on CPU torch tensors, with CUDA's stream/event semantics
    played out as lazily as they allow: copies and fake inference happen only when a later
    event sync (host) or wait (stream) requires them. Not a GPU; it checks ordering, not speed."""

    def __init__(self, gpu: str = "Fake GPU 80GB", capability: str = "9.0") -> None:
        import torch

        self.torch = torch
        self.name = "cuda:0"
        self.gpu, self.capability = gpu, capability
        self.streams: dict[int, LazyStream] = {}
        self.ranges: list[tuple[int, int]] = []
        self.log: list[tuple] = []

    def describe(self) -> tuple[str, str]:
        return self.gpu, self.capability

    def _alloc(self, shape, dtype):
        t = self.torch.zeros(shape, dtype=getattr(self.torch, dtype))
        self.ranges.append((t.data_ptr(), t.numel() * t.element_size()))
        return t

    def empty(self, shape, dtype):
        t = self._alloc(shape, dtype)
        self.log.append(("empty", t.data_ptr()))
        return t

    def pinned(self, shape, dtype):
        t = self._alloc(shape, dtype)
        self.log.append(("pinned", t.data_ptr()))
        return t

    def stream(self) -> LazyStream:
        s = LazyStream(0x5000 + len(self.streams))
        self.streams[s.handle] = s
        return s

    def handle(self, stream: LazyStream) -> int:
        return stream.handle

    def event(self) -> LazyEvent:
        return LazyEvent()

    def copy_async(self, dst, src, stream: LazyStream) -> None:
        self.log.append(("copy", stream.handle, src.data_ptr(), dst.data_ptr()))
        stream.ops.append(lambda: dst.copy_(src))

    def record(self, event: LazyEvent, stream: LazyStream) -> None:
        event.target = (stream, len(stream.ops))
        self.log.append(("record", id(event), stream.handle))

    def wait(self, stream: LazyStream, event: LazyEvent) -> None:
        target = event.target  # CUDA waits for the record current at the time of the call
        self.log.append(("wait", stream.handle, id(event)))
        if target is not None:
            stream.ops.append(lambda: target[0].run_until(target[1]))

    def synchronize(self, event: LazyEvent) -> None:
        self.log.append(("sync", id(event)))
        if event.target is not None:
            event.target[0].run_until(event.target[1])

    def submit(self, handle: int, fn) -> None:
        self.streams[handle].ops.append(fn)


def lazy_device(fake, **kw) -> LazyHostDevice:
    dev = LazyHostDevice(**kw)
    fake.submit = dev.submit
    fake.valid_ranges = dev.ranges
    return dev


@pytest.fixture()
def bundle(session_home, tmp_path, monkeypatch):
    """A private copy of the session bundle, so engine files written here touch no other test."""
    import shutil

    shutil.copytree(session_home / "weights" / "code", tmp_path / "weights" / "code")
    monkeypatch.setenv("CODESCAN_HOME", str(tmp_path))
    return load_bundle("code")


def onnx_sha(bundle, precision: str) -> str:
    data = build_encoder_graph(bundle.encoder_state(), bundle.encoder_config, precision).SerializeToString()
    return hashlib.sha256(data).hexdigest()


def calls(fake, name: str) -> list[tuple]:
    return [c for c in fake.CALLS if c[0] == name]


# -------------------------------------------------------------------------------- builder, cache


@pytest.mark.parametrize(
    "version,flag",
    [("10.13.3.9", True), ("11.0.0.7", True), ("11.0.0.7", False)],
    ids=["trt10", "trt11", "trt11-no-flag"],
)
def test_builder_makes_a_strongly_typed_engine_file_from_the_codescan_graph(fake_trt, bundle, version, flag):
    from codescan.engines import tensorrt_build as tp

    fake_trt.configure(version, strongly_typed_flag=flag)
    dev = lazy_device(fake_trt)
    messages: list[str] = []
    serialized, info = tp.ensure_engine_file(bundle, "fp16", 16, fake_trt, dev, log=messages.append)
    assert info.built and len(fake_trt.BUILDS) == 1 and len(messages) == 1
    build = fake_trt.BUILDS[0]
    if version.startswith("10"):
        assert calls(fake_trt, "create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED, nothing else
    elif flag:
        assert calls(fake_trt, "create_network") == [("create_network", 1 << 1)]  # accepted, ignored by 11
    else:
        assert calls(fake_trt, "create_network") == [("create_network", 0)]
    assert build["strongly_typed"]
    assert "FP16" not in build["builder_flags"] and not calls(fake_trt, "set_flag")
    assert build["onnx_sha256"] == onnx_sha(bundle, "fp16")  # the parser got exactly the codescan graph
    assert calls(fake_trt, "set_memory_pool_limit") == [("set_memory_pool_limit", fake_trt.MemoryPoolType.WORKSPACE, tp.DEFAULT_WORKSPACE)]
    assert build["profile"] == {"crops": [[1, IMG, IMG, 3], [16, IMG, IMG, 3], [16, IMG, IMG, 3]]}
    assert [t[0] for t in build["inputs"]] == ["crops"] and [t[0] for t in build["outputs"]] == ["embeddings"]
    assert build["inputs"][0][1] == fake_trt.DataType.UINT8 and build["outputs"][0][1] == fake_trt.DataType.FLOAT

    # The engine file is stored under <bundle>/engines/ with the record of a derived file, holding the full key.
    engine_file_path = tp.engine_file_path(bundle, info.key)
    assert info.path == engine_file_path and engine_file_path.parent == bundle.path / "engines"
    assert engine_file_path.read_bytes() == serialized
    meta = json.loads(derived.record_path(engine_file_path).read_text())
    assert meta["sha256"] == hashlib.sha256(serialized).hexdigest() and meta["bundle_digest"] == bundle.digest
    assert meta["file"] == f"engines/{engine_file_path.name}"
    assert meta["key"] == {
        "cache_format": tp.KEY_FORMAT,
        "bundle_digest": bundle.digest,
        "graph_version": tp.GRAPH_VERSION,
        "precision": "fp16",
        "tensorrt": version,
        "gpu": "Fake GPU 80GB",
        "compute_capability": "9.0",
        "profile": {"input": "crops", "min": [1, IMG, IMG, 3], "opt": [16, IMG, IMG, 3], "max": [16, IMG, IMG, 3]},
        "workspace": tp.DEFAULT_WORKSPACE,
    }

    # Second call: loaded from the cache, nothing built.
    again, info2 = tp.ensure_engine_file(bundle, "fp16", 16, fake_trt, dev, log=messages.append)
    assert again == serialized and not info2.built and len(fake_trt.BUILDS) == 1


def test_fp32_build_uses_the_fp32_graph_and_ieee_fp32(fake_trt, bundle):
    from codescan.engines import tensorrt_build as tp

    _, info = tp.ensure_engine_file(bundle, "fp32", 8, fake_trt, lazy_device(fake_trt), log=lambda m: None)
    assert info.built and fake_trt.BUILDS[0]["onnx_sha256"] == onnx_sha(bundle, "fp32")
    assert calls(fake_trt, "clear_flag") == [("clear_flag", "TF32")] and "TF32" not in fake_trt.BUILDS[0]["builder_flags"]
    with pytest.raises(protocol.EngineError, match="fp16 or fp32"):
        tp.ensure_engine_file(bundle, "int8", 8, fake_trt, lazy_device(fake_trt), log=lambda m: None)


def test_a_changed_key_or_a_foreign_engine_file_forces_a_rebuild(fake_trt, bundle):
    from codescan.engines import tensorrt_build as tp

    quiet = {"log": lambda m: None}
    dev = lazy_device(fake_trt)
    serialized, first = tp.ensure_engine_file(bundle, "fp16", 8, fake_trt, dev, **quiet)
    assert len(fake_trt.BUILDS) == 1

    def builds_after(**changes) -> int:
        before = len(fake_trt.BUILDS)
        b = changes.pop("bundle", bundle)
        tp.ensure_engine_file(b, "fp16", changes.pop("max_batch", 8), fake_trt, changes.pop("device", dev), **quiet)
        return len(fake_trt.BUILDS) - before

    assert builds_after() == 0
    assert builds_after(device=lazy_device(fake_trt, gpu="Other GPU")) == 1  # GPU name
    assert builds_after(device=lazy_device(fake_trt, capability="8.9")) == 1  # compute capability
    assert builds_after(max_batch=32) == 1  # profile
    other = replace(bundle, meta={**bundle.meta, "files": {**bundle.meta["files"], "heads.safetensors": "0" * 64}})
    assert other.digest != bundle.digest and builds_after(bundle=other) == 1  # bundle digest
    fake_trt.configure("10.14.1.48")
    assert builds_after() == 1  # TensorRT version
    assert builds_after() == 0  # ... and that one is cached now
    fake_trt.configure()

    # A record whose key differs (a foreign or stale engine file at this path) is never loaded.
    engine_file_path = tp.engine_file_path(bundle, first.key)
    meta_path = derived.record_path(engine_file_path)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "key": {**meta["key"], "gpu": "Someone else's GPU"}}))
    assert builds_after() == 1
    # An engine file whose bytes do not match its record is rebuilt too, and so is a missing record.
    engine_file_path.write_bytes(engine_file_path.read_bytes()[:-1] + b"!")
    assert builds_after() == 1
    meta_path.unlink()
    assert builds_after() == 1
    assert tp.load_engine_file(bundle, first.key) is not None


def test_scan_uses_the_engine_file_compile_built(fake_trt, bundle):
    from codescan.engines import tensorrt_engine as te

    dev = lazy_device(fake_trt)
    info = te.compile_engine(bundle, "fp16", 128, device=dev, trt=fake_trt, log=lambda m: None)
    assert info.built and len(fake_trt.BUILDS) == 1
    engine = te.TensorRTEngine(bundle, "fp16", device=dev, trt=fake_trt, log=lambda m: None)  # no max_batch given
    assert len(fake_trt.BUILDS) == 1 and engine.file.path == info.path and engine.runner.max_batch == 128
    assert (engine.name, engine.device, engine.precision) == ("tensorrt", "cuda:0", "fp16")


def test_an_engine_file_tensorrt_refuses_is_rebuilt(fake_trt, bundle):
    from codescan.engines import tensorrt_build as tp
    from codescan.engines import tensorrt_engine as te

    dev = lazy_device(fake_trt)
    _, info = tp.ensure_engine_file(bundle, "fp16", 8, fake_trt, dev, log=lambda m: None)
    # Valid record and hash, but bytes the runtime cannot deserialize (e.g. a damaged write
    # that was then re-hashed): the engine rebuilds instead of failing or loading garbage.
    engine_file_path = tp.engine_file_path(bundle, info.key)
    tp.store_engine_file(bundle, info.key, b"not an engine file")
    engine = te.TensorRTEngine(bundle, "fp16", 8, device=dev, trt=fake_trt, log=lambda m: None)
    assert len(fake_trt.BUILDS) == 2 and engine_file_path.read_bytes().startswith(b"FAKE-TRT-PLAN")
    crops = np.random.default_rng(0).integers(0, 256, (3, IMG, IMG, 3), dtype=np.uint8)
    np.testing.assert_array_equal(engine.embed(crops), fake_trt.fake_embedding(crops, 192))


def test_parser_errors_are_one_line_engine_errors(fake_trt):
    from codescan.engines import tensorrt_build as tp

    key = {"workspace": 1 << 20, "precision": "fp16", "profile": {"input": "crops", "min": [1], "opt": [1], "max": [1]}}
    with pytest.raises(protocol.EngineError, match="could not parse the codescan ONNX graph: ModelImporter"):
        tp.build_engine_file(fake_trt, b"\x00garbage", key)


# ----------------------------------------------------------------------------------------- runner


def check_runner_sequence(fake, dev, engine, crops: np.ndarray, max_batch: int) -> None:
    """The runner's TensorRT calls, buffers and stream order for one embed() call."""
    fake.CALLS.clear()
    dev.log.clear()
    got = engine.embed(crops)
    # 1. Numbers: what the fake engine computed from the bytes at the addresses it was given.
    #    With lazy streams, a missing event wait/sync or an overwritten buffer changes them.
    assert got.dtype == np.float32 and got.shape == (len(crops), 192)
    np.testing.assert_array_equal(got, fake.fake_embedding(crops, 192))

    runner = engine.runner
    slots = runner.slots
    sizes = [min(max_batch, len(crops) - lo) for lo in range(0, len(crops), max_batch)]
    ctx_calls = [c for c in fake.CALLS if c[0] in ("set_input_shape", "set_tensor_address", "execute_async_v3")]
    compute = dev.handle(runner.compute_stream)
    expected = []
    for i, n in enumerate(sizes):
        s = slots[i % 2]
        addrs = {"crops": s.dev_in.data_ptr(), "embeddings": s.dev_out.data_ptr()}
        expected += [
            ("set_input_shape", "crops", (n, IMG, IMG, 3)),
            ("set_tensor_address", "crops", addrs["crops"]),
            ("set_tensor_address", "embeddings", addrs["embeddings"]),
            ("execute_async_v3", compute, addrs),
        ]
    # 2. Call sequence per batch: shape, both addresses, execute on the compute stream.
    assert ctx_calls == expected
    # 3. Double buffering: two distinct device buffers alternate, uploads run on their own
    #    stream, and batch i+1's upload is queued before the host waits for batch i's result.
    assert slots[0].dev_in.data_ptr() != slots[1].dev_in.data_ptr()
    copy = dev.handle(runner.copy_stream)
    assert copy != compute
    uploads = [k for k, e in enumerate(dev.log) if e[0] == "copy" and e[3] in (s.dev_in.data_ptr() for s in slots)]
    assert all(dev.log[k][1] == copy for k in uploads) and len(uploads) == len(sizes)
    finished_syncs = [k for k, e in enumerate(dev.log) if e[0] == "sync" and e[1] in (id(s.finished) for s in slots)]
    assert len(finished_syncs) == len(sizes)
    for i in range(len(sizes) - 1):
        assert uploads[i + 1] < finished_syncs[i], f"upload of batch {i + 1} not overlapped with batch {i}"


def test_runner_call_sequence_and_double_buffering(fake_trt, bundle):
    from codescan.engines import tensorrt_engine as te

    dev = lazy_device(fake_trt)
    engine = te.TensorRTEngine(bundle, "fp16", 64, device=dev, trt=fake_trt, log=lambda m: None)
    rng = np.random.default_rng(11)
    for batch in (150, 64, 1, 129):  # several chunks with a short tail, exactly one, minimal, odd
        check_runner_sequence(fake_trt, dev, engine, rng.integers(0, 256, (batch, IMG, IMG, 3), dtype=np.uint8), 64)
    assert engine.embed(np.zeros((0, IMG, IMG, 3), np.uint8)).shape == (0, 192)


@pytest.mark.parametrize("mutation", ["no-output-sync", "no-upload-wait", "one-slot", "no-output-address"])
def test_runner_check_catches_broken_runners(fake_trt, bundle, monkeypatch, mutation):
    """The sequence check above fails for plausible refactoring mistakes (tests the test)."""
    from codescan.engines import tensorrt_engine as te

    dev = lazy_device(fake_trt)
    engine = te.TensorRTEngine(bundle, "fp16", 8, device=dev, trt=fake_trt, log=lambda m: None)
    runner = engine.runner
    if mutation == "no-output-sync":
        monkeypatch.setattr(dev, "synchronize", lambda event: None)
    elif mutation == "no-upload-wait":
        real_wait = dev.wait
        monkeypatch.setattr(dev, "wait", lambda s, e: None if s is runner.compute_stream else real_wait(s, e))
    elif mutation == "one-slot":
        runner.slots[1] = runner.slots[0]
    elif mutation == "no-output-address":
        real = runner.context.set_tensor_address
        monkeypatch.setattr(runner.context, "set_tensor_address", lambda n, p: True if n == "embeddings" else real(n, p))
    crops = np.random.default_rng(2).integers(0, 256, (20, IMG, IMG, 3), dtype=np.uint8)
    with pytest.raises(AssertionError) as info:
        check_runner_sequence(fake_trt, dev, engine, crops, 8)
    print(f"\nbroken runner ({mutation}) caught: {str(info.value).strip().splitlines()[0]}")


# ---------------------------------------------------------------------------- auto choice and CLI


def test_auto_choice_here_and_with_a_gpu(fake_trt, home, monkeypatch):
    from codescan.engines.gates_file import gates_path

    bundle = load_bundle("code")
    path = gates_path(bundle)
    path.unlink(missing_ok=True)
    if not registry.cuda_available():  # this machine: no GPU, so CPU and ONNX Runtime
        assert registry.choose(bundle, "auto", "auto") == ("onnxruntime", "fp32")
        with pytest.raises(protocol.EngineError, match="needs a CUDA GPU"):
            registry.choose(bundle, "tensorrt", "auto")
        with pytest.raises(protocol.EngineError, match="runs on a CUDA GPU only"):
            registry.choose(bundle, "auto", "fp16")
    # "tensorrt importable" is real (the fake on sys.path); "CUDA available" is monkeypatched.
    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    assert registry.installed("tensorrt") and registry.installed("cuda")
    assert registry.choose(bundle, "auto", "auto") == ("tensorrt", "fp32")  # fp16 not gated yet
    assert registry.choose(bundle, "auto", "fp16") == ("tensorrt", "fp16")  # explicit: honoured
    assert registry.choose(bundle, "cuda", "auto") == ("cuda", "fp32")
    try:
        write_gate(bundle, "tensorrt", "fp16")
        assert registry.choose(bundle, "auto", "auto") == ("tensorrt", "fp16")
        assert registry.choose(bundle, "auto", "fp32") == ("tensorrt", "fp32")
    finally:
        path.unlink(missing_ok=True)
    # CUDA but no TensorRT: the torch CUDA engine.
    real_importable = registry._importable
    monkeypatch.setattr(registry, "_importable", lambda m: m != "tensorrt" and real_importable(m))
    assert registry.choose(bundle, "auto", "auto") == ("cuda", "fp32")
    assert registry.choose(bundle, "auto", "fp16") == ("cuda", "fp16")
    with pytest.raises(protocol.EngineError, match=r"pip install 'codescan\[tensorrt\]'"):
        registry.choose(bundle, "tensorrt", "auto")


def test_create_engine_builds_tensorrt_with_the_fake(fake_trt, bundle, monkeypatch):
    from codescan.engines import tensorrt_build as tp
    from codescan.engines import tensorrt_engine as te

    dev = lazy_device(fake_trt)
    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    monkeypatch.setattr(te, "default_device", lambda: dev)
    engine = registry.create_engine(bundle, "auto", "fp16")
    assert isinstance(engine, te.TensorRTEngine) and engine.runner.max_batch == tp.DEFAULT_MAX_BATCH
    crops = np.random.default_rng(1).integers(0, 256, (5, IMG, IMG, 3), dtype=np.uint8)
    np.testing.assert_array_equal(engine.embed(crops), fake_trt.fake_embedding(crops, 192))
    # What TensorRT has to say while a scan builds its engine goes to the scan's own warning callback.
    import torch

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    said: list[str] = []
    resolved = registry.resolve(bundle, "auto", "fp32")
    registry.build(bundle, resolved.engine, resolved.precision, warn=said.append)
    assert resolved == registry.Resolved("tensorrt", "fp32", "cuda:0") and said and "building the TensorRT fp32" in said[0], said


def test_compile_without_tensorrt_is_a_one_line_error(home):
    r = run_cli("compile")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert lines == ["codescan: error: TensorRT is not installed: pip install 'codescan[tensorrt]'"]
    assert r.stdout == b""


def test_compile_command_with_the_fake(fake_trt, bundle, monkeypatch):
    from codescan.engines import tensorrt_engine as te
    from typer.testing import CliRunner

    from codescan.cli.entry import app

    dev = lazy_device(fake_trt)
    monkeypatch.setattr(te, "default_device", lambda: dev)
    runner = CliRunner()
    first = runner.invoke(app, ["compile", "--max-batch", "32", "--precision", "fp16"])
    assert first.exit_code == 0, first.output
    path = Path(first.stdout.strip())
    assert path.is_file() and path.parent == bundle.path / "engines" and len(fake_trt.BUILDS) == 1
    assert "built: TensorRT 10.13.3.9 fp16 engine for Fake GPU 80GB (sm 9.0), batch 1..32" in first.stderr
    second = runner.invoke(app, ["compile", "--max-batch", "32"])
    assert second.exit_code == 0 and "already cached" in second.stderr and len(fake_trt.BUILDS) == 1
    bad = runner.invoke(app, ["compile", "--precision", "int8"])
    assert bad.exit_code != 0


def test_gpu_modules_import_nothing_heavy():
    code = (
        "import sys, codescan.engines.tensorrt_engine, codescan.engines.cuda_engine, codescan.engines.registry as b;"
        "b.installed('tensorrt'); b.installed('cuda');"
        "print([m for m in ('tensorrt', 'torch', 'pycuda') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, check=True, text=True).stdout.strip()
    heavy = ["torch"] if Path("/dev/nvidiactl").exists() else []  # with a GPU, cuda_available imports torch
    assert out == str(heavy)


# ------------------------------------------------------------------------ torch CUDA engine on CPU


def test_cuda_engine_code_on_the_cpu_device(graphs, torch_fp32):
    """The CUDA engine's preprocessing, autocast policy and chunking, run on the CPU device."""
    from codescan.engines.cuda_engine import CudaEngine

    _, state, cfg, _ = graphs
    crops = np.random.default_rng(9).integers(0, 256, (11, IMG, IMG, 3), dtype=np.uint8)
    ref = torch_fp32.embed(crops)
    fp32 = CudaEngine(cfg, state, "fp32", device="cpu", max_batch=4, cuda_graphs=True)  # graphs: CUDA only
    np.testing.assert_allclose(fp32.embed(crops), ref, atol=2e-5, rtol=1e-4)
    assert (fp32.name, fp32.device, fp32._use_graphs) == ("cuda", "cpu", False)
    fp16 = CudaEngine(cfg, state, "fp16", device="cpu", max_batch=8)
    cos = cosine(ref, fp16.embed(crops))
    print(f"\ncuda engine code, autocast fp16 on the CPU device vs torch fp32: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.999
    if not registry.cuda_available():
        with pytest.raises(protocol.EngineError, match="no CUDA GPU"):
            CudaEngine(cfg, state, "fp16")
