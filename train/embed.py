"""Embeddings of a list of files, through the scanner's own decoder and engine.

Head fitting, threshold choice and evaluation must see exactly the crops `codescan scan`
judges; a torchvision pipeline of their own would drift from it (resize, EXIF, modes), so
they reuse ``decode_file`` and an :class:`~codescan.engines.protocol.Engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from codescan.engines.protocol import Engine

from codescan.decoding.decode import DecodeLimits, configure_pillow, decode_file
from codescan.inputs.read import DecodeFailure


@dataclass
class Embedded:
    """Embeddings of the files that decoded, with the indices (into the input list) they belong to."""

    index: np.ndarray  # (N,) int64 positions in the input list
    emb: np.ndarray  # (N, D) float32, or (N, K, D) for a decoder that gives K crops per file
    failures: dict[int, DecodeFailure] = field(default_factory=dict)


def centre_crop(path: str, limits: DecodeLimits) -> np.ndarray:
    """(224, 224, 3) uint8: exactly what `scan` judges."""
    return decode_file(path, limits).crop


def embed_files(
    paths: Sequence[str | Path],
    engine: Engine,
    batch_size: int = 32,
    limits: DecodeLimits = DecodeLimits(),
    on_batch: Callable[[int], None] | None = None,
    decode: Callable[[str, DecodeLimits], np.ndarray] = centre_crop,
) -> Embedded:
    """Decode and embed `paths`; undecodable files are reported, not raised.

    `decode` gives (..., 224, 224, 3) uint8 per file; ``emb`` keeps its leading shape, so the
    centre crop gives (N, D) and five crops (N, 5, D). `batch_size` counts files.
    """
    configure_pillow(limits)
    index: list[int] = []
    chunks: list[np.ndarray] = []
    failures: dict[int, DecodeFailure] = {}
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        crops = np.stack([c for _, c in pending])  # (B, ..., 224, 224, 3) uint8
        emb = engine.embed(crops.reshape(-1, *crops.shape[-3:]))  # (B·K, D)
        chunks.append(emb.reshape(*crops.shape[:-3], -1))  # (B, ..., D)
        index.extend(i for i, _ in pending)
        if on_batch is not None:
            on_batch(len(pending))
        pending.clear()

    for i, path in enumerate(paths):
        try:
            pending.append((i, decode(str(path), limits)))
        except DecodeFailure as failure:
            failures[i] = failure
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return Embedded(index=np.asarray(index, dtype=np.int64), emb=emb.astype(np.float32, copy=False), failures=failures)
