"""Training images, decoded once per run and kept in RAM as uint8.

Views are cut afresh at every step, so decoding per step would cost more than the model on a
small CPU. Each image is kept as its central ``context``×``context`` region (the whole image
where smaller), not resized: resampling up front would blur the pixel statistics CoDE learns
from, and the region bounds memory (384² RGB is 442 KB). With ``(context - 224) / 2`` even, the
region's own centre crop is the scanner's crop bit for bit (round-half-even keeps its parity),
so the clean view is exactly what ``codescan scan`` judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from codescan.train.data import Sample

from codescan.decoding.decode import DecodeLimits, configure_pillow, decode_boxes
from codescan.inputs.read import DecodeFailure, read_limited
from codescan.model.preprocess import CROP, plan_crop


def check_context(context: int) -> int:
    if context < CROP or (context - CROP) % 4:
        raise ValueError(f"context {context}: must be ≥ {CROP} with (context - {CROP}) divisible by 4")
    return context


@dataclass(frozen=True)
class ImagePool:
    """Decoded regions of the samples that decoded; ``labels`` is 1 for fake, 0 for real."""

    samples: list[Sample]
    regions: list[np.ndarray]  # each (h, w, 3) uint8, h and w ≤ context
    failures: dict[Path, DecodeFailure]

    @property
    def labels(self) -> np.ndarray:  # (N,) int64
        return np.array([int(s.is_fake) for s in self.samples], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.regions)


def decode_region(path: Path, context: int, limits: DecodeLimits) -> np.ndarray:
    """The central context×context RGB region, decoded with the scanner's format allow-list and limits."""
    data = read_limited(str(path), limits.max_filesize)
    region = decode_boxes(data, limits, lambda w, h: [plan_crop(w, h, context).box], str(path)).regions[0]
    return np.ascontiguousarray(region, dtype=np.uint8)


def load_pool(samples: Sequence[Sample], context: int, threads: int, limits: DecodeLimits = DecodeLimits()) -> ImagePool:
    """Decode every sample once (Pillow releases the GIL while decoding, so threads help)."""
    check_context(context)
    configure_pillow(limits)

    def one(sample: Sample) -> np.ndarray | DecodeFailure:
        try:
            return decode_region(sample.path, context, limits)
        except DecodeFailure as failure:
            return failure

    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        outcomes = list(ex.map(one, samples))
    kept = [(s, o) for s, o in zip(samples, outcomes) if isinstance(o, np.ndarray)]
    failures = {s.path: o for s, o in zip(samples, outcomes) if isinstance(o, DecodeFailure)}
    return ImagePool(samples=[s for s, _ in kept], regions=[o for _, o in kept], failures=failures)
