"""Serialized TensorRT engines, "engine files" here: TensorRT calls them plans, and codescan keeps
"plan" for the scan plan and "cache" for the scan cache.

Build. The graph is :func:`codescan.engines.export.build_encoder_graph` (uint8 crops in,
float32 embeddings out, normalisation folded in). The network is created strongly typed, so
precision comes from the graph's own types (the ``fp16`` graph runs matmuls and the patch
convolution in half, LayerNorm/softmax/GELU/residuals in float32) and no precision builder flag
is ever set: that is the only mode TensorRT 11 has, and in 10.x it is requested with
``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``. One optimisation profile covers
batches 1..max_batch on the input ``crops`` (opt = max = max_batch).

Store. An engine file is only valid for the TensorRT version, GPU model and compute capability
that built it, so it lives in ``<bundle>/engines/`` (``*.plan``, TensorRT's suffix) under a name
derived from a key holding all of that plus the bundle digest, graph version, precision and
profile. It is written with the record every derived file has (:mod:`codescan.engines.derived`:
bundle digest, path, the key and the file's sha256); one whose record is missing, differs from
the expected key or does not match its bytes is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from codescan.engines import derived
from codescan.engines.export import GRAPH_VERSION, INPUT, build_encoder_graph
from codescan.engines.protocol import EngineError
from codescan.engines.specs import ENGINES

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle


KEY_FORMAT = 2  # bump when the key or the record changes


DEFAULT_MAX_BATCH = 64


DEFAULT_WORKSPACE = 1 << 30  # builder scratch memory limit (bytes)


TRT_PRECISIONS = ENGINES["tensorrt"].precisions


INSTALL_HINT = "pip install 'codescan[tensorrt]'"


class EngineFileError(EngineError):
    """A stored engine file that cannot be used here (corrupt, foreign, wrong I/O); it gets rebuilt."""


def import_tensorrt():
    """The tensorrt module, or an EngineError whose one-line message says what to install."""
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != "tensorrt":
            raise EngineError(f"TensorRT cannot be imported ({exc}): {INSTALL_HINT}") from None
        raise EngineError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    except (ImportError, OSError) as exc:  # installed, but its CUDA libraries cannot be loaded
        detail = " ".join(str(exc).split())
        raise EngineError(f"TensorRT is installed but cannot be loaded ({detail}); reinstall with {INSTALL_HINT}") from None
    return tensorrt


class Device(Protocol):
    """The CUDA operations the runner needs; tensors are torch tensors."""

    name: str  # "cuda:0"

    def describe(self) -> tuple[str, str]: ...  # (GPU name, compute capability "major.minor")
    def empty(self, shape: tuple[int, ...], dtype: str) -> Any: ...  # device memory
    def pinned(self, shape: tuple[int, ...], dtype: str) -> Any: ...  # page-locked host memory
    def stream(self) -> Any: ...
    def handle(self, stream: Any) -> int: ...  # the cudaStream_t TensorRT enqueues on
    def event(self) -> Any: ...
    def copy_async(self, dst: Any, src: Any, stream: Any) -> None: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def wait(self, stream: Any, event: Any) -> None: ...  # stream waits for event (no host block)
    def synchronize(self, event: Any) -> None: ...  # host waits for event


def _input_shape(batch: int, img_size: int) -> list[int]:
    return [batch, img_size, img_size, 3]


def engine_key(
    bundle: Bundle, precision: str, max_batch: int, trt_version: str, gpu: tuple[str, str], workspace: int
) -> dict[str, Any]:
    """Everything an engine file's validity depends on."""
    img = bundle.encoder_config.img_size
    return {
        "cache_format": KEY_FORMAT,  # the field's stored name: renaming it would rebuild every engine file
        "bundle_digest": bundle.digest,
        "graph_version": GRAPH_VERSION,
        "precision": precision,
        "tensorrt": str(trt_version),
        "gpu": gpu[0],
        "compute_capability": gpu[1],
        "profile": {
            "input": INPUT,
            "min": _input_shape(1, img),
            "opt": _input_shape(max_batch, img),
            "max": _input_shape(max_batch, img),
        },
        "workspace": int(workspace),
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def engine_file_path(bundle: Bundle, key: dict[str, Any]) -> Path:
    """Readable prefix, then a hash of the whole key."""
    stem = f"trt-{key['precision']}-b{key['profile']['max'][0]}-g{key['graph_version']}-{_key_hash(key)[:16]}"
    return bundle.path / "engines" / f"{stem}.plan"


def load_engine_file(bundle: Bundle, key: dict[str, Any]) -> bytes | None:
    """The stored engine file for exactly this key, or None (missing, foreign, stale or changed)."""
    return derived.read(bundle, engine_file_path(bundle, key), key)


def store_engine_file(bundle: Bundle, key: dict[str, Any], serialized: bytes) -> Path:
    path = engine_file_path(bundle, key)
    derived.write(bundle, path, serialized, key)
    return path


def compiled_max_batch(bundle: Bundle, key: dict[str, Any]) -> int | None:
    """The largest max_batch among stored engine files valid for `key` apart from its profile.

    Lets `codescan scan` use whatever `codescan compile --max-batch N` built for this GPU. The
    records only pick the size; the engine file of that size is verified when it is loaded.
    """
    best = None
    folder = bundle.path / "engines"
    for path in sorted(folder.glob(f"trt-{key['precision']}-b*-g{key['graph_version']}-*.plan")):
        record = derived.read_record(path) or {}
        try:
            other = record["key"]
            n = int(other["profile"]["max"][0])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if other == engine_key_with_batch(key, n):
            best = n if best is None else max(best, n)
    return best


def engine_key_with_batch(key: dict[str, Any], max_batch: int) -> dict[str, Any]:
    profile = key["profile"]
    img = profile["min"][1]
    return {**key, "profile": {**profile, "opt": _input_shape(max_batch, img), "max": _input_shape(max_batch, img)}}


def build_engine_file(trt: Any, onnx_bytes: bytes, key: dict[str, Any]) -> bytes:
    """Parse the ONNX graph into a strongly typed network and build a serialized engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: tensor types come from the graph. TensorRT 10 needs the flag; 11 is always
    # strongly typed (the flag, where still present, is accepted and ignored). EXPLICIT_BATCH is
    # the default since 10 and deprecated, so it is never passed.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse the codescan ONNX graph: {errors or 'no detail'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(key["workspace"]))
    if key["precision"] == "fp32":
        tf32 = getattr(trt.BuilderFlag, "TF32", None)  # on by default; fp32 here means IEEE fp32
        if tf32 is not None:
            config.clear_flag(tf32)
    profile = builder.create_optimization_profile()
    p = key["profile"]
    profile.set_shape(p["input"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    if config.add_optimization_profile(profile) < 0:
        raise EngineError("TensorRT rejected the optimisation profile for input 'crops'")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT failed to build the engine (see the TensorRT messages above)")
    return memoryview(serialized).tobytes()


@dataclass(frozen=True)
class EngineFileInfo:
    path: Path
    key: dict[str, Any]
    built: bool  # False: a stored one was loaded


def _log_stderr(message: str) -> None:
    print(f"codescan: {message}", file=sys.stderr, flush=True)


def ensure_engine_file(
    bundle: Bundle,
    precision: str,
    max_batch: int | None,
    trt: Any,
    device: Device,
    workspace: int = DEFAULT_WORKSPACE,
    rebuild: bool = False,
    log: Callable[[str], None] = _log_stderr,
) -> tuple[bytes, EngineFileInfo]:
    """The engine file for this bundle, precision, profile, TensorRT version and GPU: stored or built."""
    if precision not in TRT_PRECISIONS:
        raise EngineError(f"tensorrt supports precision {' or '.join(TRT_PRECISIONS)}, not {precision!r}")
    gpu = device.describe()
    key = engine_key(bundle, precision, max_batch or DEFAULT_MAX_BATCH, trt.__version__, gpu, workspace)
    if max_batch is None:
        key = engine_key_with_batch(key, compiled_max_batch(bundle, key) or DEFAULT_MAX_BATCH)
    elif not 1 <= max_batch <= 4096:
        raise EngineError(f"max batch must be between 1 and 4096, not {max_batch}")
    serialized = None if rebuild else load_engine_file(bundle, key)
    if serialized is not None:
        return serialized, EngineFileInfo(engine_file_path(bundle, key), key, built=False)
    log(
        f"building the TensorRT {precision} engine for {gpu[0]} (sm {gpu[1]}, TensorRT {trt.__version__}, "
        f"batch 1..{key['profile']['max'][0]}); once per GPU, stored in {engine_file_path(bundle, key).parent}"
    )
    onnx_bytes = build_encoder_graph(bundle.encoder_state(), bundle.encoder_config, precision).SerializeToString()  # type: ignore[arg-type]
    serialized = build_engine_file(trt, onnx_bytes, key)
    return serialized, EngineFileInfo(store_engine_file(bundle, key, serialized), key, built=True)
