"""Preallocated shared-memory slots that decode workers write crops into and the engine reads.

Pickling a crop set into a pipe costs more than decoding a small JPEG: the worker copies it into a
pickle, the kernel copies it twice, the parent allocates and copies it again. Here each file in
flight owns one slot of an anonymous shared mapping (``memfd``, no name to leak if the scan is
killed); the worker writes its crops there and sends only their count. A slot holds the largest
crop set a record can have (``--crops 5``: five 224×224×3 boxes).

Slots are handed out next-fit: the first free slot at or after the one taken last, wrapping at
the end. Files are dispatched in walk order and given back in batch order, so a batch's files
usually lie in consecutive slots and the batch is a view of the ring (`span`): the engine reads
the crops where the workers wrote them, with no copy in the scanning process.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading

import numpy as np


class RingExhausted(RuntimeError):
    """A consumer kept more slots than it declared: a bug in the caller, reported instead of a hang."""


def anonymous_file(size: int) -> int:
    """A file descriptor of `size` zero bytes that lives only while it is open or mapped."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("codescan-crops", os.MFD_CLOEXEC)
    else:  # no memfd (not Linux): an unlinked temporary file serves the same
        with tempfile.TemporaryFile() as fh:
            fd = os.dup(fh.fileno())
    os.ftruncate(fd, size)
    return fd


def map_slots(fd: int, slots: int, slot_shape: tuple[int, ...]) -> np.ndarray:
    """(slots, *slot_shape) uint8 over the shared file: the same pages in every process that maps it."""
    size = slots * int(np.prod(slot_shape))
    return np.frombuffer(mmap.mmap(fd, size), dtype=np.uint8).reshape(slots, *slot_shape)


class Ring:
    """`slots` slots of `slot_shape` uint8, shared with workers through `fd` (pass it, then map_slots)."""

    def __init__(self, slots: int, slot_shape: tuple[int, ...]) -> None:
        self.slots = slots
        self.slot_shape = slot_shape
        self.fd = anonymous_file(slots * int(np.prod(slot_shape)))
        self.array = map_slots(self.fd, slots, slot_shape)  # (slots, *slot_shape)
        self._rows = self.array.reshape(slots * slot_shape[0], *slot_shape[1:])  # (slots·K, *slot_shape[1:]), for span
        self._is_free = bytearray(b"\x01" * slots)
        self._free = slots
        self._next = 0  # where the next search for a free slot starts
        self._lock = threading.Lock()  # the dispatcher takes, the consumer gives back

    def take_many(self, count: int) -> list[int]:
        """`count` slots, next-fit, under one lock (the dispatcher takes a chunk's at once); none
        when fewer are free."""
        with self._lock:
            if count > self._free:
                raise RingExhausted(f"{count} shared crop slots asked for, {self._free} of {self.slots} free")
            taken = []
            is_free, at = self._is_free, self._next
            for _ in range(count):
                slot = is_free.find(1, at)
                if slot < 0:
                    slot = is_free.find(1)
                is_free[slot] = 0
                taken.append(slot)
                at = slot + 1
            self._free -= count
            self._next = at
            return taken

    def give(self, slot: int, count: int = 1) -> None:
        """Give back `count` slots from `slot` on (a batch's consecutive slots at once)."""
        with self._lock:
            if self._is_free.find(1, slot, slot + count) >= 0:  # a slot given twice would be handed out twice
                raise ValueError(f"slots {slot}..{slot + count - 1} are not all held")
            self._is_free[slot : slot + count] = b"\x01" * count
            self._free += count

    def span(self, slot: int, rows: int) -> np.ndarray:
        """(rows, *slot_shape[1:]): the first `rows` rows from the start of `slot` on, across the
        slots that follow it, as one view (a batch whose crops fill consecutive slots)."""
        start = slot * self.slot_shape[0]
        return self._rows[start : start + rows]

    @property
    def free(self) -> int:
        return self._free

    def close(self) -> None:
        """Close the descriptor; the mapping goes when the last view of it does."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
