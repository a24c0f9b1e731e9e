"""The decode feed: files examined in killable workers, their crops handed over in shared memory.

Each worker runs codescan.decoding.examine on its files (read, hash, limits, evidence, decode) and
writes a decoded file's crops into the file's slot of the shared ring; the parent gets the file's
facts as plain values and builds its outcome around a view of the slot. A file whose worker
stalls past ``--decode-timeout`` is a ``decode_timeout`` error, one whose worker dies is
``corrupt``; either way the other files of its chunk are decoded by the next worker.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator

import numpy as np

from codescan.decoding.decode import Decoded, configure_pillow
from codescan.decoding.examine import ExamineConfig, Examined, Outcome, listed_outcome
from codescan.decoding.workers import Run, WorkerPool
from codescan.inputs.read import DecodeFailure
from codescan.inputs.walk import Entry
from codescan.model.preprocess import CROP

Held = tuple[int, int]  # a batch's slots in the ring: the first, and how many
# A decoded file's answer: its facts as plain values, its crops in its slot. Unpickling an Examined
# and its Decoded costs the dispatcher five times what a tuple does; the parent builds them once.
Facts = tuple[bytes, "tuple | None", bool, int, int, str, tuple]  # sha256, evidence, new_evidence, width, height, format, boxes


def _setup(config: ExamineConfig) -> Run:
    """In the worker: Pillow's limits, the examiner (cache, provenance readers), the test hooks."""
    from codescan.decoding.examine import Examiner

    configure_pillow(config.limits)
    examine = Examiner(config)
    delay = float(os.environ.get("CODESCAN_TEST_DECODE_DELAY", "0") or 0)
    stall_marker = os.environ.get("CODESCAN_TEST_STALL_MARKER", "").encode()

    def run(wired: tuple, slot: np.ndarray | None) -> tuple[Outcome, int]:
        entry = Entry.from_wire(wired)
        if delay or (stall_marker and stall_marker in entry.path):
            time.sleep(delay or 3600)  # test hook: a decoder that stalls
        outcome = examine(entry)
        if not isinstance(outcome, Examined) or outcome.decoded is None:
            return outcome, 0
        assert slot is not None
        d = outcome.decoded
        slot[: len(d.crops)] = d.crops  # (K, 224, 224, 3)
        facts: Facts = (outcome.sha256, outcome.evidence, outcome.new_evidence, d.width, d.height, d.format, d.boxes)
        return facts, len(d.crops)

    return run


class DecodePool(WorkerPool[Entry, Outcome]):
    """``pool.outcomes(entries)`` yields ``(entry, outcome)`` in input order."""

    def __init__(
        self, workers: int, config: ExamineConfig, timeout: float, window: int, hold: int = 0
    ) -> None:
        """`hold`: crop sets a borrowing consumer keeps at once (``outcomes(..., borrow=True)``)."""
        super().__init__(
            workers, functools.partial(_setup, config), timeout, window,
            slot_shape=(config.crops, CROP, CROP, 3), hold=hold,
        )

    def outcomes(self, entries: Iterator[Entry], borrow: bool = False, gather: int = 1) -> Iterator[tuple[Entry, Outcome]]:
        """`borrow`: decoded crops are views of shared slots, each given back with `give_back` once
        used (copied into a batch, or not needed); otherwise they are the consumer's own arrays.
        `gather`: outcomes reach the consumer's thread this many at a time (see `WorkerPool.results`)."""
        return self.results(entries, borrow, gather)

    def give_back(self, outcome: Outcome) -> None:
        if isinstance(outcome, Examined) and outcome.decoded is not None and outcome.decoded.slot >= 0:
            self.release(outcome.decoded.slot)

    def batch(self, embedded: list[Examined]) -> tuple[np.ndarray, Held | None]:
        """The borrowed crops of `embedded` as one (sum of K, 224, 224, 3) array.

        When they fill consecutive slots (files dispatched and batched in walk order, the usual
        case), the array is a view of the ring and its slots stay held until `give_span`: the
        engine reads the crops where the workers wrote them. Otherwise (a copy or an error
        between them, the ring's end) it is a copy and the slots go back now."""
        ring = self._ring
        assert ring is not None and embedded
        first = embedded[0].decoded.slot  # type: ignore[union-attr]
        full, rows = ring.slot_shape[0], 0
        for i, o in enumerate(embedded):
            d = o.decoded
            if d.slot != first + i or (rows % full):  # type: ignore[union-attr]  # only the last may leave rows unfilled
                break
            rows += len(d.crops)  # type: ignore[union-attr]
        else:
            return ring.span(first, rows), (first, len(embedded))
        copied = np.concatenate([o.decoded.crops for o in embedded])  # type: ignore[union-attr]
        for o in embedded:
            self.give_back(o)
        return copied, None

    def give_span(self, held: Held) -> None:
        """Give back the slots of a batch that was a view of the ring, once the engine is done with it."""
        assert self._ring is not None
        self._ring.give(*held)

    def local(self, entry: Entry) -> Outcome | None:
        return listed_outcome(entry) if entry.error is not None else None  # walk and listing errors

    def wire(self, entry: Entry) -> tuple:
        return entry.to_wire()

    def heavy(self, entry: Entry) -> bool:
        return entry.data is not None  # a streamed member carries its bytes

    def timed_out(self, entry: Entry) -> Outcome:
        return DecodeFailure("decode_timeout", f"decoding took longer than {self.timeout:g}s (--decode-timeout)")

    def crashed(self, entry: Entry) -> Outcome:
        return DecodeFailure("corrupt", "the decoder crashed on this file")

    def received(self, outcome: Outcome | Facts, rows: np.ndarray | None, slot: int) -> tuple[Outcome, bool]:
        if type(outcome) is not tuple:
            return outcome, False  # type: ignore[return-value]
        assert rows is not None
        sha256, evidence, new_evidence, width, height, fmt, boxes = outcome
        if self.borrow:
            decoded = Decoded(rows, width, height, fmt, boxes, slot)  # (K, 224, 224, 3) view of the ring
        else:
            decoded = Decoded(rows.copy(), width, height, fmt, boxes)
        return Examined(sha256, evidence, new_evidence, decoded), self.borrow
