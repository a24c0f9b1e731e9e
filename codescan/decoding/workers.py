"""Worker processes that can be killed: the only way to bound a stuck C decoder.

A thread stuck inside libtiff or libpng cannot be interrupted, so hostile bytes are read in
worker processes, each task under a deadline. A worker that misses it is killed (SIGKILL) and
replaced, and its task gets the pool's timeout result; a worker that dies (a decoder crash, the
kernel's OOM killer, the address-space limit) gives its task the crash result. Either way the
other tasks go on: the ones queued behind it are handed to another worker.

The feed is lean because a small JPEG decodes in about a millisecond, less than moving it one
message at a time costs: tasks travel in chunks, one message each (a worker always has the next
chunk in its pipe, so it never waits for the parent), and a chunk's results come back as one
message when it is done (or sooner, once they have waited ANSWER_SECONDS), read by the parent in
bulk, every few milliseconds, with one system call; bulky outputs go through shared memory
(ring.py) instead of pickles. The parent pays per message rather than per file (on a small VM a
thread that wakes runs cold), so chunks are as large as the window allows, up to MAX_CHUNK.
Before each task a worker marks it on a shared board, one number per worker: a stall is
timed from when its task began, and a stall or crash is blamed on that task alone; the finished
results that die with a killed worker are computed again by the next one, like the tasks it had
not begun. A dispatcher thread keeps the workers fed while the consumer works and hands results
on strictly in input order, a batch at a time (`gather`); a window bounds how many tasks are in
flight, so memory stays flat and a slow consumer holds the input back (back-pressure).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

import numpy as np

from codescan.core.procs import ADDRESS_SPACE_LIMIT, confine, forkserver, kill, spawn
from codescan.decoding.ring import Ring, anonymous_file, map_slots

T = TypeVar("T")  # a task
R = TypeVar("R")  # its result

_STOP = None
_READY = "ready"  # a worker's first message: imports and readers loaded, work can start
STARTUP_SECONDS = 120.0  # a worker that is not ready by then is killed and replaced (a start failure)
START_FAILURES = 3  # workers in a row that die before they are ready: the pool cannot run here
MAX_CHUNK = 32  # tasks per message to a worker; it holds at most two chunks
# Results whose room in the window goes back at once, after the consumer has taken them all (not
# before: a borrowing consumer holds only the slots it declared, and a result not yet taken holds one).
CREDIT_GROUP = 16
# A worker sends the answers it holds at the end of its chunk, or sooner once they have waited this
# long: fast files go back a chunk per message, a slow file's answer (a large PNG) at once.
ANSWER_SECONDS = 0.05
PAUSE = 0.01  # seconds the dispatcher lets answers gather while every busy worker has a chunk in hand
GATHER_SECONDS = ANSWER_SECONDS  # the longest a finished result waits for others before it goes to the consumer

# In the worker: the per-task function, given the task and its shared slot (None without a ring);
# it returns the result and how many leading rows of the slot it filled.
Run = Callable[[Any, "np.ndarray | None"], tuple[Any, int]]
Setup = Callable[[], Run]  # run once in each worker, after it is confined: imports, readers (picklable)


def _board(fd: int, workers: int) -> np.ndarray:
    """(workers,) int64 over the shared file: the task each worker is on (-1: none yet)."""
    return map_slots(fd, workers, (8,)).view(np.int64).reshape(workers)


def _worker_main(
    conn: Connection, setup: Setup, ring: tuple[int, tuple[int, ...]] | None, board_spec: tuple[int, int]
) -> None:
    slots = None
    if ring is not None:  # the parent sends the ring's descriptor before anything else
        fd = reduction.recv_handle(conn)
        slots = map_slots(fd, *ring)
        os.close(fd)
    fd = reduction.recv_handle(conn)  # then the board's
    workers, place = board_spec
    board = _board(fd, workers)
    os.close(fd)
    confine(ADDRESS_SPACE_LIMIT)
    run = setup()
    time.sleep(float(os.environ.get("CODESCAN_TEST_WORKER_START_DELAY", "0") or 0))  # test hook: a slow start
    conn.send(_READY)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is _STOP:
            return
        answers, sent = [], time.monotonic()
        for seq, slot, task in chunk:
            board[place] = seq  # one aligned 8-byte store: the parent never reads half of it
            answers.append((seq, *run(task, None if slots is None or slot < 0 else slots[slot])))
            if time.monotonic() - sent >= ANSWER_SECONDS:  # slow files: the progress line moves with each
                conn.send(answers)
                answers, sent = [], time.monotonic()
        if answers:
            conn.send(answers)


@dataclass(slots=True)
class _Task(Generic[T]):
    seq: int  # its place in the input
    task: T
    slot: int = -1  # its ring slot, -1 without a ring


class _Answers:
    """A worker's answers read in bulk: one read per visit, where ``Connection.recv`` makes three
    system calls per message (the parent reads raw bytes; the worker writes with Connection.send)."""

    def __init__(self, conn: Connection) -> None:
        self.fd = conn.fileno()
        self.buf = bytearray()

    def read(self) -> list[Any] | None:
        """The complete messages that have arrived (call when the pipe is readable); None: the worker is gone."""
        try:
            data = os.read(self.fd, 1 << 16)
        except OSError:
            return None
        if not data:
            return None
        self.buf += data
        messages, at = [], 0
        while len(self.buf) - at >= 4:
            size = int.from_bytes(self.buf[at : at + 4], "big", signed=True)  # Connection's frame: !i length, pickle
            if size < 0:  # only messages over 2 GiB use the long form: not an answer
                return None
            if len(self.buf) - at - 4 < size:
                break
            messages.append(pickle.loads(self.buf[at + 4 : at + 4 + size]))
            at += 4 + size
        del self.buf[:at]
        return messages


class _Readable:
    """Which of the busy workers' pipes have answers: one poll set kept from visit to visit and
    changed only when the busy workers do (`multiprocessing.connection.wait` builds a selector and
    registers every pipe on each call: the dispatcher spent 24 µs a file with it here, 21 without)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fds: set[int] = set()

    def wait(self, fds: set[int], timeout: float) -> set[int]:
        """The readable ones among `fds`, waiting up to `timeout` seconds for the first."""
        if fds != self._fds:
            for fd in self._fds - fds:
                self._poll.unregister(fd)
            for fd in fds - self._fds:
                self._poll.register(fd, select.POLLIN)
            self._fds = fds
        return {fd for fd, _ in self._poll.poll(timeout * 1000)}


class _Credits:
    """Room in the window, taken and given back many at a time (a semaphore costs a lock per file)."""

    def __init__(self, value: int) -> None:
        self._value = value
        self._cond = threading.Condition(threading.Lock())

    def take(self, most: int, timeout: float = 0.0) -> int:
        """Up to `most` credits; waits up to `timeout` seconds for the first one. 0: none came."""
        with self._cond:
            if not self._value and timeout > 0:
                self._cond.wait(timeout)
            got = min(most, self._value)
            self._value -= got
            return got

    def give(self, count: int) -> None:
        if count:
            with self._cond:
                self._value += count
                self._cond.notify()


class WorkerStartError(ChildProcessError):
    """Workers die before they are ready: the environment, not a task (none had begun one). An
    OSError, so the CLI reports it in one line, as it does a full disk."""


@dataclass
class _Cursor:
    """Where the dispatcher is in the input."""

    seq: int = 0  # the next task's place
    exhausted: bool = False


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    board: np.ndarray  # (workers,) int64, shared: the task each worker marked before it began it
    place: int  # its number on the board
    answers: _Answers = field(init=False)
    queue: deque[_Task] = field(default_factory=deque)  # sent, not answered, in the order it takes them
    started: float = 0.0  # when its current task's clock started: seen begun, sent to an idle worker, answers, ready
    seen: int = -1  # the board's mark when last looked at
    ready: bool = False  # it said it is ready; until then its start, not its task, is being timed

    def __post_init__(self) -> None:
        self.answers = _Answers(self.conn)
        self.board[self.place] = -1

    def limit(self, timeout: float, startup: float) -> float:
        return self.started + (timeout if self.ready else startup)

    def look(self, now: float) -> None:
        """A task begun since the last look starts its clock now (within a visit of when it began)."""
        mark = int(self.board[self.place])
        if mark != self.seen:
            self.seen = mark
            self.started = now

    def _current_index(self) -> int:
        mark = int(self.board[self.place])
        for i, item in enumerate(self.queue):
            if item.seq == mark:
                return i
        return 0  # not begun yet (or it died before marking it): the oldest unanswered

    @property
    def current(self) -> Any:
        """The task it is working on, or None when idle."""
        return self.queue[self._current_index()].task if self.queue else None

    def take_current(self) -> _Task:
        """Remove and return the task it is on: the one a stall or a death is blamed on. Those
        before it are finished, but their results die with the worker: they stay queued, to be
        computed again."""
        i = self._current_index()
        item = self.queue[i]
        del self.queue[i]
        return item


class WorkerPool(Generic[T, R]):
    """``pool.results(tasks)`` yields ``(task, result)`` in input order, each task run in a worker.

    Subclasses say what a task that cannot finish becomes (`timed_out`, `crashed`), which tasks need
    no worker (`local`), which must travel alone (`heavy`: large payloads never queue behind a task
    that may stall) and how a result takes its rows from the shared ring (`received`).
    """

    def __init__(
        self,
        workers: int,
        setup: Setup,
        timeout: float,
        window: int,
        *,
        slot_shape: tuple[int, ...] | None = None,
        hold: int = 0,
        startup: float = STARTUP_SECONDS,
    ) -> None:
        """`slot_shape`: one shared uint8 slot of this shape per task in flight; `hold`: how many
        results with rows the consumer keeps after taking them (borrowed slots, see `release`);
        `startup`: seconds a worker may take to become ready."""
        self.n = max(1, workers)
        self.setup = setup
        self.timeout = timeout
        self.startup = startup
        self.window = max(window, self.n)
        self.chunk = max(1, min(MAX_CHUNK, self.window // (2 * self.n)))
        self.slot_shape = slot_shape
        self.hold = hold
        self.ctx = forkserver()
        self.borrow = False
        # Results already here behind the one just yielded: at 0 the next may mean a wait, so a
        # consumer that works per list (the scan's records) hands on what it has first.
        self.arrived = 0
        self._ring: Ring | None = None
        self._board: tuple[int, np.ndarray] | None = None  # its file descriptor and mapping, per results() call
        self._workers: list[_Worker] = []
        self._start_failures = 0  # workers in a row that died before they were ready
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def local(self, task: T) -> R | None:
        """A result known without a worker, or None."""
        return None

    def heavy(self, task: T) -> bool:
        return False

    def wire(self, task: T) -> Any:
        """The task as it travels to a worker, whose Run gets this (plain values pickle fastest)."""
        return task

    def timed_out(self, task: T) -> R:
        """The result of a task whose worker missed its deadline."""
        raise NotImplementedError

    def crashed(self, task: T) -> R:
        raise NotImplementedError

    def received(self, result: R, rows: np.ndarray | None, slot: int) -> tuple[R, bool]:
        """The result as the consumer gets it, given the rows its worker filled in `slot`; and whether
        it keeps the slot (a borrowing consumer then gives it back with `release`)."""
        return result, False

    def release(self, slot: int) -> None:
        """Give back a slot a borrowing consumer (``results(..., borrow=True)``) was handed."""
        assert self._ring is not None
        self._ring.give(slot)

    def _spawn(self, place: int) -> _Worker:
        assert self._board is not None
        board_fd, board = self._board
        spec = None if self._ring is None else (self._ring.slots, self._ring.slot_shape)
        proc, conn = spawn(self.ctx, _worker_main, (self.setup, spec, (self.n, place)))
        worker = _Worker(proc=proc, conn=conn, board=board, place=place)  # clears its mark before it can set one
        if self._ring is not None:
            reduction.send_handle(conn, self._ring.fd, proc.pid)  # type: ignore[arg-type]
        reduction.send_handle(conn, board_fd, proc.pid)  # type: ignore[arg-type]
        return worker

    def _replace(self, worker: _Worker, retry: deque[_Task]) -> None:
        """Kill it and start another; the tasks it had not finished and sent go to the next idle worker."""
        kill(worker.proc, worker.conn)
        retry.extend(worker.queue)
        self._workers[self._workers.index(worker)] = self._spawn(worker.place)

    def results(self, tasks: Iterator[T], borrow: bool = False, gather: int = 1) -> Iterator[tuple[T, R]]:
        """`borrow`: results may hold views of shared slots, valid until given back with `release`.
        `gather`: results cross to the consumer's thread in lists of at least this many (its batch),
        or fewer once they have waited GATHER_SECONDS or no worker has a task: on this 2-core VM each
        wake of a waiting thread costs 25–30 µs of CPU, and a list per worker's chunk woke the
        consumer four times per batch of 64."""
        out: queue.SimpleQueue = queue.SimpleQueue()
        credits = _Credits(self.window)
        self.borrow = borrow
        self._stop.clear()  # reusable: each call starts its workers and close() stops them
        self._start_failures = 0
        if self.slot_shape is not None:
            self._ring = Ring(self.window + self.hold, self.slot_shape)
        board_fd = anonymous_file(self.n * 8)
        self._board = (board_fd, _board(board_fd, self.n))
        self._workers = [self._spawn(place) for place in range(self.n)]
        gather = max(1, min(gather, self.window // 2))  # the rest of the window keeps the workers busy meanwhile
        self._thread = threading.Thread(target=self._dispatch, args=(tasks, out, credits, gather), daemon=True)
        self._thread.start()
        try:
            while True:
                items = out.get()
                if items is _STOP:
                    return
                if isinstance(items, BaseException):
                    raise items
                for taken, item in enumerate(items, 1):
                    self.arrived = len(items) - taken
                    yield item
                    if not taken % CREDIT_GROUP:  # room in the window for what the consumer has taken
                        credits.give(CREDIT_GROUP)
                credits.give(len(items) % CREDIT_GROUP)
        finally:
            self.close()

    def _dispatch(self, tasks: Iterator[T], out: queue.SimpleQueue, credits: _Credits, gather: int) -> None:
        try:
            self._run(tasks, out, credits, gather)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the consumer thread
            out.put(exc)
        finally:
            out.put(_STOP)

    def _run(self, tasks: Iterator[T], out: queue.SimpleQueue, credits: _Credits, gather: int) -> None:
        done: dict[int, tuple[T, R]] = {}
        retry: deque[_Task] = deque()  # tasks a replaced worker had not begun: they hold their credit and slot
        cursor = _Cursor()
        readable = _Readable()
        next_out = 0
        ready: list[tuple[T, R]] = []  # in input order, not yet handed on
        held_since = 0.0
        while not self._stop.is_set():
            for worker in self._workers * 2:  # a chunk each, then each its second: the work spreads over them
                self._feed(worker, tasks, credits, retry, done, cursor)
            if next_out in done and not ready:
                held_since = time.monotonic()
            while next_out in done:
                ready.append(done.pop(next_out))
                next_out += 1
            busy = [w for w in self._workers if w.queue]
            if ready and (len(ready) >= gather or not busy or time.monotonic() - held_since >= GATHER_SECONDS):
                out.put(ready)
                ready = []
            if not busy:
                if cursor.exhausted and not retry:
                    return
                continue
            deadline = min(w.limit(self.timeout, self.startup) for w in busy)
            if all(len(w.queue) > self.chunk for w in busy):  # reading each answer as it comes costs more than it does
                time.sleep(max(0.0, min(PAUSE, deadline - time.monotonic())))  # close() waits this long at most
            answered = readable.wait({w.answers.fd for w in busy}, max(0.0, min(deadline - time.monotonic(), 0.05)))
            now = time.monotonic()
            for worker in busy:
                worker.look(now)
                if worker.answers.fd in answered:
                    self._read(worker, retry, done)
                elif now > worker.limit(self.timeout, self.startup) and not worker.conn.poll():  # an answer in the pipe is no stall
                    if not worker.ready:
                        self._start_failed(worker, retry, lambda: f"did not start within {self.startup:g}s")
                        continue
                    stalled = worker.take_current()
                    done[stalled.seq] = (stalled.task, self._settle(stalled, self.timed_out(stalled.task)))
                    self._replace(worker, retry)

    def _feed(self, worker: _Worker, tasks: Iterator[T], credits: _Credits, retry: deque[_Task],
              done: dict[int, tuple[T, R]], cursor: _Cursor) -> None:
        """One more chunk for a worker that holds one or none, in a message of its own (it answers
        each as it ends, with the next already in its pipe); a heavy task goes alone to an idle worker.

        Tasks a replaced worker had not begun (`retry`) go first; new ones are taken as many at a
        time as the window has room for, not one by one: this runs once per few tasks per file."""
        if len(worker.queue) > self.chunk:
            return
        want = self.chunk
        chunk: list[_Task] = []
        while retry and len(chunk) < want:
            if self.heavy(retry[0].task):
                if not (worker.queue or chunk):
                    chunk.append(retry.popleft())
                break
            chunk.append(retry.popleft())
        else:
            if len(chunk) < want and not cursor.exhausted:
                idle = not chunk and not any(w.queue for w in self._workers)
                room = credits.take(want - len(chunk), timeout=0.05 if idle else 0)
                chunk += self._new_tasks(tasks, room, credits, retry, done, cursor, alone=not (worker.queue or chunk))
        if chunk:
            if not worker.queue:
                worker.started = time.monotonic()
            worker.queue.extend(chunk)
            wire = self.wire
            worker.conn.send([(t.seq, t.slot, wire(t.task)) for t in chunk])

    def _new_tasks(self, tasks: Iterator[T], room: int, credits: _Credits, retry: deque[_Task],
                   done: dict[int, tuple[T, R]], cursor: _Cursor, alone: bool) -> list[_Task]:
        """Up to `room` tasks from the input (each holds a credit): the ones for a worker, with their
        slots, up to the first heavy one (included when it can go `alone`, the rest wait in `retry`);
        local results go straight to `done`."""
        new = list(itertools.islice(tasks, room))
        if len(new) < room:
            cursor.exhausted = True
            credits.give(room - len(new))
        local = self.local
        out: list[_Task] = []
        for seq, task in enumerate(new, cursor.seq):
            result = local(task)
            if result is None:
                out.append(_Task(seq, task))
            else:
                done[seq] = (task, result)
        cursor.seq += len(new)
        if self._ring is not None:
            for item, slot in zip(out, self._ring.take_many(len(out))):
                item.slot = slot
        heavy = self.heavy
        for i, item in enumerate(out):
            if heavy(item.task):
                cut = 1 if i == 0 and alone else i
                retry.extend(out[cut:])
                return out[:cut]
        return out

    def _read(self, worker: _Worker, retry: deque[_Task], done: dict[int, tuple[T, R]]) -> None:
        """The answers the worker has sent; a worker that died costs its current task only."""
        messages = worker.answers.read()
        if messages is None:
            if not worker.ready:
                self._start_failed(worker, retry, lambda: f"exited while starting (exit code {worker.proc.exitcode}); "
                                   "a script that scans must do so under `if __name__ == \"__main__\":`, "
                                   "since workers re-import it")
                return
            dead = worker.take_current()
            done[dead.seq] = (dead.task, self._settle(dead, self.crashed(dead.task)))
            self._replace(worker, retry)
            return
        if messages:
            worker.started = time.monotonic()
        for message in messages:
            if isinstance(message, str):  # _READY: a loaded machine can take seconds to start a worker
                worker.ready = True
                self._start_failures = 0
                continue
            for seq, result, rows in message:  # a chunk's answers
                head = worker.queue.popleft()
                assert head.seq == seq, "a worker answers its tasks in the order it was given them"
                done[seq] = (head.task, self._settle(head, result, rows))

    def _start_failed(self, worker: _Worker, retry: deque[_Task], why: Callable[[], str]) -> None:
        """A worker died or hung while starting: it had begun no task, so none is blamed; its tasks go
        to the next worker. `why` is asked after the worker is gone (its exit code is known then)."""
        self._replace(worker, retry)
        self._start_failures += 1
        if self._start_failures >= START_FAILURES:
            raise WorkerStartError(f"{START_FAILURES} worker processes in a row {why()}")

    def _settle(self, item: _Task, result: R, rows: int = 0) -> R:
        """The result as handed on; its slot goes back now unless the consumer borrows it."""
        if self._ring is None or item.slot < 0:
            return result
        result, keep = self.received(result, self._ring.array[item.slot, :rows] if rows else None, item.slot)
        if not keep:
            self._ring.give(item.slot)
        return result

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for worker in self._workers:
            try:
                worker.conn.send(_STOP)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 0.5
        for worker in self._workers:
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(timeout=1)
            worker.conn.close()
        self._workers = []
        if self._board is not None:
            os.close(self._board[0])  # the mapping goes with its last view
            self._board = None
        if self._ring is not None:
            self._ring.close()  # the mapping stays while a consumer still holds a view of it
