"""Embeddings of a list of files, through the scanner's own decode pool and engine.

Head fitting, threshold choice, evaluation and calibration must see exactly the crops
`codescan scan` judges, under the same protection: the same killable, confined workers with a
deadline per file, the same limits, the same crop plan (`--crops 5` too). A decoder of their own
would drift from the scan (resize, EXIF, modes) and would hang or crash on a file the scan
survives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from codescan.engines.protocol import Engine

from codescan.core import defaults
from codescan.decoding.decode import DecodeLimits
from codescan.inputs.read import DecodeFailure
from codescan.model.preprocess import CropCount


@dataclass
class Embedded:
    """Embeddings of the files that decoded, with the indices (into the input list) they belong to."""

    index: np.ndarray  # (N,) int64 positions in the input list
    emb: np.ndarray  # (N, D) float32 with one crop per file, (N, K, D) with K crops
    failures: dict[int, DecodeFailure] = field(default_factory=dict)


def embed_files(
    paths: Sequence[str | Path],
    engine: Engine,
    batch_size: int | None = None,
    limits: DecodeLimits = DecodeLimits(),
    on_batch: Callable[[int], None] | None = None,
    crops: CropCount = defaults.CROPS,
    workers: int | None = None,
) -> Embedded:
    """Decode `paths` in the decode pool and embed them; files that cannot be judged are reported,
    not raised (a file that is no image at all is a `not_an_image` failure here).

    ``emb`` is (N, D) for `crops` 1 and (N, 5, D) for 5. `batch_size` counts files; None takes the
    scan's default for the engine's device.
    """
    from codescan.decoding.examine import Examined, Skipped
    from codescan.decoding.feed import DecodePool
    from codescan.inputs.walk import Entry
    from codescan.scan.plan import batch_size_for, measuring_config

    batch_size = batch_size_for(engine.device, batch_size)
    pool = DecodePool(
        workers=workers or defaults.decode_workers(),
        config=measuring_config(limits, crops),
        timeout=defaults.DECODE_TIMEOUT,
        window=max(2 * batch_size, 16),
    )
    index: list[int] = []
    chunks: list[np.ndarray] = []
    failures: dict[int, DecodeFailure] = {}
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        batch = np.stack([c for _, c in pending])  # (B, K, 224, 224, 3) uint8
        emb = engine.embed(batch.reshape(-1, *batch.shape[-3:]))  # (B·K, D)
        chunks.append(emb.reshape(len(pending), crops, -1) if crops != 1 else emb)  # (B, K, D) or (B, D)
        index.extend(i for i, _ in pending)
        if on_batch is not None:
            on_batch(len(pending))
        pending.clear()

    entries = (Entry(display=os.fsdecode(p), path=os.fsencode(p)) for p in paths)
    for i, (_, outcome) in enumerate(pool.outcomes(entries)):
        if isinstance(outcome, Examined) and outcome.decoded is not None:
            pending.append((i, outcome.decoded.crops))
        elif isinstance(outcome, Skipped):
            failures[i] = DecodeFailure(outcome.code, "no image extension and no image content")
        elif isinstance(outcome, DecodeFailure):
            failures[i] = outcome
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return Embedded(index=np.asarray(index, dtype=np.int64), emb=emb.astype(np.float32, copy=False), failures=failures)

