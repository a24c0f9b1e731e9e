"""The Engine protocol and the choice of backend.

Engines see only uint8 crops and return embeddings: normalisation lives inside each engine
(or its graph) so every backend starts from the same bytes, and heads run outside engines.
Backends are imported lazily, so choosing one never imports another's heavy runtime.

Reduced precision is used by ``--precision auto`` only where the bundle records a passed
gate (see :mod:`codescan.engines.gate`): embedding cosine ≥ 0.999 against fp32 and ≥ 99.5%
identical verdicts per head on a labelled folder. ``fp32`` always reproduces the reference.

On a machine with a usable CUDA GPU, ``auto`` prefers the GPU engines (TensorRT, else torch
CUDA) to every CPU engine; fp16 is their reduced precision and obeys the same gate rule.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from codescan.weights import Bundle

EngineName = Literal["auto", "torch", "onnxruntime", "tensorrt", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
ENGINE_NAMES: tuple[str, ...] = ("auto", "onnxruntime", "torch", "tensorrt", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16", "int8")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "int8"),
    "torch": ("fp32", "bf16"),
    "tensorrt": ("fp16", "fp32"),
    "cuda": ("fp16", "fp32"),
}
GPU_ENGINES: tuple[str, ...] = ("tensorrt", "cuda")
# Reduced precisions `codescan gate` measures on a GPU machine (besides gate.CANDIDATES).
GPU_GATE_CANDIDATES: tuple[tuple[str, str], ...] = (("tensorrt", "fp16"), ("cuda", "fp16"))
# GPU engines first (TensorRT, then torch CUDA), when a CUDA GPU is usable; then the CPU
# engines, fastest first, as measured on a 2-core AVX-512 CPU (benchmarks/bench_scan.py).
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "fp16"),
    ("tensorrt", "fp32"),
    ("cuda", "fp16"),
    ("cuda", "fp32"),
    ("onnxruntime", "int8"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("torch", "fp32"),
)
# Python modules each engine imports; GPU engines also need a usable CUDA device.
_MODULES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "torch": ("timm",),
    "tensorrt": ("tensorrt", "torch"),
    "cuda": ("timm",),
}
_EXTRAS = {"onnxruntime": "onnx", "torch": "torch", "tensorrt": "tensorrt", "cuda": "torch"}


class Engine(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu", "cuda:0"
    precision: str  # "fp32", "fp16", "bf16", "int8"

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B,224,224,3) uint8 -> (B,D) float32
        ...

    # Optional asynchronous pair (see :class:`AsyncEngine`): an engine may also define
    # ``submit(crops) -> handle`` and ``collect(handle) -> (B, D) float32`` so a caller can
    # queue batch i+1 before waiting for batch i. Use :func:`submitter` rather than testing
    # for them: it falls back to ``embed`` for engines that have only that.


class AsyncEngine(Protocol):
    """Submit a batch now, collect its embeddings later; at least two may be in flight.

    ``collect(submit(crops))`` equals ``embed(crops)``. Each handle is collected once;
    handles may be collected in any order, though the pipeline collects them in submit order.
    """

    def submit(self, crops: np.ndarray) -> object: ...  # (B,224,224,3) uint8 -> handle
    def collect(self, handle: object) -> np.ndarray: ...  # handle -> (B,D) float32


class _Deferred:
    """The AsyncEngine view of an engine that only has ``embed``: ``submit`` keeps the array,
    ``collect`` runs ``embed`` on it. No threads: such engines stay synchronous and compute
    exactly what ``embed`` computes, just at collect time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit(self, crops: np.ndarray) -> object:
        return crops

    def collect(self, handle: object) -> np.ndarray:
        return self.engine.embed(handle)  # type: ignore[arg-type]


def submitter(engine: Engine) -> AsyncEngine:
    """The engine's own submit/collect when it has both, else a synchronous wrapper of embed."""
    if callable(getattr(engine, "submit", None)) and callable(getattr(engine, "collect", None)):
        return engine  # type: ignore[return-value]
    return _Deferred(engine)


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def cuda_available() -> bool:
    """A CUDA GPU torch can use. Without NVIDIA device nodes this answers without importing torch."""
    if not _importable("torch") or sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux") and not any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def installed(name: str) -> bool:
    """The engine can run here: its modules import, and for GPU engines a CUDA GPU is usable."""
    if not all(_importable(m) for m in _MODULES[name]):
        return False
    return name not in GPU_ENGINES or cuda_available()


def choose(bundle: Bundle, engine: EngineName, precision: Precision) -> tuple[str, str]:
    """Resolve auto choices to one (engine, precision) pair, or explain why none fits."""
    if engine not in ENGINE_NAMES:
        raise EngineError(f"unknown engine {engine!r} (choose from {', '.join(ENGINE_NAMES)})")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    from .gate import passed_gates

    # Read only when it can matter: an explicit precision never depends on (or trips over) gates.json.
    gates = passed_gates(bundle) if precision == "auto" else set()
    for name, prec in AUTO_ORDER:
        if engine not in ("auto", name) or precision not in ("auto", prec) or not installed(name):
            continue
        if precision == "auto" and prec != "fp32" and (name, prec) not in gates:
            continue
        return name, prec
    if engine != "auto" and not installed(engine):
        if not all(_importable(m) for m in _MODULES[engine]):
            raise EngineError(f"engine {engine!r} is not installed: pip install 'codescan[{_EXTRAS[engine]}]'")
        raise EngineError(f"engine {engine!r} needs a CUDA GPU; none is usable here (torch.cuda.is_available() is False)")
    if precision == "fp16" and not any(installed(e) for e in GPU_ENGINES):
        raise EngineError("precision 'fp16' runs on a CUDA GPU only (engines tensorrt, cuda); none is usable here")
    raise EngineError(f"no installed engine supports precision {precision!r} (supported: {SUPPORTED})")


def create_engine(
    bundle: Bundle, engine: EngineName = "auto", precision: Precision = "auto", threads: int | None = None
) -> Engine:
    """`threads` caps ONNX Runtime's intra-op threads (several engines sharing one machine, as under Ray)."""
    name, prec = choose(bundle, engine, precision)
    if name == "onnxruntime":
        from .onnx_engine import OnnxEngine

        return OnnxEngine(bundle, prec, threads)  # type: ignore[arg-type]
    if name == "tensorrt":
        from .tensorrt_engine import TensorRTEngine

        return TensorRTEngine(bundle, prec)
    if name == "cuda":
        from .cuda_engine import CudaEngine

        return CudaEngine(bundle.encoder_config, bundle.encoder_state(), precision=prec)
    from .torch_engine import TorchEngine

    return TorchEngine(bundle.encoder_config, bundle.encoder_state(), precision=prec)
