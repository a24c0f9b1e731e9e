"""A null engine: zero embeddings, instantly, so a scan's time is everything but the model.

For benchmarks (``bench_feed.py``) and tests only. It is never offered to users: ``register()``
adds it to this process's engine registry at run time (``codescan.engines.registry.register``),
so it is built only when named (``Scanner(engine="null")``), ``auto`` never picks it, and
``codescan scan --engine`` does not list it. Its embeddings have the bundle's width (192 for
ViT-Tiny), so every head still runs and every record is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from codescan.engines.registry import register as register_spec
from codescan.engines.specs import EngineSpec

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle

NAME = "null"
# `module` is this module as imported (benchmarks/ on sys.path), so the registry builds it by import.
SPEC = EngineSpec(NAME, __name__, ("fp32",), (), "", gpu=False, gated=(), auto_rank={})


class NullEngine:
    """Answers every batch with zeros of the bundle's embedding width, in float32."""

    name = NAME
    device = "cpu"
    precision = "fp32"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return np.zeros((len(crops), self.dim), dtype=np.float32)


def create(
    bundle: Bundle, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> NullEngine:
    """The registry's constructor; `precision` is always fp32 and `threads` are not used: no work."""
    return NullEngine(bundle.encoder_config.embed_dim)


def register() -> None:
    """Make ``engine="null"`` buildable in this process (idempotent)."""
    register_spec(SPEC)
