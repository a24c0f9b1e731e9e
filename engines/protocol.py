"""What every engine is: the protocol, its error, and the names of engines and precisions.

A leaf: it imports no backend and nothing of codescan, so every backend, the registry and the
scanner can import it without an import circle. Engines see only uint8 crops and return
embeddings: normalisation lives inside each engine (or its graph) so every backend starts from
the same bytes, and heads run outside engines.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

EngineName = Literal["auto", "torch", "onnxruntime", "tensorrt", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = Precision.__args__  # type: ignore[attr-defined]


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


class Engine(Protocol):
    name: str  # a registry name: "onnxruntime", "torch", "tensorrt", "cuda"
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
