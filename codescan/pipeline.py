"""Wires walk → decode pool → batches → engine → heads → records, in walk order.

Decoding runs in worker processes (see workers.py) while the engine embeds the previous
batch. One batch stays in flight in the engine: batch i+1 is submitted before batch i's
embeddings are collected (engines.base.submitter), so an asynchronous engine (TensorRT)
uploads batch i+1 while it computes batch i; engines with only ``embed`` simply run it at
collect time. The window of files in flight is bounded, so memory stays flat however large
the tree. Records leave in exactly the walk order: an error or skip that follows an image
waits for that image's batch.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .decode import (
    MAGIC_BYTES,
    Decoded,
    DecodeFailure,
    DecodeLimits,
    decode_bytes,
    has_image_extension,
    has_image_magic,
    read_limited,
)
from .heads import HeadSet
from .records import (
    HEAD_NAMES,
    HeadChoice,
    Header,
    HeadName,
    HeadVerdict,
    Result,
    error_result,
    skipped_result,
)
from .walk import Entry, WalkOptions, walk
from .workers import DecodePool

if TYPE_CHECKING:
    from codescan.engines.base import AsyncEngine



class Skipped:
    """Marker outcome: not a candidate (no image extension, no image magic)."""


SKIPPED = Skipped()
Outcome = Decoded | DecodeFailure | Skipped


def inspect_entry(entry: Entry, limits: DecodeLimits) -> Outcome:
    """Decide candidate vs skipped from name and first bytes, then decode candidates."""
    if entry.error is not None:
        return DecodeFailure(*entry.error)
    try:
        if not has_image_extension(entry.path):
            try:
                with open(entry.path, "rb") as fh:
                    head = fh.read(MAGIC_BYTES)
            except OSError:
                head = b""  # unreadable and no image extension: read_limited reports the real cause
            if head and not has_image_magic(head):
                return SKIPPED
        return decode_bytes(read_limited(entry.path, limits.max_filesize), limits, entry.path)
    except DecodeFailure as failure:
        return failure


@dataclass(frozen=True)
class ScanConfig:
    head: HeadChoice = "linear"
    thresholds: dict[HeadName, float] = field(default_factory=dict)  # overrides of the bundle's
    batch_size: int | None = None  # None: 8 on CPU (small batches overlap decode best), 64 on GPU
    decode_workers: int = max(1, min(8, os.cpu_count() or 1))
    decode_timeout: float = 20.0  # seconds per file, enforced by killing the worker
    limits: DecodeLimits = DecodeLimits()
    walk: WalkOptions = WalkOptions()


class Scanner:
    """The public API: ``Scanner(weights="code").scan(["photos"])`` yields one Result per file."""

    def __init__(
        self,
        weights: str = "code",
        engine: str = "auto",
        precision: str = "auto",
        config: ScanConfig = ScanConfig(),
    ) -> None:
        from codescan.engines.base import create_engine

        from .weights import load_bundle

        self.config = config
        self.bundle = load_bundle(weights)
        self.heads: HeadSet = self.bundle.head_set()
        self.judged: list[HeadName] = self.heads.select(config.head, weights)
        for name in config.thresholds:
            if name not in self.heads.names():
                raise ValueError(f"--threshold for {name!r}, but the bundle has no such head")
        self.primary: HeadName = self.judged[0]
        self.engine = create_engine(self.bundle, engine, precision)  # type: ignore[arg-type]

    @property
    def batch_size(self) -> int:
        if self.config.batch_size:
            return self.config.batch_size
        return 64 if self.engine.device.startswith("cuda") else 8

    def threshold(self, name: HeadName) -> float:
        return self.config.thresholds.get(name, self.heads.threshold(name))

    def header(self) -> Header:
        return Header(
            codescan=__version__,
            weights={"name": self.bundle.name, "sha256": self.bundle.digest, "revision": self.bundle.revision},
            engine=self.engine.name,
            device=self.engine.device,
            precision=self.engine.precision,
            head=self.config.head,
            thresholds={n: self.threshold(n) for n in self.judged},
        )

    def scan(self, arguments: Iterable[str | bytes], skip: Collection[str] = ()) -> Iterator[Result]:
        """One Result per discovered file, in walk order; paths in `skip` (already done) are passed over."""
        cfg = self.config
        batch_size = self.batch_size
        entries = (e for e in walk(arguments, cfg.walk) if e.display not in skip)
        pool = DecodePool(
            workers=cfg.decode_workers,
            limits=cfg.limits,
            timeout=cfg.decode_timeout,
            window=max(2 * batch_size, 4 * cfg.decode_workers),
        )
        from codescan.engines.base import submitter

        engine = submitter(self.engine)
        # `pending`: outcomes since the last submitted batch (empty, or holding an image).
        # `flight`: the submitted batch not yet collected, with the records that follow it
        # in walk order up to the next image (they wait for it), and its engine handle.
        pending: list[tuple[Entry, Outcome]] = []
        n_images = 0
        flight: tuple[list[tuple[Entry, Outcome]], object] | None = None
        for entry, outcome in pool.outcomes(entries):
            if not pending and not isinstance(outcome, Decoded):
                if flight is None:  # no image ahead of it: needs no batch, emit it now
                    yield from self._finish([(entry, outcome)])  # type: ignore[list-item]
                    continue
                flight[0].append((entry, outcome))  # type: ignore[arg-type]
                if len(flight[0]) >= 2 * batch_size:  # bound what waits: collect early
                    yield from self._finish(*flight, engine=engine)
                    flight = None
                continue
            pending.append((entry, outcome))  # type: ignore[arg-type]
            n_images += isinstance(outcome, Decoded)
            if n_images >= batch_size:
                handle = self._submit(pending, engine)  # batch i+1 goes in before ...
                if flight is not None:
                    yield from self._finish(*flight, engine=engine)  # ... batch i comes out
                flight, pending, n_images = (pending, handle), [], 0
        handle = self._submit(pending, engine) if pending else None
        if flight is not None:
            yield from self._finish(*flight, engine=engine)
        if pending:
            yield from self._finish(pending, handle, engine=engine)

    def _submit(self, pending: list[tuple[Entry, Outcome]], engine: AsyncEngine) -> object | None:
        decoded = [o for _, o in pending if isinstance(o, Decoded)]
        return engine.submit(np.stack([d.crop for d in decoded])) if decoded else None

    def _finish(
        self, pending: list[tuple[Entry, Outcome]], handle: object | None = None, *, engine: AsyncEngine | None = None
    ) -> Iterator[Result]:
        """The records of `pending`, in order; its images' embeddings come from `handle`."""
        verdicts: dict[HeadName, list[HeadVerdict]] = {}
        if handle is not None:
            assert engine is not None
            emb = engine.collect(handle)  # (B, D)
            verdicts = {n: self.heads.judge(n, emb, self.threshold(n)) for n in self.judged}
        i = 0
        for entry, outcome in pending:
            if isinstance(outcome, Decoded):
                yield self._verdict(entry, outcome, {n: v[i] for n, v in verdicts.items()})
                i += 1
            elif isinstance(outcome, DecodeFailure):
                yield error_result(entry.display, outcome.code, outcome.message)
            else:
                yield skipped_result(entry.display)

    def _verdict(self, entry: Entry, d: Decoded, per_head: dict[HeadName, HeadVerdict]) -> Result:
        main = per_head[self.primary]
        return Result(
            path=entry.display,
            status=main.status,
            score=main.score,
            threshold=self.threshold(self.primary),
            head=self.primary,
            width=d.width,
            height=d.height,
            format=d.format,
            crop=d.box,
            heads={n: per_head[n] for n in HEAD_NAMES if n in per_head} if self.config.head == "all" else None,
        )
