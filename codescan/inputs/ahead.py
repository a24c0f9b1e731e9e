"""A directory's walk run ahead in a process of its own: the scanning process only receives it.

Listing a directory and stat-ing each file cost the process that does it about 25 µs a file on
a 2-core machine (system calls and one Entry each), the largest share of what a scan's own process
spent per file once the decode feed was lean. A child of the forkserver runs the same `walk`
(the same order, error records and pins) and sends its entries in lists of CHUNK, each
unpickled here in one call. The pipe bounds how far it runs ahead (its buffer and one list), so a
huge tree costs no more memory here than walking it in place. A walk that fails or dies is an
error, never a silently short listing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection

from codescan.core.procs import forkserver, kill, spawn
from codescan.inputs.walk import Entry, WalkOptions, walk

CHUNK = 256  # entries per message: one unpickling call here for this many files


class WalkAheadError(RuntimeError):
    """The walk's process failed or died: the listing is incomplete, so the scan stops."""


def _main(conn: Connection, arguments: list[str | bytes], opts: WalkOptions) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the walk
    try:
        chunk: list[Entry] = []
        for entry in walk(arguments, opts):
            chunk.append(entry)
            if len(chunk) == CHUNK:
                conn.send(chunk)
                chunk = []
        conn.send(chunk)
        conn.send(None)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped reading: nobody wants the rest
    except Exception as exc:  # noqa: BLE001 - reported by the parent, whose stderr is the user's
        conn.send(f"{type(exc).__name__}: {exc}")


def walk_ahead(arguments: list[str | bytes], opts: WalkOptions = WalkOptions()) -> Iterator[Entry]:
    """What ``walk(arguments, opts)`` yields, listed by a child process while the caller works."""
    proc, conn = spawn(forkserver(), _main, (arguments, opts))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                proc.join(timeout=5)
                raise WalkAheadError(f"the directory walk's process died (exit code {proc.exitcode})") from None
            if message is None:
                return
            if isinstance(message, str):
                raise WalkAheadError(f"the directory walk failed: {message}")
            yield from message
    finally:
        if proc.is_alive():
            kill(proc, conn)  # the consumer stopped early (an interrupt, a failure, `| head`)
        else:
            conn.close()
