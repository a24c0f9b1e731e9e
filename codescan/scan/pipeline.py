"""Wires walk → decode pool → batches → engine → heads → records, in walk order.

Decoding runs in worker processes (see workers.py) while the engine embeds the previous
batch. One batch stays in flight in the engine: batch i+1 is submitted before batch i's
embeddings are collected (engines.protocol.submitter), so an asynchronous engine (TensorRT)
uploads batch i+1 while it computes batch i; engines with only ``embed`` simply run it at
collect time. The window of files in flight is bounded, so memory stays flat however large
the tree. Records leave in exactly the walk order: an error or skip that follows an image
waits for that image's batch.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from codescan.core import defaults
from codescan.core.records import (
    Header,
    Ident,
    Result,
)
from codescan.decoding.cache import CachedVerdict, CacheError, CacheSpec, CacheWriter
from codescan.decoding.examine import Examined, Outcome
from codescan.decoding.feed import DecodePool, Held
from codescan.inputs.sources import entries as list_entries
from codescan.inputs.walk import Entry
from codescan.model.heads import HeadSet
from codescan.model.preprocess import CropCount
from codescan.scan.judge import BoxScores
from codescan.scan.plan import ScanConfig, ScanPlan

if TYPE_CHECKING:
    from codescan.engines.protocol import AsyncEngine, Engine


Item = tuple[Entry, Outcome, bool]  # bool: its crop goes to the engine in this item's batch
# Files in flight per decode worker (a fifth with --crops 5): two chunks queued in it, so it never
# waits for the parent, and as many again finished, waiting for a slower file ahead of them.
FILES_PER_WORKER = 96


# An engine batch that takes this long to come out makes its records go on at once (see `Scanner.batches`).
HAND_ON_SECONDS = 0.02


def feed_sizes(batch_size: int, crops: CropCount, workers: int) -> tuple[int, int]:
    """(files in flight in the decode pool, crop sets the scan holds after taking them).

    The window covers two batches and FILES_PER_WORKER per worker; the scan holds the crops of
    at most two batches' images: `pending`, until it is submitted, and the batch in the engine,
    which reads them in place (``--crops 5`` sends five crops per image). Both are whole batches,
    so the ring's slots are too, and a batch seldom wraps past its end (it is copied then).
    """
    images = -(-batch_size // crops)
    window = max(2 * images, FILES_PER_WORKER // crops * workers)
    return -(-window // images) * images, 2 * images


def _ignore(message: str) -> None:
    pass


class Scanner:
    """The public API: ``Scanner().scan(["photos"])`` yields one Result per file.

    `weights`: a bundle name; None takes the CLI's default (CODESCAN_WEIGHTS, then the stored
    `codescan weights default`, then ``code``)."""

    def __init__(
        self,
        weights: str | None = None,
        engine: str = defaults.ENGINE,
        precision: str = defaults.PRECISION,
        config: ScanConfig = ScanConfig(),
        warn: Callable[[str], None] = _ignore,
        plan: ScanPlan | None = None,
    ) -> None:
        """`plan`: already resolved (the CLI's); otherwise resolved here from the other arguments."""
        self.plan = plan or ScanPlan.resolve(weights, engine, precision, config)
        self.config = self.plan.config
        self.warn = warn
        self.bundle = self.plan.bundle
        self.heads: HeadSet = self.plan.heads
        self.judge = self.plan.judge
        self._writer: CacheWriter | None = None
        self._known: OrderedDict[bytes, BoxScores] = OrderedDict()

    @functools.cached_property
    def engine(self) -> Engine:
        """Resolved and built at first use (the header asks first), here, where the local scan runs."""
        from codescan.engines.registry import build, resolve

        resolved = resolve(self.bundle, self.plan.engine, self.plan.precision)
        return build(self.bundle, resolved.engine, resolved.precision, warn=self.warn)

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size(self.engine.device)

    def header(self) -> Header:
        return self.plan.header(self.engine.name, self.engine.device, self.engine.precision)

    def cache_spec(self) -> CacheSpec | None:
        return self.plan.cache_spec(self.engine.name, self.engine.precision)

    def scan(self, arguments: Iterable[str | bytes], skip: Collection[Ident] = ()) -> Iterator[Result]:
        """One Result per discovered input, in walk order; those in `skip` (already done) are passed over."""
        for records in self.batches(arguments, skip):
            yield from records

    def batches(self, arguments: Iterable[str | bytes], skip: Collection[Ident] = ()) -> Iterator[list[Result]]:
        """`scan`'s records in lists, for consumers whose own work per list is cheaper than per record
        (the job, its reporters): what was made from the outcomes that arrived together, or an engine
        batch's records alone when the engine is slow (see `collected` below)."""
        cfg = self.config
        batch_size = self.batch_size
        # Scores of recent contents, so a copy met again in this scan is not embedded twice
        # even before the cache has it (or with no cache at all). Far larger than what can be
        # in flight, so a copy's original is still here when the copy's record is made.
        self._known = OrderedDict()
        self._capacity = max(4096, 8 * batch_size)
        entries = list_entries(arguments, cfg.walk)
        if skip:
            entries = (e for e in entries if e.ident not in skip)
        pool = self._decode_pool(self._open_cache(), batch_size)
        from codescan.engines.protocol import submitter

        engine = submitter(self.engine)
        # `pending`: outcomes since the last submitted batch (empty, or holding a crop to embed).
        # `flight`: the submitted batch not yet collected, with the records that follow it
        # in walk order up to the next crop (they wait for it), its engine handle and the ring
        # slots it holds (a batch read in place).
        # `queued`: contents whose crop is in `pending` or `flight`; a copy waits for them.
        pending: list[Item] = []
        queued: set[bytes] = set()
        n_crops = 0
        flight: tuple[list[Item], object, Held | None] | None = None
        known, crops = self._known, cfg.crops
        # `collected`: items out of the engine (each group with its embeddings, or none), not yet
        # scored. They are scored and made records together once the outcomes that arrived with
        # them are used up (the next may mean a wait), or at once when the engine is slow (a batch
        # took HAND_ON_SECONDS or more to come out): with a fast engine and small batches the heads,
        # the records and the job run once per arrival, not per batch (the heads give a row the same
        # bits in any batch), and a slow engine's records are written as each batch comes out.
        collected: list[tuple[list[Item], np.ndarray | None]] = []
        try:
            for entry, outcome in pool.outcomes(entries, borrow=True, gather=-(-batch_size // crops)):  # a batch's images
                if entry.data is not None:  # a streamed member's bytes are decoded: only its name travels on
                    entry = replace(entry, data=None)
                embed = (
                    type(outcome) is Examined and outcome.decoded is not None
                    and outcome.sha256 not in queued and outcome.sha256 not in known
                )
                if not embed:
                    pool.give_back(outcome)  # a copy of content queued or scored: its scores come from that one
                    outcome = self._resolve(outcome)
                slow = False
                if not pending and not embed:
                    if flight is None:  # nothing ahead of it in the engine: no batch to wait for
                        collected.append(([(entry, outcome, False)], None))
                    else:
                        flight[0].append((entry, outcome, False))
                        if len(flight[0]) >= 2 * batch_size:  # bound what waits: collect early
                            slow = self._collect(collected, flight, engine, pool)
                            flight = None
                else:
                    pending.append((entry, outcome, embed))
                    if embed:
                        queued.add(outcome.sha256)  # type: ignore[union-attr]
                        n_crops += crops
                    # A batch that cannot fill (copies or errors follow its last crop) goes in early:
                    # what waits behind it stays bounded, as behind `flight`.
                    if n_crops >= batch_size or len(pending) >= 2 * batch_size:  # crops: --crops 5 sends five per image
                        handle, held = self._submit(pending, engine, pool)  # batch i+1 goes in before ...
                        if flight is not None:
                            slow = self._collect(collected, flight, engine, pool)  # ... batch i comes out
                        flight, pending, n_crops = (pending, handle, held), [], 0
                if collected and (slow or not pool.arrived):
                    yield self._records(collected, queued)
                    collected = []
            if pending:
                handle, held = self._submit(pending, engine, pool)
                if flight is not None:
                    self._collect(collected, flight, engine, pool)
                flight = (pending, handle, held)
            if flight is not None:
                self._collect(collected, flight, engine, pool)
            if collected:
                yield self._records(collected, queued)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _open_cache(self) -> CacheSpec | None:
        """The cache this scan reads and writes; one that cannot be opened is a warning, not a failure."""
        spec = self.cache_spec()
        if spec is not None:
            try:
                self._writer = CacheWriter(spec)
            except CacheError as exc:
                self.warn(str(exc))
                return None
        return spec

    def _decode_pool(self, spec: CacheSpec | None, batch_size: int) -> DecodePool:
        cfg = self.config
        window, hold = feed_sizes(batch_size, cfg.crops, cfg.decode_workers)
        return DecodePool(
            workers=cfg.decode_workers,
            config=self.plan.examine_config(spec),
            timeout=cfg.decode_timeout,
            window=window,
            hold=hold,
        )

    def _resolve(self, outcome: Outcome) -> Outcome:
        """A decoded copy of content already scored in this scan takes those scores: no second embedding."""
        if isinstance(outcome, Examined) and outcome.decoded is not None and outcome.sha256 in self._known:
            cached = outcome.verdict(self._known[outcome.sha256])
            return Examined(outcome.sha256, outcome.evidence, outcome.new_evidence, cached=cached)
        return outcome

    def _submit(self, pending: list[Item], engine: AsyncEngine, pool: DecodePool) -> tuple[object | None, Held | None]:
        """The engine's handle, and the ring slots the batch holds until it is collected (None: a copy)."""
        embedded = [o for _, o, embed in pending if embed]
        if not embedded:
            return None, None
        batch, held = pool.batch(embedded)  # type: ignore[arg-type]  # (sum of K, 224, 224, 3)
        return engine.submit(batch), held

    def _collect(self, collected: list[tuple[list[Item], np.ndarray | None]], flight: tuple[list[Item], object, Held | None],
                 engine: AsyncEngine, pool: DecodePool) -> bool:
        """`flight`'s items and embeddings (sum of K, D) added to `collected`; whether its engine
        batch was slow to come out. Its ring slots go back now: the engine is done with them."""
        items, handle, held = flight
        if handle is None:
            collected.append((items, None))
            return False
        started = time.monotonic()
        emb = engine.collect(handle)  # (sum of K, D): K boxes per image, in order
        slow = time.monotonic() - started >= HAND_ON_SECONDS
        if held is not None:
            pool.give_span(held)
        collected.append((items, emb))
        return slow

    def _remember(self, scored: Iterable[tuple[bytes, BoxScores]]) -> None:
        """Newly embedded contents (none is known yet, so each goes to the end); the oldest beyond capacity go."""
        known = self._known
        known.update(scored)
        while len(known) > self._capacity:
            known.popitem(last=False)

    def _records(self, collected: list[tuple[list[Item], np.ndarray | None]], queued: set[bytes]) -> list[Result]:
        """The records of every collected item, in order: the embeddings scored first, in one call
        (every head when a cache is written, a later scan may ask for another; else the judged
        ones), so a copy later among them finds its original's scores."""
        items = [item for group, _ in collected for item in group]
        embs = [emb for _, emb in collected if emb is not None]
        fresh: list[tuple[bytes, CachedVerdict]] = []
        if embs:
            batched = [o for group, emb in collected if emb is not None for _, o, embed in group if embed]
            emb = embs[0] if len(embs) == 1 else np.concatenate(embs)  # (sum of K, D)
            per_row = self.heads.scores(emb, None if self._writer is not None else self.judge.judged)
            if len(per_row) == len(batched):  # one box each
                scored = [(row,) for row in per_row]
            else:
                starts = np.cumsum([0] + [len(o.decoded.boxes) for o in batched]).tolist()  # type: ignore[union-attr]
                scored = [tuple(per_row[start:end]) for start, end in itertools.pairwise(starts)]
            shas = [o.sha256 for o in batched]  # type: ignore[union-attr]
            self._remember(zip(shas, scored))
            queued.difference_update(shas)
            if self._writer is not None:
                fresh = [(o.sha256, o.verdict(scores)) for o, scores in zip(batched, scored)]  # type: ignore[union-attr]
        if self._writer is not None:
            new_evidence = [
                (o.sha256, o.evidence) for _, o, _ in items if isinstance(o, Examined) and o.new_evidence and o.evidence is not None
            ]
            self._store(fresh, new_evidence)
        known = self._known
        record = self.judge.record
        return [
            record(entry.display, outcome, known.get(outcome.sha256) if type(outcome) is Examined and outcome.cached is None else None, entry.origin)
            for entry, outcome, _ in items
        ]

    def _store(self, verdicts: list[tuple[bytes, CachedVerdict]], evidence: list) -> None:
        assert self._writer is not None
        try:
            self._writer.put(verdicts, evidence)
        except CacheError as exc:
            self.warn(str(exc))
            self._writer.close()
            self._writer = None
