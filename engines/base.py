"""The Engine protocol and the choice of backend.

Engines see only uint8 crops and return embeddings: normalisation lives inside each engine
(or its graph) so every backend starts from the same bytes, and heads run outside engines.
Backends are imported lazily, so choosing one never imports another's heavy runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from codescan.weights import Bundle

EngineName = Literal["auto", "torch"]
Precision = Literal["auto", "fp32"]
ENGINE_NAMES: tuple[str, ...] = ("auto", "torch")
PRECISIONS: tuple[str, ...] = ("auto", "fp32")


class Engine(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu", "cuda:0"
    precision: str  # "fp32", "fp16", "bf16"

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B,224,224,3) uint8 -> (B,D) float32
        ...


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


def create_engine(bundle: Bundle, engine: EngineName = "auto", precision: Precision = "auto") -> Engine:
    if engine not in ENGINE_NAMES:
        raise EngineError(f"unknown engine {engine!r} (choose from {', '.join(ENGINE_NAMES)})")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    from .torch_engine import TorchEngine

    return TorchEngine(bundle.encoder_config, bundle.encoder_state(), precision="fp32")
