"""The lean feed (#18): chunked dispatch, answers read in bulk, crops through shared memory.

Chunks must not weaken isolation: a task that stalls or kills its worker in the middle of a chunk
costs that task one error, and every other task of the chunk still gets its own result, in order.
The pool is tested with a job of its own (no decoder: the failures are exact), then the decode
pool and the scan are tested for what the ring must guarantee: the crops are the worker's, a
slot fits five boxes, and every slot a scan borrows comes back.
"""

from __future__ import annotations

import os
import queue
import time
from typing import ClassVar

import numpy as np
import pytest
from conftest import textured_image

from codescan.decoding.examine import ExamineConfig, Examined, Examiner
from codescan.decoding.feed import DecodePool
from codescan.decoding.ring import Ring, RingExhausted
from codescan.decoding.workers import WorkerPool
from codescan.inputs.walk import Entry

STALL, CRASH = 13, 27  # the tasks that hang and that kill their worker


def _setup():
    """The worker's job: task n fills its slot with n and answers 2n; two tasks misbehave."""

    def run(n: int, slot: np.ndarray | None):
        if n == STALL:
            time.sleep(3600)
        if n == CRASH:
            os._exit(3)  # as a decoder crash or the OOM killer would end it: no answer, no cleanup
        assert slot is not None
        slot[:2] = n % 256
        return 2 * n, 2

    return run


class Numbers(WorkerPool[int, object]):
    """Results: (2n, the first byte of each row the worker filled) or a failure string."""

    def timed_out(self, task: int) -> object:
        return "timeout"

    def crashed(self, task: int) -> object:
        return "crash"

    def heavy(self, task: int) -> bool:
        return task % 10 == 5  # travels alone, to an idle worker

    def received(self, result, rows, slot):
        return (result, [int(r[0, 0, 0]) for r in rows]) if rows is not None else result, False


def test_a_stalled_and_a_crashing_task_in_a_chunk_cost_only_themselves():
    pool = Numbers(2, _setup, timeout=2.0, window=64, slot_shape=(2, 4, 4, 3))
    assert pool.chunk == 16  # so each worker holds many tasks at once: the failures are inside chunks
    tasks = list(range(40))
    got = list(pool.results(iter(tasks)))
    assert [t for t, _ in got] == tasks  # one result per task, in input order
    results = dict(got)
    assert results.pop(STALL) == "timeout" and results.pop(CRASH) == "crash"
    assert results == {n: (2 * n, [n, n]) for n in results}
    assert pool._ring is not None and pool._ring.free == pool._ring.slots  # every slot came back


class Borrowed(Numbers):
    def received(self, result, rows, slot):
        return (result, rows, slot), self.borrow and rows is not None


def _fast_setup():
    def run(n: int, slot: np.ndarray | None):
        assert slot is not None
        slot[:1] = n % 256
        return n, 1

    return run


def test_a_borrower_that_keeps_what_it_declared_never_runs_the_ring_dry():
    """The window's room goes back only for results the consumer has taken: the results waiting
    in a long ready list still hold their slots, so window + hold slots always suffice."""
    pool = Borrowed(2, _fast_setup, timeout=20.0, window=8, slot_shape=(1, 2, 2, 3), hold=3)
    kept: list[int] = []
    for n, (value, rows, slot) in pool.results(iter(range(300)), borrow=True):
        assert value == n and int(rows[0, 0, 0, 0]) == n % 256  # still the worker's: the slot was not reused
        kept.append(slot)
        if len(kept) == 3:
            pool.release(kept.pop(0))
        if n % 50 == 0:
            time.sleep(0.2)  # the workers run ahead: a long list of results is ready at once


class _CountingQueue:
    """The pool's queue to its consumer, recording how many results each list it carries holds."""

    sizes: ClassVar[list[int]] = []
    real = queue.SimpleQueue  # before the test puts this class in its place

    def __init__(self) -> None:
        self._queue = self.real()

    def put(self, item) -> None:
        if isinstance(item, list):
            _CountingQueue.sizes.append(len(item))
        self._queue.put(item)

    def get(self):
        return self._queue.get()


@pytest.mark.parametrize("gather", [1, 24])
def test_results_cross_to_the_consumer_a_batch_at_a_time(monkeypatch, gather):
    """`gather`: lists of at least that many (the last may hold fewer); without it, a list per
    worker's chunk (under 24 here), each a wake of the consumer's thread."""
    from codescan.decoding import workers

    monkeypatch.setattr(workers.queue, "SimpleQueue", _CountingQueue)
    monkeypatch.setattr(_CountingQueue, "sizes", [])
    pool = Numbers(2, _fast_setup, timeout=20.0, window=64, slot_shape=(1, 2, 2, 3))
    got = [n for n, _ in pool.results(iter(range(400)), gather=gather)]
    assert got == list(range(400))
    sizes = _CountingQueue.sizes
    assert sum(sizes) == 400
    if gather == 1:
        assert min(sizes[:-1]) < 24
    else:
        assert min(sizes[:-1]) >= 24


def _slow_third_setup():
    def run(n: int, slot):
        time.sleep({2: 0.1, 3: 1.5}.get(n, 0))  # after task 2 the worker answers what it has (ANSWER_SECONDS)
        return n, 0

    return run


def test_a_slow_result_does_not_hold_back_the_ones_before_it():
    """Results that wait for a batch still reach the consumer once they have waited GATHER_SECONDS."""
    from codescan.decoding import workers

    pool = Numbers(1, _slow_third_setup, timeout=20.0, window=16)
    seen: list[tuple[int, float]] = []
    start = time.monotonic()
    for n, _ in pool.results(iter(range(8)), gather=8):
        seen.append((n, time.monotonic() - start))
    assert [n for n, _ in seen] == list(range(8))
    # The pool hands them on GATHER_SECONDS later at most (and a loop's wait), long before the
    # slow task ends, though the batch of 8 is not complete.
    assert all(t < 1.0 for n, t in seen if n < 3), seen
    assert workers.GATHER_SECONDS < 0.5


def test_each_message_to_a_worker_is_one_chunk_and_the_first_ones_spread(monkeypatch):
    """A worker holds two chunks as two messages: it answers the first with the second already in
    its pipe (two in one message were answered together, and the worker then sat idle until the
    parent's next send). The first chunks go one per worker before any gets a second."""
    from multiprocessing import connection

    sent: list[tuple[int, int]] = []  # (connection, tasks in the message)
    real = connection.Connection.send

    def recording(self, obj):
        if isinstance(obj, list):
            sent.append((id(self), len(obj)))
        return real(self, obj)

    class Light(Numbers):
        def heavy(self, task: int) -> bool:
            return False  # no task travels alone: messages are as large as the pool makes them

    monkeypatch.setattr(connection.Connection, "send", recording)
    pool = Light(2, _fast_setup, timeout=20.0, window=64, slot_shape=(1, 2, 2, 3))
    assert [n for n, _ in pool.results(iter(range(200)))] == list(range(200))
    assert sent and max(size for _, size in sent) <= pool.chunk == 16
    first, second = sent[0][0], sent[1][0]
    assert first != second  # the second chunk went to the other worker


def test_a_pool_serves_again_after_close():
    pool = Numbers(1, _setup, timeout=5.0, window=8, slot_shape=(2, 4, 4, 3))
    for _ in range(2):
        assert [r for _, r in pool.results(iter([1, 2, 3]))] == [(2, [1, 1]), (4, [2, 2]), (6, [3, 3])]


def test_ring_refuses_a_take_when_every_slot_is_held():
    ring = Ring(3, (2, 4))
    a, b = ring.take_many(2)
    assert (a, b) == (0, 1)
    with pytest.raises(RingExhausted):
        ring.take_many(2)  # one is free: none is taken
    ring.take_many(1)
    with pytest.raises(RingExhausted):
        ring.take_many(1)
    ring.give(b)
    assert ring.take_many(1) == [b]  # the only free slot, found past the end
    ring.close()


def test_ring_hands_out_slots_in_order_so_a_batch_is_one_view():
    ring = Ring(4, (2, 3))
    ring.array[:] = np.arange(4)[:, None, None]
    assert ring.take_many(3) == [0, 1, 2]
    ring.give(0, 2)  # a batch's slots go back at once
    with pytest.raises(ValueError, match="not all held"):
        ring.give(1, 2)  # slot 1 is back already: handing it out twice would mix two files' crops
    assert ring.free == 3 and ring.take_many(3) == [3, 0, 1]  # next-fit: on from the last taken, wrapping
    span = ring.span(1, 3)  # slot 1's two rows and slot 2's first
    assert span.shape == (3, 3) and np.shares_memory(span, ring.array)
    assert span[:, 0].tolist() == [1, 1, 2]
    ring.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("feed")
    rng = np.random.default_rng(18)
    for i, (w, h) in enumerate([(300, 260), (180, 500), (640, 480), (224, 224), (90, 120)]):
        textured_image(rng, w, h).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    return [Entry(display=str(p), path=os.fsencode(p)) for p in sorted(folder.iterdir())]


@pytest.mark.parametrize("crops", [1, 5])
def test_decoded_crops_through_shared_memory_are_the_workers(images, crops):
    """A slot holds the largest crop set a record can have (five boxes with --crops 5)."""
    config = ExamineConfig(evidence="none", crops=crops)
    pool = DecodePool(workers=2, config=config, timeout=20, window=8)
    assert pool.slot_shape == (crops, 224, 224, 3)
    here = Examiner(config)
    outcomes = list(pool.outcomes(iter(images)))  # not borrowed: the consumer's own arrays
    assert [e for e, _ in outcomes] == images
    for entry, outcome in outcomes:
        expected = here(entry)
        assert isinstance(outcome, Examined) and isinstance(expected, Examined)
        assert outcome.decoded is not None and expected.decoded is not None
        assert outcome.decoded.crops.shape == (crops, 224, 224, 3)
        assert np.array_equal(outcome.decoded.crops, expected.decoded.crops)
        assert outcome.decoded.boxes == expected.decoded.boxes and outcome.sha256 == expected.sha256


def test_a_borrower_that_keeps_more_than_it_declared_is_told(images):
    pool = DecodePool(workers=1, config=ExamineConfig(evidence="none"), timeout=20, window=2, hold=0)
    kept = []
    with pytest.raises(RingExhausted):
        for _, outcome in pool.outcomes(iter(images * 3), borrow=True):
            kept.append(outcome)  # never given back


def test_a_batch_of_consecutive_slots_is_the_ring_itself_and_any_other_a_copy(images):
    """The engine reads a batch where the workers wrote it; its slots stay held until given back."""
    pool = DecodePool(workers=1, config=ExamineConfig(evidence="none"), timeout=20, window=8, hold=8)
    outcomes = [o for _, o in pool.outcomes(iter(images), borrow=True)]
    ring = pool._ring
    assert ring is not None and all(isinstance(o, Examined) for o in outcomes)
    expected = np.concatenate([o.decoded.crops for o in outcomes])  # type: ignore[union-attr]
    batch, held = pool.batch(outcomes[:3])  # type: ignore[arg-type]
    assert held is not None and np.shares_memory(batch, ring.array)
    assert np.array_equal(batch, expected[:3])
    free = ring.free
    pool.give_span(held)
    assert ring.free == free + 3
    gapped, held = pool.batch([outcomes[4], outcomes[3]])  # type: ignore[list-item]  # out of order: a copy
    assert held is None and not np.shares_memory(gapped, ring.array)
    assert np.array_equal(gapped, expected[[4, 3]])
    assert ring.free == ring.slots  # the copy's slots went back at once


def test_a_scan_gives_back_every_slot_it_borrows(images, home, monkeypatch, tmp_path):
    """Copies, errors and --crops 5 each take their own path back to the ring."""
    from codescan.scan.pipeline import Scanner
    from codescan.scan.plan import ScanConfig

    rings: list[Ring] = []
    real_init = Ring.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        rings.append(self)

    monkeypatch.setattr(Ring, "__init__", recording_init)
    in_place: list[bool] = []
    real_batch = DecodePool.batch

    def recording_batch(self, embedded):
        batch, held = real_batch(self, embedded)
        in_place.append(held is not None)
        return batch, held

    monkeypatch.setattr(DecodePool, "batch", recording_batch)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    shown = [e.display for e in images]
    # each image twice (the second is a copy); the error's slot lies between two images of a batch
    arguments = shown[:2] + [str(broken)] + shown[2:] + shown
    for crops in (1, 5):
        scanner = Scanner(engine="torch", precision="fp32", config=ScanConfig(batch_size=3, crops=crops, evidence="none"))
        records = list(scanner.scan(arguments))
        assert [r.status for r in records].count("error") == 1 and len(records) == len(arguments)
        assert rings[-1].free == rings[-1].slots
        assert True in in_place  # read where the workers wrote it ...
        assert crops == 5 or False in in_place  # ... and copied where the error's slot splits a batch
        in_place.clear()  # (with --crops 5 each image fills a batch of its own: always in place)


def _broken_setup():
    raise ImportError("a worker that cannot start")  # as a script without the __main__ guard, or a broken install


def _slow_setup():
    time.sleep(30)  # a start that never ends in time (a machine far too loaded, a hung import)
    return _setup()


@pytest.mark.parametrize(
    ("setup", "why"), [(_broken_setup, "exited while starting"), (_slow_setup, "did not start within 0.5s")], ids=["dies", "hangs"]
)
def test_workers_that_fail_to_start_stop_the_pool_and_blame_no_task(setup, why):
    """A worker that dies or hangs before it is ready has begun no task: no file may be recorded
    `corrupt` or `decode_timeout` for it. Three in a row end the pool with one error saying why."""
    from codescan.decoding.workers import START_FAILURES, WorkerStartError

    pool = Numbers(1, setup, timeout=5.0, window=8, slot_shape=(2, 4, 4, 3), startup=0.5)
    got = []
    with pytest.raises(WorkerStartError, match=f"{START_FAILURES} worker processes in a row {why}"):
        for item in pool.results(iter(range(5))):
            got.append(item)
    assert got == []


def test_a_script_without_the_main_guard_scans_and_its_workers_never_run_it(tmp_path):
    """multiprocessing would have every worker import the script again, and each would start a
    scan of its own and die with a traceback; the workers import only codescan's modules."""
    import subprocess
    import sys

    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from codescan.decoding.examine import ExamineConfig, Examined\n"
        "from codescan.decoding.feed import DecodePool\n"
        "from codescan.inputs.walk import walk\n"
        "print('started', flush=True)\n"
        "pool = DecodePool(workers=2, config=ExamineConfig(evidence='none'), timeout=20, window=4)\n"
        f"outcomes = [o for _, o in pool.outcomes(walk([{str(tmp_path)!r}]))]\n"
        "print(sum(isinstance(o, Examined) for o in outcomes), 'decoded')\n"
    )
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["started", "3 decoded"]  # the script ran once, in its own process
    assert "Traceback" not in p.stderr


def _blas_setup():
    def run(n: int, slot):
        return os.environ.get("OPENBLAS_NUM_THREADS"), 0

    return run


def test_one_blas_thread_in_the_scanning_process_and_its_workers_unless_the_user_says(tmp_path):
    """OpenBLAS's idle threads spin after numpy loads (57 ms of CPU here): the codescan command sets
    one thread before numpy loads, the forkserver's children get it too; a value the user set stays."""
    import subprocess
    import sys

    probe = ("import codescan.cli, os, numpy; from threadpoolctl import threadpool_info; "
             "print(os.environ['OPENBLAS_NUM_THREADS'], [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'])")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split(maxsplit=1) == ["1", "[1]\n"]
    out = subprocess.run([sys.executable, "-P", "-c", probe], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "2"

    pool = Numbers(1, _blas_setup, timeout=20.0, window=4)
    seen = {value for _, value in pool.results(iter(range(3)))}
    assert seen == {os.environ.get("OPENBLAS_NUM_THREADS", "1")}
