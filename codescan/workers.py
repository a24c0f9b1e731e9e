"""Decode worker processes that can be killed: the only way to bound a stuck C decoder.

A thread stuck inside libtiff or libpng cannot be interrupted, so each decode runs in a worker
process with one task at a time and a deadline. A worker that misses its deadline is killed
(SIGKILL) and replaced, and its file becomes a ``decode_timeout`` error; a worker that dies
(a decoder crash, the kernel's OOM killer, the address-space limit) makes its file a
``corrupt`` error. Either way the scan keeps moving.

A dispatcher thread keeps every worker busy while the engine embeds the previous batch and
hands outcomes to the consumer strictly in walk order; a window bounds how many files are in
flight, so memory stays flat and a slow consumer holds the walk back (back-pressure).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait

from .decode import DecodeFailure, configure_pillow
from .examine import ExamineConfig, listed_outcome
from .walk import Entry

_STOP = None
_READY = "ready"  # a worker's first message: imports and readers loaded, decoding can start
ADDRESS_SPACE_LIMIT = 4 << 30  # per worker; a bomb that slips past the pixel check dies here
STARTUP_SECONDS = 120.0  # a worker that is not ready by then is killed, and its file is an error


def _worker_main(conn: Connection, config: ExamineConfig, quiet_stderr: bool) -> None:
    from .examine import Examiner

    confine(ADDRESS_SPACE_LIMIT, quiet_stderr)
    configure_pillow(config.limits)
    examine = Examiner(config)
    time.sleep(float(os.environ.get("CODESCAN_TEST_WORKER_START_DELAY", "0") or 0))  # test hook: a slow start
    conn.send(_READY)
    delay = float(os.environ.get("CODESCAN_TEST_DECODE_DELAY", "0") or 0)
    stall_marker = os.environ.get("CODESCAN_TEST_STALL_MARKER", "")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is _STOP:
            return
        seq, entry = task
        if delay or (stall_marker and stall_marker.encode() in entry.path):
            time.sleep(delay or 3600)  # test hook: a decoder that stalls
        conn.send((seq, examine(entry)))


@contextlib.contextmanager
def _safe_path():
    """Start the forkserver with PYTHONSAFEPATH=1.

    multiprocessing launches it as ``python -c ...``, which would put the current directory
    first on sys.path: scanning from inside a folder that holds another ``codescan/`` (a
    source checkout, say) would make every worker import that code instead of the installed
    package. The variable only matters for the one launch; the previous value is restored.
    """
    old = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = old


def forkserver() -> mp.context.BaseContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["codescan.examine", "codescan.archives"])  # archive readers start warm
    return ctx


def start_process(ctx: mp.context.BaseContext, target, args: tuple) -> mp.process.BaseProcess:
    """A daemon child of the forkserver, started so that Ctrl-C cannot kill it mid-start.

    Ctrl-C reaches the whole process group. Start the forkserver (and through it every child)
    with SIGINT blocked, a mask that survives fork and exec, so neither can die of it mid-start
    with a traceback on the user's stderr; here it stays pending until unblocked. The resource
    tracker goes first: starting it unblocks SIGINT (CPython's own bpo-33613 guard).
    """
    proc = ctx.Process(target=target, args=args, daemon=True)  # type: ignore[attr-defined]
    resource_tracker.ensure_running()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _safe_path():
            proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return proc


def spawn(ctx: mp.context.BaseContext, target, args: tuple) -> tuple[mp.process.BaseProcess, Connection]:
    """A worker child and the parent's end of its pipe (the child's end is passed as args[0])."""
    parent, child = ctx.Pipe(duplex=True)
    proc = start_process(ctx, target, (child, *args))
    child.close()
    return proc, parent


def kill(proc: mp.process.BaseProcess, conn: Connection) -> None:
    """Stop a worker that missed its deadline or crashed: SIGKILL, reap, close its pipe."""
    proc.kill()
    proc.join(timeout=5)
    conn.close()


def confine(memory: int, quiet_stderr: bool) -> None:
    """In a child that reads hostile bytes: no Ctrl-C of its own, no stderr chatter, bounded memory."""
    import resource
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    if quiet_stderr:
        # Decoders print straight to fd 2 (libtiff warnings); stderr belongs to the user.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ValueError, OSError):
        pass


@dataclass
class _Slot:
    proc: mp.process.BaseProcess
    conn: Connection
    seq: int = -1
    entry: Entry | None = None
    started: float = 0.0  # when the deadline's clock started: the task was sent, or the worker became ready
    ready: bool = False  # the worker said it is ready; until then its start, not its file, is being timed

    def limit(self, timeout: float) -> float:
        return self.started + (timeout if self.ready else STARTUP_SECONDS)


class DecodePool:
    """``pool.outcomes(entries)`` yields ``(entry, outcome)`` in input order."""

    def __init__(self, workers: int, config: ExamineConfig, timeout: float, window: int, quiet_stderr: bool = True):
        self.n = max(1, workers)
        self.config = config
        self.timeout = timeout
        self.window = max(window, self.n)
        self.quiet_stderr = quiet_stderr
        self.ctx = forkserver()
        self._slots: list[_Slot] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> _Slot:
        proc, conn = spawn(self.ctx, _worker_main, (self.config, self.quiet_stderr))
        return _Slot(proc=proc, conn=conn)

    def _replace(self, slot: _Slot) -> _Slot:
        kill(slot.proc, slot.conn)
        fresh = self._spawn()
        self._slots[self._slots.index(slot)] = fresh
        return fresh

    def outcomes(self, entries: Iterator[Entry]) -> Iterator[tuple[Entry, object]]:
        out: queue.Queue = queue.Queue()
        credits = threading.Semaphore(self.window)
        self._stop.clear()  # reusable: each call starts its workers and close() stops them
        self._slots = [self._spawn() for _ in range(self.n)]
        self._thread = threading.Thread(target=self._dispatch, args=(entries, out, credits), daemon=True)
        self._thread.start()
        try:
            while True:
                item = out.get()
                if item is _STOP:
                    return
                if isinstance(item, BaseException):
                    raise item
                credits.release()
                yield item
        finally:
            self.close()

    def _dispatch(self, entries: Iterator[Entry], out: queue.Queue, credits: threading.Semaphore) -> None:
        try:
            self._run(entries, out, credits)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the consumer thread
            out.put(exc)
        finally:
            out.put(_STOP)

    def _run(self, entries: Iterator[Entry], out: queue.Queue, credits: threading.Semaphore) -> None:
        done: dict[int, tuple[Entry, object]] = {}
        next_seq = next_out = 0
        exhausted = False
        while not self._stop.is_set():
            # Hand work to idle workers while the window has room.
            for slot in self._slots:
                if slot.entry is not None or exhausted:
                    continue
                if not credits.acquire(timeout=0 if any(s.entry for s in self._slots) else 0.05):
                    break
                entry = next(entries, None)
                if entry is None:
                    credits.release()
                    exhausted = True
                    break
                if entry.error is not None:  # walk and listing errors need no worker
                    done[next_seq] = (entry, listed_outcome(entry))
                else:
                    slot.seq, slot.entry, slot.started = next_seq, entry, time.monotonic()
                    slot.conn.send((next_seq, entry))
                next_seq += 1
            while next_out in done:
                out.put(done.pop(next_out))
                next_out += 1
            busy = [s for s in self._slots if s.entry is not None]
            if not busy:
                if exhausted:
                    return
                continue
            now = time.monotonic()
            deadline = min(s.limit(self.timeout) for s in busy)
            answered = wait([s.conn for s in busy], timeout=max(0.0, min(deadline - now, 0.05)))
            for slot in busy:
                if slot.conn in answered:
                    try:
                        message = slot.conn.recv()
                    except (EOFError, OSError):
                        done[slot.seq] = (slot.entry, DecodeFailure("corrupt", "the decoder crashed on this file"))
                        self._replace(slot)
                        continue
                    if message == _READY:  # a loaded machine can take seconds to start a worker: not the file's time
                        slot.ready, slot.started = True, time.monotonic()
                        continue
                    seq, outcome = message
                    done[seq] = (slot.entry, outcome)
                    slot.entry = None
                elif time.monotonic() > slot.limit(self.timeout):
                    why = (
                        f"decoding took longer than {self.timeout:g}s (--decode-timeout)"
                        if slot.ready
                        else f"the decoder did not start within {STARTUP_SECONDS:g}s"
                    )
                    done[slot.seq] = (slot.entry, DecodeFailure("decode_timeout", why))
                    self._replace(slot)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for slot in self._slots:
            try:
                slot.conn.send(_STOP)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 0.5
        for slot in self._slots:
            slot.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(timeout=1)
            slot.conn.close()
        self._slots = []
