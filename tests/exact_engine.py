"""An engine whose embeddings are exact on every machine, for tests that keep records on file.

A real engine's float32 output changes in its last bits with the CPU's kernels (AVX2 or
AVX-512, one runtime version or the next), so stored records could not be compared exactly
across machines. Here each of the 192 features is an integer sum of a 28×28 block of one
channel (exact in int64), scaled by one correctly rounded float32 division: the same bits
anywhere. Registered like the benchmarks' null engine: built only by name, never by `auto`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from codescan.engines.registry import register as register_spec
from codescan.engines.specs import EngineSpec

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle

NAME = "exact"
SPEC = EngineSpec(NAME, __name__, ("fp32",), (), "", gpu=False, gated=(), auto_rank={})
BLOCK = 28  # 224 = 8 × 28: an 8×8 grid of blocks, three channels each, 192 features
SCALE = np.float32(BLOCK * BLOCK * 255)


class ExactEngine:
    name = NAME
    device = "cpu"
    precision = "fp32"

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B, 224, 224, 3) uint8 -> (B, 192) float32
        b = len(crops)
        blocks = crops.reshape(b, 8, BLOCK, 8, BLOCK, 3).astype(np.int64).sum(axis=(2, 4))  # (B, 8, 8, 3)
        return blocks.reshape(b, 192).astype(np.float32) / SCALE - np.float32(0.5)


def create(
    bundle: Bundle, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> ExactEngine:
    return ExactEngine()


def register() -> None:
    register_spec(SPEC)
