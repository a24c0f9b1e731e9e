"""Preallocated shared-memory slots that decode workers write crops into and the engine reads.

Pickling a crop set into a pipe costs more than decoding a small JPEG: the worker copies it into a
pickle, the kernel copies it twice, the parent allocates and copies it again. Here each file in
flight owns one slot of an anonymous shared mapping (``memfd``, no name to leak if the scan is
killed); the worker writes its crops there and sends only their count. A slot holds the largest
crop set a record can have (``--crops 5``: five 224×224×3 boxes).

Slots are handed out last-freed first, so the pages in use stay few and warm however large the ring.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading

import numpy as np


class RingExhausted(RuntimeError):
    """A consumer kept more slots than it declared: a bug in the caller, reported instead of a hang."""


def _anonymous_file(size: int) -> int:
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
        self.fd = _anonymous_file(slots * int(np.prod(slot_shape)))
        self.array = map_slots(self.fd, slots, slot_shape)  # (slots, *slot_shape)
        self._base = self.array.ctypes.data
        self._stride = self.array.strides[0]
        self._free = list(range(slots - 1, -1, -1))  # a stack: slot 0 is taken first
        self._lock = threading.Lock()  # the dispatcher takes, the consumer gives back

    def take(self) -> int:
        with self._lock:
            if not self._free:
                raise RingExhausted(f"all {self.slots} shared crop slots are held")
            return self._free.pop()

    def give(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def slot_of(self, view: np.ndarray) -> int:
        """The slot a view returned by this ring lies in: consumers give back what they were given."""
        offset = view.ctypes.data - self._base
        slot, within = divmod(offset, self._stride)
        if not (0 <= slot < self.slots and within == 0):
            raise ValueError("this array is not a slot of the ring")
        return slot

    @property
    def free(self) -> int:
        return len(self._free)

    def close(self) -> None:
        """Close the descriptor; the mapping goes when the last view of it does."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
