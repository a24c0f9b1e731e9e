"""The Engine protocol and the choice of backend.

Engines see only uint8 crops and return embeddings: normalisation lives inside each engine
(or its graph) so every backend starts from the same bytes, and heads run outside engines.
Backends are imported lazily, so choosing one never imports another's heavy runtime.

Reduced precision is used by ``--precision auto`` only where the bundle records a passed
gate (see :mod:`codescan.engines.gate`): embedding cosine ≥ 0.999 against fp32 and ≥ 99.5%
identical verdicts per head on a labelled folder. ``fp32`` is always exact.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from codescan.weights import Bundle

EngineName = Literal["auto", "torch", "onnxruntime"]
Precision = Literal["auto", "fp32", "bf16", "int8"]
ENGINE_NAMES: tuple[str, ...] = ("auto", "onnxruntime", "torch")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
SUPPORTED: dict[str, tuple[str, ...]] = {"onnxruntime": ("fp32", "int8"), "torch": ("fp32", "bf16")}
# Fastest first, as measured on a 2-core AVX-512 CPU (benchmarks/bench_scan.py).
AUTO_ORDER: tuple[tuple[str, str], ...] = (("onnxruntime", "int8"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("torch", "fp32"))


class Engine(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu", "cuda:0"
    precision: str  # "fp32", "fp16", "bf16", "int8"

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B,224,224,3) uint8 -> (B,D) float32
        ...


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


def installed(name: str) -> bool:
    module = {"onnxruntime": "onnxruntime", "torch": "timm"}[name]
    return importlib.util.find_spec(module) is not None


def choose(bundle: Bundle, engine: EngineName, precision: Precision) -> tuple[str, str]:
    """Resolve auto choices to one (engine, precision) pair, or explain why none fits."""
    if engine not in ENGINE_NAMES:
        raise EngineError(f"unknown engine {engine!r} (choose from {', '.join(ENGINE_NAMES)})")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    from .gate import passed_gates

    gates = passed_gates(bundle)
    for name, prec in AUTO_ORDER:
        if engine not in ("auto", name) or precision not in ("auto", prec) or not installed(name):
            continue
        if precision == "auto" and prec != "fp32" and (name, prec) not in gates:
            continue
        return name, prec
    if engine != "auto" and not installed(engine):
        extra = "torch" if engine == "torch" else "onnx"
        raise EngineError(f"engine {engine!r} is not installed: pip install 'codescan[{extra}]'")
    raise EngineError(f"no installed engine supports precision {precision!r} (supported: {SUPPORTED})")


def create_engine(bundle: Bundle, engine: EngineName = "auto", precision: Precision = "auto") -> Engine:
    name, prec = choose(bundle, engine, precision)
    if name == "onnxruntime":
        from .onnx_engine import OnnxEngine

        return OnnxEngine(bundle, prec)  # type: ignore[arg-type]
    from .torch_engine import TorchEngine

    return TorchEngine(bundle.encoder_config, bundle.encoder_state(), precision=prec)
