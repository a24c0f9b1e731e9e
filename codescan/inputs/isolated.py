"""Run a reader of hostile bytes (an archive's listing, Parquet pages) in a child process.

Archive and Parquet parsers are large (tarfile, zipfile, pyarrow's C++), and their input is
whatever the dataset's author wrote. A parser that raises costs its archive one error record;
one that crashes, exhausts its address space or stops making progress would cost the scan, so
each archive is listed by its own child of the decode workers' forkserver, under the same memory
limit, and killed when it produces nothing for ``IDLE_SECONDS``. Items come back over a pipe
whose buffer is the back-pressure: the child waits while the scan is busy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from codescan.core.procs import ADDRESS_SPACE_LIMIT, confine, forkserver, start_process
from codescan.core.records import ErrorCode

IDLE_SECONDS = 120.0  # between two items: far above inflating one 256 MiB member


class ReaderError(Exception):
    """A reader gave up on its input; `code` and `message` become the input's error record."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


def _reader_main(conn: Connection, produce: Callable[..., Iterator[Any]], args: tuple) -> None:
    confine(ADDRESS_SPACE_LIMIT)
    try:
        for item in produce(*args):
            conn.send(("item", item))
        conn.send(("end", None))
    except ReaderError as exc:
        conn.send(("fail", (exc.code, exc.message)))
    except MemoryError:
        conn.send(("fail", ("too_large", "reading it needs more memory than a reader may use")))
    except Exception as exc:  # noqa: BLE001 - any parser failure is this input's error record
        conn.send(("fail", ("corrupt", f"{type(exc).__name__}: {exc}"[:300])))
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def isolated(produce: Callable[..., Iterator[Any]], *args: Any, idle: float = IDLE_SECONDS) -> Iterator[Any]:
    """What `produce(*args)` yields, computed in a confined child; ReaderError when it fails,
    crashes or stalls. Closing the generator early kills the child."""
    ctx = forkserver()
    parent, child = ctx.Pipe(duplex=False)
    proc = start_process(ctx, _reader_main, (child, produce, args))
    child.close()
    try:
        while True:
            if not parent.poll(idle):
                raise ReaderError("decode_timeout", f"reading it produced nothing for {idle:g}s; stopped")
            try:
                kind, value = parent.recv()
            except (EOFError, OSError):
                raise ReaderError("corrupt", "the reader crashed on this file") from None
            if kind == "end":
                return
            if kind == "fail":
                raise ReaderError(*value)
            yield value
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
